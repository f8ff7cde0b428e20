"""Dockerfile builds: parsing (dockerfile), the build context (context), the builder (builder)."""

from runtime.build.builder import BuildError, build, prune_cache
from runtime.build.dockerfile import DockerfileError, parse

__all__ = ["BuildError", "DockerfileError", "build", "parse", "prune_cache"]
