"""AVA v2.2 frame-mAP@0.5IoU, equal to the official ActivityNet evaluator.

Reproduces ``Evaluation/get_ava_performance.py`` of the ActivityNet repository (with its
``ava/object_detection_evaluation.py``, ``per_image_evaluation.py``, ``metrics.py`` and
``np_box_ops.py``); every AP / mAP is a **fraction** in [0, 1], as the official tool prints it.

- Label map: classes are its ids; ground-truth and detection rows with other action ids are
  dropped as they are read.
- Capacity: per keyframe only the 50 highest-scored (box, label) detections are kept, chosen the
  way the official ``read_csv`` does it: rows stream, in file order, into a min-heap of tuples
  ``(score, action_id, y1, x1, y2, x2)``; a row enters while the heap has room, later only when
  its score is *strictly* greater than the heap's minimum, and then evicts the smallest tuple
  (ties in score evict the lower action id, then the lower box). The kept rows are then put in
  descending score order by a stable sort of the heap's array (ties keep heap order), the order
  the per-keyframe matching uses. Ground truth goes through the same code with no capacity and
  the score ``float(person_id)`` (1.0 for 7-column rows), which fixes the ground-truth order.
- Keyframes: those listed anywhere in the ground-truth CSV (2-column rows and rows whose action
  is outside the label map included); detections on any other keyframe are ignored (not false
  positives), as DATASETS.md says and as the evaluator's version that reads 2-column rows does
  (its ``included_keys``). Versions of the script without 2-column rows score such detections
  against an empty ground truth, i.e. as false positives: a detection file covering only the
  ground truth's keyframes gets the same mAP from both. A listed keyframe without a ground-truth
  box of a class makes every detection of that class there a false positive.
- Excluded timestamps are dropped from both the ground truth and the detections (DATASETS.md),
  as the script's ``--exclusions`` option does; copies of it differ here (some take no
  exclusions, SlowFast's drops them only when ``verbose`` is true).
- Per keyframe and class, detections whose box has ``x2 <= x1`` or ``y2 <= y1`` are dropped
  (after the capacity cut); each remaining one, in the order above, looks at the ground truth box
  of its class with the highest IoU (the first one among equal IoUs) - whether or not already
  taken - and is a true positive when that IoU is >= 0.5 and the box is not yet taken, else a
  false positive. IoU on normalised boxes has no +1 pixel term (``np_box_ops.iou``).
- AP per class: all detections of the class by descending score, cumulative precision /
  recall over its ground-truth count, VOC all-point AP on the monotone precision envelope; a
  class with ground truth and no detection scores 0; a class without ground truth is NaN
  (``null`` in ``per_class``) and left out of the mean. Score ties across keyframes: the official
  ``argsort()[::-1]`` is made deterministic as its stable version (the detection concatenated
  later - later keyframe in the detection file, then later in that keyframe's order - first),
  the convention of :mod:`avssl.eval.localization`.

``python -m avssl.eval ava --groundtruth GT.csv --detections DET.csv --labelmap MAP.pbtxt
[--exclusions EXC.csv]`` prints ``{"mAP", "per_class": {name: ap | null}, "num_keyframes",
"num_ground_truth", "num_detections", "num_detections_outside_groundtruth",
"num_detections_excluded", "num_detections_over_capacity", "num_detections_invalid_box",
"num_classes_with_groundtruth", "iou", "capacity"}``.
"""
from __future__ import annotations

import argparse
import heapq
import math
import os
from typing import Iterable

import numpy as np
import torch
from torchvision.ops import box_iou

from avssl.data.datasets.ava import AVARow, read_exclusions, read_labelmap, read_rows
from avssl.errors import ConfigError, DataError
from avssl.eval import EVALUATORS

Key = tuple[str, int]


def _heap_select(rows: Iterable[AVARow], classes: set[int], capacity: int, score_of,
                 ) -> dict[Key, list[tuple]]:
    """Per keyframe, the official ``read_csv`` selection: ``[(score, action, y1, x1, y2, x2)]``
    in descending score (stable over heap order), at most ``capacity`` (0: no limit)."""
    heaps: dict[Key, list[tuple]] = {}  # insertion order = first kept row of each keyframe
    for r in rows:
        if r.box is None or r.action_id not in classes:
            continue
        x1, y1, x2, y2 = r.box
        item = (score_of(r), r.action_id, y1, x1, y2, x2)
        heap = heaps.setdefault(r.key, [])
        if capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    return {k: sorted(h, key=lambda t: -t[0]) for k, h in heaps.items()}


def _arrays(items: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (N,), labels (N,), boxes (N, 4) as y1, x1, y2, x2 of selected tuples."""
    a = np.asarray(items, dtype=np.float64).reshape(-1, 6)
    return a[:, 0], a[:, 1].astype(np.int64), a[:, 2:]


def _match(det_boxes, det_labels, gt_boxes, gt_labels, iou: float) -> np.ndarray:
    """True positives (N,) of one keyframe's detections, in their order.

    A detection's candidate is the highest-IoU ground truth of its class (first on ties), taken
    or not; it is a true positive iff that IoU >= ``iou`` and no earlier detection took it.
    """
    tp = np.zeros(len(det_boxes), dtype=bool)
    if not len(det_boxes) or not len(gt_boxes):
        return tp
    # float64 box_iou is bit-identical to np_box_ops.iou (same products, sum and division)
    ious = box_iou(torch.from_numpy(det_boxes), torch.from_numpy(gt_boxes)).numpy()
    ious = np.where(det_labels[:, None] == gt_labels[None, :], ious, -1.0)  # IoU >= 0 otherwise
    best = ious.argmax(axis=1)
    hit = np.flatnonzero(ious[np.arange(len(best)), best] >= iou)
    _, first = np.unique(best[hit], return_index=True)  # first claimant of each box wins
    tp[hit[first]] = True
    return tp


def _average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC all-point AP of detections ``scores`` / ``tp`` (N,) against ``num_gt`` boxes."""
    if num_gt == 0:
        return math.nan
    if not len(scores):
        return 0.0
    hits = tp[np.argsort(scores, kind="stable")[::-1]].astype(np.int64)
    tp_c, fp_c = np.cumsum(hits), np.cumsum(1 - hits)
    precision = np.concatenate([[0.0], tp_c / (tp_c + fp_c), [0.0]])
    recall = np.concatenate([[0.0], tp_c / num_gt, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[idx] - recall[idx - 1]) * precision[idx]))


def _rows(src: str | os.PathLike | list[AVARow], kind: str) -> list[AVARow]:
    if isinstance(src, (str, os.PathLike)):
        return read_rows(src, kind=kind)
    rows = list(src)
    if not all(isinstance(r, AVARow) for r in rows):
        raise ConfigError(f"evaluate_ava: {kind} must be a CSV path or a list of AVARow")
    return rows


def _exclusions(src) -> set[Key]:
    if src is None:
        return set()
    if isinstance(src, (str, os.PathLike)):
        return read_exclusions(src)
    try:
        return {(str(v), int(t)) for v, t in src}
    except (TypeError, ValueError):
        raise ConfigError("evaluate_ava: exclusions must be a CSV path or a set of "
                          "(video_id, timestamp) pairs") from None


def evaluate_ava(groundtruth: str | os.PathLike | list[AVARow],
                 detections: str | os.PathLike | list[AVARow],
                 labelmap: str | os.PathLike | tuple[list[int], list[str]],
                 exclusions: str | os.PathLike | set | None = None, *, capacity: int = 50,
                 iou: float = 0.5) -> dict:
    """Frame-mAP (fraction) of AVA ``detections`` against ``groundtruth``.

    ``groundtruth`` / ``detections``: CSV paths or :class:`AVARow` lists in file order (the order
    breaks score ties); ``labelmap``: a ``.pbtxt`` path or ``(ids, names)``; ``exclusions``: a
    CSV path or ``{(video_id, timestamp)}``. Semantics and output keys: module docstring.
    """
    if not 0.0 <= float(iou) <= 1.0:
        raise ConfigError(f"evaluate_ava: iou must be in [0, 1], got {iou}")
    if int(capacity) != capacity or capacity < 0:
        raise ConfigError(f"evaluate_ava: capacity must be an integer >= 0 (0: no limit), "
                          f"got {capacity}")
    ids, names = (read_labelmap(labelmap) if isinstance(labelmap, (str, os.PathLike))
                  else (list(labelmap[0]), list(labelmap[1])))
    classes = set(ids)
    excluded = _exclusions(exclusions)
    gt_rows, det_rows = _rows(groundtruth, "groundtruth"), _rows(detections, "detections")

    listed = {r.key for r in gt_rows} - excluded
    gt = _heap_select(gt_rows, classes, 0,
                      lambda r: 1.0 if r.person_id is None else float(r.person_id))
    gt = {k: _arrays(v) for k, v in gt.items() if k not in excluded}
    num_gt = {c: 0 for c in ids}
    for _, labels, _ in gt.values():
        for c, n in zip(*np.unique(labels, return_counts=True)):
            num_gt[int(c)] += int(n)
    if not any(num_gt.values()):
        raise DataError(f"evaluate_ava: the ground truth has no box with an action id of the "
                        f"label map ({len(ids)} ids, e.g. {ids[:5]}); check the files match")

    kept = [r for r in det_rows if r.box is not None and r.action_id in classes]
    dets = _heap_select(kept, classes, int(capacity), lambda r: 1.0 if r.score is None
                        else float(r.score))
    counts = {"over_capacity": len(kept) - sum(map(len, dets.values())), "excluded": 0,
              "outside_groundtruth": 0, "invalid_box": 0}
    per_class_scores: dict[int, list[np.ndarray]] = {c: [] for c in ids}
    per_class_tp: dict[int, list[np.ndarray]] = {c: [] for c in ids}
    empty = (np.zeros(0), np.zeros(0, np.int64), np.zeros((0, 4)))
    for key, items in dets.items():
        if key in excluded:
            counts["excluded"] += len(items)
            continue
        if key not in listed:
            counts["outside_groundtruth"] += len(items)
            continue
        scores, labels, boxes = _arrays(items)
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        counts["invalid_box"] += int((~valid).sum())
        scores, labels, boxes = scores[valid], labels[valid], boxes[valid]
        _, gt_labels, gt_boxes = gt.get(key, empty)
        tp = _match(boxes, labels, gt_boxes, gt_labels, float(iou))
        for c in np.unique(labels):
            sel = labels == c
            per_class_scores[int(c)].append(scores[sel])
            per_class_tp[int(c)].append(tp[sel])

    ap = {c: _average_precision(np.concatenate(per_class_scores[c] or [np.zeros(0)]),
                                np.concatenate(per_class_tp[c] or [np.zeros(0, bool)]),
                                num_gt[c]) for c in ids}
    valid_ap = [a for a in ap.values() if not math.isnan(a)]
    display = {}
    for c, name in zip(ids, names):
        display[name if name not in display else f"{name} ({c})"] = (
            None if math.isnan(ap[c]) else ap[c])
    return {
        "mAP": float(np.mean(valid_ap)),
        "per_class": display,
        "num_keyframes": len(listed),
        "num_ground_truth": int(sum(num_gt.values())),
        "num_detections": int(sum(len(s) for v in per_class_scores.values() for s in v)),
        **{f"num_detections_{k}": v for k, v in counts.items()},
        "num_classes_with_groundtruth": len(valid_ap),
        "iou": float(iou),
        "capacity": int(capacity),
    }


def _run(args: argparse.Namespace) -> dict:
    return evaluate_ava(args.groundtruth, args.detections, args.labelmap, args.exclusions,
                        capacity=args.capacity, iou=args.iou)


@EVALUATORS.register("ava")
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Subcommand ``ava``: AVA v2.2 frame-mAP@0.5IoU (official ActivityNet evaluator)."""
    p = subparsers.add_parser(
        "ava", help="AVA v2.2 frame-mAP@0.5IoU (fractions, like the official evaluator)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groundtruth", required=True, metavar="GT.csv",
                   help="ground truth, e.g. ava_val_v2.2.csv")
    p.add_argument("--detections", required=True, metavar="DET.csv",
                   help="video_id,timestamp,x1,y1,x2,y2,action_id,score rows")
    p.add_argument("--labelmap", required=True, metavar="MAP.pbtxt",
                   help="ava_action_list_v2.2_for_activitynet_2019.pbtxt (60 classes) or the "
                        "80-class ava_action_list_v2.2.pbtxt")
    p.add_argument("--exclusions", metavar="EXC.csv",
                   help="ava_val_excluded_timestamps_v2.2.csv: keyframes dropped from both files")
    p.add_argument("--capacity", type=int, default=50,
                   help="detections kept per keyframe, highest scores first (default 50; 0: all)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    p.set_defaults(run=_run)
    return p
