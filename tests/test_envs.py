"""The tasks on real ManiSkill2 envs (lavapipe on CPU): creation, the -v2 rules, stand-in assets."""

import gymnasium as gym
import numpy as np
import pytest
import sapien.core as sapien
from mani_skill2.envs.assembly.peg_insertion_side import PegInsertionSideEnv

from pi_dec.envs import (CHAIR_ONLINE_IDS, FAUCET_ONLINE_IDS, MissingAssetError, PushChairV2, TurnFaucetV2,
                         preflight)


@pytest.mark.parametrize("env_id", ["StackCube-v0", "PickCube-v0", "PegInsertionSide-v2"])
def test_state_tasks_create_reset_step(env_id):
    env = gym.make(env_id, obs_mode="state", reward_mode="sparse", control_mode="pd_ee_delta_pose")
    obs, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, again)  # seeded resets are reproducible
    assert env.spec.max_episode_steps == 200
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.ndim == 1 and np.isfinite(obs).all()
    assert reward in (0.0, 1.0) and info["elapsed_steps"] == 5
    env.close()


def test_peg_insertion_rgbd_observation():
    env = gym.make("PegInsertionSide-v2", obs_mode="rgbd", control_mode="pd_ee_delta_pose")
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(env.action_space.sample())
    cams = obs["image"]
    assert set(cams) == {"base_camera", "hand_camera"}
    rgb, depth = cams["base_camera"]["rgb"], cams["base_camera"]["depth"]
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    assert depth.shape == (128, 128, 1)
    assert rgb.std() > 5 and depth.max() > depth.min()  # a scene, not a blank frame
    env.close()


def place_peg_head(env, depth):
    """Put the peg so that its head sits `depth` metres along the hole's axis (x) from the hole centre."""
    u = env.unwrapped
    head_at_hole = u.box_hole_pose * sapien.Pose([depth, 0, 0])
    u.peg.set_pose(head_at_hole * u.peg_head_offset.inv())


@pytest.mark.parametrize("depth, inserted_v0, inserted_v2", [
    (-0.05, False, False),  # in front of the hole
    (-0.0151, False, False),  # just outside the lower bound both versions share (-0.015)
    (-0.0149, True, True),  # just inside it
    (0.0, True, True),      # at the entrance
    (0.05, True, True),     # inside
    (0.074, True, True),    # just inside the new limit (0.075)
    (0.076, True, False),   # just beyond it
    (0.10, True, False),    # pushed past the hole: v0 counted it, v2 does not
    (0.30, True, False),
])
def test_peg_insertion_v2_success_rule(depth, inserted_v0, inserted_v2):
    env = gym.make("PegInsertionSide-v2", obs_mode="state")
    env.reset(seed=1)
    place_peg_head(env, depth)
    u = env.unwrapped
    v2, head_pos = u.has_peg_inserted()
    v0, _ = PegInsertionSideEnv.has_peg_inserted(u)
    assert head_pos[0] == pytest.approx(depth, abs=1e-5)
    assert (v0, v2) == (inserted_v0, inserted_v2)
    assert u.evaluate()["success"] == inserted_v2
    env.close()


def test_peg_insertion_v2_off_axis_is_not_inserted():
    env = gym.make("PegInsertionSide-v2", obs_mode="state")
    env.reset(seed=2)
    u = env.unwrapped
    u.peg.set_pose(u.box_hole_pose * sapien.Pose([0.03, 2 * u.box_hole_radius, 0]) * u.peg_head_offset.inv())
    assert not u.has_peg_inserted()[0]
    env.close()


def faucet_kwargs(standins):
    return dict(obs_mode="state", asset_root=standins["asset_root"], model_json=standins["faucet_json"])


def test_turn_faucet_v2_defaults_to_held_out_faucets(standins):
    env = gym.make("TurnFaucet-v2", **faucet_kwargs(standins))
    assert list(env.unwrapped.model_ids) == list(FAUCET_ONLINE_IDS) == ["5014", "5037", "5053", "5062"]
    env.close()
    env = gym.make("TurnFaucet-v2", model_ids=["5053"], **faucet_kwargs(standins))
    assert list(env.unwrapped.model_ids) == ["5053"]  # users may override, unlike the original
    env.close()


def test_turn_faucet_v2_observation_adds_current_handle_position(standins):
    v0 = gym.make("TurnFaucet-v0", model_ids=list(FAUCET_ONLINE_IDS), **faucet_kwargs(standins))
    v2 = gym.make("TurnFaucet-v2", **faucet_kwargs(standins))
    obs0, _ = v0.reset(seed=5)
    obs2, _ = v2.reset(seed=5)
    assert obs2.shape[0] == obs0.shape[0] + 3
    u = v2.unwrapped
    handle = u.target_link.pose * u.target_link.cmass_local_pose
    # Same as v0 with the handle position inserted before the last entry (angle_dist).
    np.testing.assert_allclose(obs2, np.concatenate([obs0[:-1], handle.p, obs0[-1:]]), atol=1e-6)
    keys = list(u._get_obs_extra())
    assert keys[keys.index("target_link_pos") + 1] == "curr_target_link_pos" and keys[-1] == "angle_dist"

    # Turning the handle moves curr_target_link_pos; target_link_pos stays where the episode began.
    qpos = u.faucet.get_qpos()
    qpos[u.target_joint_idx] += 1.0
    u.faucet.set_qpos(qpos)
    extra = u._get_obs_extra()
    now = u.target_link.pose * u.target_link.cmass_local_pose
    np.testing.assert_allclose(extra["curr_target_link_pos"], now.p, atol=1e-6)
    assert np.linalg.norm(extra["curr_target_link_pos"] - extra["target_link_pos"]) > 0.02
    for _ in range(3):
        obs2, *_ = v2.step(v2.action_space.sample())
    assert np.isfinite(obs2).all()
    v0.close()
    v2.close()


def chair_env(standins, **kwargs):
    return gym.make("PushChair-v2", obs_mode="state", control_mode="base_pd_joint_vel_arm_pd_joint_vel",
                    asset_root=standins["asset_root"], model_json=standins["chair_json"], **kwargs)


def test_push_chair_v2_defaults_to_held_out_chairs(standins):
    env = chair_env(standins)
    assert list(env.unwrapped.model_ids) == list(CHAIR_ONLINE_IDS) == ["3003", "3013", "3020"]
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.model_id in CHAIR_ONLINE_IDS and np.isfinite(obs).all()
    env.close()


def test_push_chair_v2_static_check(standins):
    env = chair_env(standins)
    env.reset(seed=0)
    u = env.unwrapped
    chair = u.root_link
    zero = np.zeros(env.action_space.shape)

    # At elapsed_steps <= 1 the instantaneous velocity decides.
    u.chair.set_root_velocity([1.0, 0, 0])
    assert u.check_actor_static(chair, max_v=0.1, max_ang_v=0.2) is False
    u.chair.set_root_velocity([0, 0, 0])
    assert u.check_actor_static(chair, max_v=0.1, max_ang_v=0.2) is True

    for _ in range(3):
        *_, info = env.step(zero)
    assert info["chair_static"] is True  # the stand-in chair rests on its wheels

    # Asked twice in one step: the cached answer, even if the chair was teleported in between.
    pose = chair.get_pose()
    u.chair.set_root_pose(sapien.Pose(pose.p + np.array([0.5, 0, 0]), pose.q))
    assert u.check_actor_static(chair, max_v=0.1, max_ang_v=0.2) is True

    # Next step: the finite difference of poses (0.5 m in one control step) says "moving", although the
    # teleport left the velocity at zero.
    *_, info = env.step(zero)
    assert np.linalg.norm(chair.get_velocity()) < 0.1
    assert info["chair_static"] is False

    # A rotation alone is caught by the angular bound.
    *_, info = env.step(zero)
    assert info["chair_static"] is True
    pose = chair.get_pose()
    turn = sapien.Pose([0, 0, 0], [np.cos(0.25), 0, 0, np.sin(0.25)])  # 0.5 rad about z
    u.chair.set_root_pose(sapien.Pose(pose.p, (turn * sapien.Pose([0, 0, 0], pose.q)).q))
    *_, info = env.step(zero)
    assert info["chair_static"] is False

    # Reset clears the cache of previous poses.
    assert u._prev_actor_pose_dict
    env.reset(seed=1)
    assert u._prev_actor_pose_dict == {}
    *_, info = env.step(zero)
    assert [step for _, step, _ in u._prev_actor_pose_dict.values()] == [1]
    env.close()


@pytest.mark.parametrize("env_id, cls, uid, ids", [
    ("TurnFaucet-v2", TurnFaucetV2, "partnet_mobility_faucet", FAUCET_ONLINE_IDS),
    ("PushChair-v2", PushChairV2, "partnet_mobility_chair", CHAIR_ONLINE_IDS),
])
def test_missing_assets_stop_with_one_clear_line(tmp_path, env_id, cls, uid, ids):
    with pytest.raises(MissingAssetError) as err:
        gym.make(env_id, obs_mode="state", asset_root=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert ", ".join(ids) in message
    assert f"python -m mani_skill2.utils.download_asset {uid}" in message and "MS2_ASSET_DIR" in message
    with pytest.raises(MissingAssetError):  # the main process checks before starting env workers
        preflight(env_id, {"asset_root": str(tmp_path)})
    with pytest.raises(MissingAssetError, match="9999"):
        gym.make(env_id, obs_mode="state", asset_root=str(tmp_path), model_ids=["9999"])


@pytest.mark.parametrize("env_id, json_key", [("TurnFaucet-v2", "faucet_json"), ("PushChair-v2", "chair_json")])
def test_a_bad_model_json_is_one_line(standins, tmp_path, env_id, json_key):
    kwargs = {"asset_root": standins["asset_root"]}
    preflight(env_id, {**kwargs, "model_json": standins[json_key]})  # the stand-ins pass
    broken = tmp_path / "models.json"
    for content, message in (
            (None, "--model-json .*models.json: not found"),
            ("{ not json", "--model-json .*models.json: not readable as JSON"),
            ("[1, 2]", "--model-json .*models.json: not a PartNet-Mobility model json"),
            ('{"1234": {}}', "--model-json .*models.json does not list the models .*pass the json of these models")):
        if content is not None:
            broken.write_text(content)
        with pytest.raises(MissingAssetError, match=message) as err:
            preflight(env_id, {**kwargs, "model_json": str(broken)})
        assert "\n" not in str(err.value)
    with pytest.raises(MissingAssetError, match="does not list the models"):  # the env checks too
        gym.make(env_id, obs_mode="state", model_json=str(broken), **kwargs)
