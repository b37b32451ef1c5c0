"""The lecture's video baselines built from 2D CNNs (Karpathy et al. 2014; Donahue et al. 2015;
Ballas et al. 2016).

Every model takes a normalised video ``(B, 3, T, H, W)`` and runs a 2D CNN *trunk* on frames:

- ``single_frame``: the trunk on every frame independently, pooled features averaged over time.
  (Averaging features and then applying a linear head equals averaging the per-frame logits.)
- ``late_fusion_fc``: per-frame feature maps (T, C, H', W') flattened and concatenated into an
  MLP. T, H and W are fixed at build time.
- ``late_fusion_pool``: per-frame feature maps averaged over space and time. With mean pooling
  this is the same function as ``single_frame``; they differ in ``forward_features`` (per-frame
  vectors vs. per-frame maps) and exist as the lecture's two names for it.
- ``early_fusion``: frames stacked as 3T channels; the first 2D conv sees all of them, the rest
  is a plain 2D CNN. T is fixed at build time.
- ``lrcn``: per-frame pooled features into an LSTM; the embedding is the last hidden state.
- ``convgru``: a recurrent convolutional network: per-frame trunk maps go through stacked
  ConvGRU layers (a GRU whose matrix products are 2D convolutions; different weights per layer,
  shared over time); the embedding is the last layer's final hidden map, averaged over space.

Sizes: plain names are the paper size, a torchvision ``resnet18`` trunk (``weights=None``; 512
channels at stride 32; ``convgru`` stops after ``layer3``, 256 channels at stride 16, since
Ballas et al. run the recurrence on mid-level maps) built for 3x16x112x112. ``*_tiny`` use a
3-layer CNN trunk (32 channels, stride 8) built for 3x8x32x32.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from torchvision.models import resnet18

from avssl.encoders import register_encoder
from avssl.encoders.layers import load_pretrained
from avssl.errors import ConfigError

PAPER_CLIP = (16, 112)  # (num_frames, img_size)
TINY_CLIP = (8, 32)


class Trunk(nn.Sequential):
    """A 2D CNN ``(N, in_chans, H, W) -> (N, out_channels, H / stride, W / stride)``."""

    out_channels: int
    stride: int


def make_trunk(kind: str, in_chans: int = 3, stop_after: str = "layer4") -> Trunk:
    """``kind="resnet18"`` (torchvision, random init) up to ``stop_after``, or ``"tiny"``.

    ``in_chans != 3`` replaces resnet18's first conv by one with that many input channels
    (early fusion, flow stacks).
    """
    if kind == "tiny":
        widths, layers, c = (8, 16, 32), [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
            c = w
        trunk = Trunk(*layers)
        trunk.out_channels, trunk.stride = c, 2 ** len(widths)
        return trunk
    if kind != "resnet18":
        raise ConfigError(f"trunk must be 'resnet18' or 'tiny', got {kind!r}")
    net = resnet18(weights=None)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    names = names[: names.index(stop_after) + 1]
    trunk = Trunk(*(getattr(net, n) for n in names))
    trunk.out_channels = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}[stop_after]
    trunk.stride = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}[stop_after]
    return trunk


def per_frame(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a 2D trunk on every frame: ``(B, C, T, H, W) -> (B, T, C', H', W')``."""
    if x.ndim != 5:
        raise ConfigError(f"expected a video batch (B, C, T, H, W), got shape {tuple(x.shape)}")
    B, C, T, H, W = x.shape
    maps = trunk(x.transpose(1, 2).reshape(B * T, C, H, W))
    return maps.reshape(B, T, *maps.shape[1:])


class _VideoBaseline(nn.Module):
    modality = "video"

    def __init__(self, embed_dim: int, num_frames: int, img_size: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.example_input_shape = (3, num_frames, img_size, img_size)

    def _check_fixed(self, x: torch.Tensor, spatial: bool = False) -> None:
        want = self.example_input_shape[1:] if spatial else self.example_input_shape[1:2]
        got = tuple(x.shape[2 : 2 + len(want)])
        if x.ndim != 5 or got != want:
            what = "(T, H, W)" if spatial else "T"
            raise ConfigError(
                f"{type(self).__name__} was built for {what} = {want}, got input "
                f"{tuple(x.shape)}; rebuild with num_frames=/img_size= matching the clips")


class SingleFrame(_VideoBaseline):
    """2D CNN on every frame, features averaged over time: (B, 3, T, H, W) -> (B, C)."""

    feature_layout = "BTC"  # forward_features: per-frame vectors (see avssl.towers)

    def __init__(self, trunk: str, num_frames: int, img_size: int):
        t = make_trunk(trunk)
        super().__init__(t.out_channels, num_frames, img_size)
        self.trunk = t

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame feature vectors (B, T, C) (spatially averaged trunk maps)."""
        return per_frame(self.trunk, x).mean(dim=(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=1)


class LateFusionPool(SingleFrame):
    """Per-frame maps averaged over space and time: (B, 3, T, H, W) -> (B, C)."""

    feature_layout = "BTCHW"  # forward_features: per-frame maps (see avssl.towers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame feature maps (B, T, C, H', W')."""
        return per_frame(self.trunk, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(1, 3, 4))


class LateFusionFC(_VideoBaseline):
    """Per-frame maps flattened over (T, C, H', W') into an MLP: (B, 3, T, H, W) -> (B, hidden).

    The MLP is Linear(T·C·H'·W', hidden) -> ReLU -> Linear(hidden, hidden); input size is fixed.
    """

    # forward_features gives per-frame maps (B, T, C, H', W'), but the embedding is an MLP over
    # all frames at once: there is no per-time embedding for avssl.towers to bin
    feature_layout = "BTCHW"
    time_series = False

    def __init__(self, trunk: str, num_frames: int, img_size: int, hidden: int):
        super().__init__(hidden, num_frames, img_size)
        self.trunk = make_trunk(trunk)
        side = -(-img_size // self.trunk.stride)  # ceil: stride-2 convs with padding round up
        flat = num_frames * self.trunk.out_channels * side * side
        self.mlp = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(True), nn.Linear(hidden, hidden))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame feature maps (B, T, C, H', W')."""
        self._check_fixed(x, spatial=True)
        return per_frame(self.trunk, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.forward_features(x).flatten(1))


class EarlyFusion(_VideoBaseline):
    """Frames stacked as 3T channels into a 2D CNN: (B, 3, T, H, W) -> (B, C); T is fixed."""

    feature_layout = "BCHW"  # forward_features: time is folded into channels (see avssl.towers)

    def __init__(self, trunk: str, num_frames: int, img_size: int):
        t = make_trunk(trunk, in_chans=3 * num_frames)
        super().__init__(t.out_channels, num_frames, img_size)
        self.trunk = t

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, C, H', W') of the 2D CNN on the (B, 3T, H, W) stack (frame-major)."""
        self._check_fixed(x)
        B, C, T, H, W = x.shape
        return self.trunk(x.transpose(1, 2).reshape(B, T * C, H, W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


class LRCN(_VideoBaseline):
    """Per-frame CNN features into an LSTM; last hidden state: (B, 3, T, H, W) -> (B, hidden)."""

    feature_layout = "BTC"  # forward_features: LSTM outputs per step (see avssl.towers)

    def __init__(self, trunk: str, num_frames: int, img_size: int, hidden: int,
                 num_layers: int = 1):
        super().__init__(hidden, num_frames, img_size)
        self.trunk = make_trunk(trunk)
        self.lstm = nn.LSTM(self.trunk.out_channels, hidden, num_layers, batch_first=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """LSTM outputs (top layer) at every time step, (B, T, hidden)."""
        feats = per_frame(self.trunk, x).mean(dim=(3, 4))
        return self.lstm(feats)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, -1]


class ConvGRUCell(nn.Module):
    """GRU with convolutions: x (N, C_in, H, W), h (N, C_h, H, W) -> new h (N, C_h, H, W).

    z, r = sigmoid(conv([x, h])); n = tanh(conv([x, r * h])); h' = (1 - z) * h + z * n.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        self.hidden = hidden
        pad = kernel_size // 2
        self.gates = nn.Conv2d(in_channels + hidden, 2 * hidden, kernel_size, padding=pad)
        self.cand = nn.Conv2d(in_channels + hidden, hidden, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], dim=1)))
        return (1 - z) * h + z * n


class ConvGRU(_VideoBaseline):
    """Trunk maps through stacked ConvGRU layers over time: (B, 3, T, H, W) -> (B, hidden[-1])."""

    def __init__(self, trunk: str, num_frames: int, img_size: int, hidden: tuple[int, ...],
                 stop_after: str = "layer4"):
        super().__init__(hidden[-1], num_frames, img_size)
        self.trunk = make_trunk(trunk, stop_after=stop_after)
        ins = (self.trunk.out_channels, *hidden[:-1])
        self.cells = nn.ModuleList(ConvGRUCell(i, h) for i, h in zip(ins, hidden))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden maps of the last layer at every step, (B, hidden, T, H', W')."""
        maps = per_frame(self.trunk, x)  # (B, T, C, H', W')
        B, T, _, h, w = maps.shape
        state = [maps.new_zeros(B, c.hidden, h, w) for c in self.cells]
        outs = []
        for t in range(T):
            inp = maps[:, t]
            for i, cell in enumerate(self.cells):
                state[i] = inp = cell(inp, state[i])
            outs.append(inp)
        return torch.stack(outs, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, :, -1].mean(dim=(2, 3))


def _size(tiny: bool, num_frames: int | None, img_size: int | None) -> tuple[str, int, int]:
    t, s = TINY_CLIP if tiny else PAPER_CLIP
    return ("tiny" if tiny else "resnet18"), num_frames or t, img_size or s


def _variants(name: str, make) -> None:
    """Register ``name`` (paper size) and ``name_tiny``; ``make(trunk, T, S, tiny, **kw)``."""

    def paper(pretrained_path: str | None = None, num_frames: int | None = None,
              img_size: int | None = None, **kw) -> nn.Module:
        trunk, t, s = _size(False, num_frames, img_size)
        return load_pretrained(make(trunk, t, s, False, **kw), pretrained_path)

    def tiny(pretrained_path: str | None = None, num_frames: int | None = None,
             img_size: int | None = None, **kw) -> nn.Module:
        trunk, t, s = _size(True, num_frames, img_size)
        return load_pretrained(make(trunk, t, s, True, **kw), pretrained_path)

    # build_encoder checks kwargs against the signature: show make's own options instead of
    # **kw, so a misspelt one is a one-line ConfigError rather than a TypeError from the lambda
    extra = [p.replace(kind=p.KEYWORD_ONLY) for p in
             list(inspect.signature(make).parameters.values())[4:]]
    for fn in (paper, tiny):
        sig = inspect.signature(fn)
        fn.__signature__ = sig.replace(parameters=[
            p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD] + extra)
    paper.__doc__ = f"{name}: resnet18 trunk, built for 3x16x112x112 (see module docstring)."
    tiny.__doc__ = f"{name}_tiny: tiny CNN trunk, built for 3x8x32x32 (see module docstring)."
    register_encoder(name, "video")(paper)
    register_encoder(f"{name}_tiny", "video")(tiny)


_variants("single_frame", lambda tr, t, s, tiny: SingleFrame(tr, t, s))
_variants("late_fusion_pool", lambda tr, t, s, tiny: LateFusionPool(tr, t, s))
_variants("late_fusion_fc", lambda tr, t, s, tiny, hidden=None:
          LateFusionFC(tr, t, s, hidden or (32 if tiny else 512)))
_variants("early_fusion", lambda tr, t, s, tiny: EarlyFusion(tr, t, s))
_variants("lrcn", lambda tr, t, s, tiny, hidden=None, num_layers=1:
          LRCN(tr, t, s, hidden or (32 if tiny else 512), num_layers))
_variants("convgru", lambda tr, t, s, tiny, hidden=None:
          ConvGRU(tr, t, s, tuple(hidden or ((32, 32) if tiny else (256, 512))),
                  stop_after="layer4" if tiny else "layer3"))
