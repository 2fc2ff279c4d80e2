"""The base-policy seam (pi_dec/frozen_base.py): our bases act as before the seam (golden seeded actions), a
user's own base is refined through --base-policy with no change to pi-dec, and what does not fit is one line."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script

GOLDEN = ROOT / "tests" / "golden" / "seeded_actions.json"
DP_CFG = {"obs_horizon": 2, "act_horizon": 8, "pred_horizon": 16, "diffusion_step_embed_dim": 16, "unet_dims": [16, 32],
          "n_groups": 4, "control_mode": "pd_ee_delta_pose"}


def golden_bases(folder):
    """Small bases with seeded weights in the official layout: {name: (checkpoint, online flags)}."""
    from pi_dec.base_policies import BeTPolicy, DiffusionPolicy, DiffusionPolicyRGBD

    made = {
        "diffusion": (lambda: DiffusionPolicy(6, 3, 2, 8, 16, 16, (16, 32), 4), DP_CFG),
        "bet": (lambda: BeTPolicy(6, 3, context_window=4, n_clusters=4, n_layers=1, n_heads=2, n_embedding=16),
                {"context_window": 4, "n_clusters": 4, "n_layers": 1, "n_heads": 2, "n_embedding": 16,
                 "control_mode": "pd_ee_delta_pose"}),
        "diffusion_rgbd": (lambda: DiffusionPolicyRGBD(5, 6, (64, 64), 3, 2, 8, 16, 16, (16, 32), 4),
                           DP_CFG | {"image_size": [64, 64]}),
    }
    out = {}
    for name, (make, cfg) in made.items():
        torch.manual_seed(0)
        policy = make()
        if name == "bet":  # k-means centres are a buffer of zeros until fitted: give them values
            policy.net._cluster_centers = torch.randn(4, 3)
        (folder / name / "checkpoints").mkdir(parents=True)
        (folder / name / "args.json").write_text(json.dumps(cfg))
        torch.save({"agent": policy.state_dict()}, folder / name / "checkpoints" / "best.pt")
        out[name] = folder / name / "checkpoints" / "best.pt"
    return out


def golden_obs(name: str, window: int):
    torch.manual_seed(1)
    if name == "diffusion_rgbd":
        return {"rgb": torch.randint(0, 256, (3, window, 6, 64, 64), dtype=torch.uint8),
                "depth": torch.rand(3, window, 2, 64, 64), "state": torch.randn(3, window, 5)}
    return torch.randn(3, window, 6)


SAMPLINGS = {"diffusion": [{"ddim_steps": 4, "act_horizon": 4}, {"ddpm_steps": 6, "act_horizon": 4}],
             "bet": [{}], "diffusion_rgbd": [{"ddim_steps": 4, "act_horizon": 4}]}


def test_our_bases_act_as_before_the_seam(tmp_path):
    """Fixed weights, fixed observations, fixed seed -> the same chunk and the same residual input as the golden
    file, written by the code before the base-policy seam (pi_dec.base_policies.frozen_base_actions)."""
    from pi_dec.base_policies import load_base

    golden = json.loads(GOLDEN.read_text())
    for name, ckpt in golden_bases(tmp_path).items():
        for flags in SAMPLINGS[name]:
            base = load_base(ckpt, flags)
            obs = golden_obs(name, base.obs_horizon)
            torch.manual_seed(2)
            chunk, seen = base.act(obs)
            want = golden[f"{name} {json.dumps(flags, sort_keys=True)}"]
            np.testing.assert_allclose(chunk.numpy(), want["chunk"], atol=1e-5)
            np.testing.assert_allclose(seen.numpy(), want["seen"], atol=1e-5)
            assert chunk.shape == (3, base.act_horizon, 3) and seen.shape == (3, base.res_obs_dim)


def test_a_users_mlp_base_is_refined_through_base_policy(door_demos, tmp_path):
    """examples/mlp_base.py, trained by its own script, refined by the DP online script on Door: the residual and
    the critics take its dims (two observations in, chunks of four 28-dim actions out), nothing else changes."""
    demo = door_demos / "AdroitHandDoorSparse-v1" / "trajectory.h5"
    run_script("examples/mlp_base.py", "--demo-path", demo, "--out", tmp_path / "mlp.pt", "--iters", 50)
    run_script("online/pi_dec_diffusion_maniskill2.py", "--env-id", "AdroitHandDoorSparse-v1", "--base-policy",
               "examples.mlp_base:load", "--base-policy-ckpt", tmp_path / "mlp.pt", "--total-timesteps", 128,
               "--num-envs", 4, "--training-freq", 32, "--learning-starts", 64, "--batch-size", 16, "--hidden-dim", 16,
               "--eval-freq", 128, "--num-eval-episodes", 2, "--num-eval-envs", 2, "--log-freq", 64,
               "--output-dir", tmp_path / "out", "--sync-venv", "--num-threads", 1, "--critic-input", "concat")
    run = next((tmp_path / "out" / "AdroitHandDoorSparse-v1" / "PolicyDecorator-DiffusionPolicy").iterdir())
    saved = torch.load(run / "checkpoints" / "128.pt", weights_only=True)
    assert saved["updates"] > 0 and saved["buffer"]["obs"].shape == (128, 39)  # Door's observation
    assert saved["buffer"]["actions"].shape == (128, 3 * 4 * 28)  # [residual, base chunk, next base chunk]
    assert saved["res_actor"]["fc_mean.weight"].shape == (4 * 28, 16)
    args = json.loads((run / "args.json").read_text())
    assert args["base_policy"] == {"obs_dim": 39, "act_dim": 28, "hidden": 256, "control_mode": "pd_joint_pos"}
    assert args["act_horizon_executed"] == 4 and args["base_policy_ckpt"] == str(tmp_path / "mlp.pt")


def test_what_does_not_fit_is_one_line(door_demos, tmp_path):
    """A factory that cannot be imported, an object that is not a base, and a base of another task."""
    from pi_dec.frozen_base import check_base, import_factory
    from pi_dec.make_env import make_vec_env
    from pi_dec.policy_decorator import check_fits
    from pi_dec.run import UsageError

    with pytest.raises(UsageError, match="name a factory as module:attribute"):
        import_factory("examples.mlp_base")
    with pytest.raises(UsageError, match="cannot import no_such_module"):
        import_factory("no_such_module:load")
    with pytest.raises(UsageError, match="examples.mlp_base has no loader"):
        import_factory("examples.mlp_base:loader")
    with pytest.raises(UsageError, match="MLPBase.obs_horizon is not callable"):
        import_factory("examples.mlp_base:MLPBase.obs_horizon")
    MLPBase = import_factory("examples.mlp_base:MLPBase")
    good = MLPBase(39, 28)
    assert check_base(good, "x") is good
    with pytest.raises(UsageError, match="returned a SimpleNamespace, which lacks act, reset, to, control_mode"):
        check_base(SimpleNamespace(obs_mode="state"), "--base-policy m:f")
    good.act_horizon = 0
    with pytest.raises(UsageError, match="its act_horizon is 0; it must be a positive int"):
        check_base(good, "--base-policy m:f")
    envs = make_vec_env("AdroitHandDoorSparse-v1", 1, 0, "pd_joint_pos", 2, asynchronous=False)
    with pytest.raises(UsageError, match="reads observations of 46 and outputs actions of 26, but "
                                         "AdroitHandDoorSparse-v1 .* has 39 and 28: was it trained on another task"):
        check_fits(MLPBase(46, 26), envs, "AdroitHandDoorSparse-v1", "pd_joint_pos")
    # through the script: one line, exit status 2
    out = run_script("online/pi_dec_bet_maniskill2.py", "--env-id", "AdroitHandDoorSparse-v1", "--base-policy",
                     "examples.mlp_base:nope", "--base-policy-ckpt", "x.pt", "--output-dir", tmp_path, check=False)
    assert out.returncode == 2 and out.stderr.strip() == ("error: --base-policy examples.mlp_base:nope: "
                                                          "examples.mlp_base has no nope.")
