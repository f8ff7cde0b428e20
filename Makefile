# Berth: two commands on a fresh Debian 12 machine (as root).
.PHONY: run test setup test-setup bench

run: setup
	scripts/run.sh

test: test-setup
	.venv/bin/pytest

setup:
	scripts/setup.sh

test-setup:
	scripts/setup.sh --test
