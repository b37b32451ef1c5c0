"""Audio-visual correspondence: symmetric InfoNCE, CLIP-style.

Papers: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018)
for InfoNCE; Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision" (CLIP, 2021) for the symmetric form and the learnable temperature; applied to audio
and video as in Morgado et al. (AVID, 2021).

Interface (``objective(outputs, batch) -> dict``; ``batch`` is not used):

- ``outputs["video"]`` (B, D), ``outputs["audio"]`` (B, D): embeddings of the same B clips,
  row i of each from clip i (L2-normalised here; computed in float32).

Logits ``L = v @ a.T / T`` (B, B). Returned (0-dim tensors):

- ``loss_v2a`` = cross-entropy of each row of L against its diagonal (video -> audio);
- ``loss_a2v`` = the same on the columns (audio -> video); ``loss`` = their mean;
- ``acc_v2a`` / ``acc_a2v``: top-1 retrieval accuracy (argmax of the row / column is the
  diagonal);
- ``temperature``: the T used (detached).

The loss is symmetric: swapping video and audio swaps ``loss_v2a`` and ``loss_a2v`` and leaves
``loss`` unchanged. ``learnable_temperature=True`` learns log(1/T) from the given initial value,
with 1/T kept at most 100 as in CLIP: the parameter itself is projected back into range (CLIP
clamps it after each optimizer step; here before each use), so a scale that reached the bound
still gets a gradient and can come down again. ``gather=True`` all-gathers both embeddings over
processes (:mod:`avssl.objectives.gather`), so negatives come from the global batch and every
rank computes the loss of the whole global batch; with one process it is a no-op.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avssl.errors import ConfigError
from avssl.objectives import gather as _gather

MAX_LOGIT_SCALE = 100.0  # CLIP clamps 1/T at 100 to keep training stable


class InfoNCE(nn.Module):
    """Symmetric InfoNCE between video and audio embeddings (see module docstring)."""

    def __init__(self, temperature: float = 0.07, learnable_temperature: bool = False,
                 gather: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"InfoNCE temperature must be > 0, got {temperature}")
        self.gather = gather
        self.learnable = learnable_temperature
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    def scale(self) -> torch.Tensor:
        """1 / temperature (0-dim); a learned one is kept at most 100, as in CLIP. A fixed
        temperature is used as given (clamping it silently changed the loss below T = 0.01)."""
        if self.learnable:
            # Project the parameter, not the value: clamping the value in the graph has zero
            # gradient past the bound, which left the temperature stuck at 0.01 for good.
            with torch.no_grad():
                self.log_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
        return self.log_scale.float().exp()

    def forward(self, outputs: dict, batch: dict | None = None) -> dict[str, torch.Tensor]:
        v, a = outputs["video"], outputs["audio"]
        if v.ndim != 2 or v.shape != a.shape:
            raise ConfigError(f"InfoNCE expects outputs 'video' and 'audio' of equal shape (B, D), "
                              f"got {tuple(v.shape)} and {tuple(a.shape)}")
        if self.gather:
            v, a = _gather.gather_rows(v), _gather.gather_rows(a)
        with torch.autocast(device_type=v.device.type, enabled=False):
            v = F.normalize(v.float(), dim=-1)
            a = F.normalize(a.float(), dim=-1)
            scale = self.scale()
            logits = scale * (v @ a.T)
            target = torch.arange(len(v), device=v.device)
            loss_v2a = F.cross_entropy(logits, target)
            loss_a2v = F.cross_entropy(logits.T, target)
        with torch.no_grad():
            acc_v2a = (logits.argmax(dim=1) == target).float().mean()
            acc_a2v = (logits.argmax(dim=0) == target).float().mean()
        return {"loss": (loss_v2a + loss_a2v) / 2, "loss_v2a": loss_v2a, "loss_a2v": loss_a2v,
                "acc_v2a": acc_v2a, "acc_a2v": acc_a2v, "temperature": 1.0 / scale.detach()}
