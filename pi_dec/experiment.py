"""One Policy Decorator experiment end to end, as a user would run it: generate demonstrations, train
a base policy with the offline script, refine it with the online script, then evaluate base and
refined policy on the same seeds. Used by `make quickstart` and by `python -m pi_dec.results`.

Every stage is the real command-line script, run as a subprocess (its progress bar shows through).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]


def scripts(base: str) -> tuple[str, str]:
    """(offline, online) script of one of our bases, by its name in the results ("diffusion", "bet")."""
    from pi_dec.base_policies import BASES

    return BASES[base].offline_script, BASES[base].online_script


@dataclass
class Budget:
    """Everything an experiment's size depends on (CPU-sized defaults: the paper's are GPU budgets)."""

    num_demos: int = 100
    offline_args: list[str] = field(default_factory=list)
    online_args: list[str] = field(default_factory=list)
    eval_episodes: int = 100
    control_mode: str = "pd_ee_delta_pose"  # of the demos, the base policy and the online run
    demo_args: list[str] = field(default_factory=list)  # extra flags of `python -m pi_dec.demos`
    # the base alone, no interaction, also evaluated with these Diffusion Policy samplers: [("ddpm", 20)]
    base_samplers: list[tuple[str, int]] = field(default_factory=list)
    online_script: str | None = None  # another online script than the base kind's (a baseline such as RLPD)
    # a baseline's run has no base sampler flags: these (Policy Decorator's) say how its base is evaluated
    base_online_args: list[str] = field(default_factory=list)


def stage(title: str, cmd: list, log: Path | None = None) -> float:
    """Run one stage; its output goes to the terminal (and to `log`); returns seconds taken."""
    print(f"\n=== {title}\n$ {' '.join(map(str, cmd))}", flush=True)
    start = time.time()
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"stage failed: {title} (exit {result.returncode})")
    return time.time() - start


def newest_run(output_dir: Path) -> Path:
    """The most recent run folder under <output_dir>/<env_id>/<algo>/."""
    return max(output_dir.glob("*/*/*"), key=lambda p: p.stat().st_mtime)


BASE_DONE = "base_done.json"


def finished_base(out: Path, cmd: list[str]) -> tuple[Path, float] | None:
    """(run folder, seconds) of a base policy that an earlier run in `out` finished with exactly `cmd`."""
    marker = out / BASE_DONE
    if not marker.exists():
        return None
    done = json.loads(marker.read_text())
    run = ROOT / done["base_run"]
    if done["command"] != cmd or not (run / "checkpoints" / "best.pt").exists():
        return None
    return run, done["seconds"]


BASE_EVALS = "base_evals.json"


def remembered(cache: Path | None, key: dict, evaluate) -> dict:
    """evaluate(), or what it returned for this key before: the base alone is deterministic (same checkpoint,
    sampler, seeds, torch seed), so the variants of one experiment evaluate it once. `cache` lists the keys
    and results (delete it to evaluate again); None: no cache."""
    if cache is None:
        return evaluate()
    from pi_dec.run import atomic_write_text

    known = json.loads(cache.read_text()) if cache.is_file() else []
    key = json.loads(json.dumps(key))  # as it reads back (tuples as lists)
    for entry in known:
        if entry["key"] == key:
            print(f"(reusing the base's evaluation {key.get('sampler')} from {_in_repo(cache)})", flush=True)
            return entry["result"]
    result = evaluate()
    atomic_write_text(cache, json.dumps(known + [{"key": key, "result": result}]))
    return result


def mean_squared_jerk(actions: np.ndarray, control_mode: str = "pd_ee_delta_pose") -> float:
    """Mean squared jerk of the executed actions over steps and dims. Lower is smoother.

    Delta end-effector control: an action is a per-step displacement (a velocity), so its second
    difference is a jerk; the gripper (last dim) is excluded. Absolute joint targets (pd_joint_pos,
    Adroit): an action is a position, so the jerk is its third difference, over every joint.
    """
    actions = np.asarray(actions)
    if control_mode == "pd_joint_pos":
        if len(actions) < 4:
            return float("nan")
        return float(np.mean((actions[3:] - 3 * actions[2:-1] + 3 * actions[1:-2] - actions[:-3]) ** 2))
    arm = actions[:, :-1]
    if len(arm) < 3:
        return float("nan")
    return float(np.mean((arm[2:] - 2 * arm[1:-1] + arm[:-2]) ** 2))


def evaluate_on_seeds(env_id: str, control_mode: str, obs_horizon: int, act, seeds: list[int],
                      num_envs: int = 4, video_dir: str | None = None, desc: str = "evaluation",
                      strict: int | None = None) -> dict:
    """Run one episode per seed with `act(obs) -> (N, H, A)` chunks; success, length and jerk per episode,
    listed in the order of `seeds`. With `strict` (Adroit), episodes run on past success to the time limit
    and "success_strict" counts those whose goal held in more than `strict` steps (DAPG's rule).

    Env i plays seeds i, i + num_envs, ... back to back (its automatic resets take the next seed), so two
    policies evaluated with the same seeds face the same initial states, and no env idles until the
    slowest episode of a batch ends (with rounds of num_envs seeds, a third of the env steps were spent
    waiting for a failing episode's time limit).
    """
    from pi_dec.make_env import make_vec_env
    from pi_dec.run import reset_at_ends

    num_envs = min(num_envs, len(seeds))
    queues = [list(range(i, len(seeds), num_envs)) for i in range(num_envs)]  # indices into seeds
    envs = make_vec_env(env_id, num_envs, seed=0, control_mode=control_mode, obs_horizon=obs_horizon,
                        asynchronous=num_envs > 1, video_dir=video_dir, end_at_success=strict is None,
                        reset_seeds=[[seeds[k] for k in queue] for queue in queues])
    out = {"seed": list(seeds), "success": [0.0] * len(seeds), "len": [0] * len(seeds), "jerk": [0.0] * len(seeds)}
    if strict is not None:
        out["success_steps"], out["success_strict"] = [0] * len(seeds), [0.0] * len(seeds)
    episodes_done = [0] * num_envs
    executed = [[] for _ in range(num_envs)]  # this episode's actions, per env
    progress = tqdm(total=len(seeds), desc=desc, unit="episode", dynamic_ncols=True)
    obs, _ = envs.reset()
    reset_at_ends(act, np.ones(num_envs, dtype=bool))
    while sum(episodes_done) < len(seeds):
        chunk = act(obs)
        obs, _, terminated, truncated, infos = envs.step(chunk)
        reset_at_ends(act, terminated | truncated)
        for i in range(num_envs):
            if episodes_done[i] == len(queues[i]):
                continue  # its seeds are done; it plays unseeded episodes nobody counts
            executed[i].extend(chunk[i])
            if terminated[i] or truncated[i]:
                final, k = infos["final_info"][i], queues[i][episodes_done[i]]
                length = int(np.ravel(final["episode"]["l"])[0])
                # an Adroit episode run past success may end without it: "success" is success at any step
                out["success"][k] = float(final.get("success_steps", final["success"]) > 0)
                if strict is not None:
                    out["success_steps"][k] = int(final["success_steps"])
                    out["success_strict"][k] = float(final["success_steps"] > strict)
                out["len"][k] = length
                out["jerk"][k] = mean_squared_jerk(np.array(executed[i][:length]), control_mode)  # a chunk can outlast the episode
                executed[i], episodes_done[i] = [], episodes_done[i] + 1
                progress.update(1)
                progress.set_postfix(success=f"{sum(out['success']) / sum(episodes_done):.2f}")
    progress.close()
    envs.close()
    return out


def evaluate_base(base_ckpt: Path, env_id: str, control_mode: str, seeds: list[int],
                  samplers: list[tuple[str, int]], act_horizon: int | None = 4, num_envs: int = 10,
                  cache: Path | None = None) -> dict:
    """The base alone, with no interaction, under each sampler ("ddpm", 20) or ("ddim", 4) (Diffusion Policy;
    a base with no sampler ignores them: pass [("bet", 0)]): {"ddpm20": evaluate_on_seeds(...), ...}."""
    import torch

    from pi_dec.base_policies import load_base
    from pi_dec.policy_decorator import decorated_policy

    out, base = {}, None
    for sampler, steps in samplers:
        name = f"{sampler}{steps}" if steps else sampler

        def evaluate():
            nonlocal base
            base = base or load_base(base_ckpt, {"act_horizon": act_horizon})  # read once; samplers set on it
            base.prepare_online({f"{sampler}_steps": steps})
            torch.manual_seed(0)
            return evaluate_on_seeds(env_id, control_mode, base.obs_horizon, decorated_policy(base, None, 0, "obs"),
                                     seeds, num_envs=num_envs, desc=f"base alone, {name}")

        key = {"ckpt": _in_repo(base_ckpt), "seeds": seeds, "sampler": name, "act_horizon": act_horizon,
               "num_envs": num_envs}
        out[name] = remembered(cache, key, evaluate)
    return out


def rlpd_policy(online_run: Path, obs_dim: int, act_dim: int, low, high):
    """The deterministic policy of an RLPD run's final checkpoint (online/rlpd_maniskill2.py): obs window ->
    (N, 1, A) actions, the actor's [-1, 1] mapped onto the action space."""
    import torch

    from pi_dec.nets.sac import ResidualActor, from_unit

    run_args = json.loads((online_run / "args.json").read_text())
    final = max((online_run / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem))
    actor = ResidualActor(obs_dim, act_dim, hidden=run_args["hidden_dim"])
    actor.load_state_dict(torch.load(final, map_location="cpu", weights_only=True)["actor"])
    actor.eval()

    @torch.no_grad()
    def act(obs):
        a = actor.get_eval_action(torch.as_tensor(obs[:, -1], dtype=torch.float32)).numpy()
        return from_unit(a, low, high)[:, None]
    return act


def flag_value(args: list[str], name: str, default=None) -> str | None:
    """The value of --<name> in a flag list, or `default`: flag_value(a, "total_timesteps")."""
    flag = "--" + name.replace("_", "-")
    return args[args.index(flag) + 1] if flag in args else default


def sampler_flags(args: list[str]) -> dict:
    """--ddim-steps, --ddpm-steps and --act-horizon of a flag list, as the online DP script's args.json has them."""
    return {name: int(flag_value(args, name)) for name in ("ddim_steps", "ddpm_steps", "act_horizon")
            if flag_value(args, name) is not None}


def eval_policies(base_ckpt: Path, online_run: Path, env_id: str, seeds: list[int],
                  video_root: Path | None, base_sampling: dict | None = None, cache: Path | None = None,
                  strict: int | None = None) -> dict:
    """Base alone and the trained policy on the same seeds: base + residual (deterministic) for Policy
    Decorator, the actor alone for a baseline that learns without the base (RLPD). The base's result is
    remembered in `cache` (see `remembered`). `strict`: DAPG's rule, see evaluate_on_seeds."""
    import dataclasses

    import torch

    from pi_dec.base_policies import DiffusionSampling, load_base
    from pi_dec.nets.sac import ResidualActor
    from pi_dec.policy_decorator import decorated_policy

    online_args = json.loads((online_run / "args.json").read_text())
    rlpd = online_args["algo_name"] == "RLPD"
    control_mode = online_args["control_mode"] if rlpd else online_args["base_policy"]["control_mode"]
    # a baseline has no base: its base is sampled with Policy Decorator's flags
    base_flags = {"act_horizon": 4} | (base_sampling or {}) if rlpd else online_args
    base = load_base(base_ckpt, base_flags)
    obs_dim, act_dim, obs_horizon = base.obs_dim, base.act_dim, base.obs_horizon
    if rlpd:
        from pi_dec.suites import suite_for

        env = suite_for(env_id).make(env_id, control_mode, "state", None, {}, None)
        low, high = env.action_space.low, env.action_space.high
        env.close()
        refined, refined_horizon = rlpd_policy(online_run, obs_dim, act_dim, low, high), 1
    else:
        final = max((online_run / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem))
        ckpt = torch.load(final, map_location="cpu", weights_only=True)
        res_dim = base.act_horizon * act_dim
        actor_in = base.res_obs_dim + (res_dim if online_args["actor_input"] == "obs_base_action" else 0)
        actor = ResidualActor(actor_in, res_dim, online_args["log_std_min"], online_args.get("hidden_dim", 256))
        actor.load_state_dict(ckpt["res_actor"])
        actor.eval()
        refined = decorated_policy(base, actor, online_args["res_scale"], online_args["actor_input"])
        refined_horizon = obs_horizon
    policies = (("base", decorated_policy(base, None, 0, "obs"), obs_horizon), ("refined", refined, refined_horizon))
    # how the base was sampled, whichever flags carried it (a BeT base ignores them)
    names = {f.name for f in dataclasses.fields(DiffusionSampling)}
    sampling = dataclasses.asdict(DiffusionSampling(**{k: v for k, v in base_flags.items() if k in names}))
    base_key = {"ckpt": _in_repo(base_ckpt), "seeds": seeds, "sampler": "as online", "sampling": sampling}
    base_key |= {"strict": strict} if strict is not None else {}
    results = {}
    for name, act, window in policies:
        def evaluate():
            torch.manual_seed(0)
            return evaluate_on_seeds(env_id, control_mode, window, act, seeds, strict=strict,
                                     desc=f"{name} policy" + (", DAPG's success rule" if strict is not None else ""))

        results[name] = remembered(cache, base_key, evaluate) if name == "base" else evaluate()
    # One before/after video on the first seed, in its own pass: recording renders every frame on the CPU
    # (lavapipe), and inside the 100-episode pass the recording env held the other envs back (~4x the time).
    if video_root:
        for name, act, window in policies:
            torch.manual_seed(0)
            evaluate_on_seeds(env_id, control_mode, window, act, seeds[:1], num_envs=1,
                              video_dir=str(video_root / name), desc=f"{name} video")
    return results


def strict_success(base_ckpt: Path, online_run: Path, env_id: str, seeds: list[int], base_sampling: dict | None,
                   cache: Path | None) -> dict:
    """Adroit: base and refined policy under DAPG's success rule (the goal held in more than N steps of an
    episode run to its time limit; suites.DAPG_GOAL_STEPS), in a second pass: {"success_strict_base": ...,
    "success_strict_refined": ...}. Other tasks: {}."""
    from pi_dec.suites import DAPG_GOAL_STEPS

    if env_id not in DAPG_GOAL_STEPS:
        return {}
    results = eval_policies(base_ckpt, online_run, env_id, seeds, None, base_sampling, cache,
                            strict=DAPG_GOAL_STEPS[env_id])
    return {f"success_strict_{name}": float(np.mean(r["success_strict"])) for name, r in results.items()}


def learning_curve(online_run: Path, base_success: float, png: Path, title: str,
                   refined_success: float | None = None, eval_episodes: int | None = None) -> None:
    """eval/success over env steps (the online run's own, small evaluations), the base policy's level
    as a line and, if given, the refined policy's success on the same fixed seeds as the base's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(online_run))
    events.Reload()
    points = events.Scalars("eval/success") if "eval/success" in events.Tags()["scalars"] else []
    run_args = json.loads((online_run / "args.json").read_text())
    horizon, n_online = run_args.get("act_horizon_executed", 1), run_args.get("num_eval_episodes")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    fixed = f" ({eval_episodes} fixed seeds)" if eval_episodes else ""
    if points:
        ax.plot([p.step * horizon for p in points], [p.value for p in points], marker="o", alpha=0.6,
                label=f"Policy Decorator, during training ({n_online} episodes each)")
    ax.axhline(base_success, color="gray", linestyle="--", label="base policy" + fixed)
    if refined_success is not None and points:
        ax.plot([points[-1].step * horizon], [refined_success], marker="*", markersize=14, linestyle="none",
                color="C3", label="Policy Decorator, final" + fixed)
    ax.set_xlabel("env steps (online)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=7)  # Peg's near-zero curves sat under a lower-right legend
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def _in_repo(path: Path) -> str:
    """A path as the summary stores it: relative to the repository when inside it (no machine paths)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def eval_curve(online_run: Path) -> list[list[float]]:
    """The online run's own evaluations as [env steps, success] pairs (small: kept in the summary, so that
    figures can be drawn from the JSONs alone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(online_run))
    events.Reload()
    if "eval/success" not in events.Tags()["scalars"]:
        return []
    horizon = json.loads((online_run / "args.json").read_text()).get("act_horizon_executed", 1)
    return [[p.step * horizon, round(p.value, 4)] for p in events.Scalars("eval/success")]


def demo_folder(data_root: Path, env_id: str, budget: Budget) -> Path:
    """Where a budget's demos live: one folder per task and generation flags, so that budgets whose demos differ
    (noise, labels) never read each other's: data/AdroitHandDoorSparse_action-noise_0.1."""
    return data_root / "_".join([env_id.split("-")[0], *(str(a).lstrip("-") for a in budget.demo_args)])


def ensure_demos(env_id: str, budget: Budget, data_dir: Path) -> float:
    """Generate the budget's demos in data_dir unless enough are there; seconds taken (0: already there)."""
    summary = data_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["successes"] >= budget.num_demos:
        return 0.0
    return stage(f"1/4 demonstrations: {budget.num_demos} for {env_id}", [
        sys.executable, "-m", "pi_dec.demos", "--env-id", env_id, "--num-demos", budget.num_demos,
        "--out", data_dir, "--num-procs", 2, *budget.demo_args])


def code_commit(root: Path = ROOT) -> str:
    """The repository's commit, "-dirty" if tracked code has changes: what a summary was measured with. Results
    and the README are left out, since every run's report rewrites them and they change no behaviour."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results",
                  ":(exclude)README.md")
    return commit + ("-dirty" if changed else "")


def run_experiment(env_id: str, kind: str, seed: int, budget: Budget, out: Path, data_dir: Path,
                   eval_seeds: list[int], video: bool = True, base_dir: Path | None = None) -> dict:
    """The whole pipeline; returns (and writes to out/summary.json) a small summary. `base_dir` (default
    `out`) holds the base policy's run, so that variants of one experiment can share one base."""
    out.mkdir(parents=True, exist_ok=True)
    base_dir = base_dir or out
    base_dir.mkdir(parents=True, exist_ok=True)
    commit = code_commit()  # the code that runs is the code at the start (the tree may change during a long run)
    offline_script, online_script = scripts(kind)
    online_script = budget.online_script or online_script
    times = {}
    control_mode = budget.control_mode
    if seconds := ensure_demos(env_id, budget, data_dir):
        times["demos"] = seconds
    from pi_dec.demos.cli import demos_in_mode
    from pi_dec.run import atomic_write_text

    demo = demos_in_mode(data_dir, control_mode, num_procs=2)  # converts the demos if this mode is new there
    offline_out, online_out = base_dir / "offline", out / "online"
    # the budget's first num_demos demos, however many the folder holds (it may keep more for another budget)
    demos = ["--demo-path", demo, "--num-demo-traj", budget.num_demos]
    base_cmd = [str(c) for c in (sys.executable, offline_script, "--env-id", env_id, *demos,
                                 "--control-mode", control_mode, "--seed", seed, "--output-dir", offline_out,
                                 "--exp-name", "base", *budget.offline_args)]
    reused = finished_base(base_dir, base_cmd)
    if reused:  # an earlier run of this experiment trained this base with this command: a rerun starts online
        base_run, times["base"] = reused
        print(f"\n=== 2/4 base policy: reusing {_in_repo(base_run)} (same command, finished earlier; "
              f"delete {_in_repo(base_dir / BASE_DONE)} to retrain)", flush=True)
    else:
        times["base"] = stage(f"2/4 base policy ({kind}) from the demonstrations", base_cmd)
        base_run = newest_run(offline_out)
        atomic_write_text(base_dir / BASE_DONE, json.dumps({"command": base_cmd,
                                                       "base_run": _in_repo(base_run), "seconds": times["base"]}))
    base_ckpt = base_run / "checkpoints" / "best.pt"
    # a baseline script (budget.online_script) learns from the demonstrations instead of the base policy
    source = ([*demos, "--control-mode", control_mode] if budget.online_script else ["--base-policy-ckpt", base_ckpt])
    times["online"] = stage("3/4 online: " + ("baseline" if budget.online_script else "Policy Decorator"), [
        sys.executable, online_script, "--env-id", env_id, *source, "--seed", seed,
        "--output-dir", online_out, "--exp-name", "pi_dec", *budget.online_args])
    online_run = newest_run(online_out)
    print(f"\n=== 4/4 evaluating base and refined policy on the same {len(eval_seeds)} seeds", flush=True)
    t0 = time.time()
    cache = base_dir / BASE_EVALS  # the base alone is evaluated once for all variants
    results = eval_policies(base_ckpt, online_run, env_id, eval_seeds, out / "videos" if video else None,
                            sampler_flags(budget.base_online_args), cache)
    online_args = json.loads((online_run / "args.json").read_text())
    base_alone = evaluate_base(base_ckpt, env_id, control_mode, eval_seeds, budget.base_samplers,
                               online_args.get("act_horizon", 4), cache=cache) if budget.base_samplers else {}
    strict = strict_success(base_ckpt, online_run, env_id, eval_seeds, sampler_flags(budget.base_online_args), cache)
    times["eval"] = time.time() - t0
    summary = {
        "task": env_id, "base": kind, "seed": seed, "num_demos": budget.num_demos, "control_mode": control_mode,
        "offline_args": budget.offline_args, "online_args": budget.online_args,
        "online_env_steps": online_args["total_timesteps"] * online_args["act_horizon_executed"],
        "eval_episodes": len(eval_seeds),
        "success_base": float(np.mean(results["base"]["success"])),
        "success_refined": float(np.mean(results["refined"]["success"])),
        "jerk_base": float(np.nanmean(results["base"]["jerk"])),
        "jerk_refined": float(np.nanmean(results["refined"]["jerk"])),
        "len_base": float(np.mean(results["base"]["len"])), "len_refined": float(np.mean(results["refined"]["len"])),
        # the base alone with other samplers: what it reaches with no interaction at all
        "success_base_samplers": {k: float(np.mean(r["success"])) for k, r in base_alone.items()},
        "len_base_samplers": {k: float(np.mean(r["len"])) for k, r in base_alone.items()},
        "curve": eval_curve(online_run), **strict,
        "seconds": {k: round(v, 1) for k, v in times.items()}, "wall_seconds": round(sum(times.values()), 1),
        "commit": commit, "base_reused": bool(reused),
        "base_run": _in_repo(base_run), "online_run": _in_repo(online_run),
    }
    learning_curve(online_run, summary["success_base"], out / "learning_curve.png",
                   f"{env_id}, {kind} base, seed {seed}", summary["success_refined"], len(eval_seeds))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
