"""Writers that lay the synthetic world out on disk in real datasets' formats.

Each writer renders ``clips_per_class`` clips per action class, encodes them with
:func:`avssl.data.decoding.write_av` (``.avi``: MPEG-4 + MP3, ``.mp4``: H.264 + AAC) and writes
the dataset's own index files with its real gotchas (see ``shared/DATASETS.md``). Every layout also
gets ``ground_truth.json`` (per clip: path, label, seed, index, fps, has_audio, split, ...) and a
``README.txt`` so tests can check loaders against the truth.

Writers are deterministic: the same seed gives the same files, whatever the number of workers.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from avssl.errors import ConfigError, DataError
from avssl.registry import Registry
from avssl.data.synthetic.motion import ACTIONS
from avssl.data.synthetic.world import WORLD_VERSION, WorldConfig, render_clip

LAYOUTS: Registry[Callable[..., Path]] = Registry("synthetic layout")

NTSC = 30000 / 1001  # 29.97 fps

# One class name per action (same order as ACTIONS), in classInd.txt order: case-insensitive
# alphabetical, which Python's sorted() disagrees with (Hammering/HammerThrow, JumpingJack/JumpRope).
UCF101_CLASSES: list[str] = [
    "ApplyEyeMakeup", "Basketball", "CliffDiving", "Drumming", "Hammering", "HammerThrow",
    "HandstandPushups", "JumpingJack", "JumpRope", "PlayingGuitar", "PommelHorse", "SkyDiving",
    "TennisSwing", "YoYo",
]
# the real UCF101 quirk: folder and lists say HandstandPushups, the files say HandStandPushups
UCF101_FILE_NAMES: dict[str, str] = {"HandstandPushups": "HandStandPushups"}
HMDB51_CLASSES: list[str] = [
    "brush_hair", "cartwheel", "catch", "chew", "clap", "climb", "climb_stairs", "dive",
    "draw_sword", "dribble", "drink", "eat", "fall_floor", "fencing",
]
# file-name stems with the characters real HMDB51 names carry
HMDB51_TITLES: list[str] = [
    "April_09", "(Rad)Schlag_die_Bank!", "Tom_&_Jerry", "Glory_(2008)!", "Me_&_You_(live)",
    "Best_of!", "Veoh_Alpha_Dog",
]
KINETICS_CLASSES: list[str] = [
    "abseiling", "air drumming", "answering questions", "applauding", "archery",
    "arm wrestling", "arranging flowers", "assembling computer", "balloon blowing", "bandaging",
    "passing American football (in game)", "rock, paper, scissors", "tying knot (not on a tie)",
    "zumba",
]
VGGSOUND_CLASSES: list[str] = [
    "people marching", "dog barking", "playing drum kit", "car engine knocking",
    "people eating, crunchy", "bird chirping, tweeting", "playing acoustic guitar",
    "church bell ringing", "helicopter", "lions roaring", "typing on computer keyboard",
    "train horning", "skateboarding", "wind chime",
]
AUDIOSET_CLASSES: list[tuple[str, str]] = [  # (mid, display_name)
    ("/m/09x0r", "Speech"), ("/m/0bt9lr", "Dog"), ("/m/026t6", "Drum"),
    ("/m/0342h", "Guitar"), ("/m/0395lw", "Bell"), ("/m/01j4z9", "Engine knocking"),
    ("/m/020bb7", "Bird vocalization, bird call, bird song"), ("/m/07pbtc8", "Wind chime"),
    ("/m/0l15bq", "Clapping"), ("/m/0316dw", "Typing"), ("/m/0284vy3", "Train horn"),
    ("/m/09ct_", "Helicopter"), ("/m/02rtxlg", "Roaring"), ("/t/dd00088", "Ratchet, pawl"),
]
for _names in (UCF101_CLASSES, HMDB51_CLASSES, KINETICS_CLASSES, VGGSOUND_CLASSES,
               AUDIOSET_CLASSES):
    assert len(_names) == len(ACTIONS)

_YTID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@dataclass
class Job:
    """One clip to render and write. ``path`` is relative to the layout root; ``info`` is copied
    into ground_truth.json."""

    path: str
    seed: int
    index: int
    label: int
    fps: float
    has_audio: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def _write_one(args: tuple[Job, str, WorldConfig]) -> dict[str, Any]:
    """Render and encode one clip (runs in a worker process); returns its ground truth."""
    from avssl.data.decoding import write_av  # codec libraries load only where clips are written

    job, root, cfg = args
    clip_cfg = replace(cfg, fps=job.fps)
    s = render_clip(job.seed, job.index, cfg=clip_cfg, label=job.label)
    path = os.path.join(root, job.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_av(path, s["video"], job.fps, s["audio"] if job.has_audio else None, cfg.sample_rate)
    return {
        "path": job.path, "video_id": s["video_id"], "label": s["label"],
        "action": ACTIONS[s["label"]], "actor_actions": s["actor_actions"].tolist(),
        "seed": job.seed, "index": job.index, "fps": job.fps, "has_audio": job.has_audio,
        "num_frames": int(s["video"].shape[0]), "duration_s": cfg.duration_s,
        "events": [{"time_s": e["time_s"], "actor": e["actor"], "kind": e["kind"]}
                   for e in s["events"]],
        **job.info,
    }


def _run(jobs: list, root: Path, cfg: WorldConfig, workers: int, desc: str, *,
         write=None, unit: str = "clip", chunksize: int = 2) -> list[dict[str, Any]]:
    """Write every job with ``write`` (default :func:`_write_one`), in parallel when workers > 1;
    results come back in job order."""
    from tqdm.auto import tqdm

    write = write or _write_one
    args = [(job, str(root), cfg) for job in jobs]
    bar = dict(total=len(jobs), desc=desc, unit=unit, disable=len(jobs) == 0)
    if workers <= 1:
        return [write(a) for a in tqdm(args, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(write, args, chunksize=chunksize), **bar))


def _write_text(path: Path, lines: list[str], newline: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("".join(line + newline for line in lines))


def _finish(root: Path, layout: str, seed: int, cfg: WorldConfig, clips_per_class: int,
            classes: list[str], clips: list[dict[str, Any]], readme: str,
            class_meaning: str = "the synthetic action ACTIONS[k]", **extra: Any) -> Path:
    truth = {"layout": layout, "seed": seed, "clips_per_class": clips_per_class,
             "world": cfg.to_dict(), "actions": ACTIONS, "classes": classes,
             "clips": clips, **extra}
    (root / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    (root / "README.txt").write_text(
        f"Synthetic {layout} stand-in written by avssl (python -m avssl.data.synthetic "
        f"--layout {layout}), seed {seed}, {clips_per_class} clips per class.\n"
        f"Class k is {class_meaning}; ground_truth.json has every clip's label, "
        f"seed, index, fps and has_audio.\n\n{readme.strip()}\n")
    return root


def _ytids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct 11-character YouTube-style ids; every fifth starts with '-' like real ones."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        chars = rng.integers(0, len(_YTID_CHARS), size=11)
        yid = "".join(_YTID_CHARS[c] for c in chars)
        if len(out) % 5 == 0:
            yid = "-" + yid[1:]
        if yid not in seen:
            seen.add(yid)
            out.append(yid)
    return out


def _check(clips_per_class: int, minimum: int = 1, why: str = "") -> None:
    if clips_per_class < minimum:
        raise ConfigError(f"clips_per_class must be >= {minimum}{why}, got {clips_per_class}")


# ---------------------------------------------------------------- UCF101


def ucf101_group(class_index: int, j: int) -> int:
    """Group (1..25) of a class's clip j: every run of 4 clips covers one test group of each
    split (1-7, 8-14, 15-21) and one always-train group (22-25)."""
    m = j // 4 + class_index
    return [1, 8, 15][j % 4] + m % 7 if j % 4 < 3 else 22 + m % 4


def ucf101_clip_format(class_index: int) -> tuple[float, bool]:
    """(fps, has_audio) of a class: 25 or 29.97 fps, about half of the classes without audio."""
    return (NTSC if class_index % 2 else 25.0), class_index % 4 in (0, 3)


@LAYOUTS.register("ucf101")
def write_ucf101(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                 cfg: WorldConfig = WorldConfig(), workers: int = 1,
                 labelled_test_lists: bool = False) -> Path:
    """``out/UCF-101/<Class>/v_<Class>_gGG_cCC.avi`` and ``out/ucfTrainTestlist/`` (CRLF)."""
    # clip j < 3 of a class is split j + 1's test clip (see ucf101_group): one clip leaves split
    # 1 without training clips; split 3 needs 3 (the loader names an empty list)
    _check(clips_per_class, 2, " (clip 0 of a class is a split-1 test clip, so split 1 needs a "
           "second one to train on; splits 2 and 3 need 2 and 3 clips)")
    jobs: list[Job] = []
    for ci, cls in enumerate(UCF101_CLASSES):
        fps, has_audio = ucf101_clip_format(ci)
        file_cls = UCF101_FILE_NAMES.get(cls, cls)
        counts: dict[int, int] = {}
        for j in range(clips_per_class):
            g = ucf101_group(ci, j)
            counts[g] = counts.get(g, 0) + 1
            name = f"v_{file_cls}_g{g:02d}_c{counts[g]:02d}.avi"
            jobs.append(Job(f"UCF-101/{cls}/{name}", seed, ci + len(ACTIONS) * j, ci, fps,
                            has_audio, {"class_name": cls, "group": g,
                                        "list_path": f"{cls}/{name}"}))
    clips = _run(jobs, out, cfg, workers, "ucf101")
    lists = out / "ucfTrainTestlist"
    _write_text(lists / "classInd.txt", [f"{i + 1} {c}" for i, c in enumerate(UCF101_CLASSES)],
                "\r\n")
    for k in (1, 2, 3):
        test_groups = range(7 * k - 6, 7 * k + 1)
        train = [c for c in clips if c["group"] not in test_groups]
        test = [c for c in clips if c["group"] in test_groups]
        _write_text(lists / f"trainlist0{k}.txt",
                    [f"{c['list_path']} {c['label'] + 1}" for c in train], "\r\n")
        _write_text(lists / f"testlist0{k}.txt",
                    [f"{c['list_path']} {c['label'] + 1}" if labelled_test_lists
                     else c["list_path"] for c in test], "\r\n")
    return _finish(out, "ucf101", seed, cfg, clips_per_class, UCF101_CLASSES, clips, """
UCF-101/<Class>/v_<FileClass>_gGG_cCC.avi (MPEG-4 + MP3 when the class has audio); FileClass is
HandStandPushups for the class HandstandPushups. ucfTrainTestlist/classInd.txt (1-based, case-
insensitive order), trainlist0k.txt "<Class>/<file> <label>", testlist0k.txt "<Class>/<file>"
(labels appended with --labelled-test-lists); CRLF line ends. Split k tests groups 7k-6..7k;
groups 22-25 always train. Odd classes are 29.97 fps, the others 25 fps; classes with
index % 4 in (1, 2) have no audio stream.""", labelled_test_lists=labelled_test_lists)


# ---------------------------------------------------------------- HMDB51


@LAYOUTS.register("hmdb51")
def write_hmdb51(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                 cfg: WorldConfig = WorldConfig(), workers: int = 1) -> Path:
    """``out/hmdb51/<class>/<video>.avi`` and ``out/testTrainMulti_7030_splits/``."""
    _check(clips_per_class, 2)
    jobs = []
    for ci, cls in enumerate(HMDB51_CLASSES):
        for j in range(clips_per_class):
            title = HMDB51_TITLES[(ci + j) % len(HMDB51_TITLES)]
            name = f"{title}_{cls}_f_cm_np1_{'le' if j % 2 else 'ri'}_med_{j}.avi"
            jobs.append(Job(f"hmdb51/{cls}/{name}", seed, ci + len(ACTIONS) * j, ci, 30.0,
                            ci % 3 != 2, {"class_name": cls, "file": name}))
    clips = _run(jobs, out, cfg, workers, "hmdb51")
    rng = np.random.default_rng([seed, 51])
    n = clips_per_class
    n_test = max(1, int(round(0.3 * n)))
    n_unused = 1 if n >= 6 else 0  # real splits leave a few clips out (id 0)
    for ci, cls in enumerate(HMDB51_CLASSES):
        mine = [c for c in clips if c["class_name"] == cls]
        for k in (1, 2, 3):
            ids = np.ones(n, np.int64)
            order = rng.permutation(n)
            ids[order[:n_test]] = 2
            ids[order[n_test:n_test + n_unused]] = 0
            for c, i in zip(mine, ids.tolist()):
                c[f"split{k}"] = i
            _write_text(out / "testTrainMulti_7030_splits" / f"{cls}_test_split{k}.txt",
                        [f"{c['file']} {i} " for c, i in zip(mine, ids.tolist())])
    return _finish(out, "hmdb51", seed, cfg, clips_per_class, HMDB51_CLASSES, clips, """
hmdb51/<class>/<video>.avi (MPEG-4, 30 fps; MP3 audio except classes with index % 3 == 2); file
names contain ! ( ) &. testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt: lines
"<video>.avi <id> " with 1 = train, 2 = test, 0 = unused (trailing space).""")


# ---------------------------------------------------------------- Kinetics


@LAYOUTS.register("kinetics")
def write_kinetics(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                   cfg: WorldConfig = WorldConfig(), workers: int = 1) -> Path:
    """``out/{train,validate,test}.csv`` and ``out/<split>/<label>/<ytid>_<s:06d>_<e:06d>.mp4``
    (test clips flat in ``out/test/``); two listed train rows have no file."""
    _check(clips_per_class, 3, " (one train, one validate and one test clip per class)")
    rng = np.random.default_rng([seed, 400])
    n = clips_per_class
    splits = ["train"] * (n - 2) + ["val", "test"]
    ids = _ytids(rng, n * len(ACTIONS) + 2)
    jobs, rows = [], {"train": [], "val": [], "test": []}
    for ci, label in enumerate(KINETICS_CLASSES):
        for j, split in enumerate(splits):
            yid = ids[ci * n + j]
            start = int(rng.integers(0, 290))
            name = f"{yid}_{start:06d}_{start + 10:06d}.mp4"
            path = f"test/{name}" if split == "test" else f"{split}/{label}/{name}"
            rows[split].append(["" if split == "test" else label, yid, start, start + 10, split])
            jobs.append(Job(path, seed, ci + len(ACTIONS) * j, ci, cfg.fps, True,
                            {"class_name": label, "youtube_id": yid, "split": split,
                             "time_start": start}))
    missing = []
    for k, yid in enumerate(ids[-2:]):  # vanished from YouTube: listed, never downloaded
        start = int(rng.integers(0, 290))
        rows["train"].append([KINETICS_CLASSES[k], yid, start, start + 10, "train"])
        missing.append(f"train/{KINETICS_CLASSES[k]}/{yid}_{start:06d}_{start + 10:06d}.mp4")
    clips = _run(jobs, out, cfg, workers, "kinetics")
    for split, fname in (("train", "train.csv"), ("val", "validate.csv"), ("test", "test.csv")):
        # the real files: multi-word labels double-quoted; the test CSV has no label column
        header = ["label", "youtube_id", "time_start", "time_end", "split"]
        if split == "test":
            header, rows[split] = header[1:], [r[1:] for r in rows[split]]
        lines = [",".join(header)] + [",".join(
            f'"{v}"' if k == 0 and split != "test" and (" " in v or "," in v) else str(v)
            for k, v in enumerate(r)) for r in rows[split]]
        _write_text(out / fname, lines)
    return _finish(out, "kinetics", seed, cfg, clips_per_class, KINETICS_CLASSES, clips, """
train.csv, validate.csv: label,youtube_id,time_start,time_end,split (multi-word labels
double-quoted); test.csv: youtube_id,time_start,time_end,split (no labels, as released).
Files <split>/<label>/<ytid>_<start:06d>_<end:06d>.mp4 (H.264 + AAC), test files flat in test/. Two train rows are listed without a file (see
"missing" in ground_truth.json).""", missing=missing)


# ---------------------------------------------------------------- VGGSound


@LAYOUTS.register("vggsound")
def write_vggsound(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                   cfg: WorldConfig = WorldConfig(), workers: int = 1) -> Path:
    """Headerless ``out/vggsound.csv`` and ``out/video/<ytid>_<start:06d>.mp4``."""
    _check(clips_per_class)
    rng = np.random.default_rng([seed, 309])
    n = clips_per_class
    ids = _ytids(rng, n * len(ACTIONS))
    jobs, rows = [], []
    for ci, label in enumerate(VGGSOUND_CLASSES):
        for j in range(n):
            yid, start = ids[ci * n + j], int(rng.integers(0, 290))
            split = "test" if (j == n - 1 and n >= 2) else "train"
            rows.append([yid, start, label, split])
            jobs.append(Job(f"video/{yid}_{start:06d}.mp4", seed, ci + len(ACTIONS) * j, ci,
                            cfg.fps, True, {"class_name": label, "youtube_id": yid,
                                            "split": split, "start_seconds": start}))
    clips = _run(jobs, out, cfg, workers, "vggsound")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    (out / "vggsound.csv").write_text(buf.getvalue())
    return _finish(out, "vggsound", seed, cfg, clips_per_class, VGGSOUND_CLASSES, clips, """
vggsound.csv (no header): ytid,start_seconds,label,split with labels holding commas quoted.
Files video/<ytid>_<start_seconds:06d>.mp4 (H.264 + AAC). The last clip of each class is test.""")


# ---------------------------------------------------------------- AudioSet


@LAYOUTS.register("audioset")
def write_audioset(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                   cfg: WorldConfig = WorldConfig(), workers: int = 1) -> Path:
    """``out/{balanced_train,eval}_segments.csv``, ``out/class_labels_indices.csv`` and
    ``out/video/<ytid>_<start:06d>.mp4``; a clip's labels are all its sounding actors' actions."""
    _check(clips_per_class)
    rng = np.random.default_rng([seed, 527])
    n = clips_per_class
    ids = _ytids(rng, n * len(ACTIONS))
    jobs = []
    for ci, (_, name) in enumerate(AUDIOSET_CLASSES):
        for j in range(n):
            yid, start = ids[ci * n + j], 10 * int(rng.integers(0, 30))
            split = "eval" if (j == n - 1 and n >= 2) else "balanced_train"
            jobs.append(Job(f"video/{yid}_{start:06d}.mp4", seed, ci + len(ACTIONS) * j, ci,
                            cfg.fps, True, {"class_name": name, "youtube_id": yid,
                                            "split": split, "start_seconds": start}))
    clips = _run(jobs, out, cfg, workers, "audioset")
    for c in clips:
        c["labels"] = sorted(set(c["actor_actions"]))
    for split in ("balanced_train", "eval"):
        mine = [c for c in clips if c["split"] == split]
        lines = ["# Segments csv created by avssl synthetic world",
                 f"# num_ytids={len(mine)}, num_segs={len(mine)}, num_unique_labels="
                 f"{len({l for c in mine for l in c['labels']})}, num_positive_labels="
                 f"{sum(len(c['labels']) for c in mine)}",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        for c in mine:
            mids = ",".join(AUDIOSET_CLASSES[l][0] for l in c["labels"])
            s = c["start_seconds"]
            lines.append(f'{c["youtube_id"]}, {s:.3f}, {s + 10:.3f}, "{mids}"')
        _write_text(out / f"{split}_segments.csv", lines)
    _write_text(out / "class_labels_indices.csv", ["index,mid,display_name"] + [
        f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(AUDIOSET_CLASSES)])
    return _finish(out, "audioset", seed, cfg, clips_per_class,
                   [name for _, name in AUDIOSET_CLASSES], clips, """
balanced_train_segments.csv, eval_segments.csv: three '#' lines, then
'YTID, start_seconds, end_seconds, "mid1,mid2"' (read with skipinitialspace). Labels of a clip: the
actions of all of its sounding actors (multi-label). class_labels_indices.csv: index,mid,
display_name. Files video/<ytid>_<int(start_seconds):06d>.mp4 (H.264 + AAC).""")


# ---------------------------------------------------------------- plain folder


@LAYOUTS.register("folder")
def write_folder(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                 cfg: WorldConfig = WorldConfig(), workers: int = 1) -> Path:
    """Unlabeled ``out/<video_id>.mp4``, every fourth in ``out/more/``; every seventh has no
    audio stream."""
    _check(clips_per_class)
    jobs = []
    for i in range(clips_per_class * len(ACTIONS)):
        vid = f"synth_{seed}_{i:06d}"
        path = f"more/{vid}.mp4" if i % 4 == 3 else f"{vid}.mp4"
        jobs.append(Job(path, seed, i, i % len(ACTIONS), cfg.fps, i % 7 != 6))
    clips = _run(jobs, out, cfg, workers, "folder")
    return _finish(out, "folder", seed, cfg, clips_per_class, ACTIONS, clips, """
<video_id>.mp4 (H.264 + AAC) with every fourth clip in more/; unlabeled (the labels in
ground_truth.json are for checking only); every seventh clip has no audio stream.""")


# Every tree write_layout writes holds this file: the settings it was written with, whether the
# write finished, and every file it wrote. It is how a later write tells an avssl tree (which
# --overwrite may replace) from a user's folder (which is never touched).
MARKER = ".avssl-synthetic.json"


def write_layout(layout: str, out: str | os.PathLike, *, clips_per_class: int = 4, seed: int = 0,
                 cfg: WorldConfig = WorldConfig(), workers: int = 1, overwrite: bool = False,
                 **options: Any) -> Path:
    """Write the synthetic world in ``layout``'s format under ``out``; returns ``out`` as a Path.

    ``options`` go to the layout's writer (ucf101: ``labelled_test_lists``). Unknown layout ->
    :class:`~avssl.errors.UnknownNameError`.

    ``out`` must be new or empty. A tree this function wrote earlier with the same layout and
    options is left as it is (the writers are deterministic: rewriting it would give the same
    files). Anything else in ``out`` is refused with a :class:`~avssl.errors.ConfigError`, except
    that ``overwrite=True`` replaces an avssl tree written with other options or left unfinished,
    provided every file in it is one avssl wrote. A folder avssl did not write is never touched.
    """
    return _write_layout(layout, out, clips_per_class=clips_per_class, seed=seed, cfg=cfg,
                         workers=workers, overwrite=overwrite, **options)[0]


def _write_layout(layout: str, out: str | os.PathLike, *, clips_per_class: int = 4,
                  seed: int = 0, cfg: WorldConfig = WorldConfig(), workers: int = 1,
                  overwrite: bool = False, **options: Any) -> tuple[Path, bool]:
    """:func:`write_layout`, also saying whether it wrote (False: the same tree was there)."""
    writer = LAYOUTS.get(layout)
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    accepted = set(inspect.signature(writer).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"layout {layout!r} does not take option(s) {', '.join(unknown)}")
    root = Path(out)
    settings = _settings(layout, writer, clips_per_class=clips_per_class, seed=seed, cfg=cfg,
                         **options)
    if not _prepare_out(root, settings, overwrite):
        return root, False
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only or missing mount
        raise DataError(f"cannot create --out {root} ({e.strerror or e}); pass a folder that "
                        f"can be created") from None
    _write_marker(root, {"settings": settings, "complete": False})
    try:
        writer(root, clips_per_class=clips_per_class, seed=seed, cfg=cfg,
               workers=max(1, int(workers)), **options)
    except BaseException:
        if os.listdir(root) == [MARKER]:  # refused before writing anything: leave no trace
            (root / MARKER).unlink()
            if created:
                root.rmdir()
        raise
    _write_marker(root, {"settings": settings, "complete": True, "files": _files(root)})
    return root, True


def _settings(layout: str, writer: Callable[..., Path], **kw: Any) -> dict[str, Any]:
    """Every setting that decides a tree's files (defaults filled in; not ``workers``)."""
    bound = inspect.signature(writer).bind_partial(**kw)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k not in ("out", "workers")}
    args["cfg"] = args["cfg"].to_dict()
    return json.loads(json.dumps({"layout": layout, "world_version": WORLD_VERSION, **args},
                                 sort_keys=True, default=str))


def _files(root: Path) -> list[str]:
    """Every file under ``root`` but the marker, relative posix, sorted (links are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [Path(dirpath, n).relative_to(root).as_posix() for n in filenames]
        found += [Path(dirpath, d).relative_to(root).as_posix() for d in dirnames
                  if os.path.islink(os.path.join(dirpath, d))]
    return sorted(f for f in found if f not in (MARKER, f"{MARKER}.tmp"))


def _write_marker(root: Path, state: dict[str, Any]) -> None:
    state = {"written_by": "avssl (python -m avssl.data.synthetic); --overwrite replaces only "
                           "a tree whose files are all listed here", **state}
    tmp = root / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, root / MARKER)


def _read_marker(root: Path) -> dict[str, Any] | None:
    """The marker's content; None without one; ``{}`` (an unfinished write) when unreadable."""
    try:
        state = json.loads((root / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _differences(there: Any, here: dict[str, Any]) -> str:
    """``"seed 0 there, 1 now; cfg.size ..."``: the settings that differ, for an error message."""
    if not isinstance(there, dict):
        return "unknown settings"
    out = []
    for key in sorted(set(there) | set(here)):
        a, b = there.get(key), here.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k} {a.get(k)} there, {b.get(k)} now"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key} {a} there, {b} now")
    return "; ".join(out)


def _prepare_out(root: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Check ``root`` before writing (see :func:`write_layout`): True to write, False when it
    already holds exactly this tree. Clears an avssl tree when ``overwrite`` allows it."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output folder {root} is a file; give a new or empty folder")
    if not root.exists():
        return True
    entries = sorted(os.listdir(root))
    others = [e for e in entries if e not in (MARKER, f"{MARKER}.tmp")]
    if not others:  # empty, or an earlier write refused its options before writing anything
        return True
    marker = _read_marker(root)
    if marker is None:
        raise ConfigError(f"output folder {root} is not empty ({others[0]}"
                          f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}) and was "
                          f"not written by avssl; give a new or empty folder (--overwrite only "
                          f"replaces a synthetic tree avssl wrote)")
    present = _files(root)
    listed = marker.get("files") if marker.get("complete") is True else None
    if isinstance(listed, list):
        missing = sorted(set(listed) - set(present))
        if marker.get("settings") == settings and not missing and not overwrite:
            return False
        foreign = sorted(set(present) - set(listed))
        if foreign:
            raise ConfigError(f"output folder {root} holds a synthetic tree avssl wrote plus "
                              f"{len(foreign)} other file(s) (e.g. {foreign[0]}); move them out "
                              f"or give a new or empty folder")
        if marker.get("settings") != settings:
            what = (f"a synthetic tree written with other options "
                    f"({_differences(marker.get('settings'), settings)})")
        elif missing:
            what = (f"this synthetic tree with {len(missing)} of its files missing (e.g. "
                    f"{missing[0]})")
        else:
            what = "this synthetic tree"
    else:
        what = "an unfinished synthetic tree (an earlier write was interrupted)"
    if not overwrite:
        raise ConfigError(f"output folder {root} already holds {what}; pass --overwrite to "
                          f"replace it, or give a new or empty folder")
    # Every file here is one avssl wrote (listed, or written into the empty folder an unfinished
    # write started from): remove them all, then write into the empty folder.
    for entry in entries:
        path = root / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return True


# ---------------------------------------------------------------- untrimmed videos (localization)

# THUMOS14 class of each synthetic action (same order as ACTIONS): 14 of the 20 THUMOS14 classes,
# chosen by motion (orbits -> throws that spin, slides -> run-ups, grow/shrink -> lift/dive, ...).
# BaseballPitch, CricketBowling, CricketShot, FrisbeeCatch, TennisSwing and VolleyballSpiking have
# no synthetic action: their annotation files are written empty, as the real format has all 20.
THUMOS14_ACTION_CLASSES: list[str] = [
    "HammerThrow", "ThrowDiscus", "LongJump", "JavelinThrow", "HighJump", "CliffDiving",
    "CleanAndJerk", "Diving", "BasketballDunk", "SoccerPenalty", "Billiards", "GolfSwing",
    "PoleVault", "Shotput",
]
THUMOS14_ALL_CLASSES: list[str] = [  # the 20 classes in UCF101-id order (DATASETS.md)
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow",
    "HighJump", "JavelinThrow", "LongJump", "PoleVault", "Shotput", "SoccerPenalty",
    "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
]
# ActivityNet labels are readable names: the synthetic action names title-cased.
ACTIVITYNET_CLASSES: list[str] = [a.replace("_", " ").title() for a in ACTIONS]
assert len(THUMOS14_ACTION_CLASSES) == len(ACTIONS)
assert set(THUMOS14_ACTION_CLASSES) <= set(THUMOS14_ALL_CLASSES)


@dataclass
class LongJob:
    """One untrimmed video to render with :func:`render_long` and write; ``info`` is copied into
    ground_truth.json (and overrides the rendered keys)."""

    path: str
    seed: int
    index: int
    duration_s: float
    info: dict[str, Any] = field(default_factory=dict)


def _write_long(args: tuple[LongJob, str, WorldConfig]) -> dict[str, Any]:
    """Render and encode one untrimmed video (runs in a worker process); returns its truth with
    ``segments`` [{"start", "end", "action_index", "action"}] in seconds on frame times."""
    from avssl.data.decoding import write_av
    from avssl.data.synthetic.world import render_long

    job, root, cfg = args
    s = render_long(job.seed, job.index, duration_s=job.duration_s, cfg=cfg)
    path = os.path.join(root, job.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_av(path, s["video"], s["fps"], s["audio"], s["sample_rate"])
    n = int(s["video"].shape[0])
    return {
        "path": job.path, "video_id": s["video_id"], "seed": job.seed, "index": job.index,
        "fps": s["fps"], "has_audio": True, "num_frames": n, "duration_s": n / s["fps"],
        "segments": [{"start": float(a), "end": float(b), "action_index": int(lab),
                      "action": ACTIONS[lab]} for a, b, lab in s["segments"]],
        **job.info,
    }


def _run_long(jobs: list[LongJob], root: Path, cfg: WorldConfig, workers: int,
              desc: str) -> list[dict[str, Any]]:
    """:func:`_run` for untrimmed videos (one per task: each is long)."""
    return _run(jobs, root, cfg, workers, desc, write=_write_long, unit="video", chunksize=1)


def _long_durations(seed: int, first: int, n: int, lo: float, hi: float) -> list[float]:
    """Durations (s, 0.1 s steps) of videos ``first .. first + n - 1``: a function of (seed,
    index), so the THUMOS14 and ActivityNet writers render the same videos for one seed."""
    if not 4.0 <= lo <= hi < math.inf:
        raise ConfigError(f"need 4 <= min_duration_s <= max_duration_s < inf, got {lo}, {hi}")
    return [round(float(np.random.default_rng([seed, i, 8]).uniform(lo, hi)), 1)
            for i in range(first, first + n)]


def _ambiguous(clip: dict[str, Any], position: int) -> list[dict[str, float]]:
    """For every third video, the background just after its first one or two segments (up to
    1 s, never into the next segment): what annotators could not decide about."""
    if position % 3:
        return []
    out = []
    segs = clip["segments"]
    for k, seg in enumerate(segs[:1 + (position // 3) % 2]):
        nxt = segs[k + 1]["start"] if k + 1 < len(segs) else clip["duration_s"]
        gap = nxt - seg["end"]
        if gap >= 0.4:
            out.append({"start": seg["end"], "end": seg["end"] + min(1.0, 0.5 * gap)})
    return out


_LONG_README = """
Untrimmed videos (H.264 + AAC, {fps:g} fps) of {lo:g}-{hi:g} s: one sounding performer does a
sequence of action segments (2-8 s) with idle, quiet background (1-5 s) between them; silent
distractors move throughout. ``clips_per_class`` is the number of videos per annotated subset
divided by 2 (each video holds about one segment per 7 s, so every class gets roughly
clips_per_class * duration / 50 s segments per subset). Segment times in ground_truth.json are
exact (frame times); the seed and index of each video are there too."""


@LAYOUTS.register("thumos14")
def write_thumos14(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                   cfg: WorldConfig = WorldConfig(), workers: int = 1,
                   min_duration_s: float = 30.0, max_duration_s: float = 120.0) -> Path:
    """``out/videos/video_{validation,test}_NNNNNNN.mp4`` and
    ``out/annotations/{validation,test}/<Class>_{val,test}.txt`` + ``Ambiguous_*.txt``:
    ``2 * clips_per_class`` videos per subset, lines ``video_name  start end`` (1 decimal)."""
    _check(clips_per_class)
    n = 2 * clips_per_class
    jobs = []
    for sub, first in (("validation", 0), ("test", n)):
        for j, d in enumerate(_long_durations(seed, first, n, min_duration_s, max_duration_s)):
            name = f"video_{sub}_{j + 1:07d}"
            jobs.append(LongJob(f"videos/{name}.mp4", seed, first + j, d,
                                {"video_id": name, "subset": sub, "position": j}))
    clips = _run_long(jobs, out, cfg, workers, "thumos14")
    for c in clips:
        for seg in c["segments"]:
            seg["label"] = THUMOS14_ACTION_CLASSES[seg["action_index"]]
        c["ambiguous"] = _ambiguous(c, c["position"])
    for sub, suffix in (("validation", "val"), ("test", "test")):
        mine = [c for c in clips if c["subset"] == sub]
        folder = out / "annotations" / sub
        for cls in THUMOS14_ALL_CLASSES:
            _write_text(folder / f"{cls}_{suffix}.txt", [
                f"{c['video_id']}  {s['start']:.1f} {s['end']:.1f}"
                for c in mine for s in c["segments"] if s["label"] == cls])
        _write_text(folder / f"Ambiguous_{suffix}.txt", [
            f"{c['video_id']}  {a['start']:.1f} {a['end']:.1f}" for c in mine
            for a in c["ambiguous"]])
    return _finish(out, "thumos14", seed, cfg, clips_per_class, THUMOS14_ACTION_CLASSES, clips,
                   _LONG_README.format(fps=cfg.fps, lo=min_duration_s, hi=max_duration_s) + """

videos/video_validation_NNNNNNN.mp4 (train on these) and videos/video_test_NNNNNNN.mp4 (test);
annotations/validation/<Class>_val.txt and annotations/test/<Class>_test.txt for all 20 THUMOS14
classes: lines "video_name  start end" (two spaces, 1 decimal). Synthetic action k has the class
THUMOS14_ACTION_CLASSES[k] ("classes" in ground_truth.json; "thumos14_classes" lists all 20);
six classes have empty files. Ambiguous_{val,test}.txt: the background just after 1-2 segments of every third video.""",
                   thumos14_classes=THUMOS14_ALL_CLASSES,
                   min_duration_s=min_duration_s, max_duration_s=max_duration_s)


@LAYOUTS.register("activitynet")
def write_activitynet(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                      cfg: WorldConfig = WorldConfig(), workers: int = 1,
                      min_duration_s: float = 30.0, max_duration_s: float = 120.0) -> Path:
    """``out/activity_net.v1-3.min.json`` and ``out/videos/v_<id>.mp4``: ``2 * clips_per_class``
    training and validation videos (the same renders as THUMOS14's validation and test for one
    seed) and ``max(1, clips_per_class // 2)`` testing videos without annotations."""
    _check(clips_per_class)
    n, n_test = 2 * clips_per_class, max(1, clips_per_class // 2)
    ids = iter(_ytids(np.random.default_rng([seed, 13]), 2 * n + n_test))
    jobs = []
    for sub, first, count in (("training", 0, n), ("validation", n, n), ("testing", 2 * n, n_test)):
        for d, index in zip(_long_durations(seed, first, count, min_duration_s, max_duration_s),
                            range(first, first + count)):
            yid = next(ids)
            jobs.append(LongJob(f"videos/v_{yid}.mp4", seed, index, d,
                                {"video_id": yid, "youtube_id": yid, "subset": sub}))
    clips = _run_long(jobs, out, cfg, workers, "activitynet")
    database = {}
    for c in clips:
        for seg in c["segments"]:
            seg["label"] = ACTIVITYNET_CLASSES[seg["action_index"]]
        anns = [] if c["subset"] == "testing" else [
            {"segment": [s["start"], s["end"]], "label": s["label"]} for s in c["segments"]]
        database[c["video_id"]] = {
            "subset": c["subset"], "duration": c["duration_s"], "resolution": f"{cfg.size}x"
            f"{cfg.size}", "url": f"https://www.youtube.com/watch?v={c['video_id']}",
            "annotations": anns}
    taxonomy = [{"nodeId": 0, "nodeName": "Root", "parentId": None, "parentName": None},
                {"nodeId": 1, "nodeName": "Synthetic motion", "parentId": 0,
                 "parentName": "Root"}] + [
        {"nodeId": 2 + k, "nodeName": name, "parentId": 1, "parentName": "Synthetic motion"}
        for k, name in enumerate(ACTIVITYNET_CLASSES)]
    (out / "activity_net.v1-3.min.json").write_text(json.dumps(
        {"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database},
        separators=(",", ":")))
    return _finish(out, "activitynet", seed, cfg, clips_per_class, ACTIVITYNET_CLASSES, clips,
                   _LONG_README.format(fps=cfg.fps, lo=min_duration_s, hi=max_duration_s) + """

activity_net.v1-3.min.json: {"version": "VERSION 1.3", "taxonomy", "database": {ytid:
{"subset": training|validation|testing, "duration", "resolution", "url", "annotations":
[{"segment": [s, e], "label"}]}}}; labels are the synthetic action names title-cased; testing
entries have no annotations. Files videos/v_<ytid>.mp4 (11-character YouTube-style ids).""",
                   min_duration_s=min_duration_s, max_duration_s=max_duration_s)
