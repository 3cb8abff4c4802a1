#!/usr/bin/env bash
# Installs what tests/browser/ needs: Debian's Chromium (driven by Playwright through
# executable_path=/usr/bin/chromium) and the Python packages jupyterlab and playwright.
#
# Idempotent: each step is skipped when its result is already there. Never fails the CI run:
# where a step cannot be done (no apt, no root, no network) it says so and goes on, and the
# browser test then skips with its reason.
#
# Playwright's own browser download (`playwright install`) is NOT used: it fails on this kind of
# machine; the pip package ships the driver, and the browser is Debian's chromium.
set -u
cd "$(dirname "$0")/.."

say() { echo "[browser-setup] $*"; }

if command -v chromium >/dev/null 2>&1; then
    say "chromium present: $(chromium --version 2>/dev/null | head -1)"
elif command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else say "not root and no sudo: cannot install chromium"; fi
    fi
    if [ "$(id -u)" = "0" ] || [ -n "$SUDO" ]; then
        say "installing chromium with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if $SUDO apt-get update -qq >/dev/null \
            && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
            say "chromium installed: $(chromium --version 2>/dev/null | head -1)"
        else
            say "apt-get could not install chromium; the browser test will be skipped"
        fi
    fi
else
    say "no apt-get: cannot install chromium; the browser test will be skipped"
fi

if python -c "import jupyterlab, playwright" >/dev/null 2>&1; then
    say "jupyterlab and playwright present"
else
    say "pip install jupyterlab playwright"
    python -m pip install -q --disable-pip-version-check jupyterlab playwright \
        || say "pip could not install jupyterlab/playwright; the browser test will be skipped"
fi
exit 0
