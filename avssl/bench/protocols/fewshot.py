"""Few-shot linear classification on frozen features: n labelled examples per class, many seeds.

For each ``n`` in ``shots`` and each seed, ``n`` train examples per class are drawn, a logistic
regression (:func:`~avssl.bench.protocols.linear.fit_logistic`, fixed ``weight_decay``: too few
samples to sweep it) is fitted on them, and top-1 is measured on the full test split. The result
is the mean ± std over seeds; std is the population std (``ddof=0``) of the per-seed top-1s.
"""
from __future__ import annotations

import numpy as np

from avssl.bench.protocols.linear import (fit_logistic, predict_scores, standardize,
                                          standardizer, validate_features)
from avssl.errors import ConfigError
from avssl.eval.classification import classification_metrics


def sample_few_shot(train_y: np.ndarray, num_classes: int, n: int,
                    seed: int) -> tuple[np.ndarray, dict[int, int]]:
    """Draw ``n`` train indices per class, seeded by ``(seed, n)``.

    Returns the sorted int64 indices and ``{class: count}`` for the classes that had fewer than
    ``n`` examples (they contribute all they have; a class with none contributes nothing).
    """
    rng = np.random.default_rng([seed, n, 5011])
    picked, short = [], {}
    for c in range(num_classes):
        idx = np.flatnonzero(train_y == c)
        if len(idx) < n:
            short[c] = len(idx)
        picked.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(picked)).astype(np.int64), short


def few_shot(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    num_classes: int, *, shots: tuple[int, ...] = (1, 5), seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    weight_decay: float = 1e-3, max_iter: int = 200, class_names: list[str] | None = None,
) -> dict:
    """Few-shot logistic regression on ``train_x`` (N, D) subsets; top-1 on ``test_x`` (M, D).

    Features are standardised with the whole train split's statistics: they use no label, so
    they are available in a few-shot setting too, and are far less noisy than the statistics of
    ``n * C`` samples.

    Returns the :func:`~avssl.eval.classification.classification_metrics` of the first seed of
    the largest ``n`` (``top5``, ``mean_class_acc``, ``per_class``, ``num_samples``) and its
    ``scores`` (M, C) float32, with ``top1`` replaced by the mean top-1 over seeds of the largest
    ``n``, plus ``top1_std`` (population std, ddof=0), ``weight_decay`` and ``shots``:
    ``{str(n): {"mean", "std", "runs": [top-1 per seed], "short_classes": {str(class): count}}}``
    (``short_classes`` lists classes with fewer than ``n`` train examples).
    """
    train_x, train_y, test_x, test_y = validate_features(train_x, train_y, test_x, test_y,
                                                         num_classes)
    if not shots or any(int(n) != n or n < 1 for n in shots):
        raise ConfigError(f"expected a non-empty list of shot counts >= 1, got {shots!r}")
    if not seeds:
        raise ConfigError("expected at least one seed for the few-shot protocol, got none")
    if not weight_decay >= 0:
        raise ConfigError(f"expected weight_decay >= 0, got {weight_decay}")

    stats = standardizer(train_x)
    x_train, x_test = standardize(train_x, stats), standardize(test_x, stats)
    largest = max(int(n) for n in shots)  # keys are str(int): shots=(1, 5.0) looks up "5"
    per_shot: dict[str, dict] = {}
    first: tuple[dict, np.ndarray] | None = None
    for n in sorted(set(int(n) for n in shots)):
        runs, short = [], {}
        for seed in seeds:
            idx, short = sample_few_shot(train_y, num_classes, n, seed)
            w, b = fit_logistic(x_train[idx], train_y[idx], num_classes, weight_decay, max_iter)
            scores = predict_scores(x_test, w, b)
            metrics = classification_metrics(scores, test_y, class_names=class_names)
            runs.append(float(metrics["top1"]))
            if n == largest and first is None:
                first = (dict(metrics), scores)
        per_shot[str(n)] = {"mean": float(np.mean(runs)), "std": float(np.std(runs, ddof=0)),
                            "runs": runs, "short_classes": {str(c): k for c, k in short.items()}}

    metrics, scores = first
    top = per_shot[str(largest)]
    metrics.update(top1=top["mean"], top1_std=top["std"], weight_decay=float(weight_decay),
                   shots=per_shot, scores=scores)
    return metrics
