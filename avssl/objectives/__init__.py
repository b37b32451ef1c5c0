"""Self-supervised objectives, one file each, apart from the encoders.

Contract (DESIGN.md): an objective is an ``nn.Module`` called as ``objective(outputs, batch)``
returning ``{"loss": 0-dim tensor, <named terms>: 0-dim tensors}``. Temperatures, margins, shifts
and mask ratios are constructor arguments; gathering across processes is the ``gather`` option,
so every loss is testable in one process.

- ``sync``: :class:`~.sync.SyncObjective` — outputs video, audio, audio_shift; batch
  hard_valid, step;
- ``infonce``: :class:`~.contrastive.InfoNCE` — outputs video, audio;
- ``fusion``: :class:`~.fusion.FusionObjective` — outputs logits (+ recon_*); batch pair_label.

``masked`` holds the reconstruction loss and the random token mask used by ``fusion``.
"""
from __future__ import annotations

import inspect

from torch import nn

from avssl.errors import ConfigError
from avssl.registry import Registry

OBJECTIVES: Registry = Registry("objective")


def _register_all() -> None:
    from avssl.objectives.contrastive import InfoNCE
    from avssl.objectives.fusion import FusionObjective
    from avssl.objectives.sync import SyncObjective

    for name, cls in (("sync", SyncObjective), ("infonce", InfoNCE), ("fusion", FusionObjective)):
        if name not in OBJECTIVES:
            OBJECTIVES.add(name, cls)


def build_objective(name: str, **kwargs) -> nn.Module:
    """``build_objective("sync", kind="margin", margin=0.5)`` -> the objective module."""
    _register_all()
    cls = OBJECTIVES.get(name)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"objective {name!r} has no option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(params)}")
    return cls(**kwargs)


def list_objectives() -> list[str]:
    """Registered objective names."""
    _register_all()
    return OBJECTIVES.names()
