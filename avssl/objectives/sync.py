"""Audio-visual synchronisation with easy and hard negatives and a curriculum.

Papers: Korbar, Tran & Torresani, "Cooperative Learning of Audio and Video Models from
Self-Supervised Synchronization" (AVTS, NeurIPS 2018) — contrastive margin loss, easy negatives
from other videos, hard negatives from the same video shifted in time, curriculum from easy to
hard; Owens & Efros, "Audio-Visual Scene Analysis with Self-Supervised Multisensory Features"
(ECCV 2018) — binary in-sync vs shifted classification.

Interface (``objective(outputs, batch) -> dict``):

- ``outputs["video"]`` (B, D): projected video embeddings;
- ``outputs["audio"]`` (B, D): projected embeddings of the audio in sync with each video;
- ``outputs["audio_shift"]`` (B, D), optional: the SAME video's audio shifted by |Δ| in
  [min_shift, max_shift] seconds (the hard negatives); without it there are no hard terms;
- ``batch["hard_valid"]`` bool (B,), optional (default all True): False where no shifted window
  fits in the video; those rows get no hard negative and do not count in ``acc_hard``;
- ``batch["step"]`` int, required when ``hard_start_step > 0``: hard negatives enter the loss
  only from ``step >= hard_start_step`` (the curriculum). Easy negatives (audio of the other
  videos of the batch) are always used.

Embeddings are L2-normalised and the loss is computed in float32. Returned (all 0-dim tensors):

- ``loss = loss_easy + hard_weight * loss_hard``;
- ``loss_easy``: the loss with easy negatives only; ``loss_hard``: the hard-negative term
  (0 while the curriculum keeps hard negatives out, or with no valid row);
- ``acc_easy``: fraction of rows i with score(v_i, a_i) > score(v_i, a_j) for ALL j != i of the
  (gathered) batch; ``acc_hard``: fraction of ``hard_valid`` rows with score(v_i, a_i) >
  score(v_i, a_shift_i), NaN when no row is valid; ``n_hard_valid``: how many rows that is (to
  weight averages over steps); ``hard_active``: 1.0 when hard negatives are in the loss. The
  accuracies are reported whether or not hard negatives are in the loss yet. The score is the
  cosine for ``infonce`` and ``margin``, the head's in-sync logit for ``binary``.

Kinds (``s_ij`` = cosine(v_i, a_j), ``h_i`` = cosine(v_i, a_shift_i), T = temperature):

- ``"infonce"``: row i is a softmax over [a_i (positive), a_j for j != i (easy), a_shift_i
  (hard, when active and valid)] of score / T. ``loss_easy`` = mean_i of -log softmax over
  [positive, easy]; ``loss_hard`` = mean over ALL B rows of log(Z_i + e^{h_i/T}) - log Z_i
  (0 for rows without a hard negative), Z_i the easy partition sum — so with
  ``hard_weight=1`` the loss is exactly the mean cross-entropy of the full softmax.
- ``"margin"`` (AVTS): on distances d = ||v - a|| of the normalised embeddings, positives cost
  d², negatives max(0, margin - d)². Easy negatives pair v_i with a_{i-1} (``audio.roll(1, 0)``).
  ``loss_easy`` = mean_i d(v_i, a_i)² + mean_i max(0, m - d(v_i, a_{i-1}))²; ``loss_hard`` = mean
  over active valid rows of max(0, m - d(v_i, a_shift_i))². With unit vectors d <= 2.
- ``"binary"``: an MLP head (``embed_dim`` D required) on [v, a, v*a, |v-a|] (4D) gives an
  in-sync logit; BCE with label 1 for (v_i, a_i), 0 for the rolled pair (v_i, a_{i-1}) and 0 for
  (v_i, a_shift_i). ``loss_easy`` = mean BCE of positives + mean BCE of easy negatives;
  ``loss_hard`` = mean BCE over active valid rows.

``gather=True`` all-gathers video, audio, audio_shift and hard_valid over processes
(:mod:`avssl.objectives.gather`), so easy negatives come from the global batch and every rank
computes the loss of the whole global batch in global (rank-major) order: 2 processes with B/2
rows give the loss of 1 process with B. With one process it is a no-op.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avssl.errors import ConfigError
from avssl.objectives import gather as _gather

KINDS = ("infonce", "margin", "binary")


class SyncObjective(nn.Module):
    """Sync loss with easy + hard negatives (see module docstring for shapes and terms)."""

    def __init__(
        self,
        kind: str = "infonce",
        temperature: float = 0.07,
        margin: float = 0.5,
        hard_weight: float = 1.0,
        hard_start_step: int = 0,
        embed_dim: int | None = None,
        gather: bool = False,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"sync kind must be one of {KINDS}, got {kind!r}")
        if temperature <= 0:
            raise ConfigError(f"sync temperature must be > 0, got {temperature}")
        if margin <= 0:
            raise ConfigError(f"sync margin must be > 0, got {margin}")
        if hard_weight < 0 or hard_start_step < 0:
            raise ConfigError("sync hard_weight and hard_start_step must be >= 0, got "
                              f"{hard_weight} and {hard_start_step}")
        self.kind = kind
        self.temperature = temperature
        self.margin = margin
        self.hard_weight = hard_weight
        self.hard_start_step = hard_start_step
        self.gather = gather
        self.head: nn.Module | None = None
        if kind == "binary":
            if not embed_dim:
                raise ConfigError("sync kind 'binary' needs embed_dim (the projection size D) "
                                  "to build its in-sync classifier head")
            self.head = nn.Sequential(
                nn.Linear(4 * embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def hard_active(self, batch: dict) -> bool:
        """Whether the curriculum lets hard negatives into the loss for this batch."""
        if self.hard_start_step == 0:
            return True
        if "step" not in batch:
            raise ConfigError(f"batch['step'] is required when hard_start_step="
                              f"{self.hard_start_step} > 0; pass the global optimizer step")
        return int(batch["step"]) >= self.hard_start_step

    def pair_logit(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Binary head: normalised ``v``, ``a`` (..., D) -> in-sync logit (...)."""
        assert self.head is not None
        return self.head(torch.cat([v, a, v * a, (v - a).abs()], dim=-1)).squeeze(-1)

    def pair_score(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Matched rows (N, D), (N, D) -> (N,): cosine (infonce, margin) or head logit (binary)."""
        if self.kind == "binary":
            return self.pair_logit(v, a)
        return (v * a).sum(-1)

    def score_matrix(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Every video with every audio: (B, D), (B, D) -> (B, B) with [i, j] = score(v_i, a_j)."""
        if self.kind != "binary":
            return v @ a.T
        B = v.shape[0]
        step = max(1, 4096 // B)  # rows per chunk: bounds the (rows, B, 4D) head input
        rows = [self.pair_logit(v[i:i + step, None].expand(-1, B, -1),
                                a[None].expand(min(step, B - i), -1, -1))
                for i in range(0, B, step)]
        return torch.cat(rows, dim=0)

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        v, a = outputs["video"], outputs["audio"]
        shift = outputs.get("audio_shift")
        if v.ndim != 2 or v.shape != a.shape:
            raise ConfigError(f"sync objective expects outputs 'video' and 'audio' of equal shape "
                              f"(B, D), got {tuple(v.shape)} and {tuple(a.shape)}")
        if shift is not None and shift.shape != a.shape:
            raise ConfigError(f"outputs['audio_shift'] must have the shape of 'audio' "
                              f"{tuple(a.shape)}, got {tuple(shift.shape)}")
        valid = batch.get("hard_valid")
        if valid is None:
            valid = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
        valid = torch.as_tensor(valid, device=v.device).bool()
        if valid.shape != (v.shape[0],):
            raise ConfigError(f"batch['hard_valid'] must be bool ({v.shape[0]},), got shape "
                              f"{tuple(valid.shape)}")
        active = self.hard_active(batch)
        if self.gather:
            v, a, valid = _gather.gather_rows(v), _gather.gather_rows(a), _gather.gather_rows(valid)
            shift = _gather.gather_rows(shift) if shift is not None else None
        if v.shape[0] < 2:
            raise ConfigError("the sync objective needs at least 2 clips per batch (easy negatives "
                              "are the other clips' audio); raise the batch size")
        # bf16 autocast would round the similarities; losses are computed in float32.
        with torch.autocast(device_type=v.device.type, enabled=False):
            v = F.normalize(v.float(), dim=-1)
            a = F.normalize(a.float(), dim=-1)
            shift = F.normalize(shift.float(), dim=-1) if shift is not None else None
            use_hard = valid & active if shift is not None else torch.zeros_like(valid)
            loss_easy, loss_hard = getattr(self, f"_{self.kind}")(v, a, shift, use_hard)
            loss = loss_easy + self.hard_weight * loss_hard
            metrics = self._accuracies(v, a, shift, valid)
        return {"loss": loss, "loss_easy": loss_easy, "loss_hard": loss_hard,
                "hard_active": torch.tensor(float(active and shift is not None), device=v.device),
                **metrics}

    # Each kind: normalised v, a (B, D), shift (B, D) | None, use_hard bool (B,) -> (easy, hard).

    def _infonce(self, v, a, shift, use_hard):
        logits = v @ a.T / self.temperature
        log_z = logits.logsumexp(dim=1)
        loss_easy = (log_z - logits.diagonal()).mean()
        if shift is None:
            return loss_easy, loss_easy.new_zeros(())
        hard = (v * shift).sum(-1) / self.temperature
        extra = torch.logaddexp(log_z, hard) - log_z
        return loss_easy, torch.where(use_hard, extra, torch.zeros_like(extra)).mean()

    def _margin(self, v, a, shift, use_hard):
        def neg_cost(x, y):  # max(0, m - d)^2; clamp keeps sqrt's gradient finite at d = 0
            d = (x - y).pow(2).sum(-1).clamp_min(1e-12).sqrt()
            return (self.margin - d).clamp_min(0).pow(2)

        loss_easy = (v - a).pow(2).sum(-1).mean() + neg_cost(v, a.roll(1, dims=0)).mean()
        if not bool(use_hard.any()):
            return loss_easy, loss_easy.new_zeros(())
        return loss_easy, neg_cost(v[use_hard], shift[use_hard]).mean()

    def _binary(self, v, a, shift, use_hard):
        pos = self.pair_logit(v, a)
        easy = self.pair_logit(v, a.roll(1, dims=0))
        loss_easy = (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                     + F.binary_cross_entropy_with_logits(easy, torch.zeros_like(easy)))
        if not bool(use_hard.any()):
            return loss_easy, loss_easy.new_zeros(())
        hard = self.pair_logit(v[use_hard], shift[use_hard])
        return loss_easy, F.binary_cross_entropy_with_logits(hard, torch.zeros_like(hard))

    @torch.no_grad()
    def _accuracies(self, v, a, shift, valid) -> dict[str, torch.Tensor]:
        scores = self.score_matrix(v, a)
        pos = scores.diagonal()
        others = scores.masked_fill(torch.eye(len(v), dtype=torch.bool, device=v.device),
                                    -math.inf)
        acc_easy = (pos > others.amax(dim=1)).float().mean()
        n_valid = int(valid.sum()) if shift is not None else 0
        if n_valid:
            hard = self.pair_score(v[valid], shift[valid])
            acc_hard = (pos[valid] > hard).float().mean()
        else:
            acc_hard = torch.tensor(math.nan, device=v.device)
        return {"acc_easy": acc_easy, "acc_hard": acc_hard,
                "n_hard_valid": torch.tensor(float(n_valid), device=v.device)}
