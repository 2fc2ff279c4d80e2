import pytest

import pi_dec  # noqa: F401  (Vulkan set up before any test imports sapien)
import pi_dec.envs  # noqa: F401  (registers the tasks)
from pi_dec.standin_assets import write_standins


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    """Stand-in faucets and chairs: {'asset_root': ..., 'faucet_json': ..., 'chair_json': ...}."""
    root = tmp_path_factory.mktemp("standin_assets")
    return {
        "asset_root": str(root / "partnet_mobility" / "dataset"),
        "faucet_json": str(write_standins(root, "faucet")),
        "chair_json": str(write_standins(root, "chair")),
    }


@pytest.fixture(scope="session")
def demos(tmp_path_factory):
    """A few real demonstrations per task, generated and converted by `python -m pi_dec.demos`.

    {env_id: (output folder, summary dict)}
    """
    from pi_dec.demos.cli import Args, main

    root = tmp_path_factory.mktemp("demos")
    result = {}
    for env_id, n in (("PickCube-v0", 3), ("StackCube-v0", 3), ("PegInsertionSide-v2", 3)):
        out = root / env_id.split("-")[0]
        result[env_id] = (out, main(Args(env_id=env_id, num_demos=n, out=str(out), seed=1000, num_procs=2)))
    return result
