#!/bin/sh
# Debian's PostgreSQL 15 server for the tests (tests/pgcluster.py starts a throwaway cluster
# of its own with initdb and pg_ctl; no system cluster is created or started). Idempotent:
# does nothing when /usr/lib/postgresql/15/bin/initdb is already installed.
set -eu
if [ -x /usr/lib/postgresql/15/bin/initdb ] && [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-postgres.sh: PostgreSQL 15 is missing and this is not root; run as root: apt-get install -y postgresql-15" >&2
        exit 1
    fi
fi
echo "installing PostgreSQL 15 for the database tests (apt-get install postgresql-15)"
# The package would create and start a system cluster `main`; the tests need none.
$SUDO mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo "create_main_cluster = false" | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-15
