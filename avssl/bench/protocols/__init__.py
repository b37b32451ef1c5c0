"""Evaluation protocols: plain functions registered in ``PROTOCOLS`` by name.

The frozen-feature protocols (``linear``, ``knn``, ``fewshot``) share one signature::

    protocol(train_x, train_y, test_x, test_y, num_classes, *, class_names=None, **options)
        -> dict

with ``train_x`` (N, D) / ``test_x`` (M, D) float32 features (already averaged over views),
``train_y`` (N,) / ``test_y`` (M,) int64 labels in ``[0, num_classes)``, all CPU numpy. They
return the test-split metrics of :func:`avssl.eval.classification.classification_metrics`
(``top1``, ``top5``, ``mean_class_acc``, ``per_class``, ``num_samples``; percent), the
protocol's own entries (chosen hyper-parameters, ...) and ``scores``: the (M, C) float32 test
score matrix (pop it before writing JSON). They are deterministic (``linear`` takes a ``seed``,
``fewshot`` its ``seeds``) and run on CPU. Other protocols (``finetune``, ``retrieval``) take
other arguments; see their docstrings.
"""
from __future__ import annotations

from typing import Callable

from avssl.bench.protocols.fewshot import few_shot, sample_few_shot
from avssl.bench.protocols.knn import knn_classify
from avssl.bench.protocols.linear import fit_logistic, linear_probe, predict_scores
from avssl.registry import Registry

PROTOCOLS: Registry[Callable[..., dict]] = Registry("protocol")
PROTOCOLS.add("linear", linear_probe)
PROTOCOLS.add("knn", knn_classify)
PROTOCOLS.add("fewshot", few_shot)

__all__ = ["PROTOCOLS", "linear_probe", "knn_classify", "few_shot", "fit_logistic",
           "predict_scores", "sample_few_shot"]
