"""I3D (Carreira & Zisserman 2017): a 2D ResNet inflated to 3D, optionally with non-local blocks.

Every Kh x Kw conv / max pool of a torchvision ResNet becomes Kt x Kh x Kw (Kt may be 1) and
every BatchNorm2d a BatchNorm3d. 2D weights initialise the 3D ones by repeating them Kt times along
time and dividing by Kt (:func:`inflate_from_2d`), so on a constant video (every frame the same
image) the inflated network computes exactly the 2D network's features on that image, frame by
frame. Time is padded by replicating the edge frames (not zeros), which keeps a constant video
constant at the clip borders too; space is zero-padded as in the 2D network.

Default temporal recipe (Wang et al. 2018, "Non-local Neural Networks", I3D-ResNet 3x1x1),
overridable per layer with ``time_kernels`` / ``time_strides`` (keys = 2D module names):

- ``conv1`` 5x7x7, temporal stride 2; ``maxpool`` 3x3x3, temporal stride 2 -> T/4 from res2 on
  (the 2D pools' temporal strides; Wang et al. put the 2nd stride in an extra pool after res2);
- i3d_r50, Bottleneck ``conv1`` (1x1 -> 3x1x1) in the blocks Wang et al. inflate: res2 all,
  res3 / res4 every other block (starting with the first), res5 the middle one; all other convs
  Kt = 1;
- i3d_r18 (not in the paper), BasicBlock ``conv1`` (3x3 -> 3x3x3) in every block, ``conv2``
  1x3x3 — each block mixes time once.

Non-local blocks (``nonlocal_stages``): one embedded-Gaussian block after each chosen stage,
stage ``i`` = torchvision ``layer{i}`` (res{i+1}); its last BatchNorm starts at zero scale, so the
block starts as the identity and inflation equality still holds.

Input ``(B, 3, T, H, W)`` float (ImageNet-normalised when initialised from ImageNet weights);
``forward_features`` -> layer4 map ``(B, C, ceil(T/4), H/32, W/32)``; ``forward`` -> its mean over
(T, H, W), ``(B, C)`` with C = 512 (r18) or 2048 (r50).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from avssl.encoders import register_encoder
from avssl.encoders.layers import load_pretrained
from avssl.errors import ConfigError
from avssl.registry import did_you_mean


class TimeReplicateConv3d(nn.Conv3d):
    """Conv3d that pads time by replicating edge frames and space with zeros.

    ``padding`` given to the constructor is spatial only; ``time_pad`` frames are replicated on
    each side before the convolution. Parameter names are those of ``nn.Conv3d``.
    """

    def __init__(self, *args, time_pad: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.time_pad = time_pad

    def extra_repr(self) -> str:
        return super().extra_repr() + f", time_pad={self.time_pad} (replicate)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, self.time_pad), mode="replicate")
        return super().forward(x)


class NonLocal3d(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018), residual: ``x + BN(W(attn))``.

    ``(B, C, T, H, W)`` -> same shape. theta / phi / g are 1x1x1 convs to ``C // 2`` channels;
    keys and values are max-pooled 1x2x2 in space (as in the paper) to cut the N x M affinity;
    the affinity is softmax(theta^T phi / sqrt(C/2)) (the scaled form of the authors' code),
    computed with ``scaled_dot_product_attention``. The final BN's scale starts at zero.
    """

    def __init__(self, channels: int, inner: int | None = None, subsample: bool = True):
        super().__init__()
        inner = inner or max(channels // 2, 1)
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.pool = nn.MaxPool3d((1, 2, 2), (1, 2, 2)) if subsample else nn.Identity()
        self.out = nn.Conv3d(inner, channels, 1)
        self.bn = nn.BatchNorm3d(channels)
        nn.init.zeros_(self.bn.weight)  # identity at init: pretrained trunks are not disturbed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        kv = self.pool(x) if min(h, w) >= 2 else x
        q = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, inner)
        k = self.phi(kv).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, M, inner)
        v = self.g(kv).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, M, inner)
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, N, inner)
        y = y.transpose(1, 2).reshape(b, -1, t, h, w)
        return x + self.bn(self.out(y))


def _inflate_layers(module: nn.Module, time_kernels: Mapping[str, int],
                    time_strides: Mapping[str, int], prefix: str = "") -> None:
    """Replace, in place, every Conv2d / BatchNorm2d / MaxPool2d below ``module`` by its 3D twin."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        kt, st = time_kernels.get(full, 1), time_strides.get(full, 1)
        if isinstance(child, nn.Conv2d):
            new: nn.Module = TimeReplicateConv3d(
                child.in_channels, child.out_channels, (kt, *child.kernel_size),
                stride=(st, *child.stride), padding=(0, *child.padding),
                dilation=(1, *child.dilation), groups=child.groups, bias=child.bias is not None,
                time_pad=(kt - 1) // 2)
        elif isinstance(child, nn.BatchNorm2d):
            new = nn.BatchNorm3d(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
        elif isinstance(child, nn.MaxPool2d):
            k, s, p = (nn.modules.utils._pair(a) for a in (child.kernel_size, child.stride,
                                                           child.padding))
            # max over -inf padding in time equals max over replicated frames: no special pad
            new = nn.MaxPool3d((kt, *k), (st, *s), ((kt - 1) // 2, *p), ceil_mode=child.ceil_mode)
        else:
            _inflate_layers(child, time_kernels, time_strides, prefix=f"{full}.")
            continue
        setattr(module, name, new)


def _check_time_args(resnet: ResNet, time_kernels: Mapping[str, int],
                     time_strides: Mapping[str, int]) -> None:
    inflatable = [n for n, m in resnet.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    for what, table in (("time_kernels", time_kernels), ("time_strides", time_strides)):
        for key, val in table.items():
            if key not in inflatable:
                raise ConfigError(f"{what} key {key!r} is not a conv/pool of this ResNet"
                                  f"{did_you_mean(key, inflatable)}; use 2D module names like "
                                  "'conv1', 'maxpool', 'layer3.0.conv1'")
            if (not isinstance(val, int) or isinstance(val, bool) or val < 1
                    or (what == "time_kernels" and val % 2 == 0)):
                kind = "positive odd" if what == "time_kernels" else "positive"
                raise ConfigError(f"{what}[{key!r}] must be a {kind} integer (odd kernels keep "
                                  f"frames centred), got {val!r}")
    # A residual block adds its branch to its shortcut: both must stride time alike.
    blocks = {n for n, m in resnet.named_modules() if hasattr(m, "conv2") and hasattr(m, "bn2")}
    for block in sorted(blocks):
        branch = math.prod(time_strides.get(f"{block}.conv{i}", 1) for i in (1, 2, 3))
        shortcut = time_strides.get(f"{block}.downsample.0", 1)
        if branch != shortcut:
            has_conv = f"{block}.downsample.0" in inflatable
            fix = (f"set time_strides['{block}.downsample.0'] = {branch}" if has_conv else
                   "stride time in a block with a downsample conv (e.g. 'layer3.0'), or in "
                   "'conv1' / 'maxpool'")
            raise ConfigError(f"time_strides stride {block}'s residual branch by {branch} and its "
                              f"shortcut by {shortcut}; they are added, so {fix}")


class I3DResNet(nn.Module):
    """An inflated torchvision ResNet (stem + layer1..4, no fc) with optional non-local blocks.

    Parameter / buffer names equal the 2D ResNet's (``conv1.weight``, ``layer1.0.bn1.running_mean``
    ...) plus ``nonlocal_blocks.layer{i}.*``, so :func:`inflate_from_2d` can match them by name.
    """

    modality = "video"

    def __init__(self, resnet: ResNet, time_kernels: Mapping[str, int],
                 time_strides: Mapping[str, int], nonlocal_stages: Sequence[int] = (),
                 example_input_shape: tuple[int, ...] = (3, 32, 224, 224)):
        super().__init__()
        _check_time_args(resnet, time_kernels, time_strides)
        self.conv1, self.bn1 = resnet.conv1, resnet.bn1
        self.relu, self.maxpool = resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        _inflate_layers(self, time_kernels, time_strides)
        widths = {i: self._stage_width(getattr(self, f"layer{i}")) for i in range(1, 5)}
        for s in nonlocal_stages:
            if s not in widths:
                raise ConfigError(f"nonlocal_stages must be chosen from 1..4 (torchvision layer1.."
                                  f"layer4), got {tuple(nonlocal_stages)}")
        self.nonlocal_blocks = nn.ModuleDict(
            {f"layer{s}": NonLocal3d(widths[s]) for s in sorted(set(nonlocal_stages))})
        self.embed_dim = widths[4]
        self.example_input_shape = example_input_shape

    @staticmethod
    def _stage_width(layer: nn.Sequential) -> int:
        last = layer[-1]
        return (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> layer4 map ``(B, C, T', H/32, W/32)``; default T' = ceil(T/4)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            if f"layer{i}" in self.nonlocal_blocks:
                x = self.nonlocal_blocks[f"layer{i}"](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


@torch.no_grad()
def inflate_from_2d(model3d: nn.Module, state_dict_2d: Mapping[str, torch.Tensor]) -> list[str]:
    """Initialise ``model3d`` from a 2D state dict with the same parameter names.

    A 4D conv weight ``(O, I, kh, kw)`` fills a 5D one ``(O, I, kt, kh, kw)`` repeated ``kt``
    times along time and divided by ``kt``; everything else of equal shape (BN weights and running
    statistics, biases) is copied. Entries of ``model3d`` absent from the 2D dict (non-local
    blocks) keep their values.

    Returns the 2D keys that were not used (e.g. ``fc.weight``, ``fc.bias``). Raises ConfigError
    when a shared name has incompatible shapes or the 2D dict covers none of ``model3d``.
    """
    target = model3d.state_dict()
    pairs = []  # check everything before writing anything: a bad dict leaves the model as it was
    for name, w2 in state_dict_2d.items():
        if name not in target:
            continue
        w3 = target[name]
        if not (w3.shape == w2.shape or (w3.dim() == 5 and w2.dim() == 4
                                         and w3.shape[:2] + w3.shape[3:] == w2.shape)):
            raise ConfigError(f"2D weight {name!r} has shape {tuple(w2.shape)}, which cannot "
                              f"inflate to {tuple(w3.shape)}; use a state dict of the same "
                              "ResNet depth (e.g. torchvision resnet50 for i3d_r50)")
        pairs.append((w3, w2))
    if not pairs:
        raise ConfigError("the 2D state dict shares no parameter names with the 3D model; pass a "
                          "torchvision ResNet state dict (keys like 'layer1.0.conv1.weight')")
    for w3, w2 in pairs:
        if w3.dim() == 5 and w2.dim() == 4:
            w3.copy_(w2.unsqueeze(2).expand_as(w3) / w3.shape[2])  # repeat Kt times, divide by Kt
        else:
            w3.copy_(w2)
    return [k for k in state_dict_2d if k not in target]


def _r50_block_kernels(blocks: Sequence[int]) -> dict[str, int]:
    # Wang et al.'s use_temp_convs pattern: res2 all, res3/res4 alternate, res5 middle.
    pattern = {1: lambda j, n: True, 2: lambda j, n: j % 2 == 0, 3: lambda j, n: j % 2 == 0,
               4: lambda j, n: j == n // 2}
    return {f"layer{i}.{j}.conv1": 3 for i, n in enumerate(blocks, start=1) for j in range(n)
            if pattern[i](j, n)}


def _r18_block_kernels(blocks: Sequence[int]) -> dict[str, int]:
    return {f"layer{i}.{j}.conv1": 3 for i, n in enumerate(blocks, start=1) for j in range(n)}


_STEM_KERNELS = {"conv1": 5, "maxpool": 3}
_STEM_STRIDES = {"conv1": 2, "maxpool": 2}


def _build(resnet: ResNet, blocks: Sequence[int], block_kernels, example_input_shape,
           time_kernels, time_strides, nonlocal_stages, pretrained_2d_path, pretrained_path):
    kernels = {**_STEM_KERNELS, **block_kernels(blocks), **dict(time_kernels or {})}
    strides = {**_STEM_STRIDES, **dict(time_strides or {})}
    # The 2D weights (torchvision's random init, or the file's) inflated are the 3D init.
    state_2d = load_pretrained(resnet, pretrained_2d_path).state_dict()
    model = I3DResNet(resnet, kernels, strides, nonlocal_stages, example_input_shape)
    inflate_from_2d(model, state_2d)
    return load_pretrained(model, pretrained_path)


_DOC_KWARGS = """
    Keyword args: ``time_kernels`` / ``time_strides``: per-layer overrides keyed by 2D module
    name (``{"conv1": 3, "layer4.1.conv1": 3}``), odd kernels; ``nonlocal_stages``: e.g. ``(2, 3)``;
    ``pretrained_2d_path``: local torchvision ResNet state dict (.safetensors / .pt, with its fc)
    inflated into the 3D weights; ``pretrained_path``: local state dict of this 3D model.
"""


@register_encoder("i3d_r18", "video")
def i3d_r18(*, time_kernels: Mapping[str, int] | None = None,
            time_strides: Mapping[str, int] | None = None, nonlocal_stages: Sequence[int] = (),
            pretrained_2d_path: str | None = None, pretrained_path: str | None = None) -> I3DResNet:
    """Inflated ResNet-18, input 3x32x224x224 (-> 512x8x7x7), embed 512."""
    return _build(tvm.resnet18(weights=None), (2, 2, 2, 2), _r18_block_kernels, (3, 32, 224, 224),
                  time_kernels, time_strides, nonlocal_stages, pretrained_2d_path, pretrained_path)


@register_encoder("i3d_r50", "video")
def i3d_r50(*, time_kernels: Mapping[str, int] | None = None,
            time_strides: Mapping[str, int] | None = None, nonlocal_stages: Sequence[int] = (),
            pretrained_2d_path: str | None = None, pretrained_path: str | None = None) -> I3DResNet:
    """Inflated ResNet-50 (Wang et al. 2018 I3D 3x1x1 recipe), input 3x32x224x224, embed 2048."""
    return _build(tvm.resnet50(weights=None), (3, 4, 6, 3), _r50_block_kernels, (3, 32, 224, 224),
                  time_kernels, time_strides, nonlocal_stages, pretrained_2d_path, pretrained_path)


@register_encoder("i3d_r18_tiny", "video")
def i3d_r18_tiny(*, time_kernels: Mapping[str, int] | None = None,
                 time_strides: Mapping[str, int] | None = None, nonlocal_stages: Sequence[int] = (),
                 pretrained_2d_path: str | None = None,
                 pretrained_path: str | None = None) -> I3DResNet:
    """ResNet-18 layout with one block per stage, input 3x8x32x32, embed 512 (tests)."""
    return _build(ResNet(BasicBlock, [1, 1, 1, 1]), (1, 1, 1, 1), _r18_block_kernels,
                  (3, 8, 32, 32), time_kernels, time_strides, nonlocal_stages, pretrained_2d_path,
                  pretrained_path)


@register_encoder("i3d_r50_tiny", "video")
def i3d_r50_tiny(*, time_kernels: Mapping[str, int] | None = None,
                 time_strides: Mapping[str, int] | None = None, nonlocal_stages: Sequence[int] = (),
                 pretrained_2d_path: str | None = None,
                 pretrained_path: str | None = None) -> I3DResNet:
    """ResNet-50 layout with one Bottleneck per stage, input 3x8x32x32, embed 2048 (tests)."""
    return _build(ResNet(Bottleneck, [1, 1, 1, 1]), (1, 1, 1, 1), _r50_block_kernels,
                  (3, 8, 32, 32), time_kernels, time_strides, nonlocal_stages, pretrained_2d_path,
                  pretrained_path)


for _fn in (i3d_r18, i3d_r50, i3d_r18_tiny, i3d_r50_tiny):
    _fn.__doc__ += _DOC_KWARGS
