#!/bin/sh
# Debian's Chromium for the browser tests (Playwright's own browser download cannot work
# here). Idempotent: does nothing when /usr/bin/chromium is already installed.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser.sh: /usr/bin/chromium is missing and this is not root; run as root: apt-get install -y chromium" >&2
        exit 1
    fi
fi
echo "installing Chromium for the browser tests (apt-get install chromium)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
