#!/usr/bin/env bash
# Install everything the test suite needs and run it: the README's test command.
# - Debian's chromium for the real-browser test (skipped only where apt-get is unavailable
#   and CI is unset; never `playwright install`, which downloads a browser build).
# - the pinned Python packages (torch==2.13.0 resolves to the local CPU wheel on our machines).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
python -m pip install -q -r requirements-dev.txt
# panopticapi's own pq_compute for the PQ parity test; its wheel pins numpy<2, which its
# pq code does not need
python -m pip install -q --no-deps panopticapi-lite==0.2.0
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
python -m pytest "$@"
