"""Our three base policies (Diffusion Policy, its RGB-D variant, BeT), shared by the offline scripts (which
train them) and the online scripts (which freeze them), so checkpoint keys cannot drift. `state_dict()` keys
equal the official checkpoints'.

Each is also a `FrozenBase` (pi_dec/frozen_base.py), the one thing Policy Decorator knows of a base: it
builds itself back from a checkpoint and its run's `args.json` (`from_checkpoint`, dims read off the
weights) and answers one call, `act`: obs window -> (action chunk, what the residual policy sees).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pi_dec.nets.bet import GPT, BehaviorTransformer
from pi_dec.nets.unet1d import ConditionalUnet1D
from pi_dec.errors import CheckpointError, UsageError  # noqa: F401  (CheckpointError: re-exported)
from pi_dec.run import COUNT, between

DP_ALGO = "Offline-DiffusionPolicy-UNet"  # args.json "algo_name" of the offline scripts (as in the original)
BET_ALGO = "Offline-BeT"
NUM_DIFFUSION_ITERS = 100


@dataclass
class DiffusionSampling:
    """The online flags of a frozen Diffusion Policy (both online DP scripts' Args inherit them)."""

    ddim_steps: int = 4
    """DDIM denoising steps of the base policy (it was trained with 100 DDPM steps)"""
    ddpm_steps: int | None = None
    """sample the base with stochastic DDPM in this many steps instead of DDIM (not in the original; README)"""
    act_horizon: int = 4
    """actions executed per decision (overrides the base policy's)"""


# What they allow (--act-horizon is also checked against the base policy's horizons).
SAMPLING_RULES = {"ddim_steps": between(1, 100), "ddpm_steps": between(1, 100),  # it was trained with 100 steps
                  "act_horizon": COUNT}


class FrozenFromCheckpoint:
    """What our policies share as frozen bases: rebuilt from a checkpoint, then one call per decision.

    A subclass names its scripts, the args.json keys it is built from (`config_keys`), how it reads its
    dims off the weights (`build`), and how it runs online (`prepare_online`, from the online flags).
    """

    offline_script: str
    online_script: str
    config_keys: tuple[str, ...]
    obs_mode = "state"  # what the envs must give it: "state" vectors or "rgbd" windows (pi_dec/rgbd.py)
    image_size = None  # (height, width) of the cameras, for obs_mode "rgbd"
    control_mode: str | None = None  # the controller it was trained with (None: the task's default)

    def reset(self, done) -> None:
        """Our bases keep no per-episode state (the env wrapper keeps the observation window)."""

    @classmethod
    def online_config(cls, cfg: dict, flags: dict) -> dict:
        return cfg

    @classmethod
    def from_checkpoint(cls, state: dict, cfg: dict, ckpt_path: str | Path, flags: dict | None = None):
        """The frozen policy of a checkpoint's `state` dict and its run's args.json `cfg`, set up as the online
        script's `flags` (e.g. the DP script's act_horizon and sampler) say."""
        cfg = cls.online_config(dict(cfg), flags or {})
        if missing := [k for k in cls.config_keys if k not in cfg]:
            raise CheckpointError(f"{Path(ckpt_path).parent.parent / 'args.json'} lacks {', '.join(missing)}: "
                                  f"not the args.json of an offline {cls.__name__} run.")
        policy = cls.build(state, cfg, ckpt_path)
        expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if expected != got:
            wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])[:3]
            missing = sorted(expected.keys() - got.keys())[:3]
            raise CheckpointError(f"{ckpt_path} does not fit its run's args.json: shape mismatch in {wrong or missing}.")
        policy.load_state_dict(state)
        policy.eval().requires_grad_(False)
        policy.control_mode, policy.config = cfg.get("control_mode"), cfg
        policy.prepare_online(flags or {})
        return policy

    @staticmethod
    def weight(state: dict, key: str, ckpt_path, what: str) -> torch.Tensor:
        """A weight the dims are read from, or a one-line CheckpointError."""
        if not isinstance(state.get(key), torch.Tensor) or state[key].ndim < 2:
            raise CheckpointError(f"{ckpt_path} lacks {key}: not a complete {what}.")
        return state[key]


class DiffusionPolicy(FrozenFromCheckpoint, nn.Module):
    """Denoises an action sequence (pred_horizon, act_dim) conditioned on an observation window."""

    def __init__(self, obs_dim: int, act_dim: int, obs_horizon: int, act_horizon: int, pred_horizon: int,
                 diffusion_step_embed_dim: int = 64, unet_dims=(64, 128, 256), n_groups: int = 8):
        super().__init__()
        assert obs_horizon + act_horizon - 1 <= pred_horizon, "obs_horizon + act_horizon - 1 must be <= pred_horizon"
        self.obs_horizon, self.act_horizon, self.pred_horizon = obs_horizon, act_horizon, pred_horizon
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.res_obs_dim = obs_dim  # the residual policy sees the latest observation
        self.noise_pred_net = ConditionalUnet1D(
            input_dim=act_dim, global_cond_dim=obs_horizon * obs_dim,
            diffusion_step_embed_dim=diffusion_step_embed_dim, down_dims=list(unet_dims), n_groups=n_groups)
        self.noise_scheduler = make_scheduler("ddpm")

    def use_sampler(self, kind: str, steps: int) -> None:
        """Sample with "ddim" (deterministic; the online scripts use 4 steps) or "ddpm" (fresh noise in each
        step) in `steps` of the 100 training steps."""
        self.noise_scheduler = make_scheduler(kind, steps)

    def compute_loss(self, obs_seq: torch.Tensor, act_seq: torch.Tensor) -> torch.Tensor:
        # obs_seq: (B, obs_horizon, obs_dim), act_seq: (B, pred_horizon, act_dim)
        B = obs_seq.shape[0]
        noise = torch.randn_like(act_seq)
        t = torch.randint(0, NUM_DIFFUSION_ITERS, (B,), device=obs_seq.device)
        noisy = self.noise_scheduler.add_noise(act_seq, noise, t)  # forward diffusion
        return F.mse_loss(self.noise_pred_net(noisy, t, global_cond=obs_seq.flatten(1)), noise)

    @torch.no_grad()
    def get_action(self, obs_seq: torch.Tensor) -> torch.Tensor:
        """(B, obs_horizon, obs_dim) -> the executed chunk (B, act_horizon, act_dim)."""
        cond = obs_seq.flatten(1)
        act_seq = torch.randn(obs_seq.shape[0], self.pred_horizon, self.act_dim, device=obs_seq.device)
        for t in self.noise_scheduler.timesteps:
            eps = self.noise_pred_net(act_seq, t, global_cond=cond)
            act_seq = self.noise_scheduler.step(model_output=eps, timestep=t, sample=act_seq).prev_sample
        start = self.obs_horizon - 1  # the first predicted step aligned with the latest observation
        return act_seq[:, start:start + self.act_horizon]

    # ---- as a frozen base (pi_dec/frozen_base.py) ------------------------------------------------ #
    offline_script = "offline/diffusion_policy_unet_maniskill2.py"
    online_script = "online/pi_dec_diffusion_maniskill2.py"
    config_keys = ("obs_horizon", "act_horizon", "pred_horizon", "diffusion_step_embed_dim", "unet_dims", "n_groups")

    def act(self, obs_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, obs_horizon, obs_dim) -> (chunk (N, act_horizon, act_dim), latest observation (N, obs_dim))."""
        return self.get_action(obs_seq), obs_seq[:, -1]

    @classmethod
    def online_config(cls, cfg: dict, flags: dict) -> dict:
        if flags.get("act_horizon"):  # the online script's --act-horizon replaces the offline run's
            cfg["act_horizon"] = flags["act_horizon"]
        if all(k in cfg for k in ("act_horizon", "pred_horizon", "obs_horizon")):
            most = cfg["pred_horizon"] - cfg["obs_horizon"] + 1  # the chunk must fit in the predicted sequence
            if cfg["act_horizon"] > most:
                raise UsageError(f"--act-horizon {cfg['act_horizon']}: must be at most {most} with this base policy "
                                 f"(its pred_horizon {cfg['pred_horizon']} - obs_horizon {cfg['obs_horizon']} + 1).")
        return cfg

    @classmethod
    def cond_dim(cls, state: dict, cfg: dict, ckpt_path) -> int:
        """Per-frame size of the U-Net's condition, read off its first condition encoder."""
        w = cls.weight(state, "noise_pred_net.down_modules.0.0.cond_encoder.1.weight", ckpt_path, "Diffusion Policy")
        return (w.shape[1] - cfg["diffusion_step_embed_dim"]) // cfg["obs_horizon"]

    @classmethod
    def build(cls, state: dict, cfg: dict, ckpt_path):
        act_dim = cls.weight(state, "noise_pred_net.final_conv.1.weight", ckpt_path, "Diffusion Policy").shape[0]
        return cls(cls.cond_dim(state, cfg, ckpt_path), act_dim, cfg["obs_horizon"], cfg["act_horizon"],
                   cfg["pred_horizon"], cfg["diffusion_step_embed_dim"], cfg["unet_dims"], cfg["n_groups"])

    def prepare_online(self, flags: dict) -> None:
        """DDIM with --ddim-steps (4, the upstream's), or stochastic DDPM with --ddpm-steps if given."""
        if flags.get("ddpm_steps"):
            self.use_sampler("ddpm", flags["ddpm_steps"])
        else:
            self.use_sampler("ddim", flags.get("ddim_steps") or 4)


class RandomShift(nn.Module):
    """Shift each image by a random whole number of pixels in [-pad, pad] on both axes, filling the border
    with the edge pixels (DrQ's augmentation; the upstream's --random-shift)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        n, _, h, w = x.shape
        padded = F.pad(x, (self.pad,) * 4, mode="replicate")
        dy, dx = (torch.randint(0, 2 * self.pad + 1, (2, n, 1, 1), device=x.device))
        rows = dy + torch.arange(h, device=x.device).view(1, h, 1)  # (N, H, 1)
        cols = dx + torch.arange(w, device=x.device).view(1, 1, w)  # (N, 1, W)
        return padded[torch.arange(n, device=x.device).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


class DiffusionPolicyRGBD(DiffusionPolicy):
    """Diffusion Policy on RGB-D frames: a PlainConv encoder turns each frame's rgb + depth into 256
    features, concatenated with the frame's state vector; the U-Net is conditioned on those embeddings.

    Observations are dicts of (B, obs_horizon, ...) tensors: rgb uint8 (3k, H, W), depth (k, H, W) in
    metres, state (D,) (pi_dec/rgbd.py). Parameter names follow the upstream's RGB-D checkpoints.
    """

    visual_feature_dim = 256

    def __init__(self, state_dim: int, rgb_channels: int, image_size, act_dim: int, obs_horizon: int,
                 act_horizon: int, pred_horizon: int, diffusion_step_embed_dim: int = 64, unet_dims=(64, 128, 256),
                 n_groups: int = 8, random_shift: int = 0):
        from pi_dec.nets.plain_conv import PlainConv, PlainConv_MS1

        embedding_dim = self.visual_feature_dim + state_dim
        super().__init__(embedding_dim, act_dim, obs_horizon, act_horizon, pred_horizon,
                         diffusion_step_embed_dim, unet_dims, n_groups)
        # NOTE(original): two cameras (6 rgb channels) get PlainConv, anything else PlainConv_MS1.
        encoder = PlainConv if rgb_channels == 6 else PlainConv_MS1
        if tuple(image_size) != encoder.image_size:
            raise UsageError(f"{rgb_channels // 3} cameras of {image_size[0]}x{image_size[1]} (height x width): the "
                             f"upstream's encoder for {rgb_channels // 3} cameras ({encoder.__name__}) takes "
                             f"{encoder.image_size[0]}x{encoder.image_size[1]}; convert the demos at that size.")
        self.visual_encoder = encoder(in_channels=rgb_channels // 3 * 4, out_dim=self.visual_feature_dim)
        self.aug = RandomShift(random_shift) if random_shift > 0 else None
        self.obs_embedding_dim = embedding_dim  # per frame; what the residual policy sees of the latest one
        self.obs_dim, self.res_obs_dim, self.image_size = state_dim, embedding_dim, tuple(image_size)

    def encode_obs(self, obs_seq: dict, augment: bool = False) -> torch.Tensor:
        """-> (B, obs_horizon, obs_embedding_dim): per frame [visual features, state]."""
        rgb = obs_seq["rgb"].float() / 255.0  # (B, T, 3k, H, W)
        img = torch.cat([rgb, obs_seq["depth"].float()], dim=2).flatten(0, 1)  # (B*T, 4k, H, W)
        if augment and self.aug is not None:
            img = self.aug(img)  # each frame shifted on its own
        feature = self.visual_encoder(img).view(*rgb.shape[:2], -1)
        return torch.cat([feature, obs_seq["state"].float()], dim=-1)

    def compute_loss(self, obs_seq: dict, act_seq: torch.Tensor) -> torch.Tensor:
        return super().compute_loss(self.encode_obs(obs_seq, augment=True), act_seq)

    @torch.no_grad()
    def act_and_embedding(self, obs_seq: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The executed chunk (B, act_horizon, act_dim) and the latest frame's embedding (B, obs_embedding_dim)."""
        emb = self.encode_obs(obs_seq)
        return super().get_action(emb), emb[:, -1]

    @torch.no_grad()
    def get_action(self, obs_seq: dict) -> torch.Tensor:
        return self.act_and_embedding(obs_seq)[0]

    # ---- as a frozen base: the residual sees the base's embedding of the latest frame, no pixels ---- #
    offline_script = "offline/diffusion_policy_unet_maniskill2_rgbd.py"
    online_script = "online/pi_dec_diffusion_maniskill2_rgbd.py"
    config_keys = DiffusionPolicy.config_keys + ("image_size",)
    obs_mode = "rgbd"

    def act(self, obs_seq: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.act_and_embedding(obs_seq)

    @classmethod
    def build(cls, state: dict, cfg: dict, ckpt_path):
        size = cfg["image_size"]
        if not isinstance(size, list) or len(size) != 2:
            raise CheckpointError(f"{ckpt_path}: its run's args.json has no image_size [height, width]: not a run "
                                  f"of {cls.offline_script}.")
        first_conv = state.get("visual_encoder.cnn.0.weight")
        if not isinstance(first_conv, torch.Tensor) or first_conv.ndim != 4:
            raise CheckpointError(f"{ckpt_path} lacks visual_encoder.cnn.0.weight: not an RGB-D Diffusion Policy.")
        act_dim = cls.weight(state, "noise_pred_net.final_conv.1.weight", ckpt_path, "Diffusion Policy").shape[0]
        state_dim = cls.cond_dim(state, cfg, ckpt_path) - cls.visual_feature_dim
        return cls(state_dim, first_conv.shape[1] // 4 * 3, size, act_dim, cfg["obs_horizon"], cfg["act_horizon"],
                   cfg["pred_horizon"], cfg["diffusion_step_embed_dim"], cfg["unet_dims"], cfg["n_groups"])


def make_scheduler(kind: str, inference_steps: int | None = None):
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind]
    scheduler = cls(num_train_timesteps=NUM_DIFFUSION_ITERS,
                    beta_schedule="squaredcos_cap_v2",  # large effect on performance
                    clip_sample=True,  # actions live in [-1, 1]
                    prediction_type="epsilon")  # the net predicts the noise
    if inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps=inference_steps)
    return scheduler


class BeTPolicy(FrozenFromCheckpoint, nn.Module):
    """Behavior Transformer over a `context_window` of observations; acts with the last step's output."""

    def __init__(self, obs_dim: int, act_dim: int, context_window: int = 20, n_clusters: int = 8,
                 n_layers: int = 4, n_heads: int = 4, n_embedding: int = 128):
        super().__init__()
        self.context_window = context_window
        self.obs_horizon, self.act_horizon = context_window, 1  # one action per decision
        self.obs_dim = self.res_obs_dim = obs_dim
        self.act_dim = act_dim
        gpt = GPT(input_dim=obs_dim, output_dim=256, block_size=context_window, n_layer=n_layers,
                  n_head=n_heads, n_embd=n_embedding)
        self.net = BehaviorTransformer(act_dim, gpt, n_clusters)

    def compute_loss(self, obs_seq, act_seq):
        return self.net.loss(obs_seq, act_seq)

    @torch.no_grad()
    def get_action(self, obs_seq: torch.Tensor) -> torch.Tensor:
        """(B, context_window, obs_dim) -> (B, act_dim)."""
        return self.net.act(obs_seq)[:, -1]

    # ---- as a frozen base (pi_dec/frozen_base.py) ------------------------------------------------ #
    offline_script = "offline/bet_maniskill2.py"
    online_script = "online/pi_dec_bet_maniskill2.py"
    config_keys = ("context_window", "n_clusters", "n_layers", "n_heads", "n_embedding")

    def act(self, obs_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, context_window, obs_dim) -> (one action (N, 1, act_dim), latest observation (N, obs_dim))."""
        return self.get_action(obs_seq)[:, None], obs_seq[:, -1]

    @classmethod
    def build(cls, state: dict, cfg: dict, ckpt_path):
        obs_dim = cls.weight(state, "net._gpt_model.transformer.wte.weight", ckpt_path, "BeT").shape[1]
        act_dim = cls.weight(state, "net._cluster_centers", ckpt_path, "BeT").shape[1]
        return cls(obs_dim, act_dim, cfg["context_window"], cfg["n_clusters"], cfg["n_layers"], cfg["n_heads"],
                   cfg["n_embedding"])

    def prepare_online(self, flags: dict) -> None:
        # NOTE(original): the frozen BeT keeps dropout on ("BeT performs better with dropout in our experiments").
        self.train()


# --------------------------------------------------------------------------------------------- #
# Loading a checkpoint back
# --------------------------------------------------------------------------------------------- #
def load_torch_file(path: Path):
    """torch.load with weights_only=True (tensors and plain values only: a downloaded file cannot run code);
    any failure (truncated, not a torch file, pickled objects) is a one-line CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises RuntimeError, EOFError, UnpicklingError, ...)
        reason = " ".join(str(err).split()).split(". ")[0][:120]
        if "Weights only load failed" in reason:
            raise CheckpointError(f"{path} cannot be read as a checkpoint: it holds Python objects besides tensors and "
                                  "plain values, which torch.load(weights_only=True) refuses (a file from an older "
                                  "pi-dec, or not a checkpoint).") from None
        raise CheckpointError(f"{path} cannot be read as a checkpoint: truncated, or not written by torch.save "
                              f"({type(err).__name__}: {reason}).") from None


def read_run_args(path: Path) -> dict:
    """A run's args.json, or a one-line CheckpointError naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read as JSON ({err}).") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not the settings of a run.")
    return value


BASES = {"diffusion": DiffusionPolicy, "bet": BeTPolicy, "diffusion_rgbd": DiffusionPolicyRGBD}  # by results' names


def policy_class(state_dict: dict, ckpt_path) -> type:
    """Which of our policies a checkpoint's weights are, from their names."""
    if any(k.startswith("noise_pred_net.") for k in state_dict):
        return DiffusionPolicyRGBD if any(k.startswith("visual_encoder.") for k in state_dict) else DiffusionPolicy
    if any(k.startswith("net._gpt_model.") for k in state_dict):
        return BeTPolicy
    raise CheckpointError(f"{ckpt_path} holds neither a Diffusion Policy (noise_pred_net.*) nor a BeT "
                          "(net._gpt_model.*): pass --base-policy module:factory for a policy of your own (README).")


def read_checkpoint(ckpt_path: str | Path) -> tuple[dict, dict]:
    """(state dict, args.json of the run): the first present of ema_agent/agent/actor/q, and the
    args.json two folders above the .pt file (`<run>/checkpoints/<tag>.pt`)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise CheckpointError(f"Base-policy checkpoint {ckpt_path} not found. Train one with offline/*.py "
                              "(it writes <run>/checkpoints/best.pt) or put the official one there.")
    args_path = ckpt_path.parent.parent / "args.json"
    if not args_path.is_file():
        raise CheckpointError(f"{args_path} not found: a checkpoint must sit in <run>/checkpoints/ with the run's "
                              "args.json in <run>/ (the offline scripts and the official release use this layout).")
    run_args = read_run_args(args_path)
    ckpt = load_torch_file(ckpt_path)
    for key in ("ema_agent", "agent", "actor", "q"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key], run_args
    raise CheckpointError(f"{ckpt_path} has none of the keys ema_agent, agent, actor, q: not a policy checkpoint.")


def load_base(ckpt_path: str | Path, flags: dict | None = None, expect: type | None = None):
    """The frozen base of a checkpoint, read once: its class found from its weights, built from its args.json and
    set up as the online `flags` say. `expect`: the class the calling script is for (another one is a one-line
    CheckpointError naming the script that takes it)."""
    state, run_args = read_checkpoint(ckpt_path)
    cls = policy_class(state, ckpt_path)
    if expect is not None and cls is not expect:
        raise CheckpointError(f"{ckpt_path} is a {cls.__name__} checkpoint, but this script expects a "
                              f"{expect.__name__} one: use {cls.online_script}.")
    return cls.from_checkpoint(state, run_args, ckpt_path, flags)
