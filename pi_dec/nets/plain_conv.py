"""The plain convolutional image encoder of the upstream's RGB-D Diffusion Policy.

Four 3x3 conv + 2x2 max-pool stages and a 1x1 (PlainConv, 64x64 images) or 3x3 (PlainConv_MS1, the
ManiSkill1-style 50x125 cameras of PushChair) conv, then one Linear layer to `out_dim` features.
Module names (`cnn.*`, `fc.*`) match the upstream checkpoints (tests/golden/rgbd_checkpoint_format.json).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def make_mlp(in_dim: int, dims, last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, d in enumerate(dims):
        layers.append(nn.Linear(in_dim, d))
        if last_act or i < len(dims) - 1:
            layers.append(nn.ReLU())
        in_dim = d
    return nn.Sequential(*layers)


def conv_stages(in_channels: int, channels, last_kernel: int) -> nn.Sequential:
    """(conv3x3 -> ReLU -> maxpool2) per entry of `channels[:-1]`, then conv(last_kernel) -> ReLU."""
    layers: list[nn.Module] = []
    for c in channels[:-1]:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
        in_channels = c
    layers += [nn.Conv2d(in_channels, channels[-1], last_kernel, padding=last_kernel // 2), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PlainConv(nn.Module):
    """(B, C, 64, 64) -> (B, out_dim)."""

    image_size = (64, 64)  # (height, width) the Linear layer is built for
    feature_map = (4, 4)

    def __init__(self, in_channels: int = 3, out_dim: int = 256):
        super().__init__()
        self.cnn = self.make_cnn(in_channels)
        self.fc = make_mlp(128 * self.feature_map[0] * self.feature_map[1], [out_dim])
        for m in self.modules():  # conv/linear biases start at zero (weights: torch's default init)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def make_cnn(in_channels: int) -> nn.Sequential:
        return conv_stages(in_channels, (16, 32, 64, 128, 128), last_kernel=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(image).flatten(1))


class PlainConv_MS1(PlainConv):  # noqa: N801  (the upstream's name)
    """(B, C, 50, 125) -> (B, out_dim): PushChair's three overhead cameras."""

    image_size = (50, 125)
    feature_map = (3, 7)

    @staticmethod
    def make_cnn(in_channels: int) -> nn.Sequential:
        return conv_stages(in_channels, (16, 16, 32, 64, 128), last_kernel=3)
