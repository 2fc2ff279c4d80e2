"""RGB-D observations: the obs conversion, the encoder and its checkpoint names, the demo converter, and the
two RGB-D scripts end to end (PickCube, and the upstream's TurnFaucet/PushChair commands on stand-in assets)."""

import json
import subprocess
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_script
from gymnasium import spaces
from test_online import check_buffer

from pi_dec.base_policies import DiffusionPolicyRGBD, RandomShift, load_base, policy_class
from pi_dec.rgbd import DictFrameStack, RGBDObsWrapper, camera_kwargs, convert_obs, demo_obs, state_parts
from pi_dec.suites import UsageError

GOLDEN = json.loads((ROOT / "tests/golden/rgbd_checkpoint_format.json").read_text())
OFFLINE = "offline/diffusion_policy_unet_maniskill2_rgbd.py"
ONLINE = "online/pi_dec_diffusion_maniskill2_rgbd.py"


# ---------------------------------------------------------------------------------------------- #
# Units
# ---------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("name, args", [("two_cameras_64x64", (7, 6, (64, 64), 7)),
                                        ("three_cameras_50x125", (60, 9, (50, 125), 20))])
def test_state_dict_matches_the_upstream_rgbd_checkpoints(name, args):
    policy = DiffusionPolicyRGBD(*args, obs_horizon=2, act_horizon=4, pred_horizon=16)
    assert {k: list(v.shape) for k, v in policy.state_dict().items()} == GOLDEN[name]["keys"]
    assert policy_class(policy.state_dict(), "ckpt") is DiffusionPolicyRGBD


def test_encoder_refuses_a_camera_size_it_was_not_built_for():
    with pytest.raises(UsageError, match="takes 64x64"):
        DiffusionPolicyRGBD(7, 6, (48, 64), 7, 2, 4, 16)


def fake_rgbd_obs(lead=()):
    """Two cameras listed in the opposite order to the env's; pixel (h, w, c) = 100h + 10w + c (+1 for cam2)."""
    h, w = 2, 3
    pix = (100 * np.arange(h)[:, None, None] + 10 * np.arange(w)[None, :, None] + np.arange(3)).astype(np.uint8)

    def cam(offset, depth):
        return {"rgb": np.broadcast_to(pix + offset, (*lead, h, w, 3)).copy(),
                "depth": np.full((*lead, h, w, 1), depth, np.float32)}
    return {"agent": {"qpos": np.broadcast_to(np.arange(3.0), (*lead, 3)).copy()},
            "extra": {"b": np.full(lead, 5.0), "a": np.broadcast_to(np.array([1.0, 2.0]), (*lead, 2)).copy()},
            "camera_param": {"cam1": {"intrinsic_cv": np.eye(3)}},
            "image": {"cam2": cam(1, 0.5), "cam1": cam(0, 0.25)}}


ORDER = {"agent": {"qpos": None}, "extra": {"a": None, "b": None}, "image": {"cam1": None, "cam2": None}}


def test_convert_obs_follows_the_env_key_order_and_goes_channels_first():
    out = convert_obs(fake_rgbd_obs(), ("extra",), ORDER)
    np.testing.assert_array_equal(out["state"], [1, 2, 5])  # a then b, as the env lists them; scalars flattened
    assert out["state"].dtype == np.float32 and out["rgb"].dtype == np.uint8
    assert out["rgb"].shape == (6, 2, 3) and out["depth"].shape == (2, 2, 3)
    for c in range(3):  # cam1's channels first, each (H, W) plane the pixels of that channel
        np.testing.assert_array_equal(out["rgb"][c], 100 * np.arange(2)[:, None] + 10 * np.arange(3) + c)
        np.testing.assert_array_equal(out["rgb"][3 + c], 100 * np.arange(2)[:, None] + 10 * np.arange(3) + c + 1)
    np.testing.assert_array_equal(out["depth"][:, 0, 0], [0.25, 0.5])
    chair = convert_obs(fake_rgbd_obs(), ("agent", "extra"), ORDER)  # PushChair: agent, then extra
    np.testing.assert_array_equal(chair["state"], [0, 1, 2, 1, 2, 5])


def test_demo_frames_equal_env_frames():
    """A trajectory (leading time axis) from a file converts frame by frame as the env's observations do;
    depth comes back from uint16 millimetre-ish units (x 1024) to metres."""
    traj = fake_rgbd_obs(lead=(4,))
    for cam in traj["image"].values():
        cam["depth"] = (cam["depth"] * 1024).astype(np.uint16)
    frames = demo_obs(traj, state_parts("StackCube-v0"), ORDER)
    one = convert_obs(fake_rgbd_obs(), ("extra",), ORDER)
    assert frames["rgb"].shape == (4, 6, 2, 3) and frames["depth"].dtype == np.float16
    for t in range(4):
        np.testing.assert_array_equal(frames["rgb"][t], one["rgb"])
        np.testing.assert_array_equal(frames["state"][t], one["state"])
        np.testing.assert_allclose(frames["depth"][t], one["depth"], atol=1e-3)


def test_state_parts_and_camera_size():
    assert state_parts("TurnFaucet-v2") == ("extra",) and state_parts("PushChair-v2") == ("agent", "extra")
    assert state_parts("PickCube-v0") == ("extra",)  # our extension, as StackCube
    with pytest.raises(UsageError, match="RGB-D observations are defined for"):
        state_parts("AdroitHandDoorSparse-v1")
    # (height, width) = (50, 125): 125 wide (the upstream swaps them)
    assert camera_kwargs((50, 125)) == {"camera_cfgs": {"width": 125, "height": 50}}


class Counter(gym.Env):
    observation_space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (1,), np.float32),
                                     "rgb": spaces.Box(0, 255, (1, 1, 1), np.uint8)})
    action_space = spaces.Box(-1, 1, (1,))

    def reset(self, seed=None, options=None):
        self.t = 0
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        return self.obs(), 0.0, False, False, {}

    def obs(self):
        return {"state": np.array([self.t], np.float32), "rgb": np.full((1, 1, 1), self.t, np.uint8)}


def test_dict_frame_stack_repeats_the_first_frame_then_rolls():
    env = DictFrameStack(Counter(), 3)
    assert env.observation_space["rgb"].shape == (3, 1, 1, 1) and env.observation_space["rgb"].dtype == np.uint8
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["state"][:, 0], [0, 0, 0])
    env.step(None)
    obs = env.step(None)[0]
    np.testing.assert_array_equal(obs["state"][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(obs["rgb"].ravel(), [0, 1, 2])
    np.testing.assert_array_equal(env.reset()[0]["state"][:, 0], [0, 0, 0])  # a new episode starts over


def test_random_shift_is_a_whole_pixel_translation_with_edge_padding():
    torch.manual_seed(0)
    x = torch.rand(64, 2, 5, 7)
    y = RandomShift(2)(x)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    shifts = set()
    for i in range(64):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(y[i], padded[i, :, dy:dy + 5, dx:dx + 7])]
        assert found, i
        shifts.add(found[0])
    assert len(shifts) > 10  # each image draws its own shift


def test_augmentation_only_in_the_training_loss():
    policy = DiffusionPolicyRGBD(7, 6, (64, 64), 7, 2, 4, 16, random_shift=4)
    obs = {"rgb": torch.randint(0, 256, (2, 2, 6, 64, 64), dtype=torch.uint8), "depth": torch.rand(2, 2, 2, 64, 64),
           "state": torch.randn(2, 2, 7)}
    assert torch.equal(policy.encode_obs(obs), policy.encode_obs(obs))
    assert not torch.equal(policy.encode_obs(obs, augment=True), policy.encode_obs(obs))
    policy.use_sampler("ddim", 4)
    act, emb = policy.act_and_embedding(obs)
    assert act.shape == (2, 4, 7) and emb.shape == (2, 256 + 7)
    torch.testing.assert_close(emb, policy.encode_obs(obs)[:, -1])  # the latest frame's embedding


def test_rgbd_windows_are_the_state_windows_key_by_key():
    """The offline windows index RGB-D frames exactly as they index state observations."""
    from pi_dec.diffusion_training import WindowDataset

    rng = np.random.default_rng(0)
    trajs = []
    for length in (5, 9):
        obs = rng.standard_normal((length + 1, 3)).astype(np.float32)
        obs[:, 0] = np.arange(length + 1)  # frame index
        trajs.append({"obs": obs, "actions": rng.uniform(-1, 1, (length, 7)).astype(np.float32)})
    as_rgbd = [{"obs": {"state": t["obs"], "rgb": np.broadcast_to(t["obs"][:, :1, None, None], (len(t["obs"]), 6, 2, 2))
                        .astype(np.uint8)}, "actions": t["actions"]} for t in trajs]
    state = WindowDataset(trajs, 2, 16, "pd_ee_delta_pose", "cpu")
    rgbd = WindowDataset(as_rgbd, 2, 16, "pd_ee_delta_pose", "cpu")
    idx = torch.arange(len(state))
    (s_obs, s_act), (r_obs, r_act) = state.batch(idx), rgbd.batch(idx)
    assert torch.equal(s_act, r_act) and torch.equal(s_obs, r_obs["state"])
    assert r_obs["rgb"].dtype == torch.uint8 and r_obs["rgb"].shape == (len(state), 2, 6, 2, 2)
    assert torch.equal(r_obs["rgb"][:, :, 0, 0, 0].float(), s_obs[:, :, 0])  # the same frames


@pytest.mark.parametrize("script", [OFFLINE, ONLINE])
def test_help_documents_every_flag(script):
    from conftest import load_script

    out = run_script(script, "--help").stdout
    for name in load_script(script).Args.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in out, name


# ---------------------------------------------------------------------------------------------- #
# Real envs, files and scripts
# ---------------------------------------------------------------------------------------------- #
def test_vector_envs_give_stacked_rgbd_windows():
    from pi_dec.make_env import make_vec_env

    envs = make_vec_env("PickCube-v0", 2, 0, "pd_ee_delta_pose", obs_horizon=2, env_kwargs=camera_kwargs((48, 64)),
                        asynchronous=False, obs_mode="rgbd")
    obs, _ = envs.reset(seed=0)
    assert obs["rgb"].shape == (2, 2, 6, 48, 64) and obs["rgb"].dtype == np.uint8
    assert obs["depth"].shape == (2, 2, 2, 48, 64) and obs["state"].shape == (2, 2, 10)  # tcp pose, goal
    first = envs.step(np.full((2, 1, 7), 0.5))[0]  # chunks of one action: one new frame per step
    second = envs.step(np.full((2, 1, 7), -0.5))[0]
    for key in ("rgb", "depth", "state"):  # the window rolls: the newest frame becomes the older one
        np.testing.assert_array_equal(second[key][:, 0], first[key][:, 1])
    assert not np.allclose(first["state"][:, 1], second["state"][:, 1])  # and the robot moved
    envs.close()


def record_random(env_id, out, n, steps, control_mode, **kwargs):
    """n episodes of `steps` random actions, recorded by ManiSkill2 (no observations): a source for the converter."""
    from mani_skill2.utils.wrappers import RecordEpisode

    env = gym.make(env_id, obs_mode="none", control_mode=control_mode, max_episode_steps=steps, **kwargs)
    env = RecordEpisode(env, str(out), save_video=False, trajectory_name="random")
    env.action_space.seed(0)
    for ep in range(n):
        env.reset(seed=ep)
        for _ in range(steps):
            env.step(env.action_space.sample())
    env.close()
    return out / "random.h5"


def make_rgbd(*args):
    """`python -m pi_dec.demos.rgbd ...` as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "pi_dec.demos.rgbd", *map(str, args)], capture_output=True,
                            text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def rgbd_demos(demos, standins, tmp_path_factory):
    """RGB-D files made by `python -m pi_dec.demos.rgbd`: PickCube from planned demos (pd_ee_delta_pose, the
    offline default), TurnFaucet and PushChair from random episodes on stand-in assets."""
    root = tmp_path_factory.mktemp("rgbd")
    pick_dir, _ = demos["PickCube-v0"]
    out = {"PickCube-v0": root / "PickCube" / "trajectory_rgbd_64x64.h5"}
    make_rgbd("--traj-path", pick_dir / "trajectory.none.pd_joint_pos.h5", "-c", "pd_ee_delta_pose", "--count", 2,
              "--out", out["PickCube-v0"])
    assets = {"asset_root": standins["asset_root"]}
    faucet = record_random("TurnFaucet-v2", root / "TurnFaucet", 2, 20, "pd_ee_delta_pose",
                           model_json=standins["faucet_json"], **assets)
    make_rgbd("--traj-path", faucet, "-c", "pd_ee_delta_pose", "--allow-failure")
    chair = record_random("PushChair-v2", root / "PushChair", 2, 20, "base_pd_joint_vel_arm_pd_joint_vel",
                          model_json=standins["chair_json"], **assets)
    make_rgbd("--traj-path", chair, "-c", "base_pd_joint_vel_arm_pd_joint_vel", "--width", 125, "--height", 50,
              "--allow-failure")
    out["TurnFaucet-v2"] = faucet.with_name("trajectory_rgbd_64x64.h5")
    out["PushChair-v2"] = chair.with_name("trajectory_rgbd_125x50.h5")
    return out


def test_converter_writes_uint8_images_and_the_camera_size(rgbd_demos):
    path = rgbd_demos["PickCube-v0"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["env_info"]["env_kwargs"]["camera_cfgs"] == {"width": 64, "height": 64}
    assert meta["env_info"]["env_kwargs"]["control_mode"] == "pd_ee_delta_pose" and len(meta["episodes"]) == 2
    with h5py.File(path) as h5:
        cam = h5["traj_0/obs/image/base_camera"]
        assert cam["rgb"].dtype == np.uint8 and cam["rgb"].shape[1:] == (64, 64, 3)
        assert cam["depth"].dtype == np.uint16
    chair = json.loads(rgbd_demos["PushChair-v2"].with_suffix(".json").read_text())
    assert chair["env_info"]["env_kwargs"]["camera_cfgs"] == {"width": 125, "height": 50}


def test_converter_errors_are_one_line(tmp_path):
    for args in (["--traj-path", tmp_path / "none.h5"], ["--traj-path", tmp_path / "none.h5", "--width", 0]):
        result = subprocess.run([sys.executable, "-m", "pi_dec.demos.rgbd", *map(str, args)], capture_output=True,
                                text=True, cwd=ROOT)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_demo_frames_are_what_the_env_shows(rgbd_demos):
    """The first frame in the file equals the env's reset observation for that episode's seed."""
    import pi_dec.envs  # noqa: F401
    from pi_dec.demo_data import load_demos

    path = rgbd_demos["PickCube-v0"]
    meta = json.loads(path.with_suffix(".json").read_text())
    env = RGBDObsWrapper(gym.make("PickCube-v0", obs_mode="rgbd", control_mode="pd_ee_delta_pose",
                                  **camera_kwargs((64, 64))), "PickCube-v0")
    trajs = load_demos(path, "pd_ee_delta_pose", rgbd=(state_parts("PickCube-v0"), env.env.observation_space))
    obs, _ = env.reset(**meta["episodes"][0]["reset_kwargs"])
    first = {k: v[0] for k, v in trajs[0]["obs"].items()}
    np.testing.assert_allclose(first["state"], obs["state"], atol=1e-5)
    assert np.abs(first["rgb"].astype(int) - obs["rgb"]).mean() < 1.0  # the same render (lavapipe is deterministic)
    np.testing.assert_allclose(first["depth"].astype(np.float32), obs["depth"], atol=2e-3)
    env.close()


SMALL_OFFLINE = ["--total-iters", 12, "--batch-size", 8, "--eval-freq", 12, "--save-freq", 6, "--log-freq", 4,
                 "--num-eval-episodes", 1, "--num-eval-envs", 1, "--num-threads", 1]
SMALL_ONLINE = ["--num-envs", 2, "--training-freq", 8, "--learning-starts", 16, "--batch-size", 8,
                "--eval-freq", 32, "--num-eval-episodes", 1, "--num-eval-envs", 1, "--log-freq", 16, "--save-freq", 16,
                "--num-threads", 1, "--sync-venv"]


@pytest.fixture(scope="session")
def rgbd_base(rgbd_demos, tmp_path_factory):
    """An RGB-D Diffusion Policy trained for 12 iterations on PickCube (with --random-shift), by the real script."""
    out = tmp_path_factory.mktemp("rgbd_offline")
    run_script(OFFLINE, "--env-id", "PickCube-v0", "--demo-path", rgbd_demos["PickCube-v0"], "--random-shift", 2,
               "--output-dir", out, *SMALL_OFFLINE)
    return next((out / "PickCube-v0" / "Offline-DiffusionPolicy-UNet-RGBD").iterdir())


def test_offline_rgbd_trains_evaluates_and_saves(rgbd_base):
    args = json.loads((rgbd_base / "args.json").read_text())
    assert args["image_size"] == [64, 64] and args["batch_size"] == 8 and args["random_shift"] == 2
    assert {p.name for p in (rgbd_base / "checkpoints").iterdir()} >= {"6.pt", "12.pt", "best.pt"}
    ckpt = torch.load(rgbd_base / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["ema_agent"].keys() == GOLDEN["two_cameras_64x64"]["keys"].keys()  # the upstream's names
    early = torch.load(rgbd_base / "checkpoints" / "6.pt", weights_only=True)["ema_agent"]
    assert not torch.equal(early["visual_encoder.cnn.0.weight"], ckpt["ema_agent"]["visual_encoder.cnn.0.weight"])
    policy = load_base(rgbd_base / "checkpoints" / "best.pt")
    assert policy.obs_embedding_dim == policy.res_obs_dim == 266 and policy.config["image_size"] == [64, 64]
    assert (policy.obs_mode, policy.image_size, policy.obs_dim, policy.act_dim) == ("rgbd", (64, 64), 10, 7)


def test_online_rgbd_learns_from_embeddings_and_resumes(rgbd_base, tmp_path):
    ckpt = rgbd_base / "checkpoints" / "best.pt"
    common = ["--env-id", "PickCube-v0", "--base-policy-ckpt", ckpt, "--output-dir", tmp_path, *SMALL_ONLINE]
    run_script(ONLINE, *common, "--total-timesteps", 32, "--prog-explore", 1)
    run = next(tmp_path.glob("PickCube-v0/PolicyDecorator-DiffusionPolicy-rgbd/*"))
    saved = torch.load(run / "checkpoints" / "32.pt", weights_only=True)
    assert saved["global_step"] == 32 and saved["updates"] > 0
    buffer = saved["buffer"]
    assert buffer["obs"].shape == (32, 256 + 10)  # the base's embedding of the latest frame, not pixels
    check_buffer(buffer, 2, 4, 4 * 7, keep_base=True)
    assert json.loads((run / "args.json").read_text())["base_policy"]["image_size"] == [64, 64]
    run_script(ONLINE, *common, "--total-timesteps", 48, "--resume", run / "checkpoints" / "32.pt",
               "--learning-starts", 10**6)
    final = torch.load(run / "checkpoints" / "48.pt", weights_only=True)
    assert final["global_step"] == 48 and final["updates"] == saved["updates"]
    for name, value in saved["res_actor"].items():
        assert torch.equal(final["res_actor"][name], value)
    assert torch.equal(final["buffer"]["obs"][:32], buffer["obs"])
    assert len(list(tmp_path.glob("*/*/*"))) == 1


def test_state_files_and_checkpoints_are_refused_in_one_line(demos, offline_runs, tmp_path):
    pick_dir, _ = demos["PickCube-v0"]
    result = run_script(OFFLINE, "--env-id", "PickCube-v0", "--demo-path", pick_dir / "trajectory.h5",
                        "--output-dir", tmp_path, check=False)
    assert result.returncode == 2 and "has no env_info.env_kwargs.camera_cfgs" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_script(ONLINE, "--env-id", "PegInsertionSide-v2", "--base-policy-ckpt",
                        offline_runs["diffusion"] / "checkpoints" / "best.pt", "--output-dir", tmp_path, check=False)
    assert result.returncode == 2 and "use online/pi_dec_diffusion_maniskill2.py" in result.stderr


# The upstream README's four RGB-D commands, verbatim.
UPSTREAM = [
    (OFFLINE, ["--env-id", "TurnFaucet-v2", "--demo-path", "data/TurnFaucet/trajectory_rgbd_64x64.h5", "--random-shift", "2"]),
    (OFFLINE, ["--env-id", "PushChair-v2", "--demo-path", "data/PushChair/trajectory_rgbd_125x50.h5", "--control-mode",
               "base_pd_joint_vel_arm_pd_joint_vel"]),
    (ONLINE, ["--env-id", "TurnFaucet-v2", "--base-policy-ckpt", "checkpoints/diffusion_rgbd_TurnFaucet/checkpoints/best.pt",
              "--res-scale", "0.05", "--prog-explore", "30_000"]),
    (ONLINE, ["--env-id", "PushChair-v2", "--base-policy-ckpt", "checkpoints/diffusion_rgbd_PushChair/checkpoints/best.pt",
              "--res-scale", "0.2", "--prog-explore", "100_000", "--total-timesteps", "5_000_000"]),
]


@pytest.mark.parametrize("script, args", UPSTREAM)
def test_upstream_rgbd_commands_stop_on_missing_assets(script, args, tmp_path):
    result = run_script(script, *args, "--asset-root", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: PartNet-Mobility models"), result.stderr[-500:]


@pytest.mark.parametrize("env_id", ["TurnFaucet-v2", "PushChair-v2"])
def test_upstream_rgbd_commands_run_on_stand_in_assets(env_id, rgbd_demos, standins, tmp_path):
    """Both upstream commands per task, with their demo file and checkpoint paths swapped for ours and tiny
    budgets: TurnFaucet's two 64x64 cameras (PlainConv), PushChair's three 50x125 ones (PlainConv_MS1)."""
    json_key = "faucet_json" if env_id == "TurnFaucet-v2" else "chair_json"
    assets = ["--asset-root", standins["asset_root"], "--model-json", standins[json_key]]
    (offline, off_args), (online, on_args) = [(s, a) for s, a in UPSTREAM if env_id in a]
    off_args = [str(rgbd_demos[env_id]) if a.startswith("data/") else a for a in off_args]
    no_eval = ["--eval-freq", 0]  # (the PickCube runs above evaluate; here the encoders and envs are the point)
    run_script(offline, *off_args, *assets, "--output-dir", tmp_path / "offline", *SMALL_OFFLINE, *no_eval)
    base = next((tmp_path / "offline" / env_id / "Offline-DiffusionPolicy-UNet-RGBD").iterdir())
    on_args = [str(base / "checkpoints" / "best.pt") if a.startswith("checkpoints/") else a for a in on_args]
    on_args = [a for a in on_args if a not in ("--total-timesteps", "5_000_000")]
    run_script(online, *on_args, *assets, "--output-dir", tmp_path / "online", *SMALL_ONLINE, "--total-timesteps", 32,
               *no_eval)
    run = next(tmp_path.glob(f"online/{env_id}/*/*"))
    saved = torch.load(run / "checkpoints" / "32.pt", weights_only=True)
    assert saved["updates"] > 0
    encoder = torch.load(base / "checkpoints" / "best.pt", weights_only=True)["ema_agent"]["visual_encoder.fc.0.weight"]
    assert encoder.shape[1] == (128 * 4 * 4 if env_id == "TurnFaucet-v2" else 128 * 3 * 7)
