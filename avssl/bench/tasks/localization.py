"""Temporal action localization tasks: ``thumos14`` and ``activitynet``.

Sliding-window features of the untrimmed videos (:mod:`avssl.bench.untrimmed`, any registered
encoder, video / audio / both) train an anchor-free multi-scale head in the spirit of ActionFormer
(:mod:`avssl.bench.localization`) on the training subset; its Soft-NMS-decoded segments on the
test subset are scored by :func:`avssl.eval.localization.evaluate_localization` (the official
ActivityNet evaluator's semantics): mAP per tIoU threshold and their average (in percent here).
"""
from __future__ import annotations

from avssl.bench.tasks import TASKS, Task

# (train subset, test subset) per task; the tIoU thresholds are the standalone evaluator's
# defaults (avssl.eval.localization THUMOS_TIOU / ACTIVITYNET_TIOU, the official tools' floats)
SUBSETS = {"thumos14": ("validation", "test"), "activitynet": ("training", "validation")}


def _load_thumos(root, subset, **kw):
    from avssl.data.datasets import thumos14

    return thumos14(root, subset=subset, **kw)


def _load_activitynet(root, subset, **kw):
    from avssl.data.datasets import activitynet

    return activitynet(root, subset=subset, **kw)


TASKS.add("thumos14", Task(
    name="thumos14",
    summary="THUMOS14 temporal action localization, 20 classes: train on val, test on test",
    data=("videos/ and per-class <Class>_{val,test}.txt annotations (TH14 temporal annotations) "
          "from crcv.ucf.edu/THUMOS14"),
    kind="localization", version="1", protocols=("actionformer",), metric="average_mAP",
    load=_load_thumos, splits=("test",), views="1x1", layout="thumos14"))

TASKS.add("activitynet", Task(
    name="activitynet",
    summary="ActivityNet-1.3 temporal action localization, 200 classes: train on training, "
            "test on validation",
    data="activity_net.v1-3.min.json and videos/v_<id>.mp4 from activity-net.org",
    kind="localization", version="1", protocols=("actionformer",), metric="average_mAP",
    load=_load_activitynet, splits=("validation",), views="1x1", layout="activitynet"))
