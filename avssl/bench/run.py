"""One benchmark run: task + model + protocol -> metrics and one leaderboard row.

:func:`run_bench` is what ``python -m avssl.bench`` calls (and what tests and notebooks call).
It resolves the task, the model and the data, extracts (or loads cached) features, runs the
protocol, and, on the main process only, appends the row to ``<leaderboard>/<task>.csv``.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from accelerate import PartialState

from avssl.bench import features as F
from avssl.bench.model import BenchModel, cost, resolve_model
from avssl.bench.tasks import TASKS, Task
from avssl.errors import AvsslError, ConfigError, DataError
from avssl.launch import launch_warning
from avssl.registry import did_you_mean

MODALITIES = ("video", "audio", "av")


@dataclass
class BenchArgs:
    task: str = "synthetic"
    checkpoint: str | None = None
    encoder: str | None = None
    audio_encoder: str | None = None
    encoder_kwargs: dict = field(default_factory=dict)
    protocol: str | None = None
    split: str | None = None
    data_root: str | None = None
    views: str | None = None
    modality: str | None = None
    leaderboard: str | None = "leaderboard"   # None: do not append a row
    skip_bad: bool = False
    seed: int = 0
    batch_size: int = 16
    num_workers: int = 2
    cache: bool = True
    save_predictions: str | None = None      # folder for the evaluators' input files
    index: str = "flat"                      # retrieval: exact, or FAISS IVF-PQ (large galleries)
    # input overrides (default: the checkpoint's training config)
    clip_s: float | None = None
    fps: float | None = None
    size: int | None = None
    crop: int | None = None
    # protocol options
    shots: tuple[int, ...] = (1, 5)
    k: int = 20
    epochs: int | None = None               # finetune: 10, localization head: 30
    stride_s: float | None = None            # localization windows (default: half a clip)
    lr: float = 1e-3
    separation: dict = field(default_factory=dict)  # music: SeparationConfig fields (JSON)


def parse_views(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m or int(m.group(1)) < 1 or int(m.group(2)) not in (1, 3):
        raise ConfigError(f"--views must be CLIPSxCROPS with CLIPS >= 1 and CROPS 1 or 3 (e.g. "
                          f"10x3), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _choose(kind: str, value: str | None, allowed: tuple[str, ...], task: Task) -> str:
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise ConfigError(f"task {task.name} has no {kind} {value!r}"
                          f"{did_you_mean(value, list(allowed))}; its {kind}s: "
                          f"{', '.join(allowed)}")
    return value


def data_root(task: Task, given: str | None) -> str:
    if given:
        return given
    if task.default_root is not None:
        return task.default_root()
    return str(Path("data") / task.name.split("-")[0])  # ucf101-av reads the ucf101 tree


def _load(task: Task, fn, root: str, *args, **kw):
    """The task's loader, with the missing-data message naming the task and its data source."""
    try:
        return fn(root, *args, **kw)
    except DataError as err:
        msg = str(err).rstrip(".")
        # "then pass --data-root DIR" ends the loaders' "write a stand-in with ... --out DIR";
        # an error about the data's content (videos too short, ...) is not cured by that
        then = ", then pass --data-root DIR" if "--out DIR" in msg else ""
        raise DataError(f"task {task.name}: {msg}{then}. Data: {task.data}") from None


def _check_numbers(args: BenchArgs) -> None:
    """Counts and sizes that would otherwise fail deep inside decoding or batching."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0 (0: load in the main process), got "
                          f"{args.num_workers}")
    for flag, value in (("--fps", args.fps), ("--clip-s", args.clip_s),
                        ("--stride-s", args.stride_s)):
        if value is not None and not value > 0:  # `not >` also refuses NaN
            raise ConfigError(f"{flag} must be > 0, got {value}")
    for flag, value in (("--size", args.size), ("--crop", args.crop)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1 pixel, got {value}")
    if args.seed < 0:  # numpy's seed sequences refuse negative entries deep in a DataLoader
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.epochs is not None and args.epochs < 1:  # 0 used to mean 10, -1 trained nothing
        raise ConfigError(f"--epochs must be >= 1 (leave it out for the default), got "
                          f"{args.epochs}")
    if not (args.lr > 0 and np.isfinite(args.lr)):
        raise ConfigError(f"--lr must be a finite number > 0, got {args.lr}")
    # checked by the protocols too, but only after minutes of feature extraction
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1 neighbours, got {args.k}")
    if not args.shots or any(n < 1 for n in args.shots):
        raise ConfigError(f"--shots must be example counts >= 1, got "
                          f"{' '.join(map(str, args.shots)) or 'none'}")


def _check_crop(size: int, crop: int, args: BenchArgs) -> None:
    """The crop is cut from frames resized to short side ``size``: it cannot be larger. Checked
    on the resolved settings (a checkpoint's own data settings fill in flags not given)."""
    if crop > size:
        given = " and ".join(f"--{k} {v}" for k, v in (("size", args.size), ("crop", args.crop))
                             if v is not None) or "the checkpoint's data settings"
        raise ConfigError(f"crop {crop} is larger than the short side {size} the frames are "
                          f"resized to (from {given}); pass --size >= --crop")


# what the tasks that do not take --views score instead (classification tasks take it)
_FIXED_VIEWS = {"sync": "scores one clip per video against shifted copies of its audio",
                "retrieval": "embeds one clip per video",
                "localization": "scores sliding windows (their stride is --stride-s)"}


def _check_task_flags(task: Task, args: BenchArgs, protocol: str) -> None:
    """Refuse flags the task would ignore: the row would record a setting that had no effect."""
    if (args.views is not None and task.kind != "classification"
            and parse_views(args.views) != parse_views(task.views)):
        what = _FIXED_VIEWS.get(task.kind, f"has fixed test views ({task.views})")
        raise ConfigError(f"--views has no effect on task {task.name}: it {what}; leave --views "
                          f"out (or pass {task.views})")
    if task.kind in ("sync", "retrieval") and args.modality not in (None, "av"):
        raise ConfigError(f"--modality has no effect on task {task.name}: it compares video and "
                          f"audio embeddings (modality av); leave --modality out")
    if args.save_predictions and protocol == "retrieval" and task.kind == "classification":
        raise ConfigError(f"--save-predictions has no file format for class retrieval (task "
                          f"{task.name}, protocol retrieval); use it with the linear, knn, "
                          f"fewshot or finetune protocol, or leave it out")
    if args.index != "flat" and protocol != "retrieval":
        raise ConfigError(f"--index {args.index} applies to the retrieval protocol only; task "
                          f"{task.name} runs protocol {protocol}: leave --index out")
    # the default protocol is linear: `--task ucf101 --k 200` without `--protocol knn` would
    # silently report a linear probe, so a protocol option given to another protocol is refused
    defaults = BenchArgs()
    frozen = task.kind == "classification" and task.run is None and protocol != "finetune"
    for flag, value, default, used_by, used in (
            ("--k", args.k, defaults.k, "knn", protocol == "knn"),
            ("--shots", tuple(args.shots), defaults.shots, "fewshot", protocol == "fewshot"),
            ("--epochs", args.epochs, defaults.epochs, "finetune", not frozen),
            ("--lr", args.lr, defaults.lr, "finetune", not frozen)):
        if value != default and not used:
            raise ConfigError(f"{flag} applies to the {used_by} protocol only; task {task.name} "
                              f"runs protocol {protocol}: pass --protocol {used_by} or leave "
                              f"{flag} out")
    for flag, value, kind in (("--stride-s", args.stride_s, "localization"),
                              ("--separation", args.separation, "separation")):
        if value and task.kind != kind:
            raise ConfigError(f"{flag} applies to {kind} tasks only; task {task.name} is a "
                              f"{task.kind} task: leave {flag} out")


def check_leaderboard(directory: str | os.PathLike, task: str) -> None:
    """Refuse, before any compute, a leaderboard the row could not be appended to (a file in
    place of the folder, an unwritable folder, a task CSV with another header), so a finished
    run never ends in an append error."""
    from avssl.leaderboard import HEADER

    folder = Path(directory)
    hint = "pass another --leaderboard folder, or --leaderboard '' to append nothing"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--leaderboard {directory} is a file; expected a folder to hold "
                          f"{task}.csv ({hint})")
    if not folder.exists():  # created at append time: its nearest existing parent must allow it
        parent = next(p for p in folder.absolute().parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"--leaderboard {directory} cannot be created: {parent} is not a "
                              f"writable folder ({hint})")
        return
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--leaderboard {directory} is not writable ({hint})")
    path = folder / f"{task}.csv"
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; expected the leaderboard CSV of task {task} "
                          f"(move it aside, or {hint})")
    if not path.exists() or path.stat().st_size == 0:
        return
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{path} is not writable ({hint})")
    with open(path, encoding="utf-8", errors="replace") as f:  # the check append_row makes
        first = f.readline().removeprefix("\ufeff").rstrip("\r\n")
    if first != HEADER:
        raise DataError(f"{path} has a different header than a leaderboard CSV; expected: "
                        f"{HEADER} (move the file aside, or {hint})")


def recorded_protocol(protocol: str, index: str) -> str:
    """The protocol as the row (and the printed table) names it: approximate retrieval is never
    ranked with exact retrieval."""
    return f"{protocol}-{index}" if protocol == "retrieval" and index != "flat" else protocol


def run_bench(args: BenchArgs,
              report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one benchmark; returns ``{"task", "protocol", "metric", "value", "metrics", "row"}``.

    ``report(result)`` is called on the main process before the row is appended (with
    ``row=None``), so an append that fails never hides the numbers; the CLI prints them there.
    """
    # join the process group first (accelerate launch / torchrun), and refuse processes that
    # did not join one: each would extract everything and append its own row
    if (warning := launch_warning(F.state().num_processes)) and F.state().is_main_process:
        print(warning, file=sys.stderr)
    task = TASKS.get(args.task)
    protocol = _choose("protocol", args.protocol, task.protocols, task)
    split = _choose("split", None if args.split is None else str(args.split), task.splits, task)
    modality = args.modality or task.modality
    if modality not in MODALITIES:
        raise ConfigError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    clips, crops = parse_views(args.views or task.views)
    _check_numbers(args)
    _check_task_flags(task, args, protocol)
    if args.leaderboard:
        check_leaderboard(args.leaderboard, task.name)
    model = resolve_model(args.checkpoint, args.encoder, args.audio_encoder,
                          encoder_kwargs=args.encoder_kwargs, seed=args.seed,
                          spec_overrides={"clip_s": args.clip_s, "fps": args.fps,
                                          "size": args.size, "crop": args.crop})
    _check_crop(model.spec.size, model.spec.crop, args)
    root = data_root(task, args.data_root)
    if task.run is not None:
        out = task.run(task, model, args, root, modality)
    elif task.kind == "classification":
        out = _classification(task, model, args, root, split, protocol, modality, clips, crops)
    elif task.kind == "localization":
        out = _localization(task, model, args, root, modality)
    else:
        out = _audio_visual(task, model, args, root, split, modality)
    metric = task.metric if task.kind != "classification" else (
        "R@1" if protocol == "retrieval" else "top1")
    metrics = out["metrics"]
    if metric not in metrics:
        raise AvsslError(f"protocol {protocol} gave no {metric!r} (got {sorted(metrics)})")
    protocol = recorded_protocol(protocol, args.index)
    result = {"task": task.name, "protocol": protocol, "split": split, "metric": metric,
              "value": metrics[metric], "metrics": metrics, "row": None,
              "videos_used": out["used"], "videos_expected": out["expected"]}
    if not PartialState().is_main_process:
        return result
    if report is not None:
        report(result)
    if args.leaderboard:
        try:
            result["row"] = _append(task, model, args, split, protocol, modality,
                                    f"{clips}x{crops}", metric, metrics, out)
        except OSError as e:  # e.g. the folder turned read-only during the run
            raise DataError(f"cannot append the row to {args.leaderboard}/{task.name}.csv: "
                            f"{e.strerror or e} (the results were computed but not "
                            f"recorded)") from None
    return result


# --------------------------------------------------------------------------- classification
def _classification(task, model: BenchModel, args, root, split, protocol, modality, clips,
                    crops) -> dict:
    from avssl.bench.protocols import PROTOCOLS

    spec = model.spec
    for m in (("video", "audio") if modality == "av" else (modality,)):
        model.encoder_for(m)  # fail early: this model has no such tower
    if protocol == "finetune":
        from avssl.bench.protocols.finetune import finetune

        return finetune(task, model, args, root, split, modality, clips, crops)

    kw = dict(mode="eval", clip_s=spec.clip_s, fps=spec.fps, size=spec.size,
              sample_rate=spec.sample_rate, num_clips=clips, audio=modality != "video",
              video=modality != "audio",  # audio features: no frames decoded or cropped
              video_transform=spec.video_transform(crops),
              audio_transform=spec.audio_transform(), skip_bad=args.skip_bad, seed=args.seed)
    cache = F.FeatureCache(task.name, enabled=args.cache)
    parts = {}
    for part in ("train", "test"):
        ds = _load(task, task.load, root, split, part == "train", **kw)
        key = cache.key(model=model.identity(), task=task.name, version=task.version,
                        split=split, part=part, views=[clips, crops], modality=modality,
                        spec=vars(spec), data=F.manifest_hash(ds.records))
        hit = cache.get(key)
        failed: list[tuple[int, str]] | None = [] if args.skip_bad else None
        if hit is None:
            x = F.clip_features(model, ds, modality, batch_size=args.batch_size,
                                num_workers=args.num_workers,
                                desc=f"{task.name} {part} features", failed=failed)
            if not failed:  # a file failing mid-way is decoded again next time, not remembered
                cache.put(key, x=x)
        else:
            x = hit["x"]
        # False: a clip of the video failed to decode (--skip-bad)
        parts[part] = (ds, x, F.decoded(len(x), failed, ds.num_clips))
    (train_ds, train_x, train_ok), (test_ds, test_x, test_ok) = parts["train"], parts["test"]
    num_classes = train_ds.num_classes or int(max(train_ds.labels) + 1)
    train_y = np.asarray(train_ds.labels, np.int64)[train_ok]
    test_y = np.asarray(test_ds.labels, np.int64)[test_ok]
    train_x, test_x = train_x[train_ok], test_x[test_ok]
    train_ids = [v for v, ok in zip(train_ds.video_ids, train_ok) if ok]
    test_ids = [v for v, ok in zip(test_ds.video_ids, test_ok) if ok]
    names = train_ds.class_names
    if protocol == "retrieval":
        from avssl.eval.retrieval import class_retrieval

        metrics = class_retrieval(test_x, test_y, train_x, train_y, kind=args.index)
    else:
        fn = PROTOCOLS.get(protocol)
        opts: dict[str, Any] = {"class_names": names}
        if protocol == "linear":
            opts["seed"] = args.seed
            opts["groups"] = task.groups(train_ids) if task.groups else None
        elif protocol == "knn":
            opts["k"] = args.k
        elif protocol == "fewshot":
            opts["shots"] = tuple(args.shots)
            opts["seeds"] = tuple(range(args.seed, args.seed + 5))  # --seed 0: seeds 0-4
        with _threads_for(train_x.size):
            metrics = fn(train_x, train_y, test_x, test_y, num_classes, **opts)
    scores = metrics.pop("scores", None)
    if args.save_predictions and scores is not None and F.state().is_main_process:
        from avssl.bench.predictions import write_classification

        write_classification(args.save_predictions, test_ids, scores, test_y,
                             names or [str(c) for c in range(num_classes)])
    used = int(train_ok.sum() + test_ok.sum())
    expected = train_ds.num_listed + test_ds.num_listed
    kept = [r for ds, ok in ((train_ds, train_ok), (test_ds, test_ok))
            for r, k in zip(ds.records, ok) if k]
    return {"metrics": metrics, "used": used, "expected": expected,
            "manifest": F.manifest_hash(kept)}


@contextlib.contextmanager
def _threads_for(elements: int):
    """Small L-BFGS fits run many times faster on one thread than on several (thread start-up
    and contention dominate their tiny matmuls); large ones keep torch's default."""
    import torch

    before = torch.get_num_threads()
    if elements < 2_000_000:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- sync / retrieval
def _audio_visual(task, model: BenchModel, args, root, split, modality) -> dict:
    import torch

    from avssl.bench.tasks.av import GRID, HARD_SHIFT

    if model.towers is None:
        raise ConfigError(
            f"task {task.name} compares video and audio embeddings: it needs a model with both "
            f"towers and projection heads (a pretrain_sync checkpoint, or --encoder VIDEO "
            f"--audio-encoder AUDIO for random init); this one is {model.recipe} with "
            f"{model.video_name or 'no video'} / {model.audio_name or 'no audio'}")
    sync = task.kind == "sync"
    ds = _load(task, task.load, root, split, spec=model.spec, grid=GRID if sync else (0.0,),
               hard=HARD_SHIFT if sync else None, skip_bad=args.skip_bad, seed=args.seed)
    towers = model.towers.to(PartialState().device).eval()
    device = PartialState().device
    k = len(ds.offsets)

    def fn(batch):
        v = torch.nn.functional.normalize(towers.embed_video(batch["video"].to(device)), dim=-1)
        mels = batch["mels"].to(device)
        a = towers.embed_audio(mels.flatten(0, 1)).reshape(len(v), k, -1)
        a = torch.nn.functional.normalize(a, dim=-1)
        return torch.cat([v[:, None], a], dim=1)  # (B, 1 + K, D)

    cache = F.FeatureCache(task.name, enabled=args.cache)
    manifest = F.manifest_hash([it[0] for it in ds.items])
    key = cache.key(model=model.identity(), task=task.name, version=task.version, split=split,
                    spec=vars(model.spec), offsets=ds.offsets, seed=args.seed, data=manifest)
    hit = cache.get(key)
    if hit is None:
        failed: list[tuple[int, str]] | None = [] if args.skip_bad else None
        emb = F.map_items(ds, fn, batch_size=args.batch_size, num_workers=args.num_workers,
                          desc=f"{task.name} embeddings", failed=failed)
        if not failed:  # a file failing mid-way is decoded again next time, not remembered
            cache.put(key, emb=emb)
        else:  # --skip-bad leaves out the videos that failed mid-way: drop their rows (the
            # other videos' windows do not depend on them, AVClips)
            keep = F.decoded(len(ds), failed)
            ds = ds.without({ds.items[i][0].path for i, _ in failed})
            emb = emb[keep]
            manifest = F.manifest_hash([it[0] for it in ds.items])
    else:
        emb = hit["emb"]
    video, audio = emb[:, 0], emb[:, 1:]
    zero = list(ds.grid).index(0.0)
    if sync:
        from avssl.eval.sync import sync_metrics_from_arrays

        scores = np.einsum("nd,nkd->nk", video, audio)  # cosine: both are unit vectors
        n = len(video)
        rng = np.random.default_rng([args.seed, 77])
        other = (np.arange(n) + 1 + rng.integers(0, max(1, n - 1), n)) % n
        # one video has no other video's audio: no easy negative (it would be its own audio)
        easy = (np.einsum("nd,nd->n", video, audio[other, zero])[:, None] if n > 1 else None)
        g = len(ds.grid)
        metrics = sync_metrics_from_arrays(scores[:, zero], scores[:, g:], easy, scores[:, :g],
                                           np.asarray(ds.grid, np.float64))
        if args.save_predictions and F.state().is_main_process:
            from avssl.bench.predictions import write_sync

            write_sync(args.save_predictions, [it[0].video_id for it in ds.items], scores,
                       easy[:, 0] if easy is not None else np.full(n, np.nan), ds.grid,
                       [it[2] for it in ds.items])
    else:
        from avssl.eval.retrieval import cross_modal_retrieval

        nested = cross_modal_retrieval(video, audio[:, zero], kind=args.index)
        if args.save_predictions and F.state().is_main_process:
            from avssl.bench.predictions import write_retrieval

            write_retrieval(args.save_predictions, video, audio[:, zero])
        metrics = {f"{d}_{m}": v for d, ms in nested.items() for m, v in ms.items()}
    return {"metrics": metrics, "used": len(ds), "expected": ds.num_listed,
            "manifest": manifest}


# --------------------------------------------------------------------------- localization
def _localization(task, model: BenchModel, args, root, modality) -> dict:
    from avssl.bench.localization.train import predict, train_localizer
    from avssl.bench.tasks.localization import SUBSETS
    from avssl.bench.untrimmed import window_features
    from avssl.eval.localization import ACTIVITYNET_TIOU, THUMOS_TIOU, evaluate_localization

    model.encoder_for("video" if modality == "av" else modality)
    train_subset, test_subset = SUBSETS[task.name]
    tiou = THUMOS_TIOU if task.name == "thumos14" else ACTIVITYNET_TIOU
    stride = args.stride_s or model.spec.clip_s / 2
    cache = F.FeatureCache(task.name, enabled=args.cache)
    data = {}
    for subset in (train_subset, test_subset):
        videos = _load(task, task.load, root, subset, skip_bad=args.skip_bad)
        key = cache.key(model=model.identity(), task=task.name, version=task.version,
                        subset=subset, stride=stride, modality=modality, spec=vars(model.spec),
                        data=F.manifest_hash(videos.records))
        hit = cache.get(key)
        if hit is None:
            feats = window_features(model, videos.records, stride_s=stride, modality=modality,
                                    num_workers=args.num_workers, skip_bad=args.skip_bad,
                                    desc=f"{task.name} {subset} windows")
            if all(f is not None for f in feats):  # a file failing mid-way is decoded again
                cache.put(key, **{f"v{i}": f for i, f in enumerate(feats)})
        else:
            feats = [hit[f"v{i}"] for i in range(len(videos.records))]
        # a video that failed part-way (--skip-bad) is left out, with its ground truth
        kept = [(r, x) for r, x in zip(videos.records, feats) if x is not None]
        data[subset] = (videos, [r for r, _ in kept], [x for _, x in kept])
    (train_v, train_r, train_x), (test_v, test_r, test_x) = data[train_subset], data[test_subset]
    names = list(train_v.class_names)
    head = train_localizer(
        [{"x": x, "segments": r.segments, "duration_s": r.duration_s}
         for x, r in zip(train_x, train_r)], len(names), stride_s=stride,
        window_s=model.spec.clip_s, epochs=args.epochs or 30, lr=args.lr, seed=args.seed,
        device=F.state().device, progress=F.state().is_main_process)
    segs = predict(head, [{"x": x, "duration_s": r.duration_s}
                          for x, r in zip(test_x, test_r)],
                   stride_s=stride, window_s=model.spec.clip_s)
    preds = {"version": "VERSION 1.3", "external_data": {}, "results": {
        r.video_id: [{"label": names[int(p["label"])], "score": float(p["score"]),
                      "segment": [float(p["start"]), float(p["end"])]} for p in ps]
        for r, ps in zip(test_r, segs)}}
    gt = {"segments": [{"video": r.video_id, "start": float(s), "end": float(e),
                        "label": names[int(c)]} for r in test_r for s, e, c in r.segments],
          "ambiguous": [], "classes": names, "videos": [r.video_id for r in test_r]}
    res = evaluate_localization(gt, preds, tiou=tiou)
    if args.save_predictions and F.state().is_main_process:
        import json

        out = Path(args.save_predictions)
        out.mkdir(parents=True, exist_ok=True)
        (out / "predictions.json").write_text(json.dumps(preds) + "\n")
    metrics = {"average_mAP": 100 * res["average_mAP"], "stride_s": stride}
    metrics.update({f"mAP@{t:g}": 100 * m for t, m in zip(res["tiou"], res["mAP"])})
    return {"metrics": metrics, "used": len(train_r) + len(test_r),
            "expected": train_v.num_listed + test_v.num_listed,
            "manifest": F.manifest_hash(train_r + test_r)}


# --------------------------------------------------------------------------- leaderboard row
def _append(task, model: BenchModel, args, split, protocol, modality, views, metric, metrics,
            out):
    from avssl.bench.results import make_row
    from avssl.leaderboard import append_row

    enc_mods = ("video", "audio") if modality == "av" else (modality,)
    params, gmacs = 0.0, 0.0
    for m in enc_mods:
        p, g = cost(model.encoder_for(m), model.spec, m, size=out.get("video_size"))
        params += p
        gmacs = None if (g is None or gmacs is None) else gmacs + g
    if modality == "av" and model.towers is not None:  # the embeddings scored include the heads
        from avssl.encoders.cost import count_cost

        for head in (model.towers.video_proj, model.towers.audio_proj):
            c = count_cost(head, (head[0].in_features,))
            params += c["params"] / 1e6
            gmacs = None if gmacs is None else gmacs + c["gmacs"]
    secondary = {k: v for k, v in metrics.items()
                 if k != metric and k not in ("per_class",) and _jsonable(v)}
    row = make_row(task=task.name, task_version=task.version, split=str(split),
                   protocol=protocol, encoder=model.encoder_name(modality), modality=modality,
                   checkpoint=model.checkpoint, checkpoint_sha256=model.checkpoint_sha256,
                   recipe=model.recipe, config_hash=model.config_hash,
                   data_manifest_hash=out["manifest"], videos_used=int(out["used"]),
                   videos_expected=int(out["expected"]), views=views, params_m=round(params, 4),
                   gmacs_per_clip=None if gmacs is None else round(gmacs, 4), metric=metric,
                   value=float(metrics[metric]), higher_is_better=task.higher_is_better
                   if metric != "median_rank" else False, secondary=secondary, seed=args.seed)
    append_row(row, args.leaderboard)
    return row


def _jsonable(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return bool(np.isfinite(v))
    if isinstance(v, dict):
        return all(_jsonable(x) for x in v.values())
    if isinstance(v, (list, tuple)):  # the row schema takes flat lists of numbers
        return all(not isinstance(x, (dict, list, tuple)) and _jsonable(x) for x in v)
    return False
