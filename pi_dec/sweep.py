"""Many experiments on Ray: a grid of tasks x base policies x variants x seeds, each cell the experiment that
`python -m pi_dec.results run` performs (its summary JSON, its run folder), on this machine or on a cluster.

    python -m pi_dec.sweep --tasks AdroitHandDoorSparse-v1 --bases diffusion \\
        --variants pi_dec no_bound no_prog rlpd --seeds 1 2 3 --split test
    python -m pi_dec.sweep ... --address auto          # the same grid on a running Ray cluster (or RAY_ADDRESS)

Without --address it starts Ray inside this process (no dashboard) and gives each cell all the cores
(--cpus-per-run; two torch jobs on the same cores slow each other tenfold), so cells run one after another.
A cell whose summary exists at its current budget is skipped, so rerunning the command continues a stopped
sweep; a failed cell is retried (--retries), then reported with the last lines of its log
(<output-dir>/results/<task>_<base>_<seed>/<split>_<variant>.log). Ctrl-C or SIGTERM stops the running cells and keeps
every finished one. On a cluster the repository (and its data/, output/, results/) must be at the same path on
every node, as on a shared file system.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pi_dec.experiment import ROOT, demo_folder
from pi_dec.results import (SPLITS, VARIANTS, Places, add_place_flags, finished, load_budgets, report, run_name,
                            variant_budget)
from pi_dec.run import UsageError, stop_on_sigterm, user_errors


@dataclasses.dataclass(frozen=True)
class Cell:
    task: str
    base: str
    variant: str
    seed: int
    split: str

    @property
    def name(self) -> str:
        return f"{run_name(self.task, self.base, self.seed, self.variant)} ({self.split})"

    def log(self, places: Places) -> Path:
        return places.experiment_dir(self.task, self.base, self.seed) / f"{self.split}_{self.variant}.log"

    def command(self, places: Places, budget_file: Path | None) -> list[str]:
        cmd = [sys.executable, "-m", "pi_dec.results", "run", "--task", self.task, "--base", self.base,
               "--seed", str(self.seed), "--split", self.split, "--variant", self.variant,
               "--results-dir", str(places.results), "--output-dir", str(places.output), "--data-dir", str(places.data)]
        return cmd + (["--budget-file", str(budget_file)] if budget_file else [])


def grid(tasks: list[str], bases: list[str], variants: list[str], seeds: list[int], split: str,
         budgets: dict) -> list[Cell]:
    """Every (task, base, variant, seed); an unknown name or a pair without a budget is one line."""
    known = sorted({t for t, _ in budgets})
    for task in tasks:
        if task not in known:
            raise UsageError(f"--tasks {task}: no budget for it; known: {', '.join(known)}.")
    for variant in variants:
        if variant not in VARIANTS:
            raise UsageError(f"--variants {variant}: unknown; known: {', '.join(VARIANTS)}.")
    for task in tasks:
        for base in bases:
            if (task, base) not in budgets:
                have = sorted(b for t, b in budgets if t == task)
                raise UsageError(f"--bases {base}: no budget for {task} with it (it has {', '.join(have)}); "
                                 f"drop it or add it with --budget-file.")
    cells = [Cell(t, b, v, s, split) for t in tasks for b in bases for v in variants for s in seeds]
    if not cells:
        raise UsageError("the grid is empty: give at least one of each of --tasks, --bases, --variants, --seeds.")
    return cells


def check_inputs(cell: Cell, places: Places, budgets: dict) -> None:
    """What can be checked before a cell starts: its folders are folders; its demos, if they exist, are of its
    task and hold finite numbers (pi_dec.demo_data). Bad input is one line, not an hour of training on garbage."""
    from pi_dec.demo_data import DemoFileError, load_demos

    for path in (places.experiment_dir(cell.task, cell.base, cell.seed), cell.log(places).parent):
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path}: is a file where the cell {cell.name} writes its run folder; move it.")
    demo = demo_folder(places.data, cell.task, budgets[(cell.task, cell.base)]) / "trajectory.h5"
    if demo.is_file():
        try:
            load_demos(demo, env_id=cell.task)
        except DemoFileError as err:
            raise UsageError(f"cell {cell.name}: {err}") from None
    variant_budget(budgets[(cell.task, cell.base)], cell.variant, cell.base)


def run_cell(cmd: list[str], log: str) -> int:
    """One cell in a Ray worker: the experiment as a subprocess, its output to `log`; its exit code.
    Ray's cancel (Ctrl-C in the driver) arrives as KeyboardInterrupt: the experiment's process group goes too."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            while True:  # a short wait at a time: Ray's cancel is raised between Python steps, not inside one
                try:
                    return proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise


def log_tail(path: Path, lines: int = 12) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join("    " + line[-300:] for line in text.replace("\r", "\n").splitlines()[-lines:])


def reachable(address: str) -> None:
    """A Ray address of host:port must answer before ray.init, which would otherwise retry for minutes."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except (OSError, ValueError):
        raise UsageError(f"--address {address}: no Ray cluster answers there; start one with `ray start --head` "
                         "(or check host and port).") from None


def sweep(cells: list[Cell], places: Places, budgets: dict, budget_file: Path | None, address: str | None,
          cpus_per_run: float | None, gpus_per_run: float, retries: int) -> dict:
    """Run the cells not yet finished; returns {"done": [...], "skipped": [...], "failed": {name: log tail}}."""
    todo = [c for c in cells if not finished(c.task, c.base, c.seed, c.split, c.variant, places, budgets)]
    outcome = {"done": [], "skipped": [c.name for c in cells if c not in todo], "failed": {}}
    for c in outcome["skipped"]:
        print(f"skip {c}: its summary exists at the current budget")
    for cell in todo:
        check_inputs(cell, places, budgets)
    if not todo:
        return outcome
    if address:
        reachable(address)
        # Ray's clusters require a token by default; `ray start` leaves it in ~/.ray/auth_token for this user
        # (Ray reads the mode when it is imported)
        if "RAY_AUTH_MODE" not in os.environ and ((Path.home() / ".ray" / "auth_token").is_file()
                                                  or os.environ.get("RAY_AUTH_TOKEN")):
            os.environ["RAY_AUTH_MODE"] = "token"
    import ray  # here, not at the top: the scripts and `results` never pay for it

    try:  # an embedded Ray listens on the loopback only: nothing of this machine is exposed to its network
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({} if address else {"num_cpus": os.cpu_count(), "_node_ip_address": "127.0.0.1"}))
    except ConnectionError as err:
        raise UsageError(f"--address {address}: {str(err).splitlines()[0]}") from None
    stop_on_sigterm()  # after ray.init, which sets its own
    cpus = cpus_per_run or (None if address else os.cpu_count())
    task = ray.remote(run_cell).options(num_cpus=cpus or 1, num_gpus=gpus_per_run, max_retries=0)
    tries = {c: 0 for c in todo}
    running = {}  # ObjectRef -> (cell, start time)

    def submit(cell: Cell) -> None:
        tries[cell] += 1
        running[task.remote(cell.command(places, budget_file), str(cell.log(places)))] = (cell, time.time())

    for cell in todo:
        submit(cell)
    start, durations = time.time(), []
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=10)
            for ref in ready:
                cell, t0 = running.pop(ref)
                try:
                    code = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died (out of memory, a lost node)
                    code = f"worker error: {str(err).splitlines()[0][:200]}"
                if code == 0:
                    durations.append(time.time() - t0)
                    outcome["done"].append(cell.name)
                elif tries[cell] <= retries:
                    print(f"retry {cell.name} (exit {code}; try {tries[cell] + 1} of {retries + 1})", flush=True)
                    submit(cell)
                else:
                    outcome["failed"][cell.name] = f"exit {code} after {tries[cell]} tries; {cell.log(places)}:\n" \
                                                   + log_tail(cell.log(places))
                    print(f"FAILED {cell.name}\n{outcome['failed'][cell.name]}", flush=True)
            left = len(running)
            eta = (f", about {sum(durations) / len(durations) * left / 60 / max(1, min(left, _slots(cpus))):.0f} min left"
                   if durations and left else "")
            print(f"[sweep] {len(outcome['done'])} done, {left} running or queued, {len(outcome['failed'])} failed, "
                  f"{len(outcome['skipped'])} skipped; {(time.time() - start) / 60:.1f} min{eta}", flush=True)
    except KeyboardInterrupt:
        print("\n[sweep] stopping: cancelling the running cells (finished ones are kept; rerun to continue)",
              flush=True)
        for ref in running:
            ray.cancel(ref, force=False)
        ray.wait(list(running), num_returns=len(running), timeout=60)
        raise
    finally:
        ray.shutdown()
    return outcome


def _slots(cpus: float | None) -> int:
    """Cells that run at once on this machine (an estimate for the time left)."""
    return max(1, int((os.cpu_count() or 1) // (cpus or 1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--bases", nargs="+", default=["diffusion"])
    parser.add_argument("--variants", nargs="+", default=["pi_dec"], help=", ".join(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--split", required=True, choices=list(SPLITS),
                        help="val: choosing budgets; test: the reported numbers, once the budgets are frozen")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="a running Ray cluster (host:port, auto, ray://...; default $RAY_ADDRESS); none: this machine")
    parser.add_argument("--cpus-per-run", type=float, help="cores a cell reserves (default: all of this machine's)")
    parser.add_argument("--gpus-per-run", type=float, default=0.0,
                        help="GPUs a cell reserves; the scripts use CUDA where Ray gives them a GPU (their --cuda)")
    parser.add_argument("--retries", type=int, default=1, help="tries after the first for a failed cell")
    add_place_flags(parser)
    args = parser.parse_args(argv)
    with user_errors():
        if args.retries < 0 or (args.cpus_per_run is not None and args.cpus_per_run <= 0) or args.gpus_per_run < 0:
            raise UsageError("--retries must be at least 0, --cpus-per-run above 0, --gpus-per-run at least 0.")
        places = Places(args.results_dir, args.output_dir, args.data_dir)
        places.check()
        budgets = load_budgets(args.budget_file)
        cells = grid(args.tasks, args.bases, args.variants, args.seeds, args.split, budgets)
        print(f"[sweep] {len(cells)} cells: {', '.join(c.name for c in cells)}", flush=True)
        try:
            outcome = sweep(cells, places, budgets, args.budget_file, args.address, args.cpus_per_run,
                            args.gpus_per_run, args.retries)
        except KeyboardInterrupt:
            return 130
        if outcome["done"]:
            report(places.results, ROOT / "README.md" if places.results == Places().results else None)
        print(f"[sweep] finished: {len(outcome['done'])} ran, {len(outcome['skipped'])} skipped, "
              f"{len(outcome['failed'])} failed")
        return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
