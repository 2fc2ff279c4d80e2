#!/usr/bin/env bash
# Fetch, here (where pip reaches PyPI), the wheels that scripts/device_check.sh installs on a GPU machine whose own
# Python (3.12, numpy 2, torch, h5py, tensorboard, tqdm, imageio, jinja2, absl-py there) cannot download: into .whl/
# (git-ignored through .git/info/exclude). mujoco 2.3.7, our pin, has no Python 3.12 wheel: 3.1.6 goes instead.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in mujoco==3.1.6 gymnasium==0.29.1 gymnasium-robotics==1.2.4 diffusers==0.42.1 tyro==1.0.17 \
            docstring-parser==0.18.0 typeguard==4.6.1 farama-notifications==0.0.6 pettingzoo==1.24.3 glfw==2.11.0 \
            pyopengl==3.1.10 importlib-metadata==8.7.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done
du -sh .whl
