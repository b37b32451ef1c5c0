"""Linear probe: multinomial logistic regression on frozen, standardised features.

The classic frozen-feature protocol (e.g. SimCLR, AVID-CMA): features are standardised with the
train split's mean and std, a softmax classifier ``x @ W + b`` is fitted full-batch in float64
with L-BFGS from zero (so the result is a deterministic function of the inputs), and the L2
penalty ``wd * ||W||²`` is chosen on a seeded, class-stratified held-out part of the train split,
then the classifier is refitted on the whole train split.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avssl.errors import ConfigError, DataError
from avssl.eval.classification import classification_metrics

# A feature dimension that is constant on the train split would divide by ~0; clamping keeps it
# (harmlessly) near zero instead of exploding it.
STD_FLOOR = 1e-6


def validate_features(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check the common inputs of the frozen-feature protocols; return them as numpy arrays.

    ``train_x`` (N, D) and ``test_x`` (M, D) float features; ``train_y`` (N,), ``test_y`` (M,)
    int labels in ``[0, num_classes)``. Raises :class:`DataError` with a one-line message.
    """
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"expected features of shape (N, D) and (M, D) with the same D, got "
                        f"train {train_x.shape} and test {test_x.shape}")
    if len(train_x) == 0 or len(test_x) == 0:
        raise DataError(f"expected non-empty train and test features, got {len(train_x)} train "
                        f"and {len(test_x)} test samples; check the task's split files")
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if y.shape != (len(x),):
            raise DataError(f"expected one label per {name} feature ({len(x)},), got labels of "
                            f"shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"expected integer {name} labels, got dtype {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"expected {name} labels in [0, {num_classes}), got range "
                            f"[{y.min()}, {y.max()}]; is num_classes right?")
        if not np.isfinite(x).all():
            raise DataError(f"{name} features contain NaN or inf; the encoder's outputs are "
                            f"not finite (check the checkpoint)")
    return train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64)


def standardizer(train_x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension ``(mean, std)`` of ``train_x`` (N, D), float64 (D,), std clamped."""
    x = torch.as_tensor(train_x, dtype=torch.float64)
    return x.mean(0), x.std(0, correction=0).clamp_min(STD_FLOOR)


def standardize(x: np.ndarray, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(x - mean) / std`` as float64 (N, D), with ``stats`` from :func:`standardizer`."""
    mean, std = stats
    return (torch.as_tensor(x, dtype=torch.float64) - mean) / std


def logistic_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                  wd: float) -> torch.Tensor:
    """Mean cross-entropy of ``x @ w + b`` plus ``wd * ||w||²`` (the bias is not penalised).

    ``x`` (N, D), ``y`` (N,) int64, ``w`` (D, C), ``b`` (C,).
    """
    return F.cross_entropy(x @ w + b, y) + wd * (w * w).sum()


def fit_logistic(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, num_classes: int,
                 wd: float, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit multinomial logistic regression full-batch with L-BFGS (strong Wolfe) from zero.

    ``x`` (N, D) features (used as given: standardise them first), ``y`` (N,) labels in
    ``[0, num_classes)``. Returns ``W`` (D, C) and ``b`` (C,), float64. Deterministic: zero init,
    full batch, no sampling.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.int64)
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    # Tolerances far below float32 feature precision: stop on max_iter or a true optimum, not on
    # the (loose) defaults meant for float32 training.
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = logistic_loss(x, y, w, b, wd)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def predict_scores(x: np.ndarray | torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Logits ``x @ W + b``: ``x`` (M, D) (standardised like the fit), returns (M, C) float32."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return (x @ w + b).numpy().astype(np.float32)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of indices into (fit, held-out), both sorted int64.

    A class with ``n >= 2`` samples puts ``round(val_fraction * n)`` of them, clamped to
    ``[1, n - 1]``, in held-out (so it keeps at least one in fit); a class with one sample stays
    in fit. With ``groups`` (N,) (e.g. UCF101's gGG: clips cut from one source video), whole
    groups of a class go to held-out, so no held-out clip has a sibling in fit.
    """
    rng = np.random.default_rng([seed, 7211])
    fit, val = [], []
    if groups is not None:
        groups = np.asarray(groups)
        for c in np.unique(y):
            gs = np.unique(groups[y == c])
            gs = gs[rng.permutation(len(gs))]
            n_val = (0 if len(gs) < 2 else
                     min(max(int(round(val_fraction * len(gs))), 1), len(gs) - 1))
            held = np.isin(groups, gs[:n_val]) & (y == c)
            val.append(np.flatnonzero(held))
            fit.append(np.flatnonzero((y == c) & ~held))
        return (np.sort(np.concatenate(fit)).astype(np.int64),
                np.sort(np.concatenate(val)).astype(np.int64))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = 0 if len(idx) < 2 else min(max(int(round(val_fraction * len(idx))), 1), len(idx) - 1)
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    num_classes: int, *, seed: int = 0,
    weight_decays: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.2, max_iter: int = 200, class_names: list[str] | None = None,
    groups: np.ndarray | None = None,
) -> dict:
    """Linear probe with a held-out sweep of the L2 penalty; metrics on the test split.

    ``train_x`` (N, D), ``train_y`` (N,), ``test_x`` (M, D), ``test_y`` (M,). Features are
    standardised with the whole train split's statistics (label-free; the test split is never
    looked at). Each ``wd`` is fitted on the fit part of :func:`stratified_split` and scored by
    held-out top-1; the best (ties -> the larger ``wd``) is refitted on the whole train split.
    ``groups`` (N,) (the source video of each training clip) holds out whole groups, so the
    sweep never scores a clip whose siblings it was fitted on.
    With a single ``wd``, or no held-out sample (every class has one sample), there is nothing to
    choose: the largest ``wd`` is used and ``sweep`` is empty.

    Returns :func:`~avssl.eval.classification.classification_metrics` on the test split (percent)
    plus ``weight_decay`` (chosen), ``sweep`` (``{str(wd): held-out top-1}``) and ``scores``
    (M, C) float32 logits.
    """
    train_x, train_y, test_x, test_y = validate_features(train_x, train_y, test_x, test_y,
                                                         num_classes)
    if not weight_decays or any(not np.isfinite(wd) or wd < 0 for wd in weight_decays):
        raise ConfigError(f"expected a non-empty list of weight decays >= 0, got {weight_decays!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"expected val_fraction in (0, 1), got {val_fraction}")
    if max_iter < 1:
        raise ConfigError(f"expected max_iter >= 1, got {max_iter}")

    if groups is not None and len(groups) != len(train_y):
        raise ConfigError(f"expected one group per training sample ({len(train_y)}), got "
                          f"{len(groups)}")
    stats = standardizer(train_x)
    x_train = standardize(train_x, stats)
    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed, groups)
    sweep: dict[str, float] = {}
    best_wd = max(weight_decays)
    if len(weight_decays) > 1 and len(val_idx):
        best_top1 = -1.0
        # ascending order + ">=" makes a tie go to the larger (safer, smoother) penalty
        for wd in sorted(weight_decays):
            w, b = fit_logistic(x_train[fit_idx], train_y[fit_idx], num_classes, wd, max_iter)
            top1 = float(classification_metrics(predict_scores(x_train[val_idx], w, b),
                                                train_y[val_idx])["top1"])
            sweep[str(wd)] = top1
            if top1 >= best_top1:
                best_wd, best_top1 = wd, top1

    w, b = fit_logistic(x_train, train_y, num_classes, best_wd, max_iter)
    scores = predict_scores(standardize(test_x, stats), w, b)
    out = dict(classification_metrics(scores, test_y, class_names=class_names))
    out.update(weight_decay=best_wd, sweep=sweep, scores=scores)
    return out
