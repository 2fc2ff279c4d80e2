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
