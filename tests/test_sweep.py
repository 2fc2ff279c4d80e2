"""python -m pi_dec.sweep: a real grid of tiny experiments on an embedded Ray and on a Ray cluster that the
test starts itself; skipping, retries, SIGTERM and resuming; bad input as one line."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

EXPERT_DIR = ROOT.parent / "shared" / "adroit"
RAY = str(Path(sys.executable).parent / "ray")  # the venv's ray command
DOOR = "AdroitHandDoorSparse-v1"
TINY = {  # a whole experiment in well under a minute: 2 demos, 4 base iterations, 64 online transitions
    "num_demos": 2, "control_mode": "pd_joint_pos", "demo_args": ["--action-noise", "0.1"], "eval_episodes": 2,
    "offline_args": ["--total-iters", "4", "--batch-size", "8", "--eval-freq", "0", "--save-freq", "0",
                     "--log-freq", "2", "--num-threads", "1", "--unet-dims", "16", "32", "--n-groups", "4"],
    "online_args": ["--ddpm-steps", "2", "--num-envs", "4", "--total-timesteps", "64", "--learning-starts", "32",
                    "--batch-size", "16", "--eval-freq", "32", "--num-eval-episodes", "1", "--num-eval-envs", "1",
                    "--log-freq", "32", "--save-freq", "0", "--num-threads", "1", "--hidden-dim", "16"],
}


# Ray turns 127.0.0.1 into this machine's network address unless told it runs no multi-node cluster: the
# test cluster and its driver then stay on the loopback.
LOOPBACK = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def sweep(tmp_path, *args, budget=TINY, **popen):
    """The sweep as a user runs it, on tmp folders and the tiny Door budget."""
    budget_file = tmp_path / "budgets.json"
    budget_file.write_text(json.dumps({f"{DOOR}/diffusion": budget}))
    cmd = [sys.executable, "-m", "pi_dec.sweep", "--tasks", DOOR, "--split", "test", "--budget-file", budget_file,
           "--results-dir", tmp_path / "results", "--output-dir", tmp_path / "output", "--data-dir",
           tmp_path / "data", *args]
    if popen:
        return subprocess.Popen(list(map(str, cmd)), cwd=ROOT, text=True, env=LOOPBACK, **popen)
    return subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=600, env=LOOPBACK)


def summaries(tmp_path):
    return sorted(p.name for p in (tmp_path / "results" / "runs").glob("*.json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not EXPERT_DIR.is_dir(), reason=f"expert policies not found at {EXPERT_DIR}")
def test_a_stopped_sweep_resumes_on_a_cluster_and_a_rerun_skips_every_finished_cell(tmp_path):
    # 1. embedded Ray, two cells; SIGTERM (`kill`, a scheduler's time limit; Ctrl-C takes the same path) once the
    # first summary is written
    proc = sweep(tmp_path, "--seeds", 1, 2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while not summaries(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert summaries(tmp_path) == [f"{DOOR}_diffusion_1.json"], proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in out, out[-3000:]
    assert "stopping" in out and summaries(tmp_path) == [f"{DOOR}_diffusion_1.json"]  # the finished cell is kept
    assert json.loads((tmp_path / "results" / "runs" / f"{DOOR}_diffusion_1.json").read_text())["split"] == "test"
    leftover = subprocess.run(["pgrep", "-f", "--", f"--output-dir {tmp_path}/output"], capture_output=True, text=True)
    assert leftover.returncode == 1, f"the cancelled cell's experiment still runs: {leftover.stdout}"  # 1: none

    # 2. the same command against a Ray cluster started here (only --address differs): only seed 2 runs
    port = free_port()
    subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True, capture_output=True,
                   timeout=120, cwd=ROOT, env=LOOPBACK)
    try:
        result = sweep(tmp_path, "--seeds", 1, 2, "--address", f"127.0.0.1:{port}")
    finally:
        # NOTE: `ray stop` stops every Ray of this user on the machine, a running sweep's too: never run the tests
        # beside a sweep (its cells then fail, and their experiments go on without it)
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, env=LOOPBACK)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"skip {DOOR}_diffusion_1 (test)" in result.stdout and "1 ran, 1 skipped, 0 failed" in result.stdout
    assert summaries(tmp_path) == [f"{DOOR}_diffusion_1.json", f"{DOOR}_diffusion_2.json"]
    assert (tmp_path / "output" / "results" / f"{DOOR}_diffusion_2" / "test_pi_dec.log").is_file()  # the cell's log
    assert (tmp_path / "results" / "README.md").is_file()  # the report, rebuilt

    # 3. rerun: nothing left to do (and no Ray started for it)
    result = sweep(tmp_path, "--seeds", 1, 2)
    assert result.returncode == 0 and "0 ran, 2 skipped, 0 failed" in result.stdout


@pytest.mark.skipif(not EXPERT_DIR.is_dir(), reason=f"expert policies not found at {EXPERT_DIR}")
def test_a_failing_cell_is_retried_then_reported_with_its_log(tmp_path):
    broken = TINY | {"offline_args": ["--total-iters", "0"]}  # the offline script refuses it
    result = sweep(tmp_path, "--seeds", 3, "--retries", 1, budget=broken)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"retry {DOOR}_diffusion_3 (test)" in result.stdout
    report = result.stdout.split(f"FAILED {DOOR}_diffusion_3 (test)")[1]
    assert "after 2 tries" in report and "--total-iters 0: must be at least 1" in report
    assert "0 ran, 0 skipped, 1 failed" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--tasks", "NoSuchTask-v0"], "--tasks NoSuchTask-v0: no budget for it"),
    (["--variants", "no_such_variant"], "--variants no_such_variant: unknown; known: pi_dec, no_bound"),
    (["--seeds"], "the grid is empty"),
    (["--bases", "bet", "--tasks", "StackCube-v0"], "--bases bet: no budget for StackCube-v0 with it"),
    (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers there"),
    (["--seeds", "1", "--output-dir", "FILE"], "--output-dir FILE_PATH: is a file, not a folder"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    args = [str(a_file) if a == "FILE" else a for a in args]
    cmd = [sys.executable, "-m", "pi_dec.sweep", "--tasks", DOOR, "--split", "val", "--results-dir",  # later flags win
           tmp_path / "results", "--data-dir", tmp_path / "data", *args]
    if "--output-dir" not in args:
        cmd += ["--output-dir", tmp_path / "output"]
    result = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message.replace("FILE_PATH", str(a_file)) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_foreign_or_damaged_demos_stop_a_cell_before_it_starts(tmp_path):
    """Demos of another task sitting in the cell's data folder, or with NaN in them: one line, no Ray started."""
    import h5py
    import numpy as np

    folder = tmp_path / "data" / "AdroitHandDoorSparse_action-noise_0.1"  # the tiny budget's demo folder
    folder.mkdir(parents=True)
    with h5py.File(folder / "trajectory.h5", "w") as h5:
        h5.create_dataset("traj_0/obs", data=np.zeros((3, 39), np.float32))
        h5.create_dataset("traj_0/actions", data=np.full((2, 28), np.nan, np.float32))
    meta = {"env_info": {"env_id": "AdroitHandHammerSparse-v1", "env_kwargs": {"control_mode": "pd_joint_pos"}},
            "episodes": [{"episode_id": 0, "control_mode": "pd_joint_pos"}]}
    (folder / "trajectory.json").write_text(json.dumps(meta))
    result = sweep(tmp_path, "--seeds", 1)
    assert result.returncode == 2 and "holds demos of AdroitHandHammerSparse-v1, not of AdroitHandDoorSparse-v1" in result.stderr
    meta["env_info"]["env_id"] = DOOR
    (folder / "trajectory.json").write_text(json.dumps(meta))
    result = sweep(tmp_path, "--seeds", 1)
    assert result.returncode == 2 and "actions at step 0 holds NaN or inf" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
