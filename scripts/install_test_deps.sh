#!/usr/bin/env bash
# System packages the test suite needs beyond pip: Debian's Chromium and its chromedriver, for the
# human-evaluation page's browser test (tests/test_human_eval_browser.py drives /usr/bin/chromium
# through /usr/bin/chromedriver). Idempotent: does nothing when both are there. Needs root (or sudo)
# on Debian/Ubuntu the first time. The README's test command and .ci/run call it before pytest.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_deps: need /usr/bin/chromium and /usr/bin/chromedriver; install Chromium and its" \
       "chromedriver with your system's package manager (no apt-get here)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "install_test_deps: installing chromium and chromium-driver (Debian packages) for the browser test" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
test -x /usr/bin/chromium && test -x /usr/bin/chromedriver
