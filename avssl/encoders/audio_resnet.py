"""ResNet-18 on log-mel spectrograms: the usual CNN audio encoder (e.g. PANNs-style, AVID, XDC).

Input ``(B, 1, F, T)`` log-mel (F = n_mels, 128 for the paper size, 64 for tiny), treated as a
one-channel image. torchvision's resnet18 (``weights=None``) with its stem swapped for a
1-channel 7x7 conv and its fc removed: ``forward_features`` -> layer4 map
``(B, 512, F/32, T/32)``; ``forward`` -> mean over (F, T), ``(B, 512)``.

Parameter names are torchvision's, so ``pretrained_path`` also takes a torchvision resnet18
state dict: its fc is dropped, and an ImageNet RGB stem is summed over colour channels (what the
RGB net computes on a grey image).
"""
from __future__ import annotations

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from avssl.encoders import register_encoder
from avssl.encoders.layers import load_pretrained


class AudioResNet(nn.Module):
    """A torchvision 2D ResNet with a 1-channel stem, no fc. See module docstring for shapes."""

    modality = "audio"

    def __init__(self, resnet: ResNet, example_input_shape: tuple[int, int, int]):
        super().__init__()
        stem = resnet.conv1
        self.conv1 = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                               bias=False)
        self.bn1, self.relu, self.maxpool = resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        self.embed_dim = resnet.fc.in_features
        self.example_input_shape = example_input_shape
        self.register_load_state_dict_pre_hook(_accept_rgb_imagenet)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


def _accept_rgb_imagenet(module, state_dict, prefix, *args) -> None:
    """Make a torchvision RGB resnet state dict fit: sum the stem over RGB, drop the fc."""
    key = prefix + "conv1.weight"
    if key in state_dict and state_dict[key].dim() == 4 and state_dict[key].shape[1] == 3:
        state_dict[key] = state_dict[key].sum(dim=1, keepdim=True)
        for k in (prefix + "fc.weight", prefix + "fc.bias"):
            state_dict.pop(k, None)


@register_encoder("audio_resnet18", "audio")
def audio_resnet18(*, pretrained_path: str | None = None) -> AudioResNet:
    """ResNet-18 on 1x128x1000 log-mel (10 s at 100 frames/s), embed 512."""
    return load_pretrained(AudioResNet(tvm.resnet18(weights=None), (1, 128, 1000)), pretrained_path,
                           drop_head=("fc.",))


@register_encoder("audio_resnet18_tiny", "audio")
def audio_resnet18_tiny(*, pretrained_path: str | None = None) -> AudioResNet:
    """ResNet-18 layout with one block per stage on 1x64x96 log-mel (tests), embed 512."""
    return load_pretrained(AudioResNet(ResNet(BasicBlock, [1, 1, 1, 1]), (1, 64, 96)),
                           pretrained_path, drop_head=("fc.",))
