"""Online Policy Decorator: the algorithm's math, checkpoint loading, and both scripts end to end."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from pi_dec.base_policies import CheckpointError, load_base
from pi_dec.nets.sac import ResidualActor, SoftQNetwork
from pi_dec.policy_decorator import (Learner, OnlineArgs, ReplayBuffer, bootstrap_masks, check_resume_shapes, combine,
                                     critic_action, crossed, exploration_mask, exploration_prob, frozen,
                                     sac_update, validate)
from pi_dec.run import UsageError
from pi_dec.suites import MAX_EPISODE_STEPS


def test_exploration_probability_grows_linearly_to_one():
    assert exploration_prob(0, 100) == 0.0
    assert exploration_prob(25, 100) == 0.25
    assert exploration_prob(100, 100) == 1.0
    assert exploration_prob(10_000, 100) == 1.0


def test_exploration_mask_uses_the_residual_at_that_rate():
    np.random.seed(0)  # the loop's mask draws from numpy's global generator (seeded by the run)
    for step, rate in ((0, 0.0), (30, 0.3), (75, 0.75), (500, 1.0)):
        use = np.concatenate([exploration_mask(16, step, prog_explore=100) for _ in range(4000)])
        assert use.dtype == bool and use.shape == (64_000,)
        assert abs(use.mean() - rate) < 0.01, (step, use.mean())


def test_combine_adds_the_scaled_residual_per_chunk_step():
    base = torch.arange(12, dtype=torch.float32).view(2, 3, 2)  # (N=2, H=3, A=2)
    res = torch.ones(2, 6)
    res[1] = torch.linspace(-1, 1, 6)
    out = combine(base, res, res_scale=0.1)
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out[0], base[0] + 0.1)
    np.testing.assert_allclose(out[1], base[1] + 0.1 * torch.linspace(-1, 1, 6).view(3, 2))
    np.testing.assert_allclose(combine(base, torch.zeros(2, 6), 0.3), base)  # no residual: the base alone


def test_critic_input_variants():
    res, base = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 0.2]])
    np.testing.assert_allclose(critic_action(res, base, 0.1, "res"), res)
    np.testing.assert_allclose(critic_action(res, base, 0.1, "sum"), [[0.6, 0.1]])
    np.testing.assert_allclose(critic_action(res, base, 0.1, "concat"), [[1.0, -1.0, 0.5, 0.2]])


@pytest.mark.parametrize("mode, stop, final", [
    ("truncated", [False, True, False, True], [False, False, True, False]),
    ("always", [False, False, False, False], [False, True, True, True]),
    ("never", [False, True, True, True], [False, False, False, False]),
])
def test_bootstrap_masks(mode, stop, final):
    # envs: running, terminated, truncated, terminated and truncated together
    terminated = np.array([False, True, False, True])
    truncated = np.array([False, False, True, True])
    got_stop, got_final = bootstrap_masks(terminated, truncated, mode)
    assert got_stop.tolist() == stop and got_final.tolist() == final


def test_replay_buffer_wraps_around_and_round_trips():
    rb = ReplayBuffer(capacity=5, obs_dim=2, res_dim=1, keep_base=True, device="cpu")
    for step in range(3):  # 2 envs per step: 6 transitions into 5 slots
        obs = torch.full((2, 2), float(step))
        rb.add(obs, obs + 1, torch.full((2, 1), step), torch.zeros(2, 1), torch.ones(2, 1),
               torch.full((2,), -1.0), torch.tensor([0.0, 1.0]))
    assert len(rb) == 5 and rb.full and rb.pos == 1
    assert rb.obs[0, 0] == 2  # the oldest transition was overwritten
    o, no, a, r, d = rb.sample(64)
    np.testing.assert_array_equal(no - o, 1)
    np.testing.assert_array_equal(a[:, 0], o[:, 0])  # residual column stored next to its observation
    np.testing.assert_array_equal(a[:, 1:], [[0, 1]] * 64)  # then base and next base
    chronological = rb.obs[:, 0].roll(-rb.pos)  # oldest first: one of step 0's two rows is left
    np.testing.assert_array_equal(chronological, [0, 1, 1, 2, 2])
    copy = ReplayBuffer(capacity=5, obs_dim=2, res_dim=1, keep_base=True, device="cpu")
    copy.load_state_dict(rb.state_dict())
    assert torch.equal(copy.obs[:, 0], chronological) and copy.full and copy.pos == 0
    larger = ReplayBuffer(capacity=8, obs_dim=2, res_dim=1, keep_base=True, device="cpu")  # resumed, longer run
    larger.load_state_dict(rb.state_dict())
    assert len(larger) == 5 and not larger.full and larger.pos == 5  # new rows go after the old, no empty rows
    assert torch.equal(larger.obs[:5, 0], chronological)
    smaller = ReplayBuffer(capacity=3, obs_dim=2, res_dim=1, keep_base=True, device="cpu")
    smaller.load_state_dict(rb.state_dict())
    assert torch.equal(smaller.obs[:, 0], chronological[-3:]) and smaller.full and smaller.pos == 0  # the newest


# ------------------------------------------------------------------------------------------------ #
# One SAC update against a hand computation
# ------------------------------------------------------------------------------------------------ #
class ConstQ(torch.nn.Module):
    """A critic whose value is one parameter, whatever the input."""

    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))

    def forward(self, obs, act):
        return self.value.expand(obs.shape[0], 1)


class FixedActor(torch.nn.Module):
    """An actor whose sample is tanh(mu) and whose log-probability is one parameter."""

    def __init__(self, res_dim, log_pi):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(res_dim))
        self.log_pi = torch.nn.Parameter(torch.tensor(float(log_pi)))

    def get_action(self, x):
        a = torch.tanh(self.mu).expand(x.shape[0], -1)
        return a, self.log_pi.expand(x.shape[0], 1), a


def one_update(updates=1, autotune=False, log_pi=0.4, res_dim=2, **flags):
    """sac_update on a batch of two transitions: r = [-1, 0], stop = [0, 1]; plain SGD so steps are exact."""
    args = OnlineArgs(gamma=0.9, tau=0.01, critic_input="res", autotune=autotune, **flags)
    actor = FixedActor(res_dim, log_pi)
    critics, targets = (ConstQ(1.0), ConstQ(2.0)), (ConstQ(-3.0), ConstQ(-5.0))
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha = log_alpha.exp().detach() if autotune else torch.tensor(0.5)
    batch = (torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, res_dim), torch.tensor([-1.0, 0.0]),
             torch.tensor([0.0, 1.0]))
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    learner = Learner(actor, *critics, *targets, sgd([c.value for c in critics]), sgd(actor.parameters()), log_alpha,
                      sgd([log_alpha]), alpha)
    losses = sac_update(args, learner, batch, updates, res_dim, False, {})
    return actor, critics, targets, log_alpha, learner.alpha, losses


def test_sac_update_matches_a_hand_computation():
    actor, (qf1, qf2), (qf1_t, qf2_t), _, alpha, losses = one_update()
    # target = r + (1 - stop) * gamma * (min(Q1', Q2') - alpha * log_pi') with the TARGET critics (-3, -5):
    target = np.array([-1 + 0.9 * (-5.0 - 0.5 * 0.4), 0.0])  # [-5.68, 0]
    # loss = mean((Q - target)^2) with the ONLINE critics (1, 2); SGD: Q -= 0.1 * mean(2 (Q - target))
    np.testing.assert_allclose(losses["qf1_loss"].item(), np.mean((1.0 - target) ** 2), rtol=1e-6)
    np.testing.assert_allclose(losses["qf2_loss"].item(), np.mean((2.0 - target) ** 2), rtol=1e-6)
    q1 = 1.0 - 0.1 * np.mean(2 * (1.0 - target))  # 0.232
    q2 = 2.0 - 0.1 * np.mean(2 * (2.0 - target))  # 1.032
    np.testing.assert_allclose([qf1.value.item(), qf2.value.item()], [q1, q2], rtol=1e-6)
    # targets after the update: (1 - tau) * old + tau * the updated online critic
    np.testing.assert_allclose([qf1_t.value.item(), qf2_t.value.item()],
                               [0.99 * -3.0 + 0.01 * q1, 0.99 * -5.0 + 0.01 * q2], rtol=1e-6)
    # actor: loss = mean(alpha * log_pi - min Q) -> d/d log_pi = alpha = 0.5
    np.testing.assert_allclose(actor.log_pi.item(), 0.4 - 0.1 * 0.5, rtol=1e-6)
    assert alpha.item() == 0.5 and "sac_alpha_loss" not in losses  # fixed temperature


def test_sac_update_honours_policy_and_target_frequencies():
    actor, _, (qf1_t, qf2_t), *_ = one_update(updates=1, policy_frequency=2, target_network_frequency=2)
    assert actor.log_pi.item() == pytest.approx(0.4) and actor.mu.abs().sum().item() == 0  # actor not updated
    assert (qf1_t.value.item(), qf2_t.value.item()) == (-3.0, -5.0)  # targets not updated
    actor, _, (qf1_t, _), *_ = one_update(updates=2, policy_frequency=2, target_network_frequency=2)
    assert actor.log_pi.item() == pytest.approx(0.35) and qf1_t.value.item() != -3.0
    actor, _, (qf1_t, _), *_ = one_update(updates=3, policy_frequency=3, target_network_frequency=2)
    assert actor.log_pi.item() == pytest.approx(0.35) and qf1_t.value.item() == -3.0


def test_temperature_autotune_aims_at_minus_the_residual_dim():
    # alpha = exp(0) = 1: the actor step moves log_pi 7 -> 6.9; the alpha loss -log_alpha * (log_pi - res_dim)
    # has gradient -(6.9 - 4): SGD raises log_alpha by 0.1 * 2.9
    *_, log_alpha, alpha, losses = one_update(autotune=True, log_pi=7.0, res_dim=4)
    np.testing.assert_allclose(log_alpha.item(), 0.29, rtol=1e-5)
    np.testing.assert_allclose(alpha.item(), np.exp(0.29), rtol=1e-5)
    assert "sac_alpha_loss" in losses


def test_temperature_rises_from_initialisation():
    """At initialisation the actor's log std is ~-9, so log pi is far above -res_dim: alpha must go up."""
    torch.manual_seed(0)
    obs_dim, res_dim = 5, 8
    args = OnlineArgs(autotune=True, critic_input="res")
    actor = ResidualActor(obs_dim, res_dim, hidden=32)
    critics = tuple(SoftQNetwork(obs_dim, res_dim, 32) for _ in range(2))
    targets = tuple(SoftQNetwork(obs_dim, res_dim, 32) for _ in range(2))
    log_alpha = torch.zeros(1, requires_grad=True)
    batch = (torch.randn(64, obs_dim), torch.randn(64, obs_dim), torch.rand(64, res_dim) * 2 - 1,
             -torch.ones(64), torch.zeros(64))
    params = [p for c in critics for p in c.parameters()]
    learner = Learner(actor, *critics, *targets, torch.optim.Adam(params), torch.optim.Adam(actor.parameters()),
                      log_alpha, torch.optim.Adam([log_alpha], lr=1e-3), log_alpha.exp().detach())
    sac_update(args, learner, batch, 1, res_dim, False, {})
    assert log_alpha.item() > 0 and learner.alpha.item() > 1


def test_residual_actor_squashes_and_scores_its_samples():
    torch.manual_seed(0)
    actor = ResidualActor(in_dim=4, act_dim=3, log_std_min=-5)
    x = torch.randn(16, 4)
    mean, log_std = actor(x)
    assert ((log_std >= -5) & (log_std <= 2)).all()
    torch.manual_seed(1)
    action, log_prob, det = actor.get_action(x)
    assert (action.abs() <= 1).all() and log_prob.shape == (16, 1)
    np.testing.assert_allclose(det.detach(), torch.tanh(mean).detach(), atol=1e-6)
    np.testing.assert_allclose(actor.get_eval_action(x).detach(), torch.tanh(mean).detach(), atol=1e-6)
    torch.manual_seed(1)  # the same draw, scored by hand: Gaussian log-density minus log|d tanh|
    u = torch.distributions.Normal(mean, log_std.exp()).rsample()
    manual = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)).sum(1)
    np.testing.assert_allclose(log_prob.squeeze(1).detach(), manual.detach(), rtol=1e-5, atol=1e-5)
    # heads start near zero (orthogonal, gain 0.01): the first residuals are small and deterministic-ish
    assert actor.fc_mean.weight.abs().max() < 0.05


def test_actor_gradient_is_the_same_with_the_critics_frozen():
    torch.manual_seed(0)
    actor, qf1, qf2 = ResidualActor(6, 3, hidden=16), SoftQNetwork(6, 3, hidden=16), SoftQNetwork(6, 3, hidden=16)
    assert actor.fc_mean.weight.shape == (3, 16) and qf1.net[0].weight.shape == (16, 9)
    obs = torch.randn(32, 6)

    def actor_grads(freeze: bool):
        actor.zero_grad(), qf1.zero_grad(), qf2.zero_grad()
        torch.manual_seed(1)
        pi, log_pi, _ = actor.get_action(obs)
        with frozen(qf1, qf2) if freeze else torch.enable_grad():
            (0.01 * log_pi - torch.min(qf1(obs, pi), qf2(obs, pi))).mean().backward()
        return [p.grad.clone() for p in actor.parameters()], qf1.net[0].weight.grad

    plain, plain_q = actor_grads(False)
    skipped, skipped_q = actor_grads(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, skipped)) and plain[0].abs().sum() > 0
    assert plain_q is not None and skipped_q is None  # only the discarded critic gradients were skipped
    assert all(p.requires_grad for p in qf1.parameters())  # and the critics train again afterwards


def test_critic_layer_norm_bounds_q_far_from_the_data():
    torch.manual_seed(0)
    plain, normed = SoftQNetwork(6, 3, hidden=32), SoftQNetwork(6, 3, hidden=32, layer_norm=True)
    # without LayerNorm the parameters keep the original checkpoints' names
    assert list(plain.state_dict()) == [f"net.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]
    obs, act = torch.randn(64, 6), torch.randn(64, 3)
    with torch.no_grad():
        # normalized features have norm <= sqrt(hidden), so |Q| <= |w_out| sqrt(hidden) + |b_out| at any input
        head = normed.net[-1]
        bound = head.weight.norm() * 32 ** 0.5 + head.bias.abs()
        for scale in (1.0, 1e3, 1e6):
            assert normed(obs * scale, act * scale).abs().max() <= bound + 1e-5
        # ... while a plain ReLU critic grows with its input (how its Q ran away on rare states)
        assert plain(obs * 1e6, act * 1e6).abs().max() > 1e3 * plain(obs, act).abs().max()


def test_resume_refuses_a_checkpoint_with_other_networks():
    saved = dataclasses.asdict(OnlineArgs())
    del saved["critic_layer_norm"]  # a checkpoint from before the flag existed: built without LayerNorm
    check_resume_shapes(saved, OnlineArgs())
    with pytest.raises(UsageError, match="critic_layer_norm=False, this run has critic_layer_norm=True.*--critic-layer-norm"):
        check_resume_shapes(saved, OnlineArgs(critic_layer_norm=True))
    with pytest.raises(UsageError, match="hidden_dim=256, this run has hidden_dim=128"):
        check_resume_shapes(saved, OnlineArgs(hidden_dim=128))


def test_crossed_counts_boundaries():
    assert crossed(64, 64, 64) and not crossed(96, 64, 64 * 3) and crossed(192, 64, 64 * 3)
    assert not crossed(64, 64, None)


def test_validation_errors():
    with pytest.raises(ValueError, match="multiple of --num-envs"):
        validate(OnlineArgs(num_envs=16, training_freq=40))
    with pytest.raises(ValueError, match="whole number of updates"):
        validate(OnlineArgs(num_envs=2, training_freq=2, utd=0.25))
    with pytest.raises(ValueError, match="--hidden-dim 0: must be at least 1"):
        validate(OnlineArgs(hidden_dim=0))
    with pytest.raises(ValueError, match="--update-threads 0: must be at least 1"):
        validate(OnlineArgs(update_threads=0))


def write_run(tmp_path, state, args):
    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "args.json").write_text(json.dumps(args))
    torch.save(state, tmp_path / "checkpoints" / "best.pt")
    return tmp_path / "checkpoints" / "best.pt"


DP_ARGS = {"obs_horizon": 2, "act_horizon": 8, "pred_horizon": 16, "diffusion_step_embed_dim": 64,
           "unet_dims": [64, 128, 256], "n_groups": 8, "control_mode": "pd_ee_delta_pose"}


def test_loading_prefers_ema_weights_and_freezes(tmp_path):
    from pi_dec.base_policies import DiffusionPolicy

    a, b = DiffusionPolicy(50, 7, 2, 8, 16), DiffusionPolicy(50, 7, 2, 8, 16)
    ckpt = write_run(tmp_path, {"agent": a.state_dict(), "ema_agent": b.state_dict()}, DP_ARGS)
    policy = load_base(ckpt, {"act_horizon": 4})
    assert torch.equal(policy.noise_pred_net.final_conv[1].weight, b.noise_pred_net.final_conv[1].weight)
    assert policy.act_horizon == 4 and policy.config["act_horizon"] == 4  # the online script's override wins
    assert (policy.obs_dim, policy.act_dim, policy.res_obs_dim) == (50, 7, 50)  # read off the weights
    assert not any(p.requires_grad for p in policy.parameters())


def test_checkpoint_errors_are_clear(tmp_path):
    from pi_dec.base_policies import BeTPolicy, DiffusionPolicy

    with pytest.raises(CheckpointError, match="not found"):
        load_base(tmp_path / "nope.pt")
    ckpt = write_run(tmp_path / "dp", {"ema_agent": DiffusionPolicy(50, 7, 2, 8, 16).state_dict()}, DP_ARGS)
    with pytest.raises(CheckpointError, match="is a DiffusionPolicy checkpoint, but this script expects a BeTPolicy one: "
                                              "use online/pi_dec_diffusion_maniskill2.py"):
        load_base(ckpt, expect=BeTPolicy)
    (tmp_path / "dp" / "args.json").write_text(json.dumps(DP_ARGS | {"unet_dims": [32, 64]}))
    with pytest.raises(CheckpointError, match="does not fit its run's args.json: shape mismatch"):
        load_base(ckpt)
    (tmp_path / "dp" / "args.json").unlink()
    with pytest.raises(CheckpointError, match="args.json not found"):
        load_base(ckpt)
    ckpt = write_run(tmp_path / "other", {"agent": {"w": torch.zeros(3)}}, DP_ARGS)
    with pytest.raises(CheckpointError, match="neither a Diffusion Policy .* nor a BeT .*--base-policy module:factory"):
        load_base(ckpt)
    bet_args = {"context_window": 20, "n_layers": 4, "n_heads": 4, "n_embedding": 128, "n_clusters": 8}
    ckpt = write_run(tmp_path / "bet", {"something": BeTPolicy(50, 7).state_dict()}, bet_args)
    with pytest.raises(CheckpointError, match="none of the keys ema_agent, agent, actor, q"):
        load_base(ckpt)


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_damaged_base_checkpoints_are_one_line(tmp_path):
    from pi_dec.base_policies import DiffusionPolicy

    ckpt = write_run(tmp_path, {"ema_agent": DiffusionPolicy(50, 7, 2, 8, 16).state_dict()}, DP_ARGS)
    with pytest.raises(UsageError, match="--act-horizon 16: must be at most 15 with this base policy"):
        load_base(ckpt, {"act_horizon": 16})
    (tmp_path / "args.json").write_text(json.dumps({"context_window": 20, "control_mode": "pd_ee_delta_pose"}))
    with pytest.raises(CheckpointError, match="args.json lacks obs_horizon, act_horizon, .*not the args.json of an offline DiffusionPolicy run"):
        load_base(ckpt)
    (tmp_path / "args.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="args.json cannot be read as JSON"):
        load_base(ckpt)
    (tmp_path / "args.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="args.json holds a JSON list, not the settings of a run"):
        load_base(ckpt)
    (tmp_path / "args.json").write_text(json.dumps(DP_ARGS))
    torch.save({"ema_agent": {"w": np.zeros(3)}}, ckpt)  # pickled objects: refused by weights_only=True
    with pytest.raises(CheckpointError, match="best.pt cannot be read as a checkpoint: it holds Python objects"):
        load_base(ckpt)
    ckpt.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="best.pt cannot be read as a checkpoint"):
        load_base(ckpt)
    torch.save({"ema_agent": DiffusionPolicy(50, 7, 2, 8, 16).state_dict()}, ckpt)
    cut_in_half(ckpt)
    with pytest.raises(CheckpointError, match="best.pt cannot be read as a checkpoint") as err:
        load_base(ckpt)
    assert "\n" not in str(err.value)


def test_rng_states_survive_a_weights_only_load(tmp_path):
    import random

    from pi_dec.run import rng_states, set_rng_states

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.randn()  # numpy caches the second Gaussian of a pair: part of its state
    torch.save({"rng": rng_states()}, tmp_path / "rng.pt")
    expected = random.random(), np.random.randn(), np.random.rand(), torch.rand(3)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = random.random(), np.random.randn(), np.random.rand(), torch.rand(3)
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def online_checkpoint(**changes):
    """What an online run's checkpoint holds, small (the keys --resume needs)."""
    from pi_dec.run import rng_states

    actor = ResidualActor(4, 2)
    ckpt = {"res_actor": actor.state_dict(), "qf1": {}, "qf2": {}, "qf1_online": {}, "qf2_online": {},
            "q_optimizer": {}, "actor_optimizer": {}, "alpha_optimizer": {}, "log_sac_alpha": torch.zeros(1),
            "global_step": 32, "decisions": 16, "updates": 4, "learning_started": True, "rng": rng_states(),
            "args": dataclasses.asdict(OnlineArgs())}
    return ckpt | changes


def test_resume_reads_only_online_checkpoints_of_this_task(tmp_path):
    from pi_dec.policy_decorator import read_resume

    path = tmp_path / "32.pt"
    torch.save(online_checkpoint(), path)
    assert read_resume(OnlineArgs(resume=str(path)))["global_step"] == 32
    with pytest.raises(UsageError, match="the checkpoint's run is on PegInsertionSide-v2, this run on StackCube-v0; "
                                         "pass --env-id PegInsertionSide-v2"):
        read_resume(OnlineArgs(resume=str(path), env_id="StackCube-v0"))
    with pytest.raises(CheckpointError, match="--resume .*nope.pt: not found"):
        read_resume(OnlineArgs(resume=str(tmp_path / "nope.pt")))
    torch.save({"ema_agent": ResidualActor(4, 2).state_dict()}, path)  # an offline checkpoint
    with pytest.raises(CheckpointError, match="32.pt: not a checkpoint of an online run \\(it lacks res_actor, qf1"):
        read_resume(OnlineArgs(resume=str(path)))
    old = online_checkpoint(rng={"numpy": np.random.get_state()})  # as written before RNG states were tensors
    torch.save(old, path)
    with pytest.raises(CheckpointError, match="32.pt cannot be read as a checkpoint: it holds Python objects"):
        read_resume(OnlineArgs(resume=str(path)))
    torch.save(online_checkpoint(), path)
    cut_in_half(path)
    with pytest.raises(CheckpointError, match="32.pt cannot be read as a checkpoint"):
        read_resume(OnlineArgs(resume=str(path)))


def test_truncated_checkpoints_stop_the_script_with_one_line(tmp_path):
    """--base-policy-ckpt and --resume cut in half: exit status 2 and one line, from the real script."""
    from pi_dec.bench import make_base_checkpoint

    base = make_base_checkpoint("diffusion", tmp_path / "base", 50, 7, "pd_ee_delta_pose")
    broken = tmp_path / "broken" / "checkpoints" / "best.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(base.read_bytes()[:base.stat().st_size // 2])
    (tmp_path / "broken" / "args.json").write_text((tmp_path / "base" / "args.json").read_text())
    resume = tmp_path / "run" / "checkpoints" / "32.pt"
    resume.parent.mkdir(parents=True)
    torch.save(online_checkpoint(), resume)
    cut_in_half(resume)
    script = [sys.executable, str(ROOT / "online/pi_dec_diffusion_maniskill2.py"), "--output-dir", str(tmp_path / "out"),
              "--num-envs", "2", "--training-freq", "8", "--num-eval-envs", "1", "--num-eval-episodes", "1", "--sync-venv"]
    procs = [subprocess.Popen([*script, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for extra in (["--base-policy-ckpt", str(broken)], ["--base-policy-ckpt", str(base), "--resume", str(resume)])]
    for proc, path in zip(procs, (broken, resume)):
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
        assert stderr.strip().splitlines()[-1].startswith(f"error: {path} cannot be read as a checkpoint"), stderr[-2000:]
    assert not (tmp_path / "out").exists()  # stopped before a run folder was made


# ------------------------------------------------------------------------------------------------ #
# The scripts, end to end (base checkpoints written by the offline smoke runs)
# ------------------------------------------------------------------------------------------------ #
SMALL = ["--num-envs", 2, "--training-freq", 8, "--learning-starts", 16, "--batch-size", 16, "--eval-freq", 32,
         "--num-eval-episodes", 1, "--num-eval-envs", 1, "--log-freq", 16, "--save-freq", 32, "--num-threads", 1]


def scalar_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def check_buffer(buffer, num_envs, act_horizon, res_dim, keep_base):
    """The transitions a real run stored. Row k holds decision k // num_envs of env k % num_envs, so row
    k + num_envs is the same env's next decision. Returns the rows that ended in a time-out."""
    obs, next_obs, rew, stop = (buffer[key].numpy() for key in ("obs", "next_obs", "rewards", "dones"))
    actions = buffer["actions"].numpy()
    assert actions.shape[1] == (3 * res_dim if keep_base else res_dim)
    assert set(np.unique(rew)) <= {-1.0, 0.0}  # sparse success reward - 1
    np.testing.assert_array_equal(stop, rew == 0)  # bootstrapping stops at terminations (successes) only
    steps, timeouts = np.zeros(num_envs, int), []
    for k in range(len(rew) - num_envs):
        env = k % num_envs
        steps[env] += act_horizon
        if rew[k] == 0:  # a success ended the episode
            steps[env] = 0
        elif steps[env] >= MAX_EPISODE_STEPS:  # a time-out: the final observation, and bootstrapping goes on
            steps[env] = 0
            timeouts.append(k)
            assert stop[k] == 0 and not np.allclose(next_obs[k], obs[k + num_envs]), k
        else:  # the episode goes on: the next row starts where this one ended
            np.testing.assert_array_equal(next_obs[k], obs[k + num_envs])
            if keep_base:  # the next state's base action is the base action taken there
                np.testing.assert_array_equal(actions[k, 2 * res_dim:], actions[k + num_envs, res_dim:2 * res_dim])
    return timeouts


# Long enough for the 200-step episodes to end in training (decisions of 4 steps for DP, 1 for BeT).
# DP never explores (--prog-explore huge); BeT always does (--prog-explore 1).
@pytest.mark.parametrize("kind, script, env_id, total, layer_norm, prog_explore", [
    ("diffusion", "online/pi_dec_diffusion_maniskill2.py", "PegInsertionSide-v2", 112, True, 10**9),
    ("bet", "online/pi_dec_bet_maniskill2.py", "StackCube-v0", 416, False, 1),
])
def test_online_scripts_learn_evaluate_and_checkpoint(offline_runs, tmp_path, kind, script, env_id, total, layer_norm,
                                                      prog_explore):
    ckpt = offline_runs[kind] / "checkpoints" / "best.pt"
    run_script(script, "--env-id", env_id, "--base-policy-ckpt", ckpt, "--total-timesteps", total,
               "--output-dir", tmp_path, "--critic-input", "concat", "--actor-input", "obs_base_action", *SMALL,
               "--prog-explore", prog_explore, *(["--critic-layer-norm"] if layer_norm else []))
    run = next(next((tmp_path / env_id).iterdir()).iterdir())
    saved = torch.load(run / "checkpoints" / f"{total}.pt", weights_only=True)  # as --resume reads it
    assert {"res_actor", "qf1", "qf2", "log_sac_alpha"} <= set(saved)
    assert saved["global_step"] == total and saved["updates"] > 0  # updates really ran
    assert saved["log_sac_alpha"].item() != 0.0  # the temperature moved
    assert ("net.1.weight" in saved["qf1"]) == layer_norm  # net.1 is a LayerNorm only with --critic-layer-norm
    tags = scalar_tags(run)
    assert {"eval/success", "train/success", "losses/qf1_loss", "losses/actor_loss", "time/SPS",
            "time/env_steps"} <= tags
    args = json.loads((run / "args.json").read_text())
    assert args["base_policy"]["control_mode"] == ("pd_ee_delta_pose" if kind == "diffusion" else "pd_ee_delta_pos")

    horizon = args["act_horizon_executed"]
    res_dim = horizon * (7 if kind == "diffusion" else 4)
    timeouts = check_buffer(saved["buffer"], 2, horizon, res_dim, keep_base=True)
    assert timeouts == [98, 99] if kind == "diffusion" else timeouts == [398, 399]  # decision 50 (DP) / 200 (BeT)
    res = saved["buffer"]["actions"][:, :res_dim]
    if kind == "diffusion":  # exploration never switched on: the base acted alone
        assert torch.all(res == 0)
    else:  # always on: uniform residuals until the first update (after 16 transitions), then the actor's
        assert torch.all(res[:16] != 0) and res[:16].abs().max() <= 1 and res.abs().max() <= 1
        assert res[16:].std() < res[:16].std()  # the fresh actor's samples are nearly deterministic


def test_resume_after_kill_restores_the_run(offline_runs, tmp_path):
    """Killed after its checkpoint at 32, the run resumes from it. The resumed part is told to make no updates,
    so whatever it saves of the networks, the temperature and the optimizers must be the checkpoint's."""
    ckpt = offline_runs["diffusion"] / "checkpoints" / "best.pt"
    cmd = [sys.executable, str(ROOT / "online/pi_dec_diffusion_maniskill2.py"), "--env-id", "PegInsertionSide-v2",
           "--base-policy-ckpt", str(ckpt), "--total-timesteps", "20000", "--output-dir", str(tmp_path),
           "--sync-venv", "--critic-input", "res", *map(str, SMALL)]  # res: the buffer keeps no base actions
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    first = None
    deadline = time.time() + 600
    while time.time() < deadline and first is None:
        time.sleep(0.5)
        found = list(tmp_path.glob("*/*/*/checkpoints/32.pt"))
        first = found[0] if found else None
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert first is not None, "no checkpoint written"
    run = first.parent.parent
    state = torch.load(first, weights_only=True)
    assert state["global_step"] == 32 and len(state["buffer"]["rewards"]) == 32 and state["updates"] > 0
    check_buffer(state["buffer"], 2, 4, 4 * 7, keep_base=False)
    run_script("online/pi_dec_diffusion_maniskill2.py", "--env-id", "PegInsertionSide-v2", "--base-policy-ckpt",
               ckpt, "--total-timesteps", 40, "--output-dir", tmp_path, "--resume", first, "--critic-input", "res",
               *SMALL, "--learning-starts", 10**6)
    final = torch.load(run / "checkpoints" / "40.pt", weights_only=True)
    assert final["global_step"] == 40 and final["decisions"] == 20 and final["updates"] == state["updates"]
    assert final["learning_started"]  # the residual actor, not uniform noise, acted after the resume
    for key in ("res_actor", "qf1", "qf2", "qf1_online", "qf2_online"):
        for name, value in state[key].items():
            assert torch.equal(final[key][name], value), (key, name)
    assert torch.equal(final["log_sac_alpha"], state["log_sac_alpha"])
    for key in ("q_optimizer", "actor_optimizer", "alpha_optimizer"):
        for i, saved in state[key]["state"].items():
            for name, value in saved.items():
                assert torch.equal(final[key]["state"][i][name], value), (key, i, name)
    for key in ("obs", "next_obs", "actions", "rewards", "dones"):
        assert torch.equal(final["buffer"][key][:32], state["buffer"][key])  # the restored rows ...
    assert len(final["buffer"]["rewards"]) == 40  # ... plus 8 new transitions
    assert len(list(tmp_path.glob("*/*/*"))) == 1  # same run folder


def test_env_workers_do_not_load_torch():
    """Async env workers import only what building an env needs (memory: no torch per worker)."""
    import torch  # noqa: F401  (the parent has torch, like every script)

    from pi_dec.make_env import make_vec_env

    envs = make_vec_env("PickCube-v0", num_envs=2, seed=0, control_mode="pd_ee_delta_pose", asynchronous=True)
    try:
        for proc in envs.processes:
            maps = open(f"/proc/{proc.pid}/maps").read()
            assert "libtorch" not in maps
            assert "libsapien" in maps or "sapien" in maps  # it did build an env
    finally:
        envs.close()


def test_readme_commands_stop_cleanly_without_checkpoints(tmp_path):
    result = run_script("online/pi_dec_diffusion_maniskill2.py", "--env-id", "PegInsertionSide-v2",
                        "--base-policy-ckpt", tmp_path / "checkpoints/diffusion_PegInsertionSide/checkpoints/best.pt",
                        "--res-scale", "0.1", "--prog-explore", "30_000", check=False)
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr
