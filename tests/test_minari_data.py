"""The Minari (Adroit human demos) loader: files written in Minari 0.5's exact on-disk layout, read back without
minari; one clear error for each way a file can be wrong."""

import json

import h5py
import numpy as np
import pytest

from pi_dec.demo_data import DemoFileError
from pi_dec.minari_data import (MINARI_DATASETS, default_minari_dir, is_minari_file, load_minari_demos,
                                minari_dataset_id, minari_file)

OBS_DIM, ACT_DIM = 39, 28  # AdroitHandDoor-v1


def make_episodes(lengths, obs_dim=OBS_DIM, act_dim=ACT_DIM, seed=0):
    """[(observations (L+1, obs_dim) float64, actions (L, act_dim) float32)], random like real demos."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n + 1, obs_dim)), rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32))
            for n in lengths]


def write_minari_file(folder, env_id, episodes, dataset_id=None, legacy=False):
    """A dataset folder as `minari download` leaves it: folder/data/main_data.hdf5 + folder/data/metadata.json
    (Minari 0.5, HDF5Storage.update_episodes and MinariStorage.new). legacy=True: Minari <= 0.4, whose metadata
    were root attributes of main_data.hdf5 and which had no metadata.json."""
    data = folder / "data"
    data.mkdir(parents=True)
    spec = {"id": env_id, "entry_point": "gymnasium_robotics.envs.adroit_hand:AdroitHandDoorEnv",
            "reward_threshold": None, "nondeterministic": False, "max_episode_steps": 300, "order_enforce": True,
            "disable_env_checker": False, "kwargs": {}, "additional_wrappers": [], "vector_entry_point": None}
    obs_dim = episodes[0][0].shape[-1] if episodes else OBS_DIM
    act_dim = episodes[0][1].shape[-1] if episodes else ACT_DIM
    metadata = {
        "total_episodes": len(episodes), "total_steps": sum(len(a) for _, a in episodes), "data_format": "hdf5",
        "observation_space": json.dumps({"type": "Box", "dtype": "float64", "shape": [obs_dim],
                                         "low": [-np.inf] * obs_dim, "high": [np.inf] * obs_dim}),
        "action_space": json.dumps({"type": "Box", "dtype": "float32", "shape": [act_dim],
                                    "low": [-1.0] * act_dim, "high": [1.0] * act_dim}),
        "env_spec": json.dumps(spec), "dataset_id": dataset_id or MINARI_DATASETS.get(env_id, "D4RL/door/human-v2"),
        "code_permalink": "https://github.com/Farama-Foundation/minari-dataset-generation-scripts",
        "author": ["Rodrigo de Lazcano"], "minari_version": "0.5.0",
    }
    with h5py.File(data / "main_data.hdf5", "w", track_order=True) as h5:
        for i, (obs, actions) in enumerate(episodes):
            group = h5.create_group(f"episode_{i}")
            rewards = np.linspace(-1.0, 1.0, len(actions))
            group.attrs.update({"id": i, "seed": i, "total_steps": len(actions), "rewards_sum": rewards.sum(),
                                "rewards_mean": rewards.mean(), "rewards_std": rewards.std(),
                                "rewards_max": rewards.max(), "rewards_min": rewards.min()})
            group.create_dataset("observations", data=obs, chunks=True, maxshape=(None, obs.shape[-1]))
            group.create_dataset("actions", data=actions, chunks=True, maxshape=(None, actions.shape[-1]))
            group.create_dataset("rewards", data=rewards, chunks=True, maxshape=(None,))
            group.create_dataset("terminations", data=np.zeros(len(actions), bool), chunks=True, maxshape=(None,))
            group.create_dataset("truncations", data=np.arange(len(actions)) == len(actions) - 1, chunks=True,
                                 maxshape=(None,))
            group.create_dataset("infos/success", data=np.zeros(len(obs), bool), chunks=True, maxshape=(None,))
            group.create_dataset("infos/state/qpos", data=np.zeros((len(obs), 30)), chunks=True, maxshape=(None, 30))
        if legacy:
            h5.attrs.update(metadata)
    if not legacy:
        (data / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_round_trip_values_order_dtype_and_num_traj(tmp_path):
    episodes = make_episodes([5, 7, 6])
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", episodes)
    trajs = load_minari_demos(folder, "AdroitHandDoor-v1")
    assert len(trajs) == 3
    for traj, (obs, actions) in zip(trajs, episodes):
        assert traj["obs"].dtype == np.float32 and traj["actions"].dtype == np.float32
        np.testing.assert_array_equal(traj["obs"], obs.astype(np.float32))
        np.testing.assert_array_equal(traj["actions"], actions)
    assert [len(t["actions"]) for t in load_minari_demos(folder, "AdroitHandDoor-v1", num_traj=2)] == [5, 7]


def test_episodes_in_numeric_id_order(tmp_path):
    lengths = list(range(3, 15))  # 12 episodes: episode_10 sorts before episode_2 as text
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", make_episodes(lengths))
    assert [len(t["actions"]) for t in load_minari_demos(folder, "AdroitHandDoor-v1")] == lengths


@pytest.mark.parametrize("where", ["dataset folder", "data folder", "file"])
def test_accepts_dataset_folder_data_folder_and_file(tmp_path, where):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", make_episodes([4, 5]))
    path = {"dataset folder": folder, "data folder": folder / "data",
            "file": folder / "data" / "main_data.hdf5"}[where]
    assert minari_file(path) == folder / "data" / "main_data.hdf5"
    assert is_minari_file(path)
    assert len(load_minari_demos(path, "AdroitHandDoor-v1")) == 2


def test_is_minari_file_rejects_maniskill_files_and_missing_paths(tmp_path):
    with h5py.File(tmp_path / "trajectory.h5", "w") as h5:
        h5.create_dataset("traj_0/actions", data=np.zeros((3, 2)))
    assert not is_minari_file(tmp_path / "trajectory.h5")
    assert not is_minari_file(tmp_path)
    assert not is_minari_file(tmp_path / "nope")


def test_sparse_and_dense_ids_are_one_task(tmp_path):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", make_episodes([4]))
    for env_id in ("AdroitHandDoorSparse-v1", "AdroitHandDoor-v1"):
        assert minari_dataset_id(env_id) == "D4RL/door/human-v2"
        assert len(load_minari_demos(folder, env_id)) == 1


def test_legacy_root_attribute_metadata(tmp_path):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandPen-v1", make_episodes([4]), legacy=True)
    assert len(load_minari_demos(folder, "AdroitHandPenSparse-v1")) == 1
    with pytest.raises(DemoFileError, match="demos for AdroitHandPen-v1, but AdroitHandDoorSparse-v1"):
        load_minari_demos(folder, "AdroitHandDoorSparse-v1")


def test_default_dir_follows_minari_datasets_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert default_minari_dir("D4RL/door/human-v2") == tmp_path / "D4RL/door/human-v2"


def test_missing_path_gives_download_commands(tmp_path):
    with pytest.raises(DemoFileError, match=r"nope not found.*pip install \"minari\[hdf5,hf\]>=0\.5\.2\".*"
                                            r"minari download D4RL/hammer/human-v2"):
        load_minari_demos(tmp_path / "nope", "AdroitHandHammerSparse-v1")


def test_folder_without_data_file(tmp_path):
    with pytest.raises(DemoFileError, match=r"holds no data/main_data\.hdf5.*minari download D4RL/door/human-v2"):
        load_minari_demos(tmp_path, "AdroitHandDoorSparse-v1")


def test_not_hdf5(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "main_data.hdf5").write_text("not hdf5")
    assert not is_minari_file(tmp_path / "data" / "main_data.hdf5")
    with pytest.raises(DemoFileError, match=r"main_data\.hdf5 is not an HDF5 file.*minari download"):
        load_minari_demos(tmp_path, "AdroitHandDoorSparse-v1")


def test_empty_dataset(tmp_path):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", [])
    with pytest.raises(DemoFileError, match="holds no episodes"):
        load_minari_demos(folder, "AdroitHandDoorSparse-v1")


def test_wrong_task_names_both(tmp_path):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandHammer-v1", make_episodes([4]))
    with pytest.raises(DemoFileError, match=r"demos for AdroitHandHammer-v1, but AdroitHandDoorSparse-v1 was asked"
                                            r".*minari download D4RL/door/human-v2"):
        load_minari_demos(folder, "AdroitHandDoorSparse-v1")


def test_no_recorded_env_id(tmp_path):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", make_episodes([4]), dataset_id="x/y-v0")
    meta = json.loads((folder / "data" / "metadata.json").read_text())
    del meta["env_spec"]
    (folder / "data" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DemoFileError, match="holds no env id"):
        load_minari_demos(folder, "AdroitHandDoorSparse-v1")


def test_mismatched_lengths(tmp_path):
    obs, actions = make_episodes([5])[0]
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", [(obs[:-1], actions)])
    with pytest.raises(DemoFileError, match=r"episode_0: obs \(5, 39\) and actions \(5, 28\) do not fit"):
        load_minari_demos(folder, "AdroitHandDoorSparse-v1")


def test_dict_observations(tmp_path):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", make_episodes([4]))
    with h5py.File(folder / "data" / "main_data.hdf5", "a") as h5:
        del h5["episode_0/observations"]
        h5.create_dataset("episode_0/observations/state", data=np.zeros((5, 3)))
    with pytest.raises(DemoFileError, match="observations is a group"):
        load_minari_demos(folder, "AdroitHandDoorSparse-v1")


def test_too_many_trajectories(tmp_path):
    folder = write_minari_file(tmp_path / "human-v2", "AdroitHandDoor-v1", make_episodes([4, 5, 6]))
    with pytest.raises(DemoFileError, match=r"4 trajectories asked for, but .* has only 3: lower --num-demo-traj"):
        load_minari_demos(folder, "AdroitHandDoorSparse-v1", num_traj=4)
