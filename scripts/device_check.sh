#!/usr/bin/env bash
# The CUDA path, checked on a machine with an NVIDIA GPU and its own Python (3.12, numpy 2, torch; no SAPIEN):
# the protocol, our three bases, a SAC update and a short Policy Decorator run on Adroit Door with --cuda, one line
# per check (scripts/device_check.py). Packages missing there travel as wheels in .whl/ (scripts/device_wheels.sh
# fetches them here, where pip works). Exit status: the number of failed checks.
set -u
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 MUJOCO_GL=egl
exec "${PYTHON:-python3}" scripts/device_check.py
