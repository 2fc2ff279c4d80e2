"""`make quickstart`: the built-in default job.

For now it proves the simulator works on this machine: it creates the default task, steps it with
random actions and renders one frame to `assets/quickstart_frame.png`. (Later: the whole pipeline,
demonstrations -> base policy -> Policy Decorator.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pi_dec

DEFAULT_ENV_ID = "PegInsertionSide-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default=DEFAULT_ENV_ID, help="task to create")
    parser.add_argument("--steps", type=int, default=50, help="random-action env steps before the frame")
    parser.add_argument("--out", default="assets/quickstart_frame.png", help="where to write the frame")
    args = parser.parse_args()

    import gymnasium as gym
    from PIL import Image

    from pi_dec.make_env import check_env_id

    check_env_id(args.env_id)
    print(f"render mode: {pi_dec.RENDER.mode} ({pi_dec.RENDER.reason})")
    env = gym.make(args.env_id, obs_mode="state", reward_mode="sparse", control_mode="pd_ee_delta_pose",
                   render_mode="cameras")
    obs, _ = env.reset(seed=0)
    start = time.time()
    for _ in range(args.steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    steps_per_s = args.steps / (time.time() - start)
    frame = env.render()
    env.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(args.out)
    print(f"{args.env_id}: state obs dim {obs.shape[0]}, {args.steps} random steps at {steps_per_s:.0f} steps/s "
          f"(with rendering cameras), success={info['success']}")
    print(f"wrote {args.out} ({frame.shape[1]}x{frame.shape[0]})")


if __name__ == "__main__":
    main()
