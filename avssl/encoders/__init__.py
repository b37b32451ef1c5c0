"""Encoder zoo: one flat registry of video and audio encoders with one contract.

Contract (DESIGN.md): ``build_encoder(name, **kwargs)`` returns a plain ``nn.Module`` with

- ``embed_dim: int`` — size of the pooled feature;
- ``modality: str`` — ``"video"`` (input ``(B, C, T, H, W)`` float) or ``"audio"`` (input
  ``(B, 1, F, T)`` log-mel, unless the encoder's docstring says otherwise);
- ``example_input_shape: tuple`` — one input without the batch dim, at the size the variant was
  built for (used by the registry sweep and ``python -m avssl.encoders.cost``);
- ``forward_features(x)`` — token / feature maps before pooling;
- ``forward(x) -> (B, embed_dim)``.

``build_encoder(name, num_classes=K)`` wraps the encoder in :class:`WithHead`, whose ``forward``
returns logits ``(B, K)`` and which keeps the attributes above.
"""
from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

from avssl.errors import AvsslError, ConfigError
from avssl.registry import Registry

ENCODERS: Registry = Registry("encoder")


def register_encoder(name: str, modality: str):
    """Decorator for variant builders: ``@register_encoder("r3d18", "video")``."""
    if modality not in ("video", "audio"):
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")

    def deco(fn):
        fn.modality = modality
        return ENCODERS.register(name)(fn)

    return deco

# Modules that register variants on import. Missing ones are skipped only while the zoo is being
# built; an import error inside an existing module is a bug and propagates.
_MODULES = [
    "c3d", "torchvision_models", "slow_fusion", "i3d", "vivit", "baselines", "two_stream",
    "audio_resnet", "audio_vit", "vit",
]


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"avssl.encoders.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"avssl.encoders.{mod}":
                raise


class WithHead(nn.Module):
    """An encoder plus a linear classification head; ``forward`` returns logits ``(B, K)``."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.embed_dim = encoder.embed_dim
        self.modality = encoder.modality
        self.example_input_shape = encoder.example_input_shape
        # forward_features is the encoder's, so its declared layout is too (avssl.towers and the
        # AVA detector read these; without them a per-frame map would be taken for BCTHW)
        for attr in ("feature_layout", "time_series"):
            if hasattr(encoder, attr):
                setattr(self, attr, getattr(encoder, attr))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor):
        return self.encoder.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(x)))


def build_encoder(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a registered encoder; ``num_classes`` adds a linear head (see module docstring)."""
    _load_all()
    builder = ENCODERS.get(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"encoder {name!r} takes no argument(s) {', '.join(unknown)}; it "
                              f"takes: {', '.join(params) or 'none'}")
    try:
        model = builder(**kwargs)
    except AvsslError:  # the builder's own one-line message
        raise
    except (TypeError, ValueError) as e:
        if not kwargs:  # no argument of the caller's to blame: a bug, keep its traceback
            raise
        # e.g. --model.video_kwargs='{"time_strides": 5}' or a stranger's meta.json kwargs
        raise ConfigError(f"encoder {name!r} cannot be built with {kwargs}: "
                          f"{' '.join(str(e).split())[:300]}") from None
    if num_classes is not None:
        model = WithHead(model, num_classes)
    return model


def require_modality(name: str, modality: str, flag: str) -> None:
    """ConfigError unless ``name`` is a registered ``"video"`` / ``"audio"`` encoder (``flag``
    names the setting): a video encoder as an audio tower otherwise died at its first forward
    with a channel-count error."""
    _load_all()
    got = getattr(ENCODERS.get(name), "modality", None)
    if got != modality:
        kind = {"audio": "an audio", "video": "a video"}.get(got, f"not a {modality}")
        raise ConfigError(f"{flag}={name} is {kind} encoder; "
                          f"{flag} takes one of: {', '.join(list_encoders(modality))}")


def list_encoders(modality: str | None = None) -> list[str]:
    """Registered names, optionally only ``"video"`` or ``"audio"`` ones (by builder attribute)."""
    _load_all()
    names = ENCODERS.names()
    if modality is None:
        return names
    return [n for n in names if getattr(ENCODERS.get(n), "modality", None) == modality]
