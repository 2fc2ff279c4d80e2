"""Checks of the CUDA path on an Adroit task (no SAPIEN needed), one line each: run by scripts/device_check.sh on a
machine with an NVIDIA GPU. On a machine without one it runs the same checks on the CPU and says so.

Exit status: the number of failed checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
failed = 0


def check(name: str):
    def wrap(fn):
        global failed
        start = time.time()
        try:
            detail = fn()
            print(f"ok    {name}: {detail} ({time.time() - start:.1f} s)", flush=True)
        except Exception as err:  # noqa: BLE001  (a check reports any failure as one line and the rest go on)
            failed += 1
            where = traceback.extract_tb(err.__traceback__)[-1]
            print(f"FAIL  {name}: {type(err).__name__}: {' '.join(str(err).split())[:300]} "
                  f"({Path(where.filename).name}:{where.lineno})", flush=True)
        return fn
    return wrap


@check("device")
def _():
    import numpy

    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "no GPU: the checks run on the CPU"
    return f"{name}; Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}"


@check("protocol: validation and test seeds disjoint, Door budget parses")
def _():
    from pi_dec.results import BUDGETS, TEST_SEEDS, VAL_SEEDS

    assert not set(TEST_SEEDS) & set(VAL_SEEDS) and len(TEST_SEEDS) == len(VAL_SEEDS) == 100
    budget = BUDGETS[("AdroitHandDoorSparse-v1", "diffusion")]
    return f"Door DP budget: {budget.num_demos} demos, {' '.join(budget.demo_args)}"


def small_bases(folder: Path) -> dict:
    """The three bases of tests/test_frozen_base.py (seeded weights), written in the official layout."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_frozen_base import golden_bases

    return golden_bases(folder)


@check("three bases act on the GPU as on the CPU")
def _():
    from pi_dec.base_policies import load_base

    sys.path.insert(0, str(ROOT / "tests"))
    from test_frozen_base import golden_obs

    out = []
    for name, ckpt in small_bases(Path(tempfile.mkdtemp())).items():
        flags = {"ddim_steps": 4, "act_horizon": 4}
        cpu, gpu = load_base(ckpt, flags), load_base(ckpt, flags).to(DEVICE)
        obs = golden_obs(name, cpu.obs_horizon)
        to_dev = {k: v.to(DEVICE) for k, v in obs.items()} if isinstance(obs, dict) else obs.to(DEVICE)
        torch.manual_seed(2)
        chunk_cpu, seen_cpu = cpu.act(obs)
        torch.manual_seed(2)
        chunk_gpu, seen_gpu = gpu.act(to_dev)
        assert chunk_gpu.device.type == DEVICE and torch.isfinite(chunk_gpu).all()
        assert torch.allclose(seen_cpu, seen_gpu.cpu(), atol=1e-4)
        gap = (chunk_cpu - chunk_gpu.cpu()).abs().max().item()
        if name != "bet":  # DDIM is deterministic; BeT samples with dropout on, from another RNG on the GPU
            assert gap < 1e-3, f"{name}: the GPU chunk differs from the CPU's by {gap:.2e}"
        out.append(f"{name} {tuple(chunk_gpu.shape)} max |cpu - gpu| {gap:.1e}")
    return "; ".join(out)


@check("one SAC update on the GPU")
def _():
    from pi_dec.nets.sac import ResidualActor, SoftQNetwork
    from pi_dec.policy_decorator import Learner, OnlineArgs, sac_update

    torch.manual_seed(0)
    obs_dim, res_dim = 39, 4 * 28

    def q():
        return SoftQNetwork(obs_dim, res_dim, 256, True).to(DEVICE)

    actor, critics, targets = ResidualActor(obs_dim, res_dim).to(DEVICE), (q(), q()), (q(), q())
    log_alpha = torch.zeros(1, device=DEVICE, requires_grad=True)
    learner = Learner(actor, *critics, *targets,
                      torch.optim.Adam([p for c in critics for p in c.parameters()], fused=True),
                      torch.optim.Adam(actor.parameters(), fused=True), log_alpha, torch.optim.Adam([log_alpha]),
                      log_alpha.exp().detach())
    batch = (torch.randn(256, obs_dim, device=DEVICE), torch.randn(256, obs_dim, device=DEVICE),
             torch.rand(256, res_dim, device=DEVICE) * 2 - 1, -torch.ones(256, device=DEVICE),
             torch.zeros(256, device=DEVICE))
    losses = sac_update(OnlineArgs(critic_input="res"), learner, batch, 1, res_dim, False, {})
    assert all(torch.isfinite(v).all() for v in losses.values() if torch.is_tensor(v))
    return f"qf_loss {losses['qf_loss'].item():.3f}, actor_loss {losses['actor_loss'].item():.3f}"


@check("Policy Decorator online on AdroitHandDoorSparse-v1 with --cuda")
def _():
    from pi_dec.bench import make_base_checkpoint

    tmp = Path(tempfile.mkdtemp())
    ckpt = make_base_checkpoint("diffusion", tmp / "base", 39, 28, "pd_joint_pos")
    cmd = [sys.executable, str(ROOT / "online/pi_dec_diffusion_maniskill2.py"), "--env-id", "AdroitHandDoorSparse-v1",
           "--base-policy-ckpt", str(ckpt), "--cuda", "--ddpm-steps", "6", "--total-timesteps", "1024",
           "--num-envs", "8", "--training-freq", "64", "--learning-starts", "256", "--batch-size", "256",
           "--eval-freq", "1024", "--num-eval-episodes", "4", "--num-eval-envs", "2", "--log-freq", "512",
           "--output-dir", str(tmp / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
    run = next((tmp / "out" / "AdroitHandDoorSparse-v1" / "PolicyDecorator-DiffusionPolicy").iterdir())
    saved = torch.load(run / "checkpoints" / "1024.pt", weights_only=True, map_location="cpu")
    assert saved["updates"] > 0
    evals = json.loads((run / "args.json").read_text())
    return f"{saved['updates']} SAC updates, buffer {tuple(saved['buffer']['obs'].shape)}, control {evals['base_policy']['control_mode']}"


print(f"{failed} check(s) failed" if failed else "all checks passed", flush=True)
sys.exit(failed)
