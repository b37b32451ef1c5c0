"""AVA v2.2 spatio-temporal action detection: task ``ava`` (protocol ``roi-linear``).

The frozen video encoder's map of a clip centred on each keyframe, averaged over time
(:mod:`avssl.bench.detection`), is pooled on each box (RoIAlign + max; these RoI features and the
maps' channel statistics are what is cached, not the maps) for the SlowFast-style RoI head: trained on the
``train`` split's ground-truth person boxes with per-class BCE, it scores every ``val`` person
proposal (score >= 0.8) for each of the label map's classes. Those rows, the official detections
CSV, are scored by :func:`avssl.eval.ava.evaluate_ava` (frame-mAP@0.5 IoU as the ActivityNet
evaluator computes it) against the ground truth of the ``val`` videos used (a video missing on
disk, or left out with ``--skip-bad``, would otherwise count all its boxes as missed); metrics are
in percent. ``--save-predictions DIR`` keeps both files, ``DIR/detections.csv`` and
``DIR/groundtruth.csv``, so ``python -m avssl.eval ava --groundtruth DIR/groundtruth.csv
--detections DIR/detections.csv ...`` gives the same mAP back.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from avssl.bench.tasks import TASKS, Task
from avssl.errors import ConfigError

PROPOSAL_THRESHOLD = 0.8  # the score cut of the person detector's boxes, as SlowFast uses
DEFAULT_EPOCHS = 40       # ~300 AdamW steps on the synthetic stand-in's default size
# AVA's three action types by id range (label_type in ava_action_list_v2.2.pbtxt)
ACTION_TYPES = {"movement": range(1, 15), "object": range(15, 64), "interaction": range(64, 81)}


def _load(root, split, **kw):
    from avssl.data.datasets.ava import ava

    return ava(root, split, **kw)


def _keyframes_hash(keyframes) -> str:
    h = hashlib.sha256()
    for kf in keyframes:
        h.update(f"{kf.video_id}\t{kf.timestamp}\t{kf.time_s}\n".encode())
    return h.hexdigest()


def _boxes_hash(keyframes) -> str:
    h = hashlib.sha256()
    for kf in keyframes:
        h.update(np.ascontiguousarray(np.asarray(kf.boxes, np.float32)).tobytes() + b"|")
    return h.hexdigest()


def _roi_features(task, model, args, split, part: str, size: int) -> dict[str, np.ndarray]:
    """Cached :func:`~avssl.bench.detection.keyframe_roi_features` of a split's boxes."""
    from avssl.bench import features as F
    from avssl.bench.detection import keyframe_roi_features

    cache = F.FeatureCache(task.name, enabled=args.cache)
    key = cache.key(model=model.identity(), task=task.name, version=task.version, part=part,
                    spec=vars(model.spec), size=size, data=F.manifest_hash(split.records),
                    keyframes=_keyframes_hash(split.keyframes), rois=_boxes_hash(split.keyframes),
                    kind="roi-max-7")
    hit = cache.get(key)
    if hit is not None:
        return hit
    out = keyframe_roi_features(model, split.keyframes, size=size, batch_size=args.batch_size,
                                num_workers=args.num_workers, skip_bad=args.skip_bad,
                                desc=f"{task.name} {part} keyframes")
    if out["ok"].all():  # a file failing mid-way is decoded again next time, not remembered
        cache.put(key, **out)
    return out


def _without_failed(split, features: dict[str, np.ndarray]):
    """``split`` and its features without the videos that failed to decode part-way
    (``--skip-bad``): their keyframes, and their ground truth, are left out."""
    ok = features.get("ok")  # absent from features cached before it existed: all decoded
    if ok is None or ok.all():
        return split, features
    gone = {kf.video_id: kf.path for kf, k in zip(split.keyframes, ok) if not k}
    split = dataclasses.replace(
        split, keyframes=[kf for kf, k in zip(split.keyframes, ok) if k],
        records=[r for r in split.records if r.video_id not in gone],
        num_used=split.num_used - len(gone),
        bad=split.bad + [(path, "failed to decode part-way") for path in gone.values()])
    return split, {**features, "counts": features["counts"][ok]}


def _split_rows(features: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(features, np.cumsum(counts)[:-1]) if len(counts) else []


def detection_rows(keyframes, scores: list[np.ndarray], class_ids: list[int]) -> list[str]:
    """Official detections CSV lines ``video_id,timestamp,x1,y1,x2,y2,action_id,score``: one per
    (proposal, class) of every keyframe, in keyframe, box and label-map order."""
    lines = []
    for kf, sc in zip(keyframes, scores):
        ts = f"{kf.timestamp:04d}"
        for box, row in zip(kf.boxes, sc):
            b = ",".join(format(float(v), ".6g") for v in box)
            lines += [f"{kf.video_id},{ts},{b},{cid},{format(float(s), '.8g')}"
                      for cid, s in zip(class_ids, row)]
    return lines


def _summary(per_class: dict[str, Any], names: list[str], ids: list[int]) -> dict[str, float]:
    """Mean of ``per_class`` (percent) over the classes of each AVA action type that have
    ground truth."""
    out = {}
    by_name = dict(zip(names, ids))
    for kind, id_range in ACTION_TYPES.items():
        aps = [v for n, v in per_class.items()
               if by_name.get(n) in id_range and v is not None and math.isfinite(v)]
        if aps:
            out[f"mAP_{kind}"] = float(np.mean(aps))
    return out


def run(task: Task, model, args, root: str, modality: str) -> dict[str, Any]:
    """The ``ava`` pipeline (module docstring); see :mod:`avssl.bench.tasks` for the contract."""
    from avssl.bench import features as F
    import torch

    from avssl.bench.detection import (detection_size, fit_head, predict_features,
                                       stats_from_sums)
    from avssl.bench.run import _load as load_for
    from avssl.bench.run import _threads_for
    from avssl.eval.ava import evaluate_ava

    if modality != "video":
        raise ConfigError(f"task ava detects actions in person boxes of video frames: it needs "
                          f"--modality video, got {modality!r}")
    model.encoder_for("video")  # fail early: a model without a video tower
    train = load_for(task, _load, root, "train", boxes="groundtruth", skip_bad=args.skip_bad)
    test = load_for(task, _load, root, "val", boxes="proposals",
                    score_threshold=PROPOSAL_THRESHOLD, skip_bad=args.skip_bad)
    if train.class_ids != test.class_ids:
        raise ConfigError("ava: the train and val splits read different label maps")
    size = detection_size(model.spec)
    train, tr = _without_failed(train, _roi_features(task, model, args, train, "train", size))
    test, te = _without_failed(test, _roi_features(task, model, args, test, "val", size))
    mean, std = stats_from_sums(tr["sums"], float(tr["cells"]))

    st = F.state()
    with _threads_for(tr["features"].size):  # a small head trains far faster on one thread
        head = fit_head(_split_rows(tr["features"], tr["counts"]),
                        [kf.labels for kf in train.keyframes], torch.from_numpy(mean),
                        torch.from_numpy(std), epochs=args.epochs or DEFAULT_EPOCHS,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                        device=st.device, progress=st.is_main_process)
        scores = predict_features(head, _split_rows(te["features"], te["counts"]))
    lines = detection_rows(test.keyframes, scores, test.class_ids)

    files = {"detections.csv": lines, "groundtruth.csv": test.used_groundtruth()}
    with tempfile.TemporaryDirectory(prefix="avssl-ava-") as tmp:
        # score exactly the files a user gets: the bench's mAP is the CLI's on these two
        for name, rows in files.items():
            (Path(tmp) / name).write_text("".join(line + "\n" for line in rows))
        res = evaluate_ava(Path(tmp) / "groundtruth.csv", Path(tmp) / "detections.csv",
                           test.labelmap, test.exclusions_csv)
        if args.save_predictions and st.is_main_process:
            out = Path(args.save_predictions)
            out.mkdir(parents=True, exist_ok=True)
            for name in files:
                (out / name).write_bytes((Path(tmp) / name).read_bytes())
    per_class = {n: (None if v is None or not math.isfinite(v) else 100.0 * v)
                 for n, v in res["per_class"].items()}
    metrics: dict[str, Any] = {"mAP": 100.0 * float(res["mAP"])}
    metrics.update(_summary(per_class, test.class_names, test.class_ids))
    metrics.update({"train_keyframes": len(train.keyframes), "val_keyframes": len(test.keyframes),
                    "proposals": int(sum(len(kf.boxes) for kf in test.keyframes)),
                    "train_loss": float(head.epoch_losses[-1]), "per_class": per_class})
    return {"metrics": metrics, "used": train.num_used + test.num_used,
            "expected": train.num_listed + test.num_listed,
            "manifest": F.manifest_hash(train.records + test.records), "video_size": size}


TASKS.add("ava", Task(
    name="ava",
    summary="AVA v2.2 spatio-temporal action detection, 60 classes: RoI head on frozen "
            "features, train on train, frame-mAP@0.5 on val proposals",
    data=("annotations/ (ava_{train,val}_v2.2.csv, both label maps, excluded timestamps, "
          "ava_{train,val}_predicted_boxes.csv) and videos_15min/<video_id>.mp4 (cut at 900 s) "
          "from research.google.com/ava"),
    kind="detection", version="1", protocols=("roi-linear",), metric="mAP", load=_load,
    splits=("val",), views="1x1", layout="ava", run=run))
