"""Self-supervised objective for fusion models (MBT pretrained without labels).

Papers: Nagrani et al., "Attention Bottlenecks for Multimodal Fusion" (MBT, NeurIPS 2021) gives
the fusion model, trained there with labels; here its fused representation instead classifies
the *pair type* of an (video, audio) input, a pretext task after Owens & Efros (2018) and
Arandjelović & Zisserman (AVC, 2017); the optional masked-token reconstruction term follows
CAV-MAE (Gong et al., 2023), see :mod:`avssl.objectives.masked`, and so does the optional
contrastive term on the streams' pre-fusion embeddings (CAV-MAE's contrastive half). Tiny ViT
streams from scratch learn the pair classification on a CPU budget only with it (one bit per
pair gives too little signal; the batch-wide contrast bootstraps the streams).

Interface (``objective(outputs, batch) -> dict``):

- ``outputs["logits"]`` (B, num_classes): the fusion model's classifier output;
- ``batch["pair_label"]`` int64 (B,): 0 = in-sync, 1 = shifted (same video, audio moved in
  time), 2 = mismatched (audio of another video);
- optional ``outputs["recon_pred"]``, ``outputs["recon_target"]`` (B, N, P) and
  ``outputs["recon_mask"]`` bool (B, N) — or, for several modalities, dicts of those keyed by
  modality (``{"video": ..., "audio": ...}``, as :mod:`avssl.fusion` returns them); the
  reconstruction loss is then the mean over modalities.

- with ``contrast_weight`` > 0: ``outputs["video_embed"]``, ``outputs["audio_embed"]``
  (B, E), each stream's embedding before any exchange (``contrast_dim`` of the fusion model).
  The contrastive term is a symmetric InfoNCE (temperature ``temperature``) whose queries are
  the in-sync rows (label 0) and whose candidates are all rows carrying their own video's audio
  (labels 0 and 1): an in-sync row's positive is its own pair, and the other videos' in-sync
  and shifted audio are its negatives. Mismatched rows are left out, because their audio is
  another row's video's audio (a second positive). Fewer than two in-sync rows give 0. When
  the embeddings' audio is not the pair's (the model's ``embed_logmel``), ``batch["embed_label"]``
  (B,) gives its pair type instead: all zeros (every row's in-sync audio) make it the full
  B x B InfoNCE of CLIP / CAV-MAE. With ``gather=True`` the embeddings and labels are
  all-gathered over processes first, so N processes compute the contrast of one process with
  the same global batch (:mod:`avssl.objectives.gather`; identity on one process).

Returned (0-dim tensors): ``loss = loss_cls + recon_weight * loss_recon + contrast_weight *
loss_contrast``; ``loss_cls`` (cross-entropy); ``loss_recon`` (0 without recon outputs);
``loss_contrast`` (0 when off); ``acc`` (top-1 over all classes);
``acc_sync``: on rows labelled 0 or 1 only, the accuracy of the binary decision "in-sync if
logits[:, 0] > logits[:, 1]" (NaN when the batch has no such row).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avssl.errors import ConfigError
from avssl.objectives.gather import gather_rows
from avssl.objectives.masked import masked_reconstruction_loss

PAIR_TYPES = ("in_sync", "shifted", "mismatched")


class FusionObjective(nn.Module):
    """Pair-type classification (+ optional masked reconstruction); see module docstring."""

    def __init__(self, num_classes: int = 3, recon_weight: float = 0.0, norm_pix: bool = False,
                 contrast_weight: float = 0.0, temperature: float = 0.07, gather: bool = False):
        super().__init__()
        self.gather = gather
        if num_classes < 2:
            raise ConfigError(f"fusion objective needs num_classes >= 2, got {num_classes}")
        if recon_weight < 0 or contrast_weight < 0:
            raise ConfigError(f"recon_weight and contrast_weight must be >= 0, got "
                              f"{recon_weight} and {contrast_weight}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.num_classes = num_classes
        self.recon_weight = recon_weight
        self.norm_pix = norm_pix
        self.contrast_weight, self.temperature = contrast_weight, temperature

    def contrast_loss(self, outputs: dict, label: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE: in-sync rows against all own-audio rows (see module docstring)."""
        if "video_embed" not in outputs:
            raise ConfigError("contrast_weight > 0 but the model returned no 'video_embed'; "
                              "build the fusion model with contrast_dim > 0")
        v = F.normalize(outputs["video_embed"].float(), dim=-1)
        a = F.normalize(outputs["audio_embed"].float(), dim=-1)
        if self.gather:  # the global batch's rows on every rank (see avssl.objectives.gather)
            v, a, label = gather_rows(v), gather_rows(a), gather_rows(label)
        cand = torch.nonzero(label <= 1).squeeze(1)
        is_query = label[cand] == 0
        if int(is_query.sum()) < 2:
            return v.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) connected
        target = torch.nonzero(is_query).squeeze(1)   # query k's positive: its own column
        q = cand[is_query]
        v2a = v[q] @ a[cand].T / self.temperature
        a2v = a[q] @ v[cand].T / self.temperature
        return (F.cross_entropy(v2a, target) + F.cross_entropy(a2v, target)) / 2

    def recon_loss(self, outputs: dict) -> torch.Tensor | None:
        """Mean masked-reconstruction loss over modalities, or None without recon outputs."""
        pred = outputs.get("recon_pred")
        if pred is None:
            return None
        target, mask = outputs["recon_target"], outputs["recon_mask"]
        if isinstance(pred, torch.Tensor):
            pred, target, mask = {"": pred}, {"": target}, {"": mask}
        losses = [masked_reconstruction_loss(pred[k], target[k], mask[k], self.norm_pix)
                  for k in pred]
        return torch.stack(losses).mean()

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        logits, label = outputs["logits"], batch["pair_label"]
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ConfigError(f"fusion objective expects logits (B, {self.num_classes}), got "
                              f"{tuple(logits.shape)}; build the fusion model with "
                              f"num_classes={self.num_classes}")
        label = torch.as_tensor(label, device=logits.device).long()
        if label.shape != logits.shape[:1]:
            raise ConfigError(f"batch['pair_label'] must be ({logits.shape[0]},), got "
                              f"{tuple(label.shape)}")
        logits = logits.float()
        loss_cls = F.cross_entropy(logits, label)
        loss_recon = self.recon_loss(outputs)
        if loss_recon is None:
            if self.recon_weight > 0:
                raise ConfigError("recon_weight > 0 but the model returned no 'recon_pred'; "
                                  "pass audio_mask / video_mask to the fusion model")
            loss_recon = loss_cls.new_zeros(())
        if self.contrast_weight > 0:
            embed_label = batch.get("embed_label", label)
            embed_label = torch.as_tensor(embed_label, device=logits.device).long()
            loss_contrast = self.contrast_loss(outputs, embed_label)
        else:
            loss_contrast = loss_cls.new_zeros(())
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == label).float().mean()
            pair = label <= 1
            if bool(pair.any()):
                says_shifted = (logits[pair, 0] <= logits[pair, 1]).long()
                acc_sync = (says_shifted == label[pair]).float().mean()
            else:
                acc_sync = torch.tensor(math.nan, device=logits.device)
        loss = loss_cls + self.recon_weight * loss_recon + self.contrast_weight * loss_contrast
        return {"loss": loss, "loss_cls": loss_cls, "loss_recon": loss_recon,
                "loss_contrast": loss_contrast, "acc": acc, "acc_sync": acc_sync}
