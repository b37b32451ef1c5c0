"""C3D (Tran et al., ICCV 2015): "the VGG of 3D CNNs" — 3x3x3 convs, 2x2x2 pools, two 4096 FCs.

Layer sizes at the paper input 3x16x112x112 (lecture table; MACs counted by
``avssl.encoders.cost``):

    conv1  64  x16x112x112  1.04 G   pool1 1x2x2 -> 64 x16x56x56
    conv2  128 x16x56x56   11.10 G   pool2 2x2x2 -> 128x8x28x28
    conv3a 256 x8x28x28     5.55 G
    conv3b 256 x8x28x28    11.10 G   pool3 2x2x2 -> 256x4x14x14
    conv4a 512 x4x14x14     2.77 G
    conv4b 512 x4x14x14     5.55 G   pool4 2x2x2 -> 512x2x7x7
    conv5a 512 x2x7x7       0.69 G
    conv5b 512 x2x7x7       0.69 G   pool5 2x2x2, spatial pad 1 -> 512x1x4x4 = 8192
    fc6 4096, fc7 4096 (ReLU + dropout each); embed_dim = 4096 (fc7)

Module names (conv1 ... conv5b, fc6, fc7) follow the original Caffe model and its common PyTorch
ports, so converted Sports-1M weights load by name (drop their fc8). Because fc6 sees the
flattened pool5 map, a C3D is built for one clip size (``input_size``); other sizes raise.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from avssl.encoders import register_encoder
from avssl.encoders.layers import check_video_batch, load_pretrained
from avssl.errors import ConfigError


def _pooled_numel(size: Sequence[int], pools: Sequence[nn.MaxPool3d]) -> int:
    """T*H*W left after the pools (3x3x3 convs with padding 1 keep the size); 0 if it vanishes."""
    size = list(size)
    for p in pools:
        for d in range(3):
            k, s, pad = (_triple(a)[d] for a in (p.kernel_size, p.stride, p.padding))
            size[d] = max(0, (size[d] + 2 * pad - k) // s + 1)
    return size[0] * size[1] * size[2]


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class C3D(nn.Module):
    """C3D trunk + fc6/fc7.

    Input ``(B, 3, T, H, W)`` float (normalised) with ``(T, H, W) == input_size``;
    ``forward_features`` -> conv5b map ``(B, C5, T/8, H/16, W/16)`` (before pool5);
    ``forward`` -> fc7 activations ``(B, fc_dim)``.
    """

    modality = "video"
    time_series = False  # conv5b's channels are not the fc7 embedding: nothing to bin in time

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        fc_dim: int = 4096,
        input_size: Sequence[int] = (16, 112, 112),
        dropout: float = 0.5,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(widths) != 5:
            raise ConfigError(f"C3D needs 5 stage widths (conv1..conv5), got {list(widths)}")
        c1, c2, c3, c4, c5 = widths

        def conv(cin: int, cout: int) -> nn.Conv3d:
            return nn.Conv3d(cin, cout, kernel_size=3, padding=1)

        self.conv1 = conv(in_channels, c1)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))  # keep early time
        self.conv2 = conv(c1, c2)
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv3a = conv(c2, c3)
        self.conv3b = conv(c3, c3)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv4a = conv(c3, c4)
        self.conv4b = conv(c4, c4)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv5a = conv(c4, c5)
        self.conv5b = conv(c5, c5)
        # The original pads pool5 spatially: 7x7 -> 4x4, giving the 8192-d fc6 input.
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

        self.input_size = tuple(int(s) for s in input_size)
        if len(self.input_size) != 3:
            raise ConfigError(f"C3D input_size must be (T, H, W), got {input_size!r}")
        flat = c5 * _pooled_numel(self.input_size, self._pools())
        if flat == 0:
            raise ConfigError(f"C3D input_size {self.input_size} is too small: pool5 needs "
                              "T >= 16 and H, W >= 16 at the input")
        self.fc6 = nn.Linear(flat, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.embed_dim = fc_dim
        self.example_input_shape = (in_channels, *self.input_size)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                # He init keeps activations at scale through 10 ReLU layers without BN;
                # PyTorch's default shrinks them ~3x per layer, so random-init features (the
                # baseline every pretraining run is compared with) would be mostly bias.
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _pools(self) -> list[nn.MaxPool3d]:
        return [self.pool1, self.pool2, self.pool3, self.pool4, self.pool5]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> conv5b activations ``(B, C5, T/8, H/16, W/16)``."""
        check_video_batch(x, self.conv1.in_channels, "C3D")
        r = self.relu
        x = self.pool1(r(self.conv1(x)))
        x = self.pool2(r(self.conv2(x)))
        x = self.pool3(r(self.conv3b(r(self.conv3a(x)))))
        x = self.pool4(r(self.conv4b(r(self.conv4a(x)))))
        return r(self.conv5b(r(self.conv5a(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> fc7 features ``(B, embed_dim)``."""
        check_video_batch(x, self.conv1.in_channels, "C3D")
        if tuple(x.shape[2:]) != self.input_size:
            raise ConfigError(
                f"this C3D was built for clips of T x H x W = {self.input_size}, got "
                f"{tuple(x.shape[2:])}; build it with input_size={tuple(x.shape[2:])}")
        x = self.pool5(self.forward_features(x)).flatten(1)
        x = self.dropout(self.relu(self.fc6(x)))
        return self.dropout(self.relu(self.fc7(x)))


@register_encoder("c3d", "video")
def c3d(*, input_size: Sequence[int] = (16, 112, 112), dropout: float = 0.5,
        pretrained_path: str | None = None) -> C3D:
    """Paper-size C3D (Tran et al. 2015) at 3x16x112x112: 27.7M conv + 50.3M fc parameters."""
    return load_pretrained(C3D(input_size=input_size, dropout=dropout), pretrained_path)


@register_encoder("c3d_tiny", "video")
def c3d_tiny(*, input_size: Sequence[int] = (16, 32, 32), dropout: float = 0.5,
             pretrained_path: str | None = None) -> C3D:
    """Same layers as ``c3d`` with widths 8..32 and fc 64, at 3x16x32x32 (tests)."""
    model = C3D(widths=(8, 16, 32, 32, 32), fc_dim=64, input_size=input_size, dropout=dropout)
    return load_pretrained(model, pretrained_path)
