#!/bin/sh
# Chromium for the browser tests (tests/browser), where set-up can install it: Debian's
# package, through apt-get, as root. Playwright for Python comes with the dev requirements
# (requirements.lock); its own `playwright install` downloads browsers, which we do not.
#
# Never fails set-up: without Chromium the browser tests skip, saying how to enable them.
# FACEGATE_CHROMIUM names another Chromium executable (the tests use it too).
set -u
CHROMIUM="${FACEGATE_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser tests: no Chromium at $CHROMIUM, and no apt-get as root to install it;" \
        "install Chromium (or set FACEGATE_CHROMIUM) to run them" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be empty (a fresh container): update them if the first try fails.
if ! apt-get install -y -q chromium >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || echo "browser tests: apt-get could not install chromium; they will skip" >&2
fi
exit 0
