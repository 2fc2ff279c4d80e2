"""The demo loader: slicing by index, and one clear error for each way a file can be wrong."""

import json

import h5py
import numpy as np
import pytest
import torch

from pi_dec.demo_data import DemoFileError, load_demos


def write_demo(path, lengths=(5, 6), obs_dim=4, act_dim=3, control_mode="pd_ee_delta_pose",
               obs_extra=1, json_data=None):
    """A minimal ManiSkill2-style trajectory pair; traj_i's values encode i so order can be checked."""
    with h5py.File(path, "w") as h5:
        for i, n in enumerate(lengths):
            group = h5.create_group(f"traj_{i}")
            group.create_dataset("obs", data=np.full((n + obs_extra, obs_dim), i, np.float32))
            group.create_dataset("actions", data=np.full((n, act_dim), i, np.float32))
    meta = json_data or {
        "env_info": {"env_id": "PickCube-v0", "max_episode_steps": 200,
                     "env_kwargs": {"obs_mode": "state", "control_mode": control_mode}},
        "episodes": [{"episode_id": i, "episode_seed": i, "elapsed_steps": n, "control_mode": control_mode}
                     for i, n in enumerate(lengths)],
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_loads_all_trajectories_in_index_order(tmp_path):
    lengths = list(range(3, 15))  # 12 trajectories: traj_10 sorts before traj_2 as text
    trajs = load_demos(write_demo(tmp_path / "t.h5", lengths), control_mode="pd_ee_delta_pose")
    assert [t["obs"][0, 0] for t in trajs] == list(range(12))
    assert [len(t["actions"]) for t in trajs] == lengths
    assert all(len(t["obs"]) == len(t["actions"]) + 1 for t in trajs)
    assert trajs[0]["obs"].dtype == np.float32


def test_num_traj_takes_the_first_n_by_index(tmp_path):
    path = write_demo(tmp_path / "t.h5", list(range(3, 15)))
    assert [t["obs"][0, 0] for t in load_demos(path, num_traj=3)] == [0, 1, 2]
    with pytest.raises(DemoFileError, match="13 trajectories asked for, but .* has only 12"):
        load_demos(path, num_traj=13)


def test_missing_file(tmp_path):
    with pytest.raises(DemoFileError, match="not found.*python -m pi_dec.demos"):
        load_demos(tmp_path / "nope.h5")


def test_missing_json(tmp_path):
    path = write_demo(tmp_path / "t.h5")
    path.with_suffix(".json").unlink()
    with pytest.raises(DemoFileError, match=r"t\.json is missing"):
        load_demos(path)


def test_empty_file(tmp_path):
    path = write_demo(tmp_path / "t.h5", lengths=())
    with pytest.raises(DemoFileError, match="holds no episodes"):
        load_demos(path)


def test_wrong_control_mode_names_both_modes_and_the_fix(tmp_path):
    path = write_demo(tmp_path / "t.h5", control_mode="pd_ee_delta_pos")
    with pytest.raises(DemoFileError) as err:
        load_demos(path, control_mode="pd_ee_delta_pose")
    message = str(err.value)
    assert "'pd_ee_delta_pos'" in message and "'pd_ee_delta_pose'" in message
    assert "--control-mode pd_ee_delta_pos" in message and "replay_trajectory" in message


def test_mismatched_lengths(tmp_path):
    path = write_demo(tmp_path / "t.h5", obs_extra=0)  # obs as long as actions
    with pytest.raises(DemoFileError, match=r"obs \(5, 4\) and actions \(5, 3\) do not fit"):
        load_demos(path)


@pytest.mark.parametrize("key,bad", [("obs", np.nan), ("actions", np.inf)])
def test_nan_or_inf_in_demos_is_one_error_naming_the_step(tmp_path, key, bad):
    path = write_demo(tmp_path / "t.h5")
    with h5py.File(path, "r+") as h5:
        values = h5[f"traj_1/{key}"][()]
        values[3, 1] = bad
        h5[f"traj_1/{key}"][...] = values
    with pytest.raises(DemoFileError, match=rf"t.h5:traj_1: {key} at step 3 holds NaN or inf"):
        load_demos(path)


def test_demos_of_another_task_are_one_error_but_another_version_of_it_is_fine(tmp_path):
    path = write_demo(tmp_path / "t.h5")  # recorded as PickCube-v0
    with pytest.raises(DemoFileError, match="t.h5 holds demos of PickCube-v0, not of StackCube-v0"):
        load_demos(path, env_id="StackCube-v0")
    assert len(load_demos(path, env_id="PickCube-v2")) == 2  # a -v2 variant reads its task's official demos


def test_inconsistent_dims_between_trajectories(tmp_path):
    path = write_demo(tmp_path / "t.h5")
    with h5py.File(path, "a") as h5:
        del h5["traj_1/actions"]
        h5["traj_1"].create_dataset("actions", data=np.zeros((6, 5), np.float32))
    with pytest.raises(DemoFileError, match="differ from traj_0"):
        load_demos(path)


def test_not_a_maniskill_json(tmp_path):
    path = write_demo(tmp_path / "t.h5", json_data={"hello": 1})
    with pytest.raises(DemoFileError, match="not a ManiSkill2 trajectory JSON"):
        load_demos(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(DemoFileError, match="not valid JSON"):
        load_demos(path)
    path.with_suffix(".json").write_bytes(bytes(range(128, 256)))  # binary, not even text
    with pytest.raises(DemoFileError, match="not valid JSON"):
        load_demos(path)
    write_demo(path, json_data={"env_info": {}, "episodes": [{"elapsed_steps": 5}]})  # no episode_id
    with pytest.raises(DemoFileError, match="not a ManiSkill2 trajectory JSON"):
        load_demos(path)


def test_not_an_hdf5_file(tmp_path):
    path = write_demo(tmp_path / "t.h5")
    path.write_bytes(b"this is not hdf5")
    with pytest.raises(DemoFileError, match="not an HDF5 file"):
        load_demos(path)


def test_h5_without_the_listed_groups(tmp_path):
    path = write_demo(tmp_path / "t.h5")
    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", data=np.zeros(3))
    with pytest.raises(DemoFileError, match="has no group traj_0 with 'actions'"):
        load_demos(path)


def test_file_without_state_observations(tmp_path):
    path = write_demo(tmp_path / "t.h5")
    with h5py.File(path, "a") as h5:
        del h5["traj_0/obs"]
    with pytest.raises(DemoFileError, match="no observations .*obs_mode 'none'.*-o state"):
        load_demos(path)


def test_truncated_h5(tmp_path):
    path = write_demo(tmp_path / "t.h5", lengths=(50, 60, 70), obs_dim=40)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(DemoFileError, match="t.h5 is not an HDF5 file .*truncated file"):
        load_demos(path)


def test_damaged_h5_is_one_error_wherever_the_damage_is(tmp_path):
    """Bytes overwritten anywhere: either the data silently differs (HDF5 has no checksums here) or one
    DemoFileError, never h5py's own RuntimeError/KeyError."""
    errors = 0
    for start in range(0, 38_000, 500):
        path = write_demo(tmp_path / "t.h5", lengths=(50, 60, 70), obs_dim=40)
        data = bytearray(path.read_bytes())
        data[start:start + 200] = b"\xff" * 200
        path.write_bytes(bytes(data))
        try:
            load_demos(path)
        except DemoFileError as err:
            assert "\n" not in str(err)
            errors += 1
    assert errors > 3


def test_random_batches_drop_the_incomplete_batch_and_reshuffle_each_epoch():
    from pi_dec.demo_data import random_batches

    torch.manual_seed(0)
    batches = random_batches(10, 4, "cpu")
    epochs = [[next(batches) for _ in range(2)] for _ in range(3)]  # 10 // 4 = 2 full batches per epoch
    for epoch in epochs:
        seen = torch.cat(epoch)
        assert all(len(b) == 4 for b in epoch) and len(set(seen.tolist())) == 8  # no index twice in an epoch
        assert seen.min() >= 0 and seen.max() <= 9
    orders = {tuple(torch.cat(e).tolist()) for e in epochs}
    assert len(orders) == 3  # a fresh permutation per epoch
    with pytest.raises(DemoFileError, match="--batch-size 11 is larger than the 10 training windows"):
        next(random_batches(10, 11, "cpu"))
