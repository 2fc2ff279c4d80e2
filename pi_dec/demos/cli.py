"""Generate demonstrations in ManiSkill2's trajectory format (h5 + json): by motion planning for the
ManiSkill2 tasks, by rolling out the DAPG expert policies (--expert-dir) for the Adroit tasks.

    python -m pi_dec.demos --env-id PegInsertionSide-v2 --num-demos 1000 --out data/PegInsertionSide
    python -m pi_dec.demos --env-id AdroitHandDoorSparse-v1 --num-demos 25 --out data/AdroitDoor

Writes into --out:
  trajectory.h5 / .json                       the first control mode of --control-modes (what the
                                              README's --demo-path points at), state observations
  trajectory.state.<mode>.h5 / .json          every other control mode
  trajectory.none.pd_joint_pos.h5 / .json     the raw planned demos (no observations)
  summary.json                                attempts, successes, conversion yield, lengths, time
(Adroit: trajectory.h5/.json in pd_joint_pos, the only Adroit control mode, and summary.json.)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import tyro
from tqdm import tqdm

from pi_dec.demo_data import mode_sibling
from pi_dec.demos.generate import convert, episode_lengths, merge_shards, record_shard
from pi_dec.demos.solvers import SOLVERS
from pi_dec.run import COUNT, SEED, at_least, atomic_write_text, check_numbers

# Control modes the README's commands train on: Diffusion Policy and BeT use pd_ee_delta_pose; the
# StackCube BeT command uses pd_ee_delta_pos.
DEFAULT_CONTROL_MODES = {"StackCube-v0": ("pd_ee_delta_pos", "pd_ee_delta_pose")}


@dataclass
class Args:
    env_id: str = "PegInsertionSide-v2"
    """task to solve; one of the tasks with a scripted solver (see --help's description)"""
    num_demos: int = 100
    """successful demonstrations to keep before conversion"""
    out: str | None = None
    """output folder; default data/<task name without version>, e.g. data/PegInsertionSide"""
    seed: int = 0
    """seed of the first attempt; attempts use consecutive seeds"""
    num_procs: int = 1
    """worker processes for planning and for conversion"""
    max_attempts: int | None = None
    """give up after this many attempts in total (default: 2 x num_demos + 20)"""
    control_modes: tuple[str, ...] | None = None
    """target control modes; the first becomes trajectory.h5 (default: pd_ee_delta_pose, and
    pd_ee_delta_pos first for StackCube-v0)"""
    expert_dir: str = "../shared/adroit"
    """Adroit: folder with the expert policies (<task>_expert.npz), kept outside this repository"""
    action_noise: float = 0.0
    """Adroit: std of Gaussian noise added to the executed actions (the recorded action stays the expert's)"""
    extra_steps: int = 5
    """Adroit: steps recorded after the first success"""
    record_executed: bool = False
    """Adroit: record the executed (noisy) action instead of the expert's, as a human's demos hold their own
    imprecision (a way to weaken the data; off: the expert's clean action)"""


# What each numeric flag allows.
RULES = {"num_demos": COUNT, "seed": SEED, "num_procs": COUNT,
         "max_attempts": at_least(1, " (leave it out for 2 x --num-demos + 20)"), "action_noise": at_least(0),
         "extra_steps": at_least(0)}

RAW = "trajectory.none.pd_joint_pos.h5"


def convert_to_mode(out: Path, mode: str, main_file: bool, planned: int, num_procs: int = 1) -> dict:
    """Replay the `planned` raw demos in `out` into `mode`: trajectory.h5 if `main_file`, else
    trajectory.state.<mode>.h5 (with its .json); returns what summary.json records for the mode."""
    t0 = time.time()
    print(f"converting {planned} demos in {out} to {mode} ...", flush=True)
    path = convert(str(out / RAW), mode, num_procs=num_procs)
    main = out / "trajectory.h5"
    final = main if main_file else mode_sibling(main, mode)
    path.replace(final)
    path.with_suffix(".json").replace(final.with_suffix(".json"))
    lengths = episode_lengths(final)
    return {"file": str(final), "episodes": len(lengths), "yield": len(lengths) / planned,
            "length_min": min(lengths, default=0), "length_max": max(lengths, default=0),
            "seconds": round(time.time() - t0, 1)}


def demos_in_mode(out: Path, mode: str, num_procs: int = 1) -> Path:
    """The demo file in `out` recorded in `mode`; converts the raw demos first (and records it in
    summary.json) if an earlier `python -m pi_dec.demos` did not write that mode."""
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    if mode not in summary["converted"]:
        summary["converted"][mode] = convert_to_mode(out, mode, main_file=False, planned=summary["successes"],
                                                     num_procs=num_procs)
        atomic_write_text(summary_path, json.dumps(summary, indent=2))
    return out / Path(summary["converted"][mode]["file"]).name  # the folder may have moved since


def _worker(job):
    env_id, out_dir, first_seed, stride, want, max_attempts, queue = job
    return record_shard(env_id, out_dir, first_seed, stride, want, max_attempts, queue)


def main(args: Args) -> dict:
    from pi_dec.demos import adroit

    check_numbers(args, RULES)
    if args.env_id in adroit.EXPERT_FILES:
        out = Path(args.out or f"data/{args.env_id.split('-')[0].replace('Hand', '').replace('Sparse', '')}")
        return adroit.generate(args.env_id, args.num_demos, out, args.seed, args.max_attempts or 2 * args.num_demos + 20,
                               args.expert_dir, args.action_noise, args.extra_steps, args.record_executed)
    if args.env_id not in SOLVERS:
        raise SystemExit(f"No scripted solver for {args.env_id!r}; available: {', '.join(SOLVERS)}")
    out = Path(args.out or f"data/{args.env_id.split('-')[0]}")
    modes = args.control_modes or DEFAULT_CONTROL_MODES.get(args.env_id, ("pd_ee_delta_pose",))
    max_attempts = args.max_attempts or 2 * args.num_demos + 20
    procs = max(1, min(args.num_procs, args.num_demos))
    start = time.time()
    shard_root = out / "shards"
    shutil.rmtree(shard_root, ignore_errors=True)

    # 1. Plan and record, `procs` workers on interleaved seeds.
    ctx = mp.get_context("forkserver")
    queue = ctx.Manager().Queue()
    want = [args.num_demos // procs + (w < args.num_demos % procs) for w in range(procs)]
    cap = [max_attempts // procs + (w < max_attempts % procs) for w in range(procs)]
    jobs = [(args.env_id, str(shard_root / str(w)), args.seed + w, procs, want[w], cap[w], queue)
            for w in range(procs)]
    with ctx.Pool(procs) as pool, tqdm(total=args.num_demos, desc=f"planning {args.env_id}", unit="demo") as bar:
        pending = pool.map_async(_worker, jobs)
        attempts = 0
        while not pending.ready() or not queue.empty():
            try:
                ok = queue.get(timeout=0.5)
            except Exception:  # queue.Empty
                continue
            attempts += 1
            bar.update(int(ok))
            bar.set_postfix(attempts=attempts)
        shards = pending.get()
    successes = sum(s["successes"] for s in shards)
    if successes == 0:
        raise SystemExit(f"No successful demonstration in {attempts} attempts for {args.env_id}.")
    raw = out / RAW
    merge_shards([s["path"] for s in shards if s["successes"] > 0], str(raw))
    shutil.rmtree(shard_root)
    plan_time = time.time() - start

    # 2. Convert to each control mode (state observations); keep what still succeeds.
    converted = {mode: convert_to_mode(out, mode, main_file=i == 0, planned=successes, num_procs=procs)
                 for i, mode in enumerate(modes)}

    lengths = [n for s in shards for n in s["lengths"]]
    summary = {
        "env_id": args.env_id, "seed": args.seed, "num_procs": procs,
        "attempts": sum(s["attempts"] for s in shards), "successes": successes,
        "success_rate": successes / sum(s["attempts"] for s in shards),
        "failed_seeds": sorted(x for s in shards for x in s["seeds_failed"]),
        "length_min": min(lengths), "length_mean": sum(lengths) / len(lengths), "length_max": max(lengths),
        "planning_seconds": round(plan_time, 1), "converted": converted,
        "total_seconds": round(time.time() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{args.env_id}: {successes}/{summary['attempts']} planned "
          f"({100 * summary['success_rate']:.0f}%), steps {summary['length_min']}-{summary['length_max']}, "
          f"{plan_time:.0f} s planning")
    for mode, c in converted.items():
        print(f"  {mode}: {c['episodes']}/{successes} converted ({100 * c['yield']:.0f}%) -> {c['file']}")
    print(f"  total {summary['total_seconds']:.0f} s; summary in {out / 'summary.json'}")
    return summary


def run() -> None:
    from pi_dec.run import user_errors

    with user_errors():
        main(tyro.cli(Args, description=__doc__))
