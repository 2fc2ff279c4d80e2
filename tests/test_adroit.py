"""Adroit (gymnasium-robotics, MuJoCo) behind the suite seam: envs, expert demos, the four scripts."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import ROOT, run_script
from pi_dec.demo_data import load_demos
from pi_dec.make_env import make_env, make_vec_env
from pi_dec.suites import ADROIT_TASKS, AdroitSuite, UnknownEnvError, UsageError, suite_for

EXPERT_DIR = ROOT.parent / "shared" / "adroit"
needs_experts = pytest.mark.skipif(not EXPERT_DIR.is_dir(), reason=f"expert policies not found at {EXPERT_DIR}")
DIMS = {"AdroitHandDoorSparse-v1": (39, 28), "AdroitHandHammerSparse-v1": (46, 26),
        "AdroitHandPenSparse-v1": (45, 24), "AdroitHandRelocateSparse-v1": (39, 30)}


@pytest.mark.parametrize("env_id", ADROIT_TASKS)
def test_every_adroit_task_steps_with_our_reward_and_time_limit(env_id):
    env = make_env(env_id, seed=0, control_mode="pd_joint_pos", obs_horizon=2, act_chunks=False)()
    obs, _ = env.reset(seed=0)
    assert np.asarray(obs).shape == (2, DIMS[env_id][0]) and env.action_space.shape == (DIMS[env_id][1],)
    for t in range(1, 201):
        obs, reward, terminated, truncated, info = env.step(np.zeros(DIMS[env_id][1]))
        assert reward == float(info["success"]) and terminated == info["success"]  # sparse success, ends there
        if terminated or truncated:
            break
    assert truncated and t == 200 and not info["success"]  # holding still succeeds at nothing


class SucceedsAt(gym.Env):
    """gymnasium-robotics' sparse reward (-0.1, 10 at success) with success at the given steps; 5 steps long."""
    observation_space = gym.spaces.Box(-1, 1, (3,))
    action_space = gym.spaces.Box(-1, 1, (2,))

    def __init__(self, steps):
        self.steps = steps

    def reset(self, seed=None, options=None):
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        success = self.t in self.steps
        return np.zeros(3, np.float32), 10.0 if success else -0.1, False, self.t == 5, {"success": success}


def test_success_ends_the_episode_with_reward_one():
    from pi_dec.suites import SuccessEndsEpisode

    env = SuccessEndsEpisode(SucceedsAt({3, 4, 5}))
    env.reset()
    assert [env.step(np.zeros(2))[1:3] for _ in range(3)] == [(0.0, False), (0.0, False), (1.0, True)]


def test_run_past_success_counts_the_steps_with_success():
    from pi_dec.suites import SuccessEndsEpisode

    env = SuccessEndsEpisode(SucceedsAt({3, 4}), end_at_success=False)
    for _ in range(2):  # the count starts again with each episode
        env.reset()
        steps = [env.step(np.zeros(2)) for _ in range(5)]
        assert [s[2] for s in steps] == [False] * 5 and [s[3] for s in steps] == [False] * 4 + [True]
        assert [s[1] for s in steps] == [0.0, 0.0, 1.0, 1.0, 0.0]
        assert [s[4]["success_steps"] for s in steps] == [0, 0, 1, 2, 2]


@needs_experts
def test_dapg_rule_counts_the_goal_steps_of_episodes_run_to_the_time_limit():
    """evaluate_on_seeds(strict=25) on Door with the (deterministic) expert: per episode, the steps with success
    over all 200, as a plain gymnasium loop from the same seed counts them."""
    from pi_dec.demos.adroit import load_expert
    from pi_dec.experiment import evaluate_on_seeds

    env_id, seeds = "AdroitHandDoorSparse-v1", [200_000, 200_001]
    expert = load_expert(env_id, EXPERT_DIR)
    out = evaluate_on_seeds(env_id, "pd_joint_pos", 1, lambda obs: np.stack([expert(o[-1].astype(np.float64))
                                                                             for o in obs])[:, None], seeds,
                            num_envs=2, strict=25)
    raw = gym.make(env_id, max_episode_steps=200)
    counts = []
    for seed in seeds:
        obs, _ = raw.reset(seed=seed)
        count = 0
        for _ in range(200):
            action = np.clip(expert(obs), raw.action_space.low, raw.action_space.high)
            obs, _, _, _, info = raw.step(action)
            count += bool(info["success"])
        counts.append(count)
    assert out["success_steps"] == counts and out["len"] == [200, 200]  # run on past the first success
    assert max(counts) > 25 and out["success_strict"] == [float(c > 25) for c in counts]
    assert out["success"] == [float(c > 0) for c in counts]


def test_suite_seam_answers_for_each_family():
    assert suite_for("AdroitHandDoorSparse-v1") is AdroitSuite and suite_for("PickCube-v0").name == "ManiSkill2"
    assert AdroitSuite.control_mode(None) == "pd_joint_pos" == suite_for("PickCube-v0").control_mode("pd_joint_pos")
    assert suite_for("PickCube-v0").control_mode(None) == "pd_ee_delta_pose"
    with pytest.raises(UsageError, match="--control-mode pd_ee_delta_pose: Adroit tasks have one control mode"):
        AdroitSuite.control_mode("pd_ee_delta_pose")
    with pytest.raises(UsageError, match="--obj-ids, --asset-root pick PartNet-Mobility models"):
        AdroitSuite.env_kwargs(["5014"], "/assets", None)
    with pytest.raises(UnknownEnvError, match="AdroitHandDoorSparse-v1"):
        suite_for("AdroitHandDoor-v1")  # the dense task is not one of ours
    with pytest.raises(UnknownEnvError, match="'AdroitHandHammerSparse-v2'; the Policy Decorator ones are Adroit"):
        suite_for("AdroitHandHammerSparse-v2")


def test_adroit_vector_envs_take_action_chunks():
    envs = make_vec_env("AdroitHandPenSparse-v1", num_envs=2, seed=0, control_mode="pd_joint_pos", obs_horizon=2)
    obs, _ = envs.reset(seed=0)
    obs, reward, *_ = envs.step(np.zeros((2, 4, 24)))
    assert obs.shape == (2, 2, 45) and reward.shape == (2,)
    envs.close()


# ------------------------------------------------------------------------------------------------ #
# Expert demonstrations
# ------------------------------------------------------------------------------------------------ #
@pytest.fixture(scope="module")
def adroit_demos(tmp_path_factory):
    """Three expert demos of Door (noisy execution) and two of each other task, by `python -m pi_dec.demos`."""
    if not EXPERT_DIR.is_dir():
        pytest.skip(f"expert policies not found at {EXPERT_DIR}")
    from pi_dec.demos.cli import Args, main

    root = tmp_path_factory.mktemp("adroit_demos")
    out = {}
    for env_id in ADROIT_TASKS:
        noisy = env_id == "AdroitHandDoorSparse-v1"
        folder = root / env_id
        summary = main(Args(env_id=env_id, num_demos=3 if noisy else 2, out=str(folder), expert_dir=str(EXPERT_DIR),
                            action_noise=0.1 if noisy else 0.0, extra_steps=4))
        out[env_id] = (folder, summary)
    return out


@needs_experts
@pytest.mark.parametrize("env_id", ADROIT_TASKS)
def test_expert_demos_succeed_and_load(adroit_demos, env_id):
    folder, summary = adroit_demos[env_id]
    trajs = load_demos(folder / "trajectory.h5", control_mode="pd_joint_pos")
    meta = json.loads((folder / "trajectory.json").read_text())
    assert len(trajs) == summary["successes"] == len(meta["episodes"])
    for traj, ep in zip(trajs, meta["episodes"]):
        assert traj["obs"].shape == (len(traj["actions"]) + 1, DIMS[env_id][0])
        assert traj["actions"].shape[1] == DIMS[env_id][1] and np.abs(traj["actions"]).max() <= 1.0
        assert len(traj["actions"]) == ep["first_success"] + 1 + 4  # recording ends 4 steps after success
    assert meta["env_info"]["env_id"] == env_id and meta["env_info"]["max_episode_steps"] == 200


@needs_experts
def test_noisy_demos_record_the_expert_action_not_the_executed_one(adroit_demos):
    """DART-style: with --action-noise the env drifts off the clean path, the label stays expert(obs)."""
    from pi_dec.demos.adroit import load_expert

    folder, summary = adroit_demos["AdroitHandDoorSparse-v1"]
    assert summary["action_noise"] == 0.1
    expert = load_expert("AdroitHandDoorSparse-v1", EXPERT_DIR)
    traj = load_demos(folder / "trajectory.h5")[0]
    labels = np.stack([expert(o.astype(np.float64)) for o in traj["obs"][:-1]])
    np.testing.assert_allclose(traj["actions"], labels, atol=1e-5)
    env = AdroitSuite.make("AdroitHandDoorSparse-v1", None, "state", None, {}, None)
    obs, _ = env.reset(seed=json.loads((folder / "trajectory.json").read_text())["episodes"][0]["episode_seed"])
    np.testing.assert_allclose(obs, traj["obs"][0], atol=1e-5)  # recorded from that seed
    clean = [env.step(expert(obs))[0] for _ in range(10)][-1]
    assert np.abs(clean - traj["obs"][10]).max() > 1e-3  # the noise did move the hand


@needs_experts
def test_record_executed_keeps_the_noisy_actions_that_made_the_demo(tmp_path):
    """--record-executed: the labels are the actions the env ran (replaying them from the seed retraces the demo),
    not the expert's."""
    from pi_dec.demos.adroit import generate, load_expert

    generate("AdroitHandDoorSparse-v1", 1, tmp_path, 0, 10, str(EXPERT_DIR), 0.2, 0, record_executed=True)
    traj = load_demos(tmp_path / "trajectory.h5")[0]
    expert = load_expert("AdroitHandDoorSparse-v1", EXPERT_DIR)
    assert np.abs(traj["actions"][0] - expert(traj["obs"][0].astype(np.float64))).max() > 0.05  # noisy labels
    env = AdroitSuite.make("AdroitHandDoorSparse-v1", None, "state", None, {}, None)
    obs, _ = env.reset(seed=json.loads((tmp_path / "trajectory.json").read_text())["episodes"][0]["episode_seed"])
    for t in range(10):
        obs = env.step(traj["actions"][t])[0]
        np.testing.assert_allclose(obs, traj["obs"][t + 1], atol=1e-3)
    assert json.loads((tmp_path / "summary.json").read_text())["record_executed"] is True


def test_missing_expert_folder_is_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pi_dec.demos", "--env-id", "AdroitHandHammerSparse-v1",
                             "--num-demos", "1", "--out", str(tmp_path / "d"), "--expert-dir", str(tmp_path / "nope")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "hammer_expert.npz not found: pass --expert-dir" in result.stderr


def test_damaged_or_foreign_expert_is_one_line(tmp_path):
    from pi_dec.demos.adroit import EXPERT_FILES, generate, load_expert

    path = tmp_path / EXPERT_FILES["AdroitHandHammerSparse-v1"]
    np.savez(path, layer_sizes=np.array([39, 8, 28]), W0=np.zeros((8, 39)), b0=np.zeros(8), W1=np.zeros((28, 8)),
             b1=np.zeros(28), in_shift=np.zeros(39), in_scale=np.ones(39), out_shift=np.zeros(28), out_scale=np.ones(28))
    with pytest.raises(UsageError, match="hammer_expert.npz maps 39 observations to 28 actions, "
                                         "AdroitHandHammerSparse-v1 has 46 and 26: the expert of another task"):
        generate("AdroitHandHammerSparse-v1", 1, tmp_path / "out", 0, 1, str(tmp_path), 0.0, 0)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(UsageError, match="hammer_expert.npz is not an expert policy .npz"):
        load_expert("AdroitHandHammerSparse-v1", tmp_path)


# ------------------------------------------------------------------------------------------------ #
# The four scripts on Door
# ------------------------------------------------------------------------------------------------ #
@pytest.fixture(scope="module")
def adroit_bases(adroit_demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("adroit_offline")
    demo = adroit_demos["AdroitHandDoorSparse-v1"][0] / "trajectory.h5"
    common = ["--env-id", "AdroitHandDoorSparse-v1", "--demo-path", demo, "--output-dir", out, "--total-iters", 6,
              "--eval-freq", 6, "--num-eval-episodes", 1, "--num-eval-envs", 1, "--log-freq", 3, "--batch-size", 8,
              "--num-threads", 1]
    run_script("offline/diffusion_policy_unet_maniskill2.py", *common, "--unet-dims", 16, 32, "--n-groups", 4)
    run_script("offline/bet_maniskill2.py", *common, "--context-window", 4, "--n-embedding", 16)
    base = out / "AdroitHandDoorSparse-v1"
    return {"diffusion": next((base / "Offline-DiffusionPolicy-UNet").iterdir()),
            "bet": next((base / "Offline-BeT").iterdir())}


@needs_experts
@pytest.mark.parametrize("kind", ["diffusion", "bet"])
def test_offline_scripts_train_on_adroit_in_its_control_mode(adroit_bases, kind):
    args = json.loads((adroit_bases[kind] / "args.json").read_text())
    assert args["control_mode"] == "pd_joint_pos"  # resolved from the suite, recorded for the online script
    assert (adroit_bases[kind] / "checkpoints" / "best.pt").is_file()


@needs_experts
@pytest.mark.parametrize("kind, script, total", [("diffusion", "online/pi_dec_diffusion_maniskill2.py", 96),
                                                 ("bet", "online/pi_dec_bet_maniskill2.py", 64)])
def test_online_scripts_refine_an_adroit_base(adroit_bases, tmp_path, kind, script, total):
    run_script(script, "--env-id", "AdroitHandDoorSparse-v1", "--base-policy-ckpt",
               adroit_bases[kind] / "checkpoints" / "best.pt", "--total-timesteps", total, "--output-dir", tmp_path,
               "--num-envs", 4, "--training-freq", 16, "--learning-starts", 32, "--batch-size", 16, "--eval-freq", 64,
               "--num-eval-episodes", 1, "--num-eval-envs", 1, "--log-freq", 32, "--save-freq", 0,
               "--num-threads", 1)
    run = next(next((tmp_path / "AdroitHandDoorSparse-v1").iterdir()).iterdir())
    saved = torch.load(run / "checkpoints" / f"{total}.pt", weights_only=True)
    assert saved["updates"] > 0 and saved["global_step"] == total
    assert set(saved["buffer"]["rewards"].unique().tolist()) <= {-1.0, 0.0}  # success - 1


@needs_experts
def test_maniskill_flags_on_adroit_are_one_line_errors(adroit_bases, tmp_path):
    result = run_script("online/pi_dec_bet_maniskill2.py", "--env-id", "AdroitHandDoorSparse-v1", "--base-policy-ckpt",
                        adroit_bases["bet"] / "checkpoints" / "best.pt", "--obj-ids", "5014", "--output-dir",
                        tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--obj-ids pick" in result.stderr
    result = run_script("offline/bet_maniskill2.py", "--env-id", "AdroitHandDoorSparse-v1", "--control-mode",
                        "pd_ee_delta_pos", "--output-dir", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Adroit tasks have one control mode" in result.stderr
