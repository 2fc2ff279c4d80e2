"""Make RGB-D demonstrations (`trajectory_rgbd_<W>x<H>.h5` + .json) from state or raw demos, through
ManiSkill2's replay tool, for offline/diffusion_policy_unet_maniskill2_rgbd.py.

    python -m pi_dec.demos.rgbd --traj-path data/PickCube/trajectory.none.pd_joint_pos.h5 \
        --control-mode pd_ee_delta_pose --width 64 --height 64

The replay tool carries the source json's `env_kwargs` into the file it writes; we add
`camera_cfgs: {width, height}` there, so the replay renders both cameras at that size and the offline
script reads the size back from the json. Images stay uint8 (rgb) and uint16 (depth x 1024) on disk.
Writes next to --traj-path unless --out is given; episodes that fail on replay are dropped (as for state).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from pi_dec.demo_data import GENERATE_HINT, DemoFileError, recorded_control_mode
from pi_dec.demos.generate import convert, episode_lengths
from pi_dec.run import COUNT, check_numbers


@dataclass
class Args:
    traj_path: str
    """source demos: ManiSkill2 trajectory .h5 (+ .json), e.g. <demos>/trajectory.none.pd_joint_pos.h5"""
    control_mode: Annotated[str, tyro.conf.arg(aliases=["-c"])] = "pd_ee_delta_pose"
    """control mode of the RGB-D demos (the offline script's --control-mode)"""
    width: int = 64
    """camera image width"""
    height: int = 64
    """camera image height"""
    out: str | None = None
    """output .h5 (default: trajectory_rgbd_<width>x<height>.h5 beside --traj-path)"""
    num_procs: int = 1
    """replay worker processes"""
    count: int | None = None
    """convert only the first N episodes"""
    allow_failure: bool = False
    """keep episodes that do not succeed on replay (e.g. recorded on stand-in assets)"""


def make_rgbd_demos(args: Args) -> Path:
    check_numbers(args, {"width": COUNT, "height": COUNT, "num_procs": COUNT, "count": COUNT})
    src = Path(args.traj_path)
    src_json = src.with_suffix(".json")
    if not src.is_file() or not src_json.is_file():
        raise DemoFileError(f"{src if not src.is_file() else src_json} not found. {GENERATE_HINT}")
    out = Path(args.out) if args.out else src.with_name(f"trajectory_rgbd_{args.width}x{args.height}.h5")
    meta = json.loads(src_json.read_text())
    meta["env_info"].setdefault("env_kwargs", {})["camera_cfgs"] = {"width": args.width, "height": args.height}
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # The replay tool reads <name>.h5 with <name>.json: a link to the source h5 beside the edited json, in a
    # scratch folder next to the output (so the final rename stays on one file system).
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".rgbd-") as tmp:
        link = Path(tmp) / "source.h5"
        os.symlink(src.resolve(), link)
        link.with_suffix(".json").write_text(json.dumps(meta))
        same = recorded_control_mode(meta["env_info"], meta.get("episodes") or []) == args.control_mode
        try:
            written = convert(str(link), args.control_mode, args.num_procs, obs_mode="rgbd", count=args.count,
                              same_mode=same, extra=("--allow-failure",) if args.allow_failure else ())
        except RuntimeError as err:  # the replay tool's own error, last line
            last = str(err).strip().splitlines()[-1][:300]
            raise DemoFileError(f"ManiSkill2's replay tool could not convert {src} to {args.control_mode}: {last}") from None
        lengths = episode_lengths(written)
        shutil.move(written.with_suffix(".json"), out.with_suffix(".json"))
        shutil.move(written, out)
    print(f"{out}: {len(lengths)} episodes, {sum(lengths)} steps, cameras {args.width}x{args.height} "
          f"({time.time() - t0:.0f} s)")
    return out


def main() -> None:
    from pi_dec.run import user_errors

    with user_errors():
        make_rgbd_demos(tyro.cli(Args, description=__doc__))


if __name__ == "__main__":
    main()
