"""The evidence pipeline: jerk metric, the results report, and one tiny real experiment end to end."""

import json
import math
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pi_dec.experiment import (ROOT, Budget, code_commit, evaluate_on_seeds, mean_squared_jerk, remembered,
                               run_experiment)
from pi_dec.quickstart import QUICKSTART
from pi_dec.results import (BUDGETS, TEST_SEEDS, VAL_SEEDS, VARIANTS, keep_earlier_budget, report, set_flags,
                            variant_budget, with_flags, without)


def test_jerk_is_zero_for_constant_velocity_and_ignores_the_gripper():
    t = np.arange(10, dtype=float)[:, None]
    arm_linear = np.hstack([0.1 * t, -0.2 * t, np.ones_like(t)])  # last column: gripper
    gripper_flips = arm_linear.copy()
    gripper_flips[::2, -1] = -1.0
    assert mean_squared_jerk(arm_linear) == pytest.approx(0.0, abs=1e-12)
    assert mean_squared_jerk(gripper_flips) == pytest.approx(0.0, abs=1e-12)


def test_jerk_matches_the_second_difference():
    a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # arm column 0 zig-zags
    # second differences: (0 - 2 + 0) = -2, (1 - 0 + 1) = 2 -> mean of squares = 4
    assert mean_squared_jerk(a) == pytest.approx(4.0)
    assert math.isnan(mean_squared_jerk(a[:2]))  # too short to have a second difference


def test_jerk_of_absolute_joint_targets_is_their_third_difference():
    """pd_joint_pos (Adroit): positions, so a constant acceleration has zero jerk, on every joint."""
    t = np.arange(8, dtype=float)[:, None]
    assert mean_squared_jerk(np.hstack([t ** 2, 3 * t ** 2]), "pd_joint_pos") == pytest.approx(0.0, abs=1e-12)
    cubic = np.hstack([t ** 3, 0 * t])  # third difference of t^3 is 6 on the first joint, 0 on the second
    assert mean_squared_jerk(cubic, "pd_joint_pos") == pytest.approx(36 / 2)
    assert math.isnan(mean_squared_jerk(cubic[:3], "pd_joint_pos"))


def test_evaluation_results_follow_the_seeds_whatever_the_number_of_envs():
    def act(obs):  # deterministic and state-dependent: each seed's episode has its own actions
        return np.repeat(np.tanh(5 * obs[:, -1:, :7]), 4, axis=1)

    seeds = [7, 3, 11]
    one = evaluate_on_seeds("PickCube-v0", "pd_ee_delta_pose", 1, act, seeds, num_envs=1)
    two = evaluate_on_seeds("PickCube-v0", "pd_ee_delta_pose", 1, act, seeds, num_envs=2)  # env 0 plays 7 then 11
    assert one["seed"] == two["seed"] == seeds
    assert one["len"] == two["len"]
    np.testing.assert_allclose(two["jerk"], one["jerk"], rtol=1e-6)
    assert len(set(one["jerk"])) == 3  # the seeds really gave different episodes


def test_the_base_alone_is_evaluated_once_per_checkpoint_sampler_and_seeds(tmp_path):
    cache, calls = tmp_path / "base_evals.json", []

    def evaluate():
        calls.append(1)
        return {"success": [1.0, 0.0], "len": [40, 200]}

    key = {"ckpt": "output/x/best.pt", "seeds": [1, 2], "sampler": "ddpm20"}
    first = remembered(cache, key, evaluate)
    assert remembered(cache, dict(key, seeds=(1, 2)), lambda: pytest.fail("evaluated twice")) == first
    remembered(cache, dict(key, seeds=[1, 3]), evaluate)  # other seeds, other sampler: evaluated
    remembered(cache, dict(key, sampler="ddpm100"), evaluate)
    remembered(None, key, evaluate)  # no cache: always evaluated
    assert len(calls) == 4 and len(json.loads(cache.read_text())) == 3


def test_refined_policy_adds_the_scaled_deterministic_residual():
    """What the evaluation runs: refined - base == res_scale * tanh(mean of the actor), at most res_scale."""
    import torch

    from pi_dec.policy_decorator import decorated_policy
    from pi_dec.nets.sac import ResidualActor

    torch.manual_seed(0)
    obs = np.random.default_rng(0).normal(size=(3, 2, 5)).astype(np.float32)  # (N, window, obs_dim)
    fixed = SimpleNamespace(act=lambda o: (torch.ones(o.shape[0], 4, 2) * 0.5, o[:, -1]),  # a chunk: H = 4, A = 2
                            reset=lambda done: None)
    actor = ResidualActor(5 + 8, 8, hidden=16)  # sees the observation and the base chunk
    torch.nn.init.normal_(actor.fc_mean.weight, std=1.0)  # a residual far from 0, some dims saturated
    base = decorated_policy(fixed, None, 0.1, "obs_base_action")(obs)
    refined = decorated_policy(fixed, actor, 0.1, "obs_base_action")(obs)
    with torch.no_grad():
        x = torch.cat([torch.as_tensor(obs[:, -1]), torch.full((3, 8), 0.5)], 1)
        expected = 0.1 * torch.tanh(actor.fc_mean(actor.backbone(x))).view(3, 4, 2).numpy()
    np.testing.assert_allclose(base, 0.5)
    np.testing.assert_allclose(refined - base, expected, atol=1e-6)
    assert np.abs(refined - base).max() <= 0.1 + 1e-6 and np.abs(refined - base).max() > 0.05


def test_with_flags_replaces_values_without_touching_the_original():
    args = ["--total-iters", "10", "--lr", "1e-3"]
    assert with_flags(args, total_iters=5) == ["--total-iters", "5", "--lr", "1e-3"]
    assert args[1] == "10"


def test_set_flags_replaces_present_flags_and_appends_missing_ones():
    args = ["--res-scale", "0.1", "--critic-layer-norm"]
    assert set_flags(args, res_scale=2, prog_explore=1) == ["--res-scale", "2", "--critic-layer-norm",
                                                            "--prog-explore", "1"]
    assert args[1] == "0.1"


def test_the_commit_is_dirty_for_changed_code_but_not_for_rewritten_results(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()
    (tmp_path / "results").mkdir()
    for name in ("README.md", "results/README.md", "code.py"):
        (tmp_path / name).write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    head = git("rev-parse", "--short", "HEAD")
    (tmp_path / "README.md").write_text("b\n")  # what a run's report rewrites
    (tmp_path / "results/README.md").write_text("b\n")
    (tmp_path / "results/new.json").write_text("{}")
    assert code_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("b\n")
    assert code_commit(tmp_path) == head + "-dirty"


def test_validation_and_test_seeds_are_disjoint_and_apart_from_the_demos():
    assert not set(VAL_SEEDS) & set(TEST_SEEDS) and len(VAL_SEEDS) == len(TEST_SEEDS) == 100
    assert min(VAL_SEEDS + TEST_SEEDS) > 10_000  # demos are generated from seeds 0, 1, ...


def test_test_runs_and_validation_runs_are_kept_apart(tmp_path):
    from pi_dec.results import Places

    places = Places(tmp_path / "results", tmp_path / "output", tmp_path / "data")
    assert places.summary("T-v0", "diffusion", 1, "test", "pi_dec") == tmp_path / "results" / "runs" / "T-v0_diffusion_1.json"
    assert places.summary("T-v0", "bet", 2, "val", "rlpd") == tmp_path / "results" / "val" / "T-v0_bet_rlpd_2.json"
    assert places.experiment_dir("T-v0", "bet", 2) == tmp_path / "output" / "results" / "T-v0_bet_2"


def test_an_ablation_changes_only_its_own_flag():
    budget = BUDGETS[("AdroitHandDoorSparse-v1", "diffusion")]
    assert variant_budget(budget, "pi_dec") == budget
    for variant, flag, value in (("no_bound", "--res-scale", "2"), ("no_prog", "--prog-explore", "1")):
        changed = variant_budget(budget, variant)
        assert changed.offline_args == budget.offline_args and changed.num_demos == budget.num_demos
        diff = [(a, b) for a, b in zip(changed.online_args, budget.online_args) if a != b]
        assert diff == [(value, budget.online_args[budget.online_args.index(flag) + 1])]


def test_rlpd_gets_the_same_env_steps_and_sac_updates_as_policy_decorator():
    budget = BUDGETS[("AdroitHandDoorSparse-v1", "diffusion")]  # 120,000 decisions of 4 env steps, utd 0.5
    rlpd = variant_budget(budget, "rlpd")
    flags = dict(zip(rlpd.online_args[::2], rlpd.online_args[1::2]))
    assert rlpd.online_script == "online/rlpd_maniskill2.py" and rlpd.offline_args == budget.offline_args
    assert int(flags["--total-timesteps"]) == 120_000 * 4
    assert int(flags["--total-timesteps"]) * float(flags["--utd"]) == 120_000 * 0.5
    assert flags["--num-envs"] == "32" and flags["--batch-size"] == "256" and flags["--eval-freq"] == "80000"
    assert rlpd.base_online_args == budget.online_args  # its base is evaluated as Policy Decorator samples it
    bet = variant_budget(BUDGETS[("AdroitHandHammerSparse-v1", "bet")], "rlpd", "bet")  # BeT: 1 env step a decision
    assert bet.online_args[bet.online_args.index("--total-timesteps") + 1] == "160000"


@pytest.mark.parametrize("task,base,variant", [(t, b, v) for t, b in sorted(BUDGETS) for v in VARIANTS])
def test_every_budget_is_flags_the_scripts_accept(task, base, variant):
    """A typo in a budget would surface an hour into a run; parse each with the scripts' own parser and checks."""
    import tyro

    from conftest import load_script
    from pi_dec.experiment import scripts
    from pi_dec.policy_decorator import validate

    budget = variant_budget(BUDGETS[(task, base)], variant, base)
    offline_path, online_path = scripts(base)
    offline, online = load_script(offline_path), load_script(budget.online_script or online_path)
    common = ["--env-id", task, "--control-mode", budget.control_mode]
    offline.check_args(tyro.cli(offline.Args, args=common + budget.offline_args))
    if budget.online_script:  # a baseline: its own checks
        online.validate(tyro.cli(online.Args, args=common + budget.online_args))
    else:
        validate(tyro.cli(online.Args, args=["--env-id", task, *budget.online_args]), online.RULES)


def _summary(seed, base, refined, jerk_base, jerk_refined, budget=QUICKSTART):
    return {"task": "PickCube-v0", "base": "diffusion", "seed": seed, "online_env_steps": 128000,
            "success_base": base, "success_refined": refined, "jerk_base": jerk_base, "jerk_refined": jerk_refined,
            "wall_seconds": 1800.0, "machine": "test machine", "num_demos": budget.num_demos,
            "offline_args": budget.offline_args, "online_args": budget.online_args}


def test_report_aggregates_whatever_summaries_exist(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\noutro\n")
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)

    table = report(results, readme)
    assert "(no runs yet)" in table

    for seed, base, refined, jerk_base, length in ((1, 0.5, 0.7, 2e-3, 150), (2, 0.6, 0.9, 4e-3, 110)):
        summary = _summary(seed, base, refined, jerk_base, 1e-3) | {"len_base": length, "len_refined": 90}
        (results / "runs" / f"PickCube-v0_diffusion_{seed}.json").write_text(json.dumps(summary))
    table = report(results, readme)
    row = next(line for line in table.splitlines() if line.startswith("| PickCube-v0"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2" and cells[3] == "128,000"
    assert cells[4] == "0.55 ± 0.07" and cells[5] == "0.80 ± 0.14"  # sample std (ddof 1) of 0.5, 0.6 and 0.7, 0.9
    assert cells[6] == "130 ± 28 → 90 ± 0"  # episode length, base → refined
    assert cells[7] == "3.0e-03 ± 1.4e-03" and cells[8] == "1.0e-03 ± 0.0e+00"  # jerk: mean ± sample std
    assert cells[9] == "30 min"
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and row in text
    assert (results / "success.png").stat().st_size > 0
    page = (results / "README.md").read_text()
    per_run = page.split("## Every run")[1]
    assert "| PickCube-v0 | diffusion | 1 | 0.50 → 0.70 |" in per_run
    assert "| PickCube-v0 | diffusion | 2 | 0.60 → 0.90 |" in per_run
    assert "test machine" in page


def test_report_keeps_runs_of_an_earlier_budget_in_their_own_labelled_row(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    assert BUDGETS[("PickCube-v0", "diffusion")] is QUICKSTART
    assert "--critic-layer-norm" in QUICKSTART.online_args
    older = Budget(QUICKSTART.num_demos, QUICKSTART.offline_args,
                   without(with_flags(QUICKSTART.online_args, q_lr=1e-3), "critic_layer_norm"))
    runs = {"1": _summary(1, 0.5, 0.7, 2e-3, 1e-3), "2": _summary(2, 0.6, 0.1, 2e-3, 1e-3, budget=older),
            "3": _summary(3, 0.6, 0.4, 2e-3, 1e-3) | {"control_mode": "pd_ee_delta_pos"}}  # same flags, other mode
    for seed, summary in runs.items():
        (results / "runs" / f"PickCube-v0_diffusion_{seed}.json").write_text(json.dumps(summary))
    table = report(results, readme)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert sorted((r[1][:27], r[2], r[5]) for r in rows) == [("diffusion", "1", "0.70"),
                                                             ("diffusion (earlier settings", "1", "0.10"),
                                                             ("diffusion (earlier settings", "1", "0.40")]
    notes = (results / "README.md").read_text()
    assert "online `--q-lr 0.001` (now 3e-4)" in notes and "pd_ee_delta_pos (now pd_ee_delta_pose)" in notes
    assert "online no `--critic-layer-norm` (now on)" in notes  # an on/off switch
    block = readme.read_text()
    assert "| diffusion | 1 |" in block and "earlier settings" not in block  # the README: current budgets only
    assert "results/README.md" in block


def test_report_sets_variants_beside_policy_decorator_and_labels_the_protocol(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    (results / "val").mkdir()
    task = "AdroitHandDoorSparse-v1"
    budget = BUDGETS[(task, "diffusion")]

    def summary(seed, refined, variant, split="test"):
        vb = variant_budget(budget, variant, "diffusion")
        return (_summary(seed, 0.4, refined, 2e-3, 1e-3, budget=vb)
                | {"task": task, "control_mode": vb.control_mode, "len_base": 150, "len_refined": 60,
                   "success_base_samplers": {"ddpm20": 0.9}, "len_base_samplers": {"ddpm20": 70},
                   "curve": [[0, 0.4], [80000, 0.7 * refined], [160000, refined]], "split": split, "variant": variant,
                   "seconds": {"base": 600.0, "online": 600.0 + seed * 120, "eval": 30.0}})

    for seed in (1, 2):
        strict = {"success_strict_base": 0.3, "success_strict_refined": 0.8} if seed == 1 else {}  # measured later
        (results / "runs" / f"{task}_diffusion_{seed}.json").write_text(
            json.dumps(summary(seed, 0.9 + seed / 100, "pi_dec") | strict))
        (results / "runs" / f"{task}_diffusion_no_prog_{seed}.json").write_text(json.dumps(summary(seed, 0.5, "no_prog")))
    (results / "val" / f"{task}_diffusion_1.json").write_text(json.dumps(summary(1, 0.77, "pi_dec", "val")))
    (results / "val" / f"{task}_diffusion_curve_10demos_1.json").write_text(json.dumps(
        {"task": task, "base": "diffusion", "seed": 1, "num_demos": 10, "episodes": 50,
         "points": [{"iters": 1000, "ddpm6": 0.1, "ddpm20": 0.2}, {"iters": 2000, "ddpm6": 0.3, "ddpm20": 0.45}]}))
    report(results, readme)
    block = readme.read_text()
    main_row = next(line for line in block.splitlines() if line.startswith(f"| {task} | diffusion |"))
    assert main_row.endswith("| val → test |") and "0.92 ± 0.01" in main_row  # Policy Decorator's row only
    assert "no_prog" not in main_row and "earlier settings" not in block
    ablation = block.split("every variant on the same base policies")[1]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in ablation.splitlines() if line.startswith("| ") and not line.startswith("| variant")}
    assert rows["base alone (as sampled online)"][2] == "0.40 ± 0.00"
    assert rows["base alone, DDPM20"][2] == "0.90 ± 0.00" and rows["base alone, DDPM20"][6] == "0"
    assert rows["Policy Decorator"][2] == "0.92 ± 0.01"
    assert rows["no progressive exploration (--prog-explore 1)"][2] == "0.50 ± 0.00"
    assert rows["Policy Decorator"][7] == "13 min"  # the online stage (12 and 14 min), not the run's 30 min
    # DAPG's success rule, where measured
    assert rows["Policy Decorator"][3] == "0.80 (1 of 2)" and rows["base alone (as sampled online)"][3] == "0.30 (1 of 2)"
    assert rows["no progressive exploration (--prog-explore 1)"][3] == ""
    page = (results / "README.md").read_text()
    assert "1,000: 0.10 / 0.20; 2,000: 0.30 / 0.45" in page  # the base curve, in the validation section
    assert f"{task} / diffusion, pi_dec, seed 1: 0.40 → 0.77" in page
    assert "| AdroitHandDoorSparse-v1 | diffusion, no_prog | 2 | 0.40 → 0.50 |" in page
    assert (results / "success.png").stat().st_size > 0
    # a run from before the protocol (no split recorded) marks its row as chosen on the test seeds
    old = summary(3, 0.95, "pi_dec")
    del old["split"]
    (results / "runs" / f"{task}_diffusion_3.json").write_text(json.dumps(old))
    report(results, readme)
    assert next(line for line in readme.read_text().splitlines()
                if line.startswith(f"| {task} | diffusion |")).endswith("| chosen on test seeds |")


def test_a_rerun_with_another_budget_keeps_the_earlier_summary(tmp_path):
    path, curve = tmp_path / "T_diffusion_1.json", tmp_path / "T_diffusion_1.png"
    earlier = _summary(1, 0.5, 0.2, 2e-3, 1e-3) | {"commit": "abc1234"}
    path.write_text(json.dumps(earlier))
    curve.write_bytes(b"png")
    same = _summary(1, 0.5, 0.3, 2e-3, 1e-3)
    keep_earlier_budget(path, curve, same)  # same budget: the new run may replace it
    assert path.exists() and not list(tmp_path.glob("*@*"))
    changed = _summary(1, 0.5, 0.7, 2e-3, 1e-3, budget=Budget(7, QUICKSTART.offline_args, QUICKSTART.online_args))
    keep_earlier_budget(path, curve, changed)
    assert not path.exists() and not curve.exists()
    assert json.loads((tmp_path / "T_diffusion_1@abc1234.json").read_text()) == earlier
    assert (tmp_path / "T_diffusion_1@abc1234.png").read_bytes() == b"png"


def test_tiny_experiment_end_to_end(demos, tmp_path):
    """Real scripts as subprocesses: base training, Policy Decorator, evaluation on the same seeds."""
    data_dir, _ = demos["PickCube-v0"]
    budget = Budget(
        num_demos=3,
        offline_args=["--total-iters", "20", "--batch-size", "16", "--eval-freq", "0", "--save-freq", "0",
                      "--log-freq", "10", "--num-threads", "1"],
        online_args=["--num-envs", "2", "--total-timesteps", "256", "--learning-starts", "128", "--batch-size", "32",
                     "--eval-freq", "0", "--log-freq", "128", "--save-freq", "0", "--num-eval-episodes", "2",
                     "--num-eval-envs", "2", "--num-threads", "1", "--hidden-dim", "32"],
        eval_episodes=2)
    seeds = [100000, 100001]
    summary = run_experiment("PickCube-v0", "diffusion", 1, budget, tmp_path, data_dir, seeds)

    assert summary["eval_episodes"] == 2 and summary["online_env_steps"] == 256 * 4  # DP executes 4 per decision
    for key in ("success_base", "success_refined"):
        assert 0.0 <= summary[key] <= 1.0
    for key in ("jerk_base", "jerk_refined"):
        assert np.isfinite(summary[key]) and summary[key] >= 0
    assert 4 <= summary["len_base"] <= 200 and 4 <= summary["len_refined"] <= 200
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    for name in ("base", "refined"):
        assert list((tmp_path / "videos" / name).glob("*.mp4")), f"no {name} video"
    assert not summary["base_reused"]
    command = json.loads((tmp_path / "base_done.json").read_text())["command"]
    assert command[command.index("--num-demo-traj") + 1] == "3"  # the budget's demos, not all the folder holds
    # the residual actor is as narrow as asked (the evaluation above rebuilt it from the run's args.json)
    final = torch.load(next((ROOT / summary["online_run"]).glob("checkpoints/*.pt")), weights_only=False)
    assert final["res_actor"]["fc_mean.weight"].shape[1] == 32 and final["qf1"]["net.0.weight"].shape[0] == 32

    # a rerun (say after a session ended during the online stage) reuses the finished base policy
    again = run_experiment("PickCube-v0", "diffusion", 1, budget, tmp_path, data_dir, seeds, video=False)
    assert again["base_reused"] and again["base_run"] == summary["base_run"]
    assert len(list((tmp_path / "offline").glob("*/*/*"))) == 1 and again["online_run"] != summary["online_run"]
    assert again["success_base"] == summary["success_base"]  # same base checkpoint, same seeds
    # a different base budget trains a new one
    other = Budget(3, with_flags(budget.offline_args, total_iters=10), budget.online_args, eval_episodes=2)
    assert not run_experiment("PickCube-v0", "diffusion", 1, other, tmp_path, data_dir, seeds, video=False)["base_reused"]
