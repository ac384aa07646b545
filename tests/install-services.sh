#!/bin/sh
# Services the tests use that pip cannot install, from Debian:
#  * chromium, driven through Playwright by the browser test (Playwright's own
#    browser download cannot work offline);
#  * PostgreSQL's server, for the catalog tests (tests/postgres.py starts a
#    throw-away cluster in a temporary folder and stops it at the end).
# Where that is impossible (no root, no apt-get) those tests are skipped and say why;
# everything else still runs.
set -e
missing=""
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    missing="$missing chromium"
fi
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    missing="$missing postgresql"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-services: installing Debian's$missing for the tests" >&2
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    exit 0
fi
echo "install-services: no$missing and no root apt-get here; the tests that need them will be skipped" >&2
