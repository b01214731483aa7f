#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's Chromium, for the plan
# report's headless-browser test (tests/report). Idempotent and never fatal: when it
# cannot install, it says so and the browser tests skip with that reason.
set -u

if command -v chromium >/dev/null 2>&1; then
  echo "ci-system-deps: chromium present ($(command -v chromium))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "ci-system-deps: WARNING: not root and no password-less sudo; cannot install" \
         "chromium - the browser tests will be skipped" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ci-system-deps: WARNING: no apt-get (not Debian/Ubuntu); install chromium by hand" \
       "- the browser tests will be skipped" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# fonts-dejavu-core: without recommends Chromium may have no font, and the screenshot
# would show boxes instead of text
if $SUDO apt-get update -qq >/dev/null \
   && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core \
        >/dev/null; then
  echo "ci-system-deps: installed $(chromium --version 2>/dev/null || echo chromium)"
else
  echo "ci-system-deps: WARNING: apt-get install chromium failed - the browser tests" \
       "will be skipped" >&2
fi
exit 0
