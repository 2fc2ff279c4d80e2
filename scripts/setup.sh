#!/usr/bin/env bash
# Set up pi-dec on a fresh Debian/Ubuntu machine: system Vulkan packages, a local virtualenv (.venv),
# the Python dependencies, and the lavapipe Vulkan layer. Idempotent: a second run does nothing
# that is already done.
#
#   PYTHON=python3.10 bash scripts/setup.sh      # choose the interpreter (3.10 or 3.11)
#   TORCH_SPEC='torch==2.13.0' ...               # which torch to install first (default below)
#   PIP_TORCH_ARGS='--index-url https://download.pytorch.org/whl/cpu'  # e.g. CPU-only wheels
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- 1. System packages: Vulkan loader + a lavapipe new enough for SAPIEN, headers, a C compiler.
need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
mesa_ok() {  # lavapipe before Mesa 23 lacks descriptorBindingPartiallyBound, which SAPIEN needs
  have_pkg mesa-vulkan-drivers &&
    dpkg --compare-versions "$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)" ge 23
}
if command -v dpkg-query >/dev/null; then
  for pkg in libvulkan1 libvulkan-dev gcc; do have_pkg "$pkg" || need_apt+=("$pkg"); done
  mesa_ok || need_apt+=(mesa-vulkan-drivers)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    say "WARNING: need root to install ${need_apt[*]}; skipping (CPU rendering may not work)."
  else
    export DEBIAN_FRONTEND=noninteractive
    apt_target=()
    if grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null && [[ " ${need_apt[*]} " == *" mesa-vulkan-drivers "* ]]; then
      # Debian 12's Mesa 22.3 is too old for SAPIEN: take Mesa 25 from bookworm-backports.
      echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/pi-dec-backports.list >/dev/null
      apt_target=(-t bookworm-backports)
    fi
    say "apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${apt_target[@]}" "${need_apt[@]}" >/dev/null
  fi
fi

# --- 2. Virtualenv with Python 3.10 or 3.11 (sapien 2.2.2 has no wheels for newer Pythons).
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON=${PYTHON:-}
  if [ -z "$PYTHON" ]; then
    for cand in python3.11 python3.10 python3; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 11))'; then
        PYTHON=$cand; break
      fi
    done
  fi
  [ -n "$PYTHON" ] || { echo "pi-dec needs Python 3.10 or 3.11 (sapien 2.2.2 has no newer wheels)." >&2; exit 1; }
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# --- 3. Python packages (skipped when pyproject.toml and constraints.txt are unchanged).
stamp="$VENV/.pi-dec-installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "pip install (torch first: '$TORCH_SPEC', so no other package drags in a different build)"
  "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt "setuptools>=77.0.3,<82" wheel
  "$PY" -c 'import torch' 2>/dev/null || "$PY" -m pip install -q -c constraints.txt ${PIP_TORCH_ARGS:-} "$TORCH_SPEC"
  "$PY" -m pip install -q -c constraints.txt -e '.[test]'
  "$PY" -m pip check
  rm -f "$VENV"/.pi-dec-installed-*
  touch "$stamp"
fi

# --- 4. The Vulkan layer for lavapipe (built once per source version).
"$PY" -c 'from pi_dec.render import build_layer; print(f"[setup] Vulkan layer for lavapipe: {build_layer()}")'
"$PY" -c 'import pi_dec; print(f"[setup] render mode: {pi_dec.RENDER.mode} ({pi_dec.RENDER.reason})")'
