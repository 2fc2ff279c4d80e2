"""Run ManiSkill2's replay tool (trajectory conversion) with our -v2 task ids registered.

    python -m pi_dec.demos.replay --traj-path X.h5 -o state -c pd_ee_delta_pose --save-traj --num-procs 2

Same flags as `python -m mani_skill2.trajectory.replay_trajectory`. Unlike it, this also registers the
-v2 tasks, and merges the per-process outputs even when a process converted no episode (ManiSkill2's
merge then fails on the missing JSON).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

import pi_dec  # noqa: F401
import pi_dec.envs  # noqa: F401


def replay(argv: list[str]) -> Path:
    from mani_skill2.trajectory import replay_trajectory as rt
    from mani_skill2.trajectory.merge_trajectory import merge_h5

    args = rt.parse_args(argv)
    n = max(1, args.num_procs)
    if n == 1:
        parts = [rt._main(args)]
    else:
        # fork: the workers inherit the -v2 registrations (spawn would re-import only ManiSkill2's).
        with mp.get_context("fork").Pool(n) as pool:
            parts = pool.starmap(rt._main, [(args, i, n) for i in range(n)])
    parts = [Path(p) for p in parts]
    out = parts[0] if n == 1 else parts[0].with_name(parts[0].name[: -len(".0.h5")] + ".h5")
    written = [p for p in parts if p.with_suffix(".json").exists()]
    if n > 1:
        if written:
            with contextlib.redirect_stdout(io.StringIO()):
                merge_h5(str(out), [str(p) for p in written])
        for p in parts:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
    if not out.with_suffix(".json").exists():  # nothing converted: an empty but valid pair
        source = json.loads(Path(args.traj_path).with_suffix(".json").read_text())
        out.with_suffix(".json").write_text(json.dumps({"env_info": source["env_info"], "episodes": []}))
        if not out.exists():
            import h5py

            h5py.File(out, "w").close()
    return out


if __name__ == "__main__":
    print(replay(sys.argv[1:]))
    sys.stdout.flush()
    os._exit(0)  # skip slow interpreter teardown of SAPIEN objects
