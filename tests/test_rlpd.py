"""RLPD, the pure-RL baseline (online/rlpd_maniskill2.py): demos as transitions, the ensemble target, the
script on Adroit Door, and its run inside an experiment beside the base it is compared with."""

import json

import numpy as np
import pytest
import torch

from conftest import ROOT, load_script, run_script

EXPERT_DIR = ROOT.parent / "shared" / "adroit"
needs_experts = pytest.mark.skipif(not EXPERT_DIR.is_dir(), reason=f"expert policies not found at {EXPERT_DIR}")
rlpd = load_script("online/rlpd_maniskill2.py")


def test_demos_become_transitions_up_to_their_first_success():
    """Online the episode ends at the first success (reward success - 1): so in the demos too; later steps go."""
    obs = np.arange(8, dtype=np.float32)[:, None]  # 7 steps; success first after step 4 (obs 5 is a success)
    trajs = [{"obs": obs, "actions": obs[:-1] * 10}, {"obs": obs[:4], "actions": obs[:3] * 10}]
    t = rlpd.demo_transitions(trajs, [4, None])  # the second: no record, taken whole
    np.testing.assert_array_equal(t["obs"][:, 0], [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(t["next_obs"][:, 0], [1, 2, 3, 4, 5, 1, 2, 3])
    np.testing.assert_array_equal(t["action"][:, 0], [0, 10, 20, 30, 40, 0, 10, 20])
    np.testing.assert_array_equal(t["reward"], [-1, -1, -1, -1, 0, -1, -1, 0])
    np.testing.assert_array_equal(t["stop"], [0, 0, 0, 0, 1, 0, 0, 1])


def _constant(net, value):
    """A critic that outputs `value` whatever its input."""
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.net[-1].bias.fill_(value)
    return net


def test_critic_target_is_the_min_over_a_subset_of_the_target_ensemble():
    from pi_dec.nets.sac import ResidualActor, SoftQNetwork

    torch.manual_seed(0)
    args = rlpd.Args(num_qs=3, num_min_qs=3, gamma=0.9, tau=0.5)
    critics = [_constant(SoftQNetwork(2, 1, 8, True), v) for v in (1.0, 2.0, 3.0)]
    targets = [_constant(SoftQNetwork(2, 1, 8, True), v) for v in (-5.0, -2.0, -3.0)]
    q_opt = torch.optim.SGD([p for q in critics for p in q.parameters()], lr=0.0)
    batch = (torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 1), torch.tensor([-1.0, 0.0]), torch.tensor([0.0, 1.0]))
    out = rlpd.critic_update(args, batch, ResidualActor(2, 1, hidden=8), critics, targets, q_opt, torch.zeros(1))
    target = np.array([-1 + 0.9 * -5.0, 0.0])  # min over all three targets; no bootstrap after the success
    hand = np.mean([(q - target) ** 2 for q in (1.0, 2.0, 3.0)])
    assert out["qf_loss"].item() == pytest.approx(hand)
    # Polyak with tau 0.5 moved each target's output halfway to its critic's
    assert [t(torch.zeros(1, 2), torch.zeros(1, 1)).item() for t in targets] == pytest.approx([-2.0, 0.0, 0.0])


def test_actor_follows_the_ensemble_mean_and_temperature_its_entropy_target():
    from pi_dec.nets.sac import ResidualActor, SoftQNetwork

    torch.manual_seed(0)
    actor = ResidualActor(2, 1, hidden=8)
    critics = [_constant(SoftQNetwork(2, 1, 8), 1.0), _constant(SoftQNetwork(2, 1, 8), 3.0)]
    a_opt = torch.optim.SGD(actor.parameters(), lr=0.0)
    log_temp = torch.zeros(1, requires_grad=True)  # temperature 1
    t_opt = torch.optim.SGD([log_temp], lr=0.1)
    out = rlpd.actor_update(torch.zeros(64, 2), actor, critics, a_opt, log_temp, t_opt, target_entropy=100.0)
    # loss = temperature * log pi - mean Q = -entropy - (1 + 3) / 2 (the min would give -entropy - 1)
    assert out["actor_loss"].item() == pytest.approx(-out["entropy"].item() - 2.0, abs=1e-5)
    assert out["entropy"].item() < 100 and log_temp.item() > 0  # entropy below its target: the temperature rises
    assert all(p.grad is None for q in critics for p in q.parameters())  # no gradients for the critics' weights


def test_rlpd_learns_on_adroit_door_from_its_demos(door_demos, tmp_path):
    run_script("online/rlpd_maniskill2.py", "--env-id", "AdroitHandDoorSparse-v1", "--demo-path",
               door_demos / "AdroitHandDoorSparse-v1" / "trajectory.h5", "--total-timesteps", 256, "--num-envs", 4,
               "--training-freq", 32, "--utd", 0.25, "--num-qs", 3, "--learning-starts", 64, "--batch-size", 16,
               "--hidden-dim", 16, "--eval-freq", 128, "--num-eval-episodes", 1, "--num-eval-envs", 1,
               "--log-freq", 64, "--output-dir", tmp_path, "--num-threads", 1)
    run = next((tmp_path / "AdroitHandDoorSparse-v1" / "RLPD").iterdir())
    saved = torch.load(run / "checkpoints" / "256.pt", weights_only=True)
    assert saved["global_step"] == 256 and len(saved["critics"]) == 3
    assert saved["critics"][0]["net.1.weight"].shape == (16,)  # LayerNorm after the first Linear
    assert saved["log_temperature"].item() != 0.0  # the temperature was tuned: updates ran
    args = json.loads((run / "args.json").read_text())
    assert args["control_mode"] == "pd_joint_pos" and args["act_horizon_executed"] == 1


@needs_experts
def test_demos_of_another_task_and_bad_flags_are_one_line(door_demos, tmp_path):
    result = run_script("online/rlpd_maniskill2.py", "--env-id", "AdroitHandDoorSparse-v1", "--demo-path",
                        door_demos / "AdroitHandHammerSparse-v1" / "trajectory.h5", "--output-dir", tmp_path,
                        check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds demos of AdroitHandHammerSparse-v1, not of AdroitHandDoorSparse-v1" in result.stderr
    result = run_script("online/rlpd_maniskill2.py", "--num-min-qs", 3, "--num-qs", 2, check=False)
    assert result.returncode == 2 and "--num-min-qs 3: at most --num-qs (2)" in result.stderr
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    result = run_script("online/rlpd_maniskill2.py", "--env-id", "AdroitHandDoorSparse-v1", "--demo-path",
                        door_demos / "AdroitHandDoorSparse-v1" / "trajectory.h5", "--output-dir", a_file, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--output-dir {a_file}: {a_file} is a file, not a folder" in result.stderr


@needs_experts
def test_rlpd_variant_of_an_experiment_shares_the_base_and_is_evaluated_alone(door_demos, tmp_path):
    """run_experiment with the rlpd variant of a (tiny) Door budget: the base trained for Policy Decorator is
    reused, and the refined policy is RLPD's actor, one action per step, evaluated on the same seeds."""
    from pi_dec.experiment import Budget, run_experiment
    from pi_dec.results import Places, add_strict, variant_budget

    budget = Budget(
        num_demos=2, control_mode="pd_joint_pos",
        offline_args=["--total-iters", "4", "--batch-size", "8", "--eval-freq", "0", "--save-freq", "0",
                      "--log-freq", "2", "--num-threads", "1", "--unet-dims", "16", "32", "--n-groups", "4"],
        online_args=["--ddpm-steps", "2", "--num-envs", "4", "--total-timesteps", "64", "--learning-starts", "32",
                     "--batch-size", "16", "--eval-freq", "32", "--num-eval-episodes", "1", "--num-eval-envs", "1",
                     "--log-freq", "32", "--save-freq", "0", "--num-threads", "1", "--hidden-dim", "16", "--utd", "0.5"],
        eval_episodes=2)
    data = door_demos / "AdroitHandDoorSparse-v1"
    seeds = [200_000, 200_001]  # the first validation seeds
    places = Places(tmp_path / "results", tmp_path / "output")
    base_dir = places.experiment_dir("AdroitHandDoorSparse-v1", "diffusion", 1)
    ours = run_experiment("AdroitHandDoorSparse-v1", "diffusion", 1, budget, base_dir, data, seeds, video=False)
    baseline = run_experiment("AdroitHandDoorSparse-v1", "diffusion", 1, variant_budget(budget, "rlpd"),
                              base_dir / "rlpd", data, seeds, video=False, base_dir=base_dir)
    assert baseline["base_reused"] and baseline["base_run"] == ours["base_run"]
    assert baseline["success_base"] == ours["success_base"]  # the base sampled as Policy Decorator samples it
    # ... found as the same evaluation: the base alone was evaluated once for both, and once under DAPG's rule
    cache = base_dir / "base_evals.json"
    entries = [(e["key"]["sampler"], e["key"].get("strict")) for e in json.loads(cache.read_text())]
    assert entries == [("as online", None), ("as online", 25)]
    assert baseline["success_strict_base"] == ours["success_strict_base"]
    assert baseline["online_env_steps"] == ours["online_env_steps"] == 64 * 4
    assert "RLPD" in baseline["online_run"] and 0 <= baseline["success_refined"] <= 1
    assert 0 <= baseline["success_strict_refined"] <= 1 and 0 <= ours["success_strict_refined"] <= 1

    # `results strict` adds the rate to summaries made before it was measured, from their run folders
    runs = places.results / "val"
    runs.mkdir(parents=True)
    for variant, summary in (("pi_dec", ours), ("rlpd", baseline)):
        earlier = {k: v for k, v in summary.items() if not k.startswith("success_strict")} | {"variant": variant}
        (runs / f"AdroitHandDoorSparse-v1_diffusion_{variant}_1.json").write_text(json.dumps(earlier))
    budgets = {("AdroitHandDoorSparse-v1", "diffusion"): budget}
    assert len(add_strict("val", places, budgets)) == 2 and add_strict("val", places, budgets) == []
    for variant, summary in (("pi_dec", ours), ("rlpd", baseline)):
        added = json.loads((runs / f"AdroitHandDoorSparse-v1_diffusion_{variant}_1.json").read_text())
        assert {k: added[k] for k in ("success_strict_base", "success_strict_refined")} == {
            k: summary[k] for k in ("success_strict_base", "success_strict_refined")}  # seeded: the same numbers
    assert len(json.loads(cache.read_text())) == 2  # the base's came from the cache
