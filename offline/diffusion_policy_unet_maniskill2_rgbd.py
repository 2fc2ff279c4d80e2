"""Train a Diffusion Policy on RGB-D demonstrations (the upstream's visual-observation variant).

    python offline/diffusion_policy_unet_maniskill2_rgbd.py --env-id TurnFaucet-v2 \
        --demo-path data/TurnFaucet/trajectory_rgbd_64x64.h5 --random-shift 2

The same policy, windows, loss and training loop as offline/diffusion_policy_unet_maniskill2.py (both in
pi_dec/diffusion_training.py), with a different observation: each frame's rgb (uint8) and depth from the cameras go
through a plain conv encoder (256 features), concatenated with the task's state vector, and the U-Net is
conditioned on those embeddings. The camera size is the demo file's (its json's
`env_info.env_kwargs.camera_cfgs`); make such files with `python -m pi_dec.demos.rgbd`. Writes
output/<env_id>/Offline-DiffusionPolicy-UNet-RGBD/<run>/ as the state script does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro

import pi_dec  # noqa: F401  (Vulkan set-up before ManiSkill2)
from pi_dec.base_policies import DiffusionPolicyRGBD
from pi_dec.demo_data import DemoFileError, load_demos
from pi_dec.diffusion_training import RULES, DiffusionTrainArgs, WindowDataset, check_args, fit
from pi_dec.make_env import check_env
from pi_dec.rgbd import camera_kwargs, state_parts
from pi_dec.run import Run, at_least, offline_eval_envs, setup_torch, user_errors
from pi_dec.suites import suite_for

ALGO_NAME = "Offline-DiffusionPolicy-UNet-RGBD"


@dataclass
class Args(DiffusionTrainArgs):
    env_id: str = "TurnFaucet-v2"
    """the task (TurnFaucet, StackCube, PushChair as in the upstream; PickCube, LiftCube, PegInsertionSide too)"""
    demo_path: str = "data/TurnFaucet/trajectory_rgbd_64x64.h5"
    """RGB-D demonstrations (ManiSkill2 trajectory .h5 + .json with camera_cfgs; `python -m pi_dec.demos.rgbd`)"""
    batch_size: int = 256
    """batch size"""
    random_shift: int = 0
    """shift training images by up to N pixels (augmentation; the upstream uses 2 on TurnFaucet)"""


def camera_size(demo_path: str) -> tuple[int, int]:
    """(height, width) of the demo file's cameras, from its json."""
    json_path = Path(demo_path).with_suffix(".json")
    try:
        cfg = json.loads(json_path.read_text())["env_info"]["env_kwargs"]["camera_cfgs"]
        return int(cfg["height"]), int(cfg["width"])
    except FileNotFoundError:
        raise DemoFileError(f"Demo file {json_path} not found. Make RGB-D demos with `python -m pi_dec.demos.rgbd "
                            "--traj-path <demos .h5> -c <control mode>` (README).") from None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        raise DemoFileError(f"{json_path} has no env_info.env_kwargs.camera_cfgs with width and height: not an RGB-D "
                            "file made by `python -m pi_dec.demos.rgbd` or ManiSkill2's replay tool.") from None


def main(args: Args) -> Run:
    check_args(args, RULES | {"random_shift": at_least(0, " (0: no augmentation)")})
    suite = suite_for(args.env_id)
    args.control_mode = suite.control_mode(args.control_mode)
    parts = state_parts(args.env_id)
    env_kwargs = suite.env_kwargs(args.obj_ids, args.asset_root, args.model_json)
    check_env(args.env_id, env_kwargs)  # missing assets first: the demos are of no use without them
    image_size = camera_size(args.demo_path)  # (height, width); args.json keeps it for the online script
    env_kwargs |= camera_kwargs(image_size)
    device = setup_torch(args.seed, args.cuda, args.num_threads, args.torch_deterministic)
    # The env's own key order for the state parts and cameras (the files list them alphabetically).
    probe = suite.make(args.env_id, args.control_mode, "rgbd", None, env_kwargs, None)
    key_order = probe.observation_space
    probe.close()
    trajs = load_demos(args.demo_path, args.control_mode, args.num_demo_traj, rgbd=(parts, key_order),
                       env_id=args.env_id)
    data = WindowDataset(trajs, args.obs_horizon, args.pred_horizon, args.control_mode, device)
    state_dim, act_dim = data.obs["state"].shape[1], data.act.shape[1]
    rgb_channels = data.obs["rgb"].shape[1]
    print(f"{len(trajs)} demos, {data.num_transitions} transitions, {len(data)} windows, "
          f"{rgb_channels // 3} cameras of {image_size[0]}x{image_size[1]}")

    def policy() -> DiffusionPolicyRGBD:
        return DiffusionPolicyRGBD(state_dim, rgb_channels, image_size, act_dim, args.obs_horizon, args.act_horizon,
                                   args.pred_horizon, args.diffusion_step_embed_dim, args.unet_dims, args.n_groups,
                                   args.random_shift).to(device)

    agent, ema_agent = policy(), policy()
    run = Run(args, ALGO_NAME, __file__, extra={"image_size": list(image_size)})
    eval_envs = offline_eval_envs(args, args.obs_horizon, state_dim, act_dim, run, env_kwargs, obs_mode="rgbd")
    # ALGO LOGIC: the denoising loss on random windows, images shifted by --random-shift in compute_loss
    return fit(args, agent, ema_agent, data, run, eval_envs, device, desc="Diffusion Policy (RGB-D)")

if __name__ == "__main__":
    with user_errors():
        main(tyro.cli(Args, description=__doc__))
