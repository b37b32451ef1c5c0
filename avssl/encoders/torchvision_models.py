"""torchvision's video models as encoders: r3d18, mc3_18, r2plus1d18, s3d, mvit_v2_s.

Each is torchvision's builder with ``weights=None`` (nothing is downloaded) and its classifier
removed, so the parameter count is exactly torchvision's minus the classifier, and parameter
names are torchvision's: a torchvision state dict loads with ``pretrained_path``, its
classifier (``fc.`` / ``classifier.`` / ``head.``) dropped. Video input ``(B, 3, T, H, W)`` float,
normalised with torchvision's Kinetics mean/std.

No ``_tiny`` variants: the ResNets and S3D are fully convolutional and are tested at small
clips (ResNets from 3x1x16x16, S3D from 3x8x64x64). MViT-v2-S has relative position tables
sized for its clip, so it accepts exactly 3x16x224x224.
"""
from __future__ import annotations

import torch
import torchvision.models.video as tvv
from torch import nn

from avssl.encoders import register_encoder
from avssl.encoders.layers import load_pretrained
from avssl.errors import ConfigError


class VideoResNetEncoder(nn.Module):
    """torchvision ``VideoResNet`` (r3d / mc3 / r(2+1)d) without ``fc``.

    ``forward_features``: ``(B, 3, T, H, W)`` -> layer4 map ``(B, 512, T/8, H/16, W/16)``
    (mc3_18 keeps ``T``: its layers 2-4 are 2D convs that stride only in space);
    ``forward``: mean over (T, H, W) -> ``(B, 512)``.
    """

    modality = "video"

    def __init__(self, net: tvv.VideoResNet, example_input_shape: tuple[int, ...]):
        super().__init__()
        self.stem, self.layer1, self.layer2 = net.stem, net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.embed_dim = net.fc.in_features
        self.example_input_shape = example_input_shape

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


class S3DEncoder(nn.Module):
    """torchvision ``S3D`` (Xie et al. 2018) without its classifier.

    ``forward_features``: ``(B, 3, T, H, W)`` -> ``(B, 1024, T/8, H/32, W/32)`` (needs T >= 8,
    H, W >= 64); ``forward``: mean over (T, H, W) -> ``(B, 1024)`` — equal to torchvision's
    fixed 2x7x7 average pool followed by its mean at 16x224x224, and defined for other sizes.
    """

    modality = "video"

    def __init__(self, net: tvv.S3D):
        super().__init__()
        self.features = net.features
        self.embed_dim = net.classifier[1].in_channels
        self.example_input_shape = (3, 16, 224, 224)
        # torchvision's S3D keeps PyTorch's default conv init, under which activations shrink
        # 3-4x per block (eval-mode BN of fresh running stats is the identity): random-init
        # features came out ~1e-7, below the linear probe's std floor, so the random-init
        # baseline measured nothing. He (fan-in) init, as our C3D, keeps their scale.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


class MViTEncoder(nn.Module):
    """torchvision ``MViT`` v2-S (Li et al. 2022) without its head.

    ``forward_features``: ``(B, 3, 16, 224, 224)`` -> normalised tokens ``(B, 1 + 8*7*7, 768)``
    (class token first); ``forward``: the class token ``(B, 768)``.
    """

    modality = "video"
    time_series = False  # pooled tokens without their grid: nothing to bin in time

    def __init__(self, net: tvv.MViT):
        super().__init__()
        self.conv_proj, self.pos_encoding = net.conv_proj, net.pos_encoding
        self.blocks, self.norm = net.blocks, net.norm
        self.embed_dim = net.norm.normalized_shape[0]
        t, (h, w) = net.pos_encoding.temporal_size, net.pos_encoding.spatial_size
        stride_t, stride_h, stride_w = net.conv_proj.stride
        self.example_input_shape = (3, t * stride_t, h * stride_h, w * stride_w)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.example_input_shape:
            raise ConfigError(f"mvit_v2_s takes clips of exactly {self.example_input_shape} "
                              f"(C, T, H, W), got {tuple(x.shape[1:])}; resample/crop the clip")
        # Same steps as torchvision's MViT.forward, stopping before the head.
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = self.pos_encoding(x)
        thw = (self.pos_encoding.temporal_size,) + tuple(self.pos_encoding.spatial_size)
        for block in self.blocks:
            x, thw = block(x, thw)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]


_CLIP_112 = (3, 16, 112, 112)


@register_encoder("r3d18", "video")
def r3d18(*, pretrained_path: str | None = None) -> VideoResNetEncoder:
    """ResNet3D-18 (Tran et al. 2018), all 3x3x3 convs; paper input 3x16x112x112, embed 512."""
    return load_pretrained(VideoResNetEncoder(tvv.r3d_18(weights=None), _CLIP_112), pretrained_path,
                           drop_head=("fc.",))


@register_encoder("mc3_18", "video")
def mc3_18(*, pretrained_path: str | None = None) -> VideoResNetEncoder:
    """MC3-18 (Tran et al. 2018): 3D convs early, 2D later; input 3x16x112x112, embed 512."""
    return load_pretrained(VideoResNetEncoder(tvv.mc3_18(weights=None), _CLIP_112), pretrained_path,
                           drop_head=("fc.",))


@register_encoder("r2plus1d18", "video")
def r2plus1d18(*, pretrained_path: str | None = None) -> VideoResNetEncoder:
    """R(2+1)D-18 (Tran et al. 2018): 3D convs split into 2D space + 1D time; embed 512."""
    net = tvv.r2plus1d_18(weights=None)
    return load_pretrained(VideoResNetEncoder(net, _CLIP_112), pretrained_path, drop_head=("fc.",))


@register_encoder("s3d", "video")
def s3d(*, pretrained_path: str | None = None) -> S3DEncoder:
    """S3D (Xie et al. 2018), separable 3D Inception; paper input 3x16x224x224, embed 1024."""
    return load_pretrained(S3DEncoder(tvv.s3d(weights=None)), pretrained_path,
                           drop_head=("classifier.",))


@register_encoder("mvit_v2_s", "video")
def mvit_v2_s(*, pretrained_path: str | None = None) -> MViTEncoder:
    """MViT-v2-S (Li et al. 2022): input exactly 3x16x224x224 (rel. position tables), embed 768."""
    return load_pretrained(MViTEncoder(tvv.mvit_v2_s(weights=None)), pretrained_path,
                           drop_head=("head.",))
