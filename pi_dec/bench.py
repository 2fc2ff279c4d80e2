"""Speed and memory of this machine for pi-dec (a benchmark, not a test):

    python -m pi_dec.bench                 # table
    python -m pi_dec.bench --json          # the same figures as JSON, to compare commits

- raw vector-env throughput (env steps/s) at --num-envs;
- the online Policy Decorator loop (Diffusion Policy and BeT base, random weights: speed does not
  depend on them): steps/s, where the time goes, ms per SAC update (--update-threads, --hidden-dim), and the peak
  memory of its process tree;
- offline training iterations/s and peak memory for both base policies (synthetic demonstrations of
  the task's dimensions);
- base-policy inference latency at batch 1 and batch --num-envs;
- RGB-D (ManiSkill2 tasks, 64x64 cameras): raw env steps/s, the online loop around a random RGB-D
  Diffusion Policy (the script's defaults), and offline iterations/s at batch 256 with peak memory.

The offline and latency figures use CUDA when torch sees a GPU (as the scripts do), the CPU otherwise;
on CUDA the peak memory also gives the GPU's (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


RGBD_SIZE = (64, 64)  # the upstream's cube/faucet camera size


def env_throughput(env_id: str, num_envs: int, steps: int, obs_mode: str = "state") -> float:
    from pi_dec.make_env import make_vec_env
    from pi_dec.rgbd import camera_kwargs
    from pi_dec.suites import suite_for

    kwargs = camera_kwargs(RGBD_SIZE) if obs_mode == "rgbd" else {}
    envs = make_vec_env(env_id, num_envs, seed=0, control_mode=suite_for(env_id).control_mode(None),
                        asynchronous=num_envs > 1, obs_mode=obs_mode, env_kwargs=kwargs)
    envs.reset(seed=0)
    actions = np.zeros((num_envs, 1, envs.single_action_space.shape[0]))
    envs.step(actions)
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(actions)
    elapsed = time.perf_counter() - start
    envs.close()
    return steps * num_envs / elapsed


def random_bases() -> dict:
    """Our bases, randomly initialised (speed does not depend on weights): name -> (policy of (obs dim, act dim),
    its run's args.json). The RGB-D one has two cameras; its obs dim is the state vector's."""
    from pi_dec.base_policies import BeTPolicy, DiffusionPolicy, DiffusionPolicyRGBD

    dp_cfg = {"obs_horizon": 2, "act_horizon": 4, "pred_horizon": 16, "diffusion_step_embed_dim": 64,
              "unet_dims": [64, 128, 256], "n_groups": 8}
    return {"diffusion": (lambda o, a: DiffusionPolicy(o, a, 2, 4, 16), dp_cfg),
            "bet": (BeTPolicy, {"context_window": 20, "n_layers": 4, "n_heads": 4, "n_embedding": 128, "n_clusters": 8}),
            "diffusion_rgbd": (lambda o, a: DiffusionPolicyRGBD(o, 6, RGBD_SIZE, a, 2, 4, 16),
                               dp_cfg | {"image_size": list(RGBD_SIZE)})}


def make_base_checkpoint(kind: str, folder: Path, obs_dim: int, act_dim: int, control_mode: str) -> Path:
    """A randomly initialised base policy in the official layout."""
    import torch

    make, cfg = random_bases()[kind]
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "args.json").write_text(json.dumps(cfg | {"control_mode": control_mode}))
    torch.save({"agent": make(obs_dim, act_dim).state_dict()}, folder / "checkpoints" / "best.pt")
    return folder / "checkpoints" / "best.pt"


def env_dims(env_id: str, control_mode: str, obs_mode: str) -> tuple[int, int]:
    """Observation (with obs_mode "rgbd": state vector) and action dims of a task, from one env's spaces."""
    from pi_dec.make_env import make_vec_env
    from pi_dec.rgbd import camera_kwargs

    kwargs = camera_kwargs(RGBD_SIZE) if obs_mode == "rgbd" else {}
    envs = make_vec_env(env_id, 1, 0, control_mode, 1, env_kwargs=kwargs, asynchronous=False, obs_mode=obs_mode)
    space = envs.single_observation_space
    dims = (space["state"] if obs_mode == "rgbd" else space).shape[-1], envs.single_action_space.shape[0]
    envs.close()
    return dims


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, USS) summed over a process and its children, in MB."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    rss = uss = 0.0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss, uss = rss + info.rss, uss + info.uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss / 2**20, uss / 2**20


def online_loop(kind: str, env_id: str, num_envs: int, total: int, threads: int, update_threads: int | None,
                hidden_dim: int | None = None) -> dict:
    """Run the online script on a random base for `total` steps; read its time/ tags; watch memory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pi_dec.base_policies import BASES
    from pi_dec.suites import suite_for

    tmp = Path(tempfile.mkdtemp(prefix="pi_dec_bench_"))
    control_mode = suite_for(env_id).control_mode(None)
    obs_dim, act_dim = env_dims(env_id, control_mode, BASES[kind].obs_mode)
    ckpt = make_base_checkpoint(kind, tmp / "base", obs_dim, act_dim, control_mode)
    script = BASES[kind].online_script
    learning_starts = total // 4
    cmd = [sys.executable, str(ROOT / script), "--env-id", env_id, "--base-policy-ckpt", str(ckpt),
           "--num-envs", str(num_envs), "--training-freq", str(max(64, num_envs)), "--total-timesteps", str(total),
           "--learning-starts", str(learning_starts), "--log-freq", str(total), "--eval-freq", str(10 * total),
           "--save-freq", "0", "--output-dir", str(tmp / "out"), "--num-threads", str(threads)]
    if update_threads:
        cmd += ["--update-threads", str(update_threads)]
    if hidden_dim:
        cmd += ["--hidden-dim", str(hidden_dim)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    peak = [0.0, 0.0]

    def watch():
        while proc.poll() is None:
            try:
                rss, uss = tree_memory_mb(proc.pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], uss)
            except Exception:  # noqa: BLE001  (process ended between calls)
                pass
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    proc.wait()
    watcher.join()
    if proc.returncode != 0:
        return {"error": f"online run failed ({proc.returncode})"}
    run = next((tmp / "out").glob("*/*/*"))
    events = EventAccumulator(str(run))
    events.Reload()
    tags = {t: events.Scalars(t)[-1].value for t in events.Tags()["scalars"] if t.startswith("time/")}
    split = {k.removeprefix("time/seconds_"): v for k, v in tags.items() if k.startswith("time/seconds_")}
    busy = sum(split.values())
    return {"decisions_per_s": tags["time/SPS"] / num_envs, "steps_per_s": tags["time/SPS"],
            "env_steps_per_s": tags["time/env_SPS"],
            "share": {k: round(v / busy, 3) for k, v in sorted(split.items())},
            "ms_per_update": 1000 * split.get("update", 0.0) / max(tags.get("time/updates", 0.0), 1.0),
            "peak_rss_mb": round(peak[0]), "peak_uss_mb": round(peak[1])}


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize()


def load_offline_script(path: str):
    """An offline script as a module (its WindowDataset and helpers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dp_setup(device: str, rng, rgbd: bool = False):
    """Diffusion Policy training as the offline script sets it up: (dataset, policy, optimizer, loss of a batch).
    Synthetic demos: 100 of 150 steps of PegInsertionSide's dims or, with `rgbd`, 20 with two 64x64 cameras
    (uint8 rgb, half-precision depth)."""
    import torch

    from pi_dec.base_policies import DiffusionPolicy, DiffusionPolicyRGBD
    from pi_dec.diffusion_training import WindowDataset

    if rgbd:
        trajs = [{"obs": {"rgb": rng.integers(0, 256, (151, 6, *RGBD_SIZE), dtype=np.uint8),
                          "depth": rng.uniform(0, 2, (151, 2, *RGBD_SIZE)).astype(np.float16),
                          "state": rng.standard_normal((151, 7)).astype(np.float32)},
                  "actions": rng.uniform(-1, 1, (150, 7)).astype(np.float32)} for _ in range(20)]
        policy = DiffusionPolicyRGBD(7, 6, RGBD_SIZE, 7, 2, 4, 16, random_shift=2).to(device)
    else:
        trajs = [{"obs": rng.standard_normal((151, 50)).astype(np.float32),
                  "actions": rng.uniform(-1, 1, (150, 7)).astype(np.float32)} for _ in range(100)]
        policy = DiffusionPolicy(50, 7, 2, 4, 16).to(device)
    data = WindowDataset(trajs, 2, 16, "pd_ee_delta_pose", device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    return data, policy, optimizer, policy.compute_loss


def bet_setup(device: str, rng):
    """BeT training as its offline script sets it up, on 100 synthetic demos of PegInsertionSide's dims."""
    from pi_dec.base_policies import BeTPolicy

    trajs = [{"obs": rng.standard_normal((151, 50)).astype(np.float32),
              "actions": rng.uniform(-1, 1, (150, 7)).astype(np.float32)} for _ in range(100)]
    module = load_offline_script(BeTPolicy.offline_script)
    data = module.WindowDataset(trajs, 20, device)
    policy = BeTPolicy(50, 7).to(device)
    policy.net.fit_clusters(data.act)
    return data, policy, module.make_optimizer(policy, 1e-4, 2e-4), lambda o, a: policy.compute_loss(o, a)[0]


OFFLINE_SETUPS = {"diffusion": dp_setup, "bet": bet_setup, "diffusion_rgbd": lambda d, r: dp_setup(d, r, rgbd=True)}


def offline_child(kind: str, batch_size: int, iters: int, threads: int) -> dict:
    """Train on synthetic demos in this process; iterations/s and peak memory."""
    import torch

    from pi_dec.demo_data import random_batches
    from pi_dec.run import setup_torch

    device = setup_torch(0, True, threads, deterministic=False).type  # CUDA when present, as the scripts
    data, policy, optimizer, loss_of = OFFLINE_SETUPS[kind](device, np.random.default_rng(0))
    batches = random_batches(len(data), batch_size, device)
    warmup = 3
    for i in range(iters + warmup):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        obs_seq, act_seq = data.batch(next(batches))
        loss = loss_of(obs_seq, act_seq)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    its = iters / (time.perf_counter() - start)
    result = {"device": device, "iters_per_s": its, "samples_per_s": its * batch_size,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def offline(kind: str, batch_size: int, iters: int, threads: int) -> dict:
    """In a fresh process, so the peak memory is this configuration's alone."""
    out = subprocess.run([sys.executable, "-m", "pi_dec.bench", "--_offline", kind, str(batch_size), str(iters),
                          str(threads)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def inference_latency(num_envs: int, threads: int, repeats: int = 20) -> dict:
    import torch

    from pi_dec.base_policies import BeTPolicy, DiffusionPolicy
    from pi_dec.run import setup_torch

    device = setup_torch(0, True, threads, deterministic=False).type
    dp = DiffusionPolicy(50, 7, 2, 4, 16).to(device).eval()
    dp.use_sampler("ddim", 4)
    bet = BeTPolicy(50, 7).to(device).eval()
    result = {"device": device}
    for name, policy, window in (("diffusion_ddim4", dp, 2), ("diffusion_ddpm100", None, 2), ("bet", bet, 20)):
        for batch in (1, num_envs):
            if policy is None:  # the offline evaluation's sampler
                p = DiffusionPolicy(50, 7, 2, 4, 16).to(device).eval()
                n = max(2, repeats // 10)
            else:
                p, n = policy, repeats
            obs = torch.randn(batch, window, 50, device=device)
            p.get_action(obs)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(n):
                p.get_action(obs)
            synchronize(device)
            result[f"{name}_batch{batch}_ms"] = 1000 * (time.perf_counter() - start) / n
    return result


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="PegInsertionSide-v2")
    parser.add_argument("--num-envs", type=int, default=16, help="vector envs (the online scripts' default)")
    parser.add_argument("--env-steps", type=int, default=50, help="vector steps for raw throughput")
    parser.add_argument("--online-steps", type=int, default=2048, help="steps (decisions x envs) per online run")
    parser.add_argument("--offline-iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: half the cores)")
    parser.add_argument("--update-threads", type=int, default=None,
                        help="torch threads of the online runs' SAC updates (default: theirs, all cores)")
    parser.add_argument("--hidden-dim", type=int, default=None,
                        help="width of the online runs' SAC networks (default: theirs, 256)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["env", "online", "offline", "latency", "state", "rgbd"],
                        help="rows to leave out; state / rgbd: the state- / RGB-D-observation rows (RGB-D: 64x64 "
                             "cameras, ManiSkill2 tasks only)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--_offline", nargs=4, help=argparse.SUPPRESS)
    return parser


# What each numeric flag allows (None: the default its help names).
RULES = dict.fromkeys(("num_envs", "env_steps", "online_steps", "offline_iters", "threads", "update_threads",
                       "hidden_dim"), ((lambda v: v >= 1), "at least 1"))


def main() -> None:
    from pi_dec.run import check_numbers, default_threads, user_errors

    args = make_parser().parse_args()
    with user_errors():
        check_numbers(args, RULES)

    threads = args.threads or default_threads()
    if args._offline:
        kind, bs, iters, th = args._offline
        print(json.dumps(offline_child(kind, int(bs), int(iters), int(th))))
        return

    import torch

    figures = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                           "torch_threads": threads, "update_threads": args.update_threads or os.cpu_count(),
                           "env_id": args.env_id, "num_envs": args.num_envs, "sac_hidden_dim": args.hidden_dim or 256}}
    state = "state" not in args.skip
    if state and "env" not in args.skip:
        figures["raw_env_steps_per_s"] = {f"{n}_envs": env_throughput(args.env_id, n, args.env_steps)
                                          for n in sorted({1, args.num_envs})}
    if state and "online" not in args.skip:
        figures["online"] = {k: online_loop(k, args.env_id, args.num_envs, args.online_steps, threads,
                                            args.update_threads, args.hidden_dim)
                             for k in ("diffusion", "bet")}
    if state and "offline" not in args.skip:
        figures["offline"] = {f"{k}_batch{bs}": offline(k, bs, args.offline_iters, threads)
                              for k, sizes in (("diffusion", (256, 1024)), ("bet", (256, 2048))) for bs in sizes}
    if "latency" not in args.skip:
        figures["latency_ms"] = inference_latency(args.num_envs, threads)
    if "rgbd" not in args.skip and not args.env_id.startswith("AdroitHand"):
        rgbd = figures["rgbd"] = {}
        if "env" not in args.skip:
            rgbd["raw_env_steps_per_s"] = {f"{n}_envs": env_throughput(args.env_id, n, args.env_steps, "rgbd")
                                           for n in sorted({1, args.num_envs})}
        if "online" not in args.skip:
            rgbd["online"] = online_loop("diffusion_rgbd", args.env_id, args.num_envs, args.online_steps, threads,
                                         args.update_threads, args.hidden_dim)
        if "offline" not in args.skip:
            rgbd["offline_batch256"] = offline("diffusion_rgbd", 256, args.offline_iters, threads)

    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"machine: {figures['machine']}")
    for n, sps in figures.get("raw_env_steps_per_s", {}).items():
        print(f"raw env steps/s ({n}): {sps:.0f}")
    for kind, f in figures.get("online", {}).items():
        if "error" in f:
            print(f"online {kind}: {f['error']}")
            continue
        print(f"online {kind}: {f['env_steps_per_s']:.0f} env steps/s ({f['decisions_per_s']:.1f} decisions/s); "
              f"time share {f['share']}; {f['ms_per_update']:.1f} ms per SAC update; "
              f"peak memory of the process tree {f['peak_rss_mb']} MB RSS "
              f"({f['peak_uss_mb']} MB unique)")
    for name, f in figures.get("offline", {}).items():
        gpu = f", peak GPU {f['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in f else ""
        print(f"offline {name}: " + (f.get("error") or f"{f['iters_per_s']:.2f} it/s, {f['samples_per_s']:.0f} samples/s, "
                                     f"peak RSS {f['peak_rss_mb']:.0f} MB{gpu} ({f['device']})"))
    latency = dict(figures.get("latency_ms", {}))
    device = latency.pop("device", "cpu")
    for name, ms in latency.items():
        print(f"inference {name} ({device}): {ms:.1f} ms")
    rgbd = figures.get("rgbd", {})
    for n, sps in rgbd.get("raw_env_steps_per_s", {}).items():
        print(f"RGB-D {RGBD_SIZE[0]}x{RGBD_SIZE[1]} raw env steps/s ({n}): {sps:.0f}")
    if "online" in rgbd:
        f = rgbd["online"]
        print("RGB-D online diffusion: " + (f.get("error") or f"{f['env_steps_per_s']:.0f} env steps/s; time share "
                                            f"{f['share']}; peak memory {f['peak_rss_mb']} MB RSS ({f['peak_uss_mb']} MB unique)"))
    if "offline_batch256" in rgbd:
        f = rgbd["offline_batch256"]
        print("RGB-D offline diffusion batch 256: " + (f.get("error") or f"{f['iters_per_s']:.2f} it/s, peak RSS "
                                                       f"{f['peak_rss_mb']:.0f} MB ({f['device']})"))


if __name__ == "__main__":
    main()
