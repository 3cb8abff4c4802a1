#!/usr/bin/env bash
# Installs the browser tests/test_browser.py drives: Debian's Chromium (/usr/bin/chromium), used by
# Playwright through executable_path. jupyterlab and playwright come from the package's `test` extra.
#
# Called by the test itself when no chromium is found. Idempotent. Exits 0 even when it cannot
# install (no apt, not root, no registry): the test then skips and says why.
#
# Playwright's own browser download (`playwright install`) is NOT used: it needs a CDN this kind
# of machine cannot reach; the pip package ships the driver, and the browser is Debian's.
set -u

say() { echo "[install_browser] $*"; }

if command -v chromium >/dev/null 2>&1; then
    say "chromium present: $(chromium --version 2>/dev/null | head -1)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get: cannot install chromium"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        say "not root and no password-less sudo: cannot install chromium"
        exit 0
    fi
fi
say "installing Debian's chromium with apt-get (a minute or two)"
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    say "installed: $(chromium --version 2>/dev/null | head -1)"
else
    say "apt-get could not install chromium"
fi
exit 0
