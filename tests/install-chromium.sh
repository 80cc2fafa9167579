#!/usr/bin/env bash
# The test harness's headless browser: Debian's chromium renders the HTML report in
# tests/integration/test_report.py. Installed here (make test runs this) so a fresh machine
# needs nothing beyond the README's command; where it cannot be installed the test skips.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (headless browser for tests/integration/test_report.py)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "chromium is not installed and cannot be installed here: the browser test will be skipped" >&2
  echo "install it with: sudo apt-get install -y --no-install-recommends chromium" >&2
fi
