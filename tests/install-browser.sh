#!/bin/sh
# The browser test (tests/test_serve_browser.py) drives Debian's chromium through
# Playwright; Playwright's own browser download cannot work offline, so install the
# distribution's. Where that is impossible (no root, no apt-get) the test is skipped
# and says why; everything else still runs.
set -e
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: installing Debian's chromium for the browser test" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    exit 0
fi
echo "install-browser: no chromium and no root apt-get here; the browser test will be skipped" >&2
