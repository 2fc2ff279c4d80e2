"""Offline base policies: window slicing and padding, BeT clustering and loss, checkpoint layout, and
both scripts end to end on generated demonstrations."""

import json

import numpy as np
import pytest
import torch

from conftest import ROOT, load_script, run_script
from pi_dec.base_policies import BeTPolicy, DiffusionPolicy, load_base, read_checkpoint
from pi_dec.demo_data import load_demos
from pi_dec.nets.bet import GPT, BehaviorTransformer, focal_loss, kmeans
from pi_dec.suites import suite_for
from pi_dec.run import UsageError

DP = load_script("offline/diffusion_policy_unet_maniskill2.py")
BET = load_script("offline/bet_maniskill2.py")
REFERENCE = json.loads((ROOT / "tests/golden/official_checkpoint_format.json").read_text())


def toy_traj(L, obs_dim=3, act_dim=3):
    """obs[t] = t; actions[t] = 100 + t, gripper (last dim) = -1 for even t, +1 for odd t."""
    obs = np.repeat(np.arange(L + 1, dtype=np.float32)[:, None], obs_dim, 1)
    act = np.repeat(100 + np.arange(L, dtype=np.float32)[:, None], act_dim, 1)
    act[:, -1] = np.where(np.arange(L) % 2 == 0, -1, 1)
    return {"obs": obs, "actions": act}


def test_dp_windows_cover_every_observation_with_padding():
    L = 5
    data = DP.WindowDataset([toy_traj(L)], obs_horizon=2, pred_horizon=4, control_mode="pd_ee_delta_pose", device="cpu")
    obs_seq, act_seq = data.batch(torch.arange(len(data)))
    assert len(data) == L  # starts -1 .. L-2: the latest observation runs over 0 .. L-1
    np.testing.assert_array_equal(obs_seq[:, -1, 0], np.arange(L))
    np.testing.assert_array_equal(obs_seq[0, :, 0], [0, 0])  # first observation repeated
    np.testing.assert_array_equal(act_seq[0, :, 0], [100, 100, 101, 102])  # first action repeated
    # last window: actions 3, 4, then "no motion" keeping the last gripper command (a4: -1)
    np.testing.assert_array_equal(act_seq[-1, :, 0], [103, 104, 0, 0])
    np.testing.assert_array_equal(act_seq[-1, :, -1], [1, -1, -1, -1])
    assert obs_seq.shape == (L, 2, 3) and act_seq.shape == (L, 4, 3)


def test_dp_windows_of_several_trajectories_do_not_mix():
    data = DP.WindowDataset([toy_traj(4), toy_traj(6)], obs_horizon=2, pred_horizon=8,
                            control_mode="pd_ee_delta_pos", device="cpu")
    obs_seq, act_seq = data.batch(torch.arange(len(data)))
    assert len(data) == 4 + 6
    second = slice(4, 10)
    np.testing.assert_array_equal(obs_seq[second][:, -1, 0], np.arange(6))
    assert (act_seq[4, :, 0] >= 0).all() and act_seq[4, 0, 0] == 100  # starts from its own first action


def test_dp_refuses_control_modes_without_a_stay_action():
    with pytest.raises(UsageError, match="'pd_ee_pose'.*delta mode"):
        DP.pad_action_for("pd_ee_pose", torch.ones(8))
    with pytest.raises(UsageError, match="pd_joint_vel"):
        DP.pad_action_for("pd_joint_vel", torch.ones(8))


def test_dp_pads_absolute_joint_targets_with_the_last_action():
    """Adroit's pd_joint_pos: "stay" is the last target again, every joint (not only a gripper)."""
    last = torch.tensor([0.25, -0.5, 0.75])
    torch.testing.assert_close(DP.pad_action_for("pd_joint_pos", last), last)
    np.testing.assert_array_equal(DP.pad_action_for("pd_ee_delta_pose", last), [0, 0, 0.75])
    np.testing.assert_array_equal(DP.pad_action_for("base_pd_joint_vel_arm_pd_joint_vel", last), [0, 0, 0.75])
    data = DP.WindowDataset([toy_traj(5)], obs_horizon=2, pred_horizon=4, control_mode="pd_joint_pos", device="cpu")
    _, act_seq = data.batch(torch.arange(len(data)))
    np.testing.assert_array_equal(act_seq[-1, :, 0], [103, 104, 104, 104])


def test_bet_windows_and_short_trajectories(capsys):
    data = BET.WindowDataset([toy_traj(5), toy_traj(2)], context_window=3, device="cpu")
    obs_seq, act_seq = data.batch(torch.arange(len(data)))
    assert len(data) == 2  # starts 0, 1 (NOTE(original): start L - window is not used); the 2-step demo skipped
    np.testing.assert_array_equal(obs_seq[:, :, 0], [[0, 1, 2], [1, 2, 3]])
    np.testing.assert_array_equal(act_seq[:, :, 0], [[100, 101, 102], [101, 102, 103]])
    assert "Skipped trajectory #1: 2 steps < context window 3" in capsys.readouterr().out


def test_kmeans_sees_the_actions_of_short_trajectories_too():
    trajs = [toy_traj(5), toy_traj(2)]
    data = BET.WindowDataset(trajs, context_window=3, device="cpu")
    actions = BET.all_actions(trajs)
    assert len(actions) == 7 and len(data.act) == 5  # the 2-step demo trains nothing but is clustered
    np.testing.assert_array_equal(actions[5:, 0], [100, 101])


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    a = torch.randn(200, 2) * 0.05 + torch.tensor([1.0, 1.0])
    b = torch.randn(200, 2) * 0.05 + torch.tensor([-1.0, 0.0])
    centers = kmeans(torch.cat([a, b]), k=2, iters=20)
    found = sorted(centers.tolist())
    np.testing.assert_allclose(found, [[-1.0, 0.0], [1.0, 1.0]], atol=0.05)


def test_kmeans_reseeds_empty_clusters():
    torch.manual_seed(0)
    x = torch.zeros(50, 2)
    x[25:] = 1.0  # only two distinct points for three clusters: one cluster is always empty
    centers = kmeans(x, k=3, iters=5)
    assert torch.isfinite(centers).all()


def test_focal_loss_matches_its_definition():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    p = torch.softmax(logits, -1)[torch.arange(2), target]
    expected = (-(1 - p) ** 2 * p.log()).mean()
    assert torch.isclose(focal_loss(logits, target, gamma=2.0), expected)
    assert torch.isclose(focal_loss(logits, target, gamma=0.0), torch.nn.functional.cross_entropy(logits, target))


def test_bet_loss_uses_the_nearest_cluster_and_its_offset():
    torch.manual_seed(0)
    gpt = GPT(input_dim=2, output_dim=16, block_size=3, n_layer=1, n_head=1, n_embd=8, dropout=0.0)
    bet = BehaviorTransformer(act_dim=2, gpt_model=gpt, n_clusters=2)
    bet._cluster_centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    obs = torch.randn(4, 3, 2)
    act = torch.tensor([[0.9, 1.2]]).repeat(4, 3, 1)  # nearest: cluster 1, offset (-0.1, 0.2)
    loss, stats = bet.loss(obs, act)
    logits, offsets = bet._heads(obs)
    expected_offset = torch.nn.functional.mse_loss(offsets[:, :, 1], act - bet._cluster_centers[1])
    expected_cls = focal_loss(logits.reshape(-1, 2), torch.ones(12, dtype=torch.long))
    assert torch.isclose(stats["offset_loss"], expected_offset)
    assert torch.isclose(loss, expected_cls + 1000 * expected_offset)
    with torch.no_grad():
        best = logits.argmax(-1)  # acting: arg-max cluster + its offset
        expected = bet._cluster_centers[best] + offsets.gather(2, best[..., None, None].expand(4, 3, 1, 2)).squeeze(2)
        np.testing.assert_allclose(bet.act(obs), expected, atol=1e-6)


def test_bet_optimizer_decays_only_transformer_linear_weights():
    policy = BeTPolicy(obs_dim=5, act_dim=2, context_window=4, n_clusters=3, n_layers=1, n_heads=1, n_embedding=8)
    opt = BET.make_optimizer(policy, lr=1e-3, weight_decay=2e-4)
    decay, no_decay, head = opt.param_groups
    linear_weights = {id(m.weight) for m in policy.net._gpt_model.modules() if isinstance(m, torch.nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear_weights and decay["weight_decay"] == 2e-4
    assert no_decay["weight_decay"] == 0.0 and not linear_weights & {id(p) for p in no_decay["params"]}
    assert head["weight_decay"] == 0.01  # NOTE(original): AdamW's default for the head group
    n_params = sum(p.numel() for p in policy.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_params


@pytest.mark.parametrize("kind", ["diffusion_policy", "behavior_transformer"])
def test_state_dict_layout_matches_official_checkpoints(kind):
    policy = DiffusionPolicy(50, 7, 2, 4, 16) if kind == "diffusion_policy" else BeTPolicy(50, 7)
    got = {k: list(v.shape) for k, v in policy.state_dict().items()}
    assert got == REFERENCE["state_dict_keys"][kind]["keys"]


def test_dp_executes_the_chunk_aligned_with_the_latest_observation(monkeypatch):
    policy = DiffusionPolicy(obs_dim=3, act_dim=2, obs_horizon=2, act_horizon=3, pred_horizon=8)
    policy.noise_scheduler.timesteps = torch.tensor([], dtype=torch.long)  # no denoising: returns the noise
    torch.manual_seed(0)
    full = torch.randn(1, 8, 2)
    torch.manual_seed(0)
    chunk = policy.get_action(torch.zeros(1, 2, 3))
    np.testing.assert_array_equal(chunk, full[:, 1:4])  # indices obs_horizon-1 .. obs_horizon-1+act_horizon-1


# ------------------------------------------------------------------------------------------------ #
# The scripts, end to end
# ------------------------------------------------------------------------------------------------ #
@pytest.mark.parametrize("kind", ["diffusion", "bet"])
def test_offline_scripts_write_loadable_checkpoints_in_the_official_layout(offline_runs, kind):
    run = offline_runs[kind]
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"best.pt", "6.pt", "12.pt"} <= names and not any(n.startswith(".") for n in names)
    state, run_args = read_checkpoint(run / "checkpoints" / "best.pt")
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert set(ckpt) == ({"agent", "ema_agent"} if kind == "diffusion" else {"agent"})
    used_online = REFERENCE["args_json_keys_used_online"]["diffusion_policy" if kind == "diffusion" else "behavior_transformer"]
    assert set(used_online) <= set(run_args)
    assert any(f.name.startswith("events.out.tfevents") for f in run.iterdir())
    # the online scripts' loader rebuilds the base from it and acts: (N, act_horizon, act_dim) chunks
    env_id, mode = run_args["env_id"], run_args["control_mode"]
    env = suite_for(env_id).make(env_id, mode, "state", None, {}, None)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    policy = load_base(run / "checkpoints" / "best.pt")
    assert (policy.obs_dim, policy.act_dim, policy.control_mode) == (obs_dim, act_dim, mode)  # read off the weights
    act, window, horizon = policy.act, policy.obs_horizon, policy.act_horizon
    obs_seq = torch.as_tensor(load_demos(run_args["demo_path"])[0]["obs"][:window], dtype=torch.float32)
    actions, seen = act(obs_seq[None].expand(3, -1, -1))
    assert torch.equal(seen, obs_seq[-1].expand(3, -1))  # the residual policy sees the latest observation
    assert actions.shape == (3, horizon, act_dim) and horizon == (8 if kind == "diffusion" else 1)
    assert torch.isfinite(actions).all()
    if kind == "diffusion":  # DDIM clips its estimate of the clean chunk: the last step returns it
        assert actions.abs().max() <= 1.0
    # (BeT adds learnt offsets to k-means centres: after 12 iterations nothing bounds them; the env clips.)


def test_ema_weights_are_stepped_and_saved_beside_the_raw_ones(offline_runs):
    ckpts = {tag: torch.load(offline_runs["diffusion"] / "checkpoints" / f"{tag}.pt", weights_only=True)
             for tag in ("6", "12", "best")}
    name = "noise_pred_net.final_conv.1.weight"
    assert not torch.equal(ckpts["12"]["agent"][name], ckpts["12"]["ema_agent"][name])  # EMA is not the raw weights
    assert not torch.equal(ckpts["6"]["ema_agent"][name], ckpts["12"]["ema_agent"][name])  # and it moved
    assert torch.equal(ckpts["best"]["ema_agent"][name], ckpts["12"]["ema_agent"][name])  # best: the one evaluation


def test_best_checkpoint_is_the_first_evaluation_with_the_highest_success(tmp_path):
    from pi_dec.policy_decorator import OnlineArgs
    from pi_dec.run import Run

    run = Run(OnlineArgs(output_dir=str(tmp_path), env_id="PickCube-v0"), "Test", __file__)
    chosen = [run.record_eval({"success": [s]}, step) for step, s in enumerate([0.2, 0.5, 0.5, 0.3, 0.6])]
    run.close()
    assert chosen == [True, True, False, False, True]  # a tie keeps the earlier checkpoint


def test_offline_evaluation_is_logged(offline_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in offline_runs.values():
        events = EventAccumulator(str(run))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert "eval/success" in tags and any(t.startswith("losses/") for t in tags)


@pytest.mark.parametrize("script", ["offline/diffusion_policy_unet_maniskill2.py", "offline/bet_maniskill2.py"])
def test_help_documents_every_flag(script):
    module = DP if "diffusion" in script else BET
    out = run_script(script, "--help").stdout
    for name in module.Args.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        assert flag in out, flag
    assert "exp-name STR" in out or "--exp-name" in out


@pytest.mark.parametrize("script, args", [
    ("offline/bet_maniskill2.py", ["--env-id", "TurnFaucet-v2", "--demo-path", "data/TurnFaucet/trajectory.h5"]),
    ("offline/diffusion_policy_unet_maniskill2.py", ["--env-id", "PushChair-v2", "--demo-path",
     "data/PushChair/trajectory.h5", "--control-mode", "base_pd_joint_vel_arm_pd_joint_vel", "--total-iters", "300_000"]),
])
def test_readme_commands_for_partnet_tasks_stop_cleanly(script, args, tmp_path):
    result = run_script(script, *args, "--asset-root", tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: PartNet-Mobility models") and "Traceback" not in result.stderr


def test_wrong_control_mode_is_a_clear_error(demos, tmp_path):
    stack_dir, _ = demos["StackCube-v0"]
    result = run_script("offline/bet_maniskill2.py", "--env-id", "StackCube-v0", "--demo-path",
                        stack_dir / "trajectory.h5", "--output-dir", tmp_path, check=False)  # default mode: pd_ee_delta_pose
    assert result.returncode == 2 and "recorded with control mode 'pd_ee_delta_pos'" in result.stderr
    # pi_dec.demos wrote the same demos in the other mode next to it: the message points there
    assert f"--demo-path {stack_dir / 'trajectory.state.pd_ee_delta_pose.h5'}" in result.stderr


def test_bet_needs_at_least_as_many_actions_as_clusters(tmp_path):
    from test_demo_data import write_demo

    demo = write_demo(tmp_path / "t.h5", lengths=(5, 6))
    args = BET.Args(env_id="PickCube-v0", demo_path=str(demo), output_dir=str(tmp_path / "out"), context_window=2,
                    n_clusters=12, batch_size=2, cuda=False)
    with pytest.raises(UsageError, match="--n-clusters 12: must be at most the 11 demonstrated actions"):
        BET.main(args)
    assert not (tmp_path / "out").exists()  # stopped before making a run folder
