"""Env construction helpers: action chunks, frame stacking, clipping, statistics, vector envs, video."""

import gymnasium as gym
import numpy as np
import pytest

from pi_dec.make_env import ActionChunkWrapper, asset_kwargs, finished_episodes, make_env, make_vec_env


class CountingEnv(gym.Env):
    """Reward 1 per step, terminates after `terminate_at` steps; obs = steps taken so far."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    action_space = gym.spaces.Box(-1, 1, (2,))

    def __init__(self, terminate_at=3):
        self.terminate_at, self.t, self.actions = terminate_at, 0, []

    def reset(self, seed=None, options=None):
        self.t, self.actions = 0, []
        return np.zeros(1), {}

    def step(self, action):
        self.t += 1
        self.actions.append(np.asarray(action))
        return np.array([self.t]), 1.0, self.t >= self.terminate_at, False, {"t": self.t}


def test_action_chunk_sums_rewards_and_stops_at_termination():
    env = ActionChunkWrapper(CountingEnv(terminate_at=3))
    env.reset()
    chunk = np.arange(10).reshape(5, 2) / 10
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert reward == 3.0 and terminated and not truncated
    assert obs[0] == 3 and info["t"] == 3  # obs/info of the last executed step
    np.testing.assert_array_equal(np.stack(env.unwrapped.actions), chunk[:3])  # in order, then stopped


def test_action_chunk_runs_whole_chunk_when_episode_goes_on():
    env = ActionChunkWrapper(CountingEnv(terminate_at=100))
    env.reset()
    _, reward, terminated, _, info = env.step(np.zeros((4, 2)))
    assert reward == 4.0 and not terminated and info["t"] == 4


def test_asset_kwargs_only_passes_what_was_given():
    assert asset_kwargs() == {}
    assert asset_kwargs(["5014"], "/a", "/b.json") == {"model_ids": ["5014"], "asset_root": "/a", "model_json": "/b.json"}


def test_make_env_stacks_frames_and_executes_chunks():
    env = make_env("PegInsertionSide-v2", seed=0, control_mode="pd_ee_delta_pose", obs_horizon=2)()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 50)
    np.testing.assert_array_equal(obs[0], obs[1])  # the first frame is repeated at reset
    obs, reward, terminated, truncated, info = env.step(np.zeros((4, 7)))
    assert info["elapsed_steps"] == 4  # one chunk = 4 env steps
    assert not np.array_equal(obs[0], obs[1])  # the window now holds two different frames
    assert reward == 0.0  # sparse reward: no success yet
    env.close()


def test_make_env_clips_actions():
    """The simulator receives the action clipped to [-1, 1] (ManiSkill2's controllers clip too, so the check
    is on what reaches the env itself, not on the observation)."""
    env = make_env("PickCube-v0", seed=0, control_mode="pd_ee_delta_pose")()
    received = []
    inner_step = env.unwrapped.step
    env.unwrapped.step = lambda action: received.append(np.array(action)) or inner_step(action)
    env.reset(seed=4)
    chunk = np.tile(np.array([50.0, -50.0, 0.5, -0.25, 1.0, -1.0, 3.0]), (3, 1))
    env.step(chunk)
    env.close()
    assert len(received) == 3  # one per action of the chunk
    for action in received:
        np.testing.assert_allclose(action, [1.0, -1.0, 0.5, -0.25, 1.0, -1.0, 1.0])


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown env id 'PegInsertionSide-v9'.*Did you mean"):
        make_vec_env("PegInsertionSide-v9", num_envs=2, seed=0)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_vector_env_reports_finished_episodes(asynchronous):
    envs = make_vec_env("PickCube-v0", num_envs=2, seed=0, control_mode="pd_ee_delta_pose", obs_horizon=2,
                        asynchronous=asynchronous, max_episode_steps=12)
    assert isinstance(envs, gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv)
    obs, _ = envs.reset(seed=[0, 1])
    assert obs.shape == (2, 2, 51)
    assert envs.single_action_space.shape == (7,)
    finished = []
    for _ in range(3):  # chunks of 4 steps: the 12-step time limit ends both episodes in step 3
        obs, reward, terminated, truncated, infos = envs.step(np.zeros((2, 4, 7)))
        finished += finished_episodes(infos)
    assert truncated.all() and not terminated.any()
    assert len(finished) == 2
    for info in finished:
        assert info["episode"]["l"] == 12 and "success" in info  # statistics count raw env steps
    assert "final_observation" in infos and infos["final_observation"][0].shape == (2, 51)
    envs.close()


def test_seed_schedule_seeds_the_automatic_resets():
    def first_obs(seed):
        env = make_env("PickCube-v0", 0, "pd_ee_delta_pose")()
        obs, _ = env.reset(seed=seed)
        env.close()
        return np.asarray(obs)

    envs = make_vec_env("PickCube-v0", num_envs=1, seed=0, control_mode="pd_ee_delta_pose", asynchronous=False,
                        max_episode_steps=4, reset_seeds=[[5, 9]])
    obs, _ = envs.reset()
    np.testing.assert_allclose(obs[0], first_obs(5))
    obs, *_ = envs.step(np.zeros((1, 4, 7)))  # the 4-step time limit ends the episode; the env resets itself
    np.testing.assert_allclose(obs[0], first_obs(9))
    assert not np.allclose(first_obs(5), first_obs(9))
    envs.close()


def test_video_recording_writes_an_episode(tmp_path):
    envs = make_vec_env("PickCube-v0", num_envs=1, seed=0, control_mode="pd_ee_delta_pose",
                        video_dir=str(tmp_path), asynchronous=False, max_episode_steps=8)
    envs.reset(seed=0)
    for _ in range(2):
        envs.step(np.zeros((1, 4, 7)))
    envs.reset(seed=1)  # RecordEpisode writes the finished episode's video
    envs.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) >= 1 and videos[0].stat().st_size > 1000
