"""Vulkan device choice: lavapipe plus our layer without an NVIDIA driver, untouched otherwise."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pi_dec.render import LAYER_NAME, build_layer, find_icd

HAS_NVIDIA_VULKAN = find_icd("nvidia_icd*.json") is not None
SHOW = "import pi_dec, os; print(pi_dec.RENDER.mode, os.environ.get('VK_INSTANCE_LAYERS', ''))"


def run_python(code, **env_overrides):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PI_DEC_RENDER", "VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_INSTANCE_LAYERS", "VK_LAYER_PATH")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(HAS_NVIDIA_VULKAN, reason="this machine has an NVIDIA Vulkan driver")
def test_auto_picks_lavapipe_and_layer_without_nvidia():
    result = run_python(SHOW)
    mode, layers = result.stdout.split()
    assert mode == "cpu"
    assert LAYER_NAME in layers.split(":")


def test_user_can_force_gpu_mode():
    result = run_python(SHOW, PI_DEC_RENDER="gpu")
    assert result.stdout.split() == ["gpu"]  # nothing enabled, no layer


def test_user_can_force_cpu_mode():
    result = run_python(SHOW, PI_DEC_RENDER="cpu")
    assert result.stdout.split()[0] == "cpu" and LAYER_NAME in result.stdout


def test_bad_render_value_is_a_clear_error():
    result = run_python("import pi_dec", PI_DEC_RENDER="vulkan")
    assert result.returncode != 0
    assert "PI_DEC_RENDER='vulkan': use 'auto', 'gpu' or 'cpu'" in result.stderr


def test_layer_builds_with_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    layer_dir = build_layer()
    assert layer_dir.parent == tmp_path / "pi_dec"
    manifest = json.loads((layer_dir / "pidec_layer.json").read_text())
    assert manifest["layer"]["name"] == LAYER_NAME
    assert (layer_dir / manifest["layer"]["library_path"]).is_file()
    assert build_layer() == layer_dir  # cached: a second call does not rebuild


@pytest.mark.skipif(HAS_NVIDIA_VULKAN, reason="lavapipe-specific")
def test_lavapipe_needs_the_layer():
    """Without the layer SAPIEN cannot create its device on lavapipe; with it, cameras render."""
    code = ("import pi_dec, gymnasium as gym, mani_skill2.envs\n"
            "env = gym.make('PickCube-v0', obs_mode='rgbd'); obs, _ = env.reset(seed=0)\n"
            "print('mean', obs['image']['base_camera']['rgb'].mean())")
    without = run_python(code, PI_DEC_RENDER="gpu", VK_ICD_FILENAMES=find_icd("lvp_icd*.json"))
    assert without.returncode != 0 and "ErrorExtensionNotPresent" in without.stderr
    with_layer = run_python(code, PI_DEC_RENDER="cpu")
    assert with_layer.returncode == 0, with_layer.stderr[-2000:]
    assert float(with_layer.stdout.split("mean")[1]) > 10  # a real image, not black


@pytest.mark.skipif(HAS_NVIDIA_VULKAN, reason="lavapipe-specific")
def test_doctor_reports_lavapipe_and_tasks():
    result = subprocess.run([sys.executable, "-m", "pi_dec.doctor"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    def row(name):
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        return line[len(name):].strip()

    assert row("render mode").startswith("cpu")
    assert row("render device") == "lavapipe (Mesa CPU renderer)"
    assert row("camera render").startswith("ok")
    for env_id in ("StackCube-v0", "PickCube-v0", "PegInsertionSide-v2"):
        assert row(env_id).startswith("ok"), row(env_id)
    for env_id in ("TurnFaucet-v2", "PushChair-v2"):  # either real assets or the clear message
        assert row(env_id).startswith(("ok", "missing assets: PartNet-Mobility models")), row(env_id)


def test_quickstart_renders_a_frame(tmp_path):
    from PIL import Image

    from pi_dec.quickstart import render_frame

    render_frame("PickCube-v0", tmp_path / "frame.png")
    image = np.asarray(Image.open(tmp_path / "frame.png"))
    assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 10  # a scene, not a blank image
