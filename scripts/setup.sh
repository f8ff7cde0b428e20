#!/usr/bin/env bash
# Install whatever Berth is missing on a Debian 12 machine, then prepare the database.
#   scripts/setup.sh          what `make run` needs
#   scripts/setup.sh --test   plus what the test suite needs
# Quick when nothing is missing: a second run checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_PACKAGES="runc crun conmon containernetworking-plugins iptables redis-server busybox-static"
TEST_PACKAGES="chromium docker-registry skopeo docker.io docker-compose"

packages="$RUN_PACKAGES"
if [ "${1:-}" = "--test" ]; then packages="$packages $TEST_PACKAGES"; fi

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# 1. Debian packages.
missing=""
for p in $packages; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$status" in *"install ok installed"*) ;; *) missing="$missing $p" ;; esac
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    die "missing Debian packages:$missing. Install them with: sudo apt-get install -y$missing (or run make as root)"
  fi
  say "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # Keep dockerd (from docker.io) from being started by the package scripts: Berth only needs its CLI here.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; remove_policy=1
  fi
  apt-get update -qq || die "apt-get update failed: check the machine's network and /etc/apt/sources.list"
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing >/dev/null \
    || die "could not install:$missing (see apt-get's messages above)"
  if [ "${remove_policy:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# 2. The virtualenv, rebuilt only when the pinned requirements change.
req=requirements.txt
[ "${1:-}" = "--test" ] && req=requirements-test.txt
stamp=".venv/.installed-$(cat requirements.txt requirements-test.txt constraints.txt | sha256sum | cut -c1-16)-$(basename $req .txt)"
if [ ! -x .venv/bin/python ]; then
  say "creating the virtualenv in .venv/"
  python3 -m venv .venv || die "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"
fi
if [ ! -e "$stamp" ]; then
  say "installing Python dependencies ($req)"
  .venv/bin/pip install -q --disable-pip-version-check -r "$req" -c constraints.txt \
    || die "pip install failed (see above): check access to PyPI"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# 3. The database and the admin account.
say "migrating the database"
.venv/bin/python manage.py migrate --no-input -v0
.venv/bin/python manage.py ensureadmin
.venv/bin/python manage.py ensurestarterimage
