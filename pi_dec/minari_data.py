"""Load the Adroit human demonstrations (Minari's D4RL `*/human-v2` datasets) for the offline scripts.

We cannot install `minari` next to our pinned numpy, so this reads Minari's HDF5 storage with h5py.
The layout below is Minari 0.5's (Farama-Foundation/Minari: `minari/storage/datasets_root_dir.py`,
`minari/storage/local.py`, `minari/dataset/minari_storage.py`, `minari/dataset/_storages/hdf5_storage.py`):

    $MINARI_DATASETS_PATH, default ~/.minari/datasets/
      D4RL/door/human-v2/                  one folder per dataset id (namespace/name-vN)
        data/main_data.hdf5                one group per episode, `episode_0` ... `episode_24`:
          observations   (L+1, obs_dim)    a dataset; a group instead for Dict/Tuple observation spaces
          actions        (L, act_dim)
          rewards, terminations, truncations  (L,)
          infos/...      (L+1, ...)        the reset's info first
          attrs          id, total_steps, seed, rewards_sum/mean/std/max/min
        data/metadata.json                 dataset_id ("D4RL/door/human-v2"), total_episodes, total_steps,
                                           data_format ("hdf5"), env_spec (a JSON string, gymnasium's
                                           EnvSpec.to_json(); its "id" is "AdroitHandDoor-v1"),
                                           observation_space/action_space (serialized), minari_version, ...
      D4RL/namespace_metadata.json, D4RL/door/namespace_metadata.json

Minari <= 0.4 kept the same metadata as attributes of the HDF5 root instead of metadata.json; we read either.
The human-v2 data were replayed on gymnasium-robotics `AdroitHandDoor-v1` etc. (dense reward); observations and
actions do not depend on the reward, so they serve the Sparse tasks as they are.

Fetch them on a machine with internet, in a venv of their own (Minari >= 0.5.2 downloads from Hugging Face):
    python -m venv minari-venv && minari-venv/bin/pip install "minari[hdf5,hf]>=0.5.2"
    minari-venv/bin/minari download D4RL/door/human-v2    # and hammer, pen, relocate
then copy ~/.minari/datasets/D4RL/<task>/human-v2 to this machine and pass that folder as --demo-path.

Every way a file can be wrong ends in one `DemoFileError` whose message names the file, the problem and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from pi_dec.demo_data import DemoFileError, as_trajectory

MINARI_DATASETS = {
    "AdroitHandDoorSparse-v1": "D4RL/door/human-v2",
    "AdroitHandHammerSparse-v1": "D4RL/hammer/human-v2",
    "AdroitHandPenSparse-v1": "D4RL/pen/human-v2",
    "AdroitHandRelocateSparse-v1": "D4RL/relocate/human-v2",
}
DATA_FILE = "main_data.hdf5"  # Minari's _MAIN_FILE_NAME
METADATA_FILE = "metadata.json"  # Minari's METADATA_FILE_NAME, next to DATA_FILE


def dense_id(env_id: str) -> str:
    """AdroitHandDoorSparse-v1 -> AdroitHandDoor-v1: the same observations and actions, another reward."""
    return env_id.replace("Sparse", "")


def minari_dataset_id(env_id: str) -> str | None:
    """The Minari dataset with the human demos for a task (Sparse or dense id), None if there is none."""
    return {dense_id(k): v for k, v in MINARI_DATASETS.items()}.get(dense_id(env_id))


def default_minari_dir(dataset_id: str) -> Path:
    """Where `minari download` puts a dataset (minari.storage.get_dataset_path)."""
    root = os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets"
    return Path(root) / dataset_id


def download_hint(env_id: str | None) -> str:
    dataset_id = (minari_dataset_id(env_id) if env_id else None) or "D4RL/<task>/human-v2"
    return (f"Download it on a machine with internet: `python -m venv minari-venv && minari-venv/bin/pip install "
            f"\"minari[hdf5,hf]>=0.5.2\" && minari-venv/bin/minari download {dataset_id}`, then copy "
            f"~/.minari/datasets/{dataset_id} here and pass that folder as --demo-path.")


def minari_file(path: str | Path, env_id: str | None = None) -> Path:
    """The main_data.hdf5 of a Minari dataset, given the dataset folder, its data/ folder or the file itself."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DemoFileError(f"Minari dataset {path} not found. {download_hint(env_id)}")
    if path.is_file():
        return path
    for candidate in (path / "data" / DATA_FILE, path / DATA_FILE):
        if candidate.is_file():
            return candidate
    raise DemoFileError(f"{path} holds no data/{DATA_FILE}: not a downloaded Minari dataset, or one in the arrow/"
                        f"parquet format (we read only hdf5). {download_hint(env_id)}")


def is_minari_file(path: str | Path) -> bool:
    """True for a Minari dataset folder (or its data/ folder) or a Minari main_data.hdf5, so a caller can tell
    these from our ManiSkill2 `.h5` + `.json` pairs."""
    path = Path(path).expanduser()
    if path.is_dir():
        return (path / "data" / DATA_FILE).is_file() or (path / DATA_FILE).is_file()
    if path.suffix != ".hdf5" or not path.is_file():
        return False
    if path.with_name(METADATA_FILE).is_file():
        return True
    try:
        with h5py.File(path, "r") as h5:
            return any(name.startswith("episode_") for name in h5)
    except OSError:
        return False


def recorded_env_id(h5_path: Path, h5: h5py.File) -> str | None:
    """The env id a Minari file was recorded on: env_spec's "id", else the task of a known dataset_id."""
    json_path = h5_path.with_name(METADATA_FILE)
    if json_path.is_file():  # Minari >= 0.5
        try:
            meta = json.loads(json_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DemoFileError(f"{json_path} is not valid JSON ({err}): re-download the dataset.") from None
        if not isinstance(meta, dict):
            raise DemoFileError(f"{json_path} is not Minari metadata (a JSON object): re-download the dataset.")
    else:  # Minari <= 0.4: the same keys as root attributes
        meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
    spec = meta.get("env_spec")
    if spec:
        try:
            return (spec if isinstance(spec, dict) else json.loads(str(spec))).get("id")
        except json.JSONDecodeError as err:
            raise DemoFileError(f"{h5_path}: env_spec is not valid JSON ({err}): re-download the dataset.") from None
    return {v: dense_id(k) for k, v in MINARI_DATASETS.items()}.get(str(meta.get("dataset_id")))


def episode_ids(h5: h5py.File) -> list[int]:
    """Episode ids in numeric order (episode_10 sorts before episode_2 as text)."""
    return sorted(int(name[len("episode_"):]) for name in h5
                  if name.startswith("episode_") and name[len("episode_"):].isdigit())


def read_episode(h5_path: Path, group: h5py.Group) -> dict:
    name = group.name.lstrip("/")
    if "observations" not in group or "actions" not in group:
        raise DemoFileError(f"{h5_path}:{name} lacks 'observations' or 'actions': not a Minari episode, "
                            f"or a damaged download. Re-download the dataset.")
    if not isinstance(group["observations"], h5py.Dataset):
        raise DemoFileError(f"{h5_path}:{name}/observations is a group (a Dict/Tuple observation space); the "
                            f"scripts need flat state observations, as in the D4RL Adroit datasets.")
    return as_trajectory(group["observations"], group["actions"], f"{h5_path}:{name}",
                         ": a damaged file, re-download the dataset")


def load_minari_demos(path: str | Path, env_id: str, num_traj: int | None = None) -> list[dict]:
    """The first `num_traj` episodes (by id) of a Minari dataset recorded on `env_id`'s task (Sparse and dense
    ids count as one), as dicts of float32 arrays: obs (L+1, obs_dim) and actions (L, act_dim)."""
    h5_path = minari_file(path, env_id)
    try:
        h5 = h5py.File(h5_path, "r")
    except OSError as err:
        raise DemoFileError(f"{h5_path} is not an HDF5 file ({err}). {download_hint(env_id)}") from None
    with h5:
        recorded = recorded_env_id(h5_path, h5)
        if recorded is None or dense_id(recorded) != dense_id(env_id):
            found = f"demos for {recorded}" if recorded else "no env id (no env_spec or known dataset_id)"
            raise DemoFileError(f"{h5_path} holds {found}, but {env_id} was asked for: pass that task's "
                                f"dataset. {download_hint(env_id)}")
        ids = episode_ids(h5)
        if not ids:
            raise DemoFileError(f"{h5_path} holds no episodes (no episode_<id> groups): an empty or unfinished "
                                f"dataset. {download_hint(env_id)}")
        if num_traj is not None:
            if num_traj > len(ids):
                raise DemoFileError(f"{num_traj} trajectories asked for, but {h5_path} has only {len(ids)}: "
                                    f"lower --num-demo-traj to at most {len(ids)}.")
            ids = ids[:num_traj]
        try:
            trajs = [read_episode(h5_path, h5[f"episode_{i}"]) for i in ids]
        except (OSError, RuntimeError, KeyError) as err:  # h5py's errors for damaged files
            raise DemoFileError(f"{h5_path} is damaged ({err}): re-download the dataset.") from None
    dims = {(t["obs"].shape[1], t["actions"].shape[1]) for t in trajs}
    if len(dims) > 1:
        raise DemoFileError(f"{h5_path}: episodes differ in obs/action dims {sorted(dims)}: a damaged file, "
                            f"re-download the dataset.")
    return trajs
