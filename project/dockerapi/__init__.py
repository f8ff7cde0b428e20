"""The Docker Engine API (v1.41), so that the docker CLI and the Docker SDK for Python drive Berth."""
