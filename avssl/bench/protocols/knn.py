"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO protocol).

Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination" (2018) and
Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (2021): each test
feature finds its ``k`` most cosine-similar train features, and every neighbour votes for its
class with weight ``exp(sim / T)``. ``T=0.07`` is both papers' temperature; ``k=20`` is DINO's
(Wu et al. used k=200 on ImageNet's 1.28M images; our train splits are far smaller).
"""
from __future__ import annotations

import numpy as np

from avssl.bench.protocols.linear import validate_features
from avssl.errors import ConfigError
from avssl.eval.classification import classification_metrics
from avssl.retrieval import search


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
               k: int, temperature: float) -> np.ndarray:
    """The (M, C) float64 vote matrix for ``test_x`` (M, D) against ``train_x`` (N, D).

    ``scores[i, c] = sum over the k neighbours j of i with train_y[j] == c of exp(cos(i, j) / T)``;
    ``k`` must already be ``<= N``.
    """
    sims, ids = search(test_x, train_x, k, normalize=True)
    sims = np.asarray(sims, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    valid = ids >= 0  # FAISS pads missing neighbours with -1; none expected for k <= N
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    votes = np.zeros((len(ids), num_classes), dtype=np.float64)
    # accumulate in float64: exp(1 / 0.07) ~ 1.6e6, and k such terms are summed
    np.add.at(votes, (rows[valid], np.asarray(train_y)[ids[valid]]), np.exp(sims[valid] / temperature))
    # kept in float64: a near-duplicate neighbour at T < 0.0113 gives exp(1/T) > float32's max
    return votes


def knn_classify(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    num_classes: int, *, k: int = 20, temperature: float = 0.07,
    class_names: list[str] | None = None,
) -> dict:
    """kNN classification of ``test_x`` (M, D) by ``train_x`` (N, D); metrics on the test split.

    Cosine similarity through :func:`avssl.retrieval.search` on L2-normalised features; ``k`` is
    clamped to N. Returns :func:`~avssl.eval.classification.classification_metrics` (percent)
    plus ``k`` (the one used), ``temperature`` and ``scores`` (M, C) float64 vote matrix.
    """
    train_x, train_y, test_x, test_y = validate_features(train_x, train_y, test_x, test_y,
                                                         num_classes)
    if k < 1:
        raise ConfigError(f"expected k >= 1 neighbours, got {k}")
    if not temperature > 0:
        raise ConfigError(f"expected a temperature > 0, got {temperature}")
    k = min(int(k), len(train_x))
    scores = knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
    out = dict(classification_metrics(scores, test_y, class_names=class_names))
    out.update(k=k, temperature=float(temperature), scores=scores)
    return out
