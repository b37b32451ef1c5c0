"""Temporal action localization: mAP at temporal-IoU thresholds (fractions in [0, 1]).

Unlike the other evaluators (percent), every AP / mAP here is a **fraction** in [0, 1], as the
official tools print them, so numbers can be compared with published ones digit for digit.

Two modes, named in the output (``"mode"``):

``activitynet`` (default) - the official ActivityNet Python evaluator (``Evaluation/
eval_detection.py``, ``compute_average_precision_detection`` + ``interpolated_prec_rec``):

- per class, predictions by descending score; each one takes, among the ground truth of its
  class in its video, the unmatched segment of highest tIoU if that tIoU is >= the threshold,
  else it is a false positive (so a duplicate of a matched prediction is a false positive, and
  a prediction on a video with no ground truth of its class is one too);
- AP all-point interpolated (VOC 2011): precision made monotone from the right, summed over the
  recall steps; a class without predictions scores 0;
- mAP is the plain mean over the classes that have ground truth in the evaluated subset;
- predictions on videos outside the subset are kept, as false positives, as the official tool
  keeps them (it filters predictions only by label); ``num_predictions_outside_subset`` counts
  them;
- score ties: the official tool orders by ``argsort()[::-1]``, whose order of equal scores
  depends on numpy's sort (unstable on current numpy with SIMD sorting). We use the stable
  version of the same expression: among equal scores the prediction listed *later* in the file
  comes first, which is what the official tool did with numpy's classic insertion sort
  (<= 16 predictions per class). Ties between ground truth of equal tIoU: later first, likewise.
- a predicted label the ground truth does not have (the official tool crashes): one warning
  with the labels and counts, the predictions are left out, ``ignored_labels`` counts them.

``thumos-matlab`` - the THUMOS14 MATLAB kit (``TH14evaldet.m`` / ``TH14eventdetpr.m``):

- matching is driven by the ground truth: per class and video, each ground-truth segment in
  file order takes the still-free detection of highest overlap (the highest-scored one among
  equal overlaps) when that overlap is *strictly greater* than the threshold;
- overlap is intersection / (hull of the two segments), 0 when they do not intersect (equal
  to tIoU for intersecting segments);
- detections that stay unmatched and intersect an Ambiguous segment of the same video (any
  positive overlap) are removed instead of counting as false positives; matched ones stay;
- AP is 11-point interpolated (recall points k/10, k = 0..10); ties in score rank true
  positives first (MATLAB's stable sort of ``[tp, fp]``); a class with no true positive scores
  0; mAP is the mean over classes with ground truth.

Thresholds: the default sets, and ``start:stop:step`` ranges, are ``np.linspace``'s floats as
the official Python tools use them (ActivityNet ``np.linspace(0.5, 0.95, 10)``, THUMOS14 as in
ActionFormer ``np.linspace(0.3, 0.7, 5)``), so a tIoU of exactly 0.4 or 0.9 on paper, which
computes to 0.39999999999999997 / 0.8999999999999999, is a hit as it is there. The MATLAB kit
takes each threshold as typed, so ``thumos-matlab``'s defaults are the decimals; thresholds
listed one by one stay as typed. ``tiou`` in the output is rounded (9 digits) for reading.

Files (``python -m avssl.eval localization --ground-truth GT --predictions PRED.json``): GT is
an ActivityNet-1.3 JSON or a THUMOS14 annotation folder (``<Class>_test.txt``, ...); PRED is the
official ``{"version", "results": {video: [{"label", "score", "segment": [s, e]}]},
"external_data": {}}``. On THUMOS14 ground truth a label may also be the class's UCF101 id (the
MATLAB kit's submission format). Output keys: ``tiou``, ``mAP`` (per threshold),
``average_mAP``, ``per_class`` (class -> AP per threshold), ``mode``, ``num_predictions``
(evaluated), ``num_ground_truth``, ``num_predictions_outside_subset``, ``ignored_labels``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import warnings
from collections import Counter, defaultdict
from typing import Any, Literal, Sequence

import numpy as np

from avssl.errors import ConfigError, DataError
from avssl.eval import EVALUATORS

Mode = Literal["activitynet", "thumos-matlab"]
MODES = ("activitynet", "thumos-matlab")
# np.linspace's floats, not the decimals: the official Python tools compare tIoU with these, so
# a tIoU of exactly 0.4 on paper (0.39999999999999997 computed) is a hit at "0.4" there
THUMOS_TIOU = tuple(float(t) for t in np.linspace(0.3, 0.7, 5))
ACTIVITYNET_TIOU = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))


def temporal_iou(seg: Any, segs: Any) -> np.ndarray:
    """tIoU (N,) of one segment ``seg`` (2,) = [start, end] with each of ``segs`` (N, 2).

    ``intersection / union`` with ``union = len(seg) + len(segs) - intersection``; 0 when the
    segments are disjoint.
    """
    seg = np.asarray(seg, dtype=np.float64)
    segs = np.asarray(segs, dtype=np.float64).reshape(-1, 2)
    inter = (np.minimum(seg[1], segs[:, 1]) - np.maximum(seg[0], segs[:, 0])).clip(0)
    union = (segs[:, 1] - segs[:, 0]) + (seg[1] - seg[0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):  # two zero-length segments: 0/0
        return inter / union


def _hull_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MATLAB kit overlap (A, B) of segments ``a`` (A, 2) and ``b`` (B, 2): intersection over
    the hull of each pair when the intersection is positive, else 0."""
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    hull = np.maximum(a[:, None, 1], b[None, :, 1]) - np.minimum(a[:, None, 0], b[None, :, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(inter > 0, hull, 1.0), 0.0)


def _descending(values: np.ndarray) -> np.ndarray:
    """Indices by descending value; equal values later-index first (stable ``argsort()[::-1]``,
    the official evaluator's expression made deterministic)."""
    return np.argsort(values, kind="stable")[::-1]


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP (VOC 2011) of cumulative precision / recall (P,)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]  # monotone from the right
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


# MATLAB's 0:0.1:1, which the kit's prap() uses: the colon operator adds multiples of the step
# to the start for the first half and subtracts them from the end for the second (a + k*d,
# b - (n-k)*d, the middle (a+b)/2), so its 4th point is 3*0.1 = 0.30000000000000004, not 0.3:
# a detection whose recall is exactly 3/10 does not count at that point there, nor here
_MATLAB_RECALL_POINTS = tuple([k * 0.1 for k in range(5)] + [0.5] +
                              [1 - (10 - k) * 0.1 for k in range(6, 11)])


def _eleven_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """11-point interpolated AP: mean over MATLAB's ``0:0.1:1`` recall points t of the best
    precision at recall >= t (the THUMOS14 kit's ``prap``)."""
    best = [precision[recall >= t].max(initial=0.0) for t in _MATLAB_RECALL_POINTS]
    return float(sum(best) / 11)  # sum first: perfect detections give exactly 1.0


def _arrays(items: list[dict], what: str, with_score: bool):
    """Videos (list), segments (N, 2) and scores (N,) of ``items``; DataError when malformed."""
    videos, segs, scores = [], np.zeros((len(items), 2)), np.zeros(len(items))
    for i, it in enumerate(items):
        try:
            videos.append(str(it["video"]))
            segs[i] = float(it["start"]), float(it["end"])
            if with_score:
                scores[i] = float(it["score"])
        except (KeyError, TypeError, ValueError):
            keys = "video, start, end" + (", score" if with_score else "")
            raise DataError(f"{what} item {i}: expected a dict with numeric {keys}, got "
                            f"{it!r:.120}") from None
    return videos, segs, scores


def _by_video(videos: list[str]) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(videos):
        groups[v].append(i)
    return {v: np.asarray(ix) for v, ix in groups.items()}


def _precision_recall(tp: np.ndarray, fp: np.ndarray, npos: int):
    tp_c, fp_c = np.cumsum(tp, axis=-1), np.cumsum(fp, axis=-1)
    return tp_c / (tp_c + fp_c), tp_c / npos


def _ap_activitynet(gt_videos, gt_segs, pred_videos, pred_segs, scores, tiou) -> np.ndarray:
    order = _descending(scores)
    gt_of = _by_video(gt_videos)
    taken = np.zeros((len(tiou), len(gt_videos)), dtype=bool)
    tp = np.zeros((len(tiou), len(order)))
    for rank, i in enumerate(order):
        idx = gt_of.get(pred_videos[i])
        if idx is None:  # no ground truth of this class in the video: false positive
            continue
        ious = temporal_iou(pred_segs[i], gt_segs[idx])
        o = _descending(ious)
        by_iou, sorted_iou = idx[o], ious[o]
        for t, thr in enumerate(tiou):
            for g, iou in zip(by_iou, sorted_iou):
                if iou < thr:
                    break
                if not taken[t, g]:
                    taken[t, g] = True
                    tp[t, rank] = 1
                    break
    precision, recall = _precision_recall(tp, 1 - tp, len(gt_videos))
    return np.array([_interpolated_ap(precision[t], recall[t]) for t in range(len(tiou))])


def _ap_thumos_matlab(gt_videos, gt_segs, pred_videos, pred_segs, scores, tiou,
                      ambiguous) -> np.ndarray:
    gt_of = _by_video(gt_videos)
    amb_videos, amb_segs, _ = _arrays(ambiguous or [], "ambiguous", with_score=False)
    amb_of = _by_video(amb_videos)
    ap = np.zeros(len(tiou))
    for t, thr in enumerate(tiou):
        tp_conf, fp_conf = [], []
        for video, dets in _by_video(pred_videos).items():
            dets = dets[np.argsort(-scores[dets], kind="stable")]  # MATLAB sort(-conf)
            free = np.ones(len(dets), dtype=bool)
            if video in gt_of:
                ov = _hull_overlap(gt_segs[gt_of[video]], pred_segs[dets])
                for row in ov:  # each ground truth in file order
                    cand = np.flatnonzero(free)
                    if cand.size:
                        best = cand[np.argmax(row[cand])]  # first maximum = highest score
                        if row[best] > thr:
                            free[best] = False
            near_amb = np.zeros(len(dets), dtype=bool)
            if video in amb_of:
                near_amb = _hull_overlap(amb_segs[amb_of[video]], pred_segs[dets]).sum(0) > 0
            tp_conf.extend(scores[dets[~free]])
            fp_conf.extend(scores[dets[free & ~near_amb]])
        if not tp_conf:
            continue
        conf = np.array(tp_conf + fp_conf)
        is_tp = np.arange(len(conf)) < len(tp_conf)
        hits = is_tp[np.argsort(-conf, kind="stable")]  # ties: true positives first
        precision, recall = _precision_recall(hits, ~hits, len(gt_videos))
        ap[t] = _eleven_point_ap(precision, recall)
    return ap


def _check_tiou(tiou: Sequence[float]) -> list[float]:
    try:
        out = [float(t) for t in tiou]
    except (TypeError, ValueError):
        raise ConfigError(f"tiou: expected a list of thresholds in [0, 1], got {tiou!r}") from None
    if not out or not all(0.0 <= t <= 1.0 for t in out):
        raise ConfigError(f"tiou: expected a non-empty list of thresholds in [0, 1], got {out}")
    return out


def average_precision_detection(gt: list[dict], preds: list[dict], tiou: Sequence[float],
                                mode: Mode = "activitynet",
                                ambiguous: list[dict] | None = None) -> np.ndarray:
    """AP (len(tiou),) of one class, as a fraction, at each tIoU threshold.

    ``gt``: the class's ground truth ``[{"video", "start", "end"}]`` (at least one);
    ``preds``: its predictions ``[{"video", "start", "end", "score"}]`` in file order (the
    order breaks score ties, see the module docstring); ``ambiguous``: ``[{"video", "start",
    "end"}]``, used by ``mode="thumos-matlab"`` only.
    """
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    thresholds = _check_tiou(tiou)
    if not gt:
        raise ConfigError("average_precision_detection needs at least one ground-truth segment")
    gt_videos, gt_segs, _ = _arrays(gt, "ground truth", with_score=False)
    pred_videos, pred_segs, scores = _arrays(preds, "prediction", with_score=True)
    if not preds:
        return np.zeros(len(thresholds))
    if mode == "activitynet":
        return _ap_activitynet(gt_videos, gt_segs, pred_videos, pred_segs, scores, thresholds)
    return _ap_thumos_matlab(gt_videos, gt_segs, pred_videos, pred_segs, scores, thresholds,
                             ambiguous)


def _label_aliases(classes: set[str]) -> dict[str, str]:
    """UCF101 ids (as text) -> THUMOS14 names, for the classes the ground truth has."""
    from avssl.data.datasets.thumos14 import THUMOS14_CLASSES  # only when a label is unknown

    return {str(i): name for i, name in THUMOS14_CLASSES if name in classes}


def _flatten_predictions(predictions: Any) -> list[dict]:
    """``[{"video", "start", "end", "score", "label"}]`` in file order from the official JSON."""
    from avssl.data.datasets.activitynet import segment_bounds  # the ground truth's own check

    results = predictions.get("results") if isinstance(predictions, dict) else None
    if not isinstance(results, dict):
        raise DataError('predictions: expected the official JSON {"version", "results": {video: '
                        '[{"label", "score", "segment": [start, end]}]}, "external_data": {}}; '
                        '"results" is missing or not an object')
    out = []
    for video, items in results.items():
        if not isinstance(items, list):
            raise DataError(f"predictions: results[{video!r}] must be a list of "
                            f'{{"label", "score", "segment"}}, got {type(items).__name__}')
        for k, it in enumerate(items):
            try:
                segment, score, label = it["segment"], float(it["score"]), it["label"]
            except (KeyError, TypeError, ValueError):
                raise DataError(f'predictions: results[{video!r}][{k}]: expected {{"label", '
                                f'"score": number, "segment": [start, end]}}, got '
                                f"{it!r:.120}") from None
            start, end = segment_bounds(segment, f"predictions: results[{video!r}][{k}]")
            if not math.isfinite(score):
                raise DataError(f"predictions: results[{video!r}][{k}]: score must be a finite "
                                f"number, got {score}")
            if end < start:
                raise DataError(f"predictions: results[{video!r}][{k}]: segment ends before it "
                                f"starts ({start} > {end}); write [start, end] in seconds")
            out.append({"video": str(video), "start": start, "end": end, "score": score,
                        "label": str(label)})
    return out


def evaluate_localization(ground_truth: dict, predictions: dict, *,
                          tiou: Sequence[float] = THUMOS_TIOU,
                          mode: Mode = "activitynet") -> dict:
    """mAP (fractions) of ``predictions`` against ``ground_truth``.

    ``ground_truth``: ``{"segments": [{"video", "start", "end", "label"}], "ambiguous":
    [{"video", "start", "end"}], "classes": [...], "videos": [...]}`` as the THUMOS14 /
    ActivityNet parsers return it; ``predictions``: the official JSON dict. Output keys are
    listed in the module docstring; ``per_class`` holds every class with ground truth, in the
    order of ``ground_truth["classes"]`` (then first appearance).
    """
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    thresholds = _check_tiou(tiou)
    segments = ground_truth.get("segments") if isinstance(ground_truth, dict) else None
    if not segments:
        raise DataError("ground truth has no action segment in the evaluated subset; check the "
                        "subset name and the annotation files")
    gt_by_class: dict[str, list[dict]] = defaultdict(list)
    for s in segments:
        gt_by_class[str(s["label"])].append(s)
    order = [str(c) for c in ground_truth.get("classes", [])] + list(gt_by_class)
    classes = [c for c in dict.fromkeys(order) if c in gt_by_class]

    known = set(gt_by_class)
    preds_by_class: dict[str, list[dict]] = defaultdict(list)
    ignored: Counter = Counter()
    flat = _flatten_predictions(predictions)
    aliases = (_label_aliases(known) if any(p["label"] not in known for p in flat) else {})
    for p in flat:
        label = p["label"] if p["label"] in known else aliases.get(p["label"])
        if label is None:
            ignored[p["label"]] += 1
        else:
            preds_by_class[label].append(p)
    # a label the ground truth lists as a class but has no segment of in this subset (e.g. one of
    # THUMOS14's 20 classes absent from a small test set) cannot change the mean over ground-truth
    # classes: left out without a warning; only labels the ground truth does not know are reported
    declared = {str(c) for c in ground_truth.get("classes", [])}
    unknown = Counter({k: n for k, n in ignored.items() if k not in declared})
    if unknown:
        common = unknown.most_common()
        listed = ", ".join(f"{k!r} ({n})" for k, n in common[:10]) + (
            f", ... ({len(common) - 10} more labels)" if len(common) > 10 else "")
        warnings.warn(f"localization: {sum(unknown.values())} predictions have labels the "
                      f"ground truth does not have and are left out: {listed}", stacklevel=2)

    ambiguous = ground_truth.get("ambiguous") or []
    per_class = {c: average_precision_detection(gt_by_class[c], preds_by_class[c], thresholds,
                                                mode=mode, ambiguous=ambiguous)
                 for c in classes}
    m_ap = np.mean(np.stack(list(per_class.values())), axis=0)
    subset_videos = set(ground_truth.get("videos") or {s["video"] for s in segments})
    used = [p for c in classes for p in preds_by_class[c]]
    return {
        "tiou": [round(t, 9) for t in thresholds],  # labels: 0.9, not 0.8999999999999999
        "mAP": [float(x) for x in m_ap],
        "average_mAP": float(np.mean(m_ap)),
        "per_class": {c: [float(x) for x in ap] for c, ap in per_class.items()},
        "mode": mode,
        "num_predictions": len(used),
        "num_ground_truth": len(segments),
        "num_predictions_outside_subset": sum(p["video"] not in subset_videos for p in used),
        "ignored_labels": dict(ignored),
    }


# ------------------------------------------------------------------------------------- files
def parse_tiou(text: str) -> list[float]:
    """``"0.3:0.7:0.1"`` (start:stop:step, stop included: ``np.linspace``'s values, as the
    official tools' defaults), ``"0.5,0.75"`` or ``"0.5"`` (as typed) -> list of thresholds."""
    text = str(text).strip()
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            last = start + (n - 1) * step  # the last point: stop itself when the steps land on it
            last = stop if abs(last - stop) < 1e-9 else round(last, 9)
            values = [float(t) for t in np.linspace(start, last, n)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--tiou: expected start:stop:step with step > 0 (e.g. 0.3:0.7:0.1) "
                          f"or a comma list (e.g. 0.5,0.75,0.95), got {text!r}") from None
    return _check_tiou(values)


def _read_ground_truth(path: str | os.PathLike, subset: str | None) -> tuple[dict, bool]:
    """(parsed ground truth, is_thumos) for a THUMOS14 folder or an ActivityNet JSON."""
    if os.path.isdir(path):
        from avssl.data.datasets.thumos14 import read_thumos14_annotations

        return read_thumos14_annotations(path, subset or "test"), True
    if not os.path.isfile(path):
        raise DataError(f"ground truth {path} not found: pass an ActivityNet-format JSON file or "
                        f"a THUMOS14 annotation folder (<Class>_test.txt, ...)")
    from avssl.data.datasets.activitynet import read_activitynet

    return read_activitynet(path, subset or "validation"), False


def _read_predictions(path: str | os.PathLike) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"predictions file {path} not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read predictions {path} as JSON: {' '.join(str(e).split())}")


def evaluate_localization_files(ground_truth_path: str | os.PathLike,
                                predictions_path: str | os.PathLike, *,
                                tiou: Sequence[float] | str | None = None,
                                subset: str | None = None,
                                mode: Mode = "activitynet") -> dict:
    """:func:`evaluate_localization` on files. ``ground_truth_path``: an ActivityNet JSON
    (``subset`` default ``"validation"``, ``tiou`` default 0.5:0.95:0.05) or a THUMOS14
    annotation folder (``subset`` ``"test"`` (default) / ``"val"`` / ``"validation"``, ``tiou``
    default 0.3:0.7:0.1). ``tiou`` may be a list or text for :func:`parse_tiou`."""
    gt, is_thumos = _read_ground_truth(ground_truth_path, subset)
    if tiou is None:
        tiou = THUMOS_TIOU if is_thumos else ACTIVITYNET_TIOU
        if mode == "thumos-matlab":  # the kit is called with each threshold as typed
            tiou = [round(t, 9) for t in tiou]
    elif isinstance(tiou, str):
        tiou = parse_tiou(tiou)
    return evaluate_localization(gt, _read_predictions(predictions_path), tiou=tiou, mode=mode)


def _run(args: argparse.Namespace) -> dict:
    return evaluate_localization_files(args.ground_truth, args.predictions, tiou=args.tiou,
                                       subset=args.subset, mode=args.mode)


@EVALUATORS.register("localization")
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Subcommand ``localization``: temporal action localization mAP at tIoU thresholds."""
    p = subparsers.add_parser(
        "localization", help="temporal localization mAP (THUMOS14 / ActivityNet ground truth)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ground-truth", required=True, metavar="GT",
                   help="ActivityNet-format JSON or THUMOS14 annotation folder")
    p.add_argument("--predictions", required=True, metavar="PRED.json",
                   help='official JSON {"results": {video: [{"label", "score", "segment"}]}}')
    p.add_argument("--tiou", metavar="A:B:STEP|T1,T2",
                   help="thresholds (default 0.3:0.7:0.1 for THUMOS14, 0.5:0.95:0.05 for "
                        "ActivityNet)")
    p.add_argument("--subset", help="test (THUMOS14 default), val/validation, or an ActivityNet "
                                    "subset (default validation)")
    p.add_argument("--mode", choices=MODES, default="activitynet",
                   help="activitynet: official Python evaluator (default); thumos-matlab: "
                        "the THUMOS14 MATLAB kit (11-point AP, overlap > t, Ambiguous removal)")
    p.set_defaults(run=_run)
    return p
