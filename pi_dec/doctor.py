"""What this machine gives pi-dec: versions, CUDA, the Vulkan device SAPIEN renders with, and which
tasks can be created. The first thing to run when something is off:

    python -m pi_dec.doctor
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time

import pi_dec
from pi_dec.render import MESA_HINT, vulkan_devices

TASKS = ("StackCube-v0", "PickCube-v0", "PegInsertionSide-v2", "TurnFaucet-v2", "PushChair-v2")
CONTROL_MODES = {"PushChair-v2": "base_pd_joint_vel_arm_pd_joint_vel"}


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def try_task(env_id: str) -> str:
    """Create, reset and step one env with state observations; say what happened in one line."""
    import gymnasium as gym

    from pi_dec.envs import MissingAssetError

    start = time.time()
    try:
        env = gym.make(env_id, obs_mode="state", reward_mode="sparse",
                       control_mode=CONTROL_MODES.get(env_id, "pd_ee_delta_pose"))
        obs, _ = env.reset(seed=0)
        env.step(env.action_space.sample())
        env.close()
    except MissingAssetError as err:
        return f"missing assets: {err}"
    except Exception as err:  # noqa: BLE001  (the doctor reports, it does not crash)
        return f"FAILED: {type(err).__name__}: {err}"
    return f"ok (obs dim {obs.shape[0]}, {time.time() - start:.1f} s)"


def try_render() -> str:
    """Render one camera image with SAPIEN: proves the Vulkan device works for cameras."""
    import gymnasium as gym

    try:
        env = gym.make("PickCube-v0", obs_mode="rgbd")
        obs, _ = env.reset(seed=0)
        image = obs["image"]["base_camera"]["rgb"]
        env.close()
    except Exception as err:  # noqa: BLE001
        hint = f" {MESA_HINT}" if pi_dec.RENDER.mode == "cpu" else ""
        return f"FAILED: {type(err).__name__}: {err}.{hint}"
    return f"ok (base camera {image.shape[1]}x{image.shape[0]}, mean pixel {image.mean():.1f})"


def main() -> None:
    import torch

    import pi_dec.envs  # noqa: F401  (registers the tasks)

    choice = pi_dec.RENDER
    devices = vulkan_devices()
    rows = [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", f"{version('torch')}, CUDA {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}"),
        ("sapien", version("sapien")),
        ("mani_skill2", version("mani-skill2")),
        ("gymnasium", version("gymnasium")),
        ("numpy", version("numpy")),
        ("render mode", f"{choice.mode} ({choice.reason})"),
        ("vulkan devices", ", ".join(devices) if devices else "none found (libvulkan1 missing or no driver)"),
    ]
    if choice.mode == "cpu":
        rows.append(("render device", "lavapipe (Mesa CPU renderer)" if any("llvmpipe" in d for d in devices)
                     else "lavapipe NOT available"))
        rows.append(("vulkan layer", choice.layer_dir or "not built"))
    rows.append(("camera render", try_render()))
    for env_id in TASKS:
        rows.append((env_id, try_task(env_id)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
