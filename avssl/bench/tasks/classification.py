"""Action / sound classification tasks: synthetic, ucf101, ucf101-av, hmdb51, kinetics, vggsound.

Each ``load(root, split, train, **kw)`` maps the task's split name onto its dataset loader;
``kw`` (clip length, fps, views, transforms) comes from the harness.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from avssl.bench.tasks import TASKS, Task
from avssl.data.datasets import hmdb51, kinetics, ucf101, vggsound

FROZEN = ("linear", "knn", "fewshot", "retrieval", "finetune")

# The synthetic task's world: the pretraining recipes' world settings (64 px, 4 s clips) with one
# sounding actor per clip (its action is the label; silent distractors still move), a seed no
# recipe pretrains on, 48 clips per class (UCF101 layout: 36 train / 12 test per class, split 1).
# Version 2: version 1 had 1-3 sounding actors (label: the largest one's action) and 24 clips per
# class, and even a supervised finetune stayed at chance on its 84 test clips.
SYNTHETIC_WORLD = {"size": 64, "duration_s": 4.0, "max_actors": 1}
SYNTHETIC_SEED = 7
SYNTHETIC_PER_CLASS = 48


def _synthetic_root() -> str:
    from avssl.data.synthetic import WorldConfig
    from avssl.data.synthetic.cache import synthetic_tree

    return str(synthetic_tree("ucf101", SYNTHETIC_PER_CLASS, seed=SYNTHETIC_SEED,
                              cfg=WorldConfig(**SYNTHETIC_WORLD)))


def _ucf(root, split, train, *, audio_subset=False, **kw):
    return ucf101(root, int(split), train, audio_subset=audio_subset, progress=False, **kw)


def _hmdb(root, split, train, **kw):
    return hmdb51(root, int(split), train, **kw)


def _kinetics(root, split, train, **kw):
    return kinetics(root, "train" if train else split, **kw)


def _vggsound(root, split, train, **kw):
    return vggsound(root, "train" if train else split, **kw)


TASKS.add("synthetic", Task(
    name="synthetic",
    summary="the synthetic world's 14 actions (UCF101 format, split 1); runs with no argument",
    data=("a UCF101-format tree of the synthetic world, written on first use into "
          "$AVSSL_CACHE/synthetic (48 clips per class, one sounding actor each, seed 7); "
          "--data-root reads any tree written by `python -m avssl.data.synthetic --layout ucf101`"),
    kind="classification", version="2", protocols=FROZEN, metric="top1", load=_ucf,
    splits=("1", "2", "3"), views="2x1", layout="ucf101", default_root=_synthetic_root))


def ucf101_groups(video_ids) -> np.ndarray | None:
    """UCF101's group of each clip (``v_<Class>_gGG_cCC``; a group's clips are cut from one
    source video), or None when an id carries no group. The synthetic task has none of this
    leak (its clips are independent renders) and keeps the per-clip held-out split."""
    found = [re.search(r"_g(\d+)_c\d+$", str(v)) for v in video_ids]
    if not found or not all(found):
        return None
    return np.array([int(m.group(1)) for m in found])


TASKS.add("ucf101", Task(
    name="ucf101",
    summary="UCF101 action recognition, 101 classes, 3 splits (Soomro et al. 2012)",
    data=("UCF-101/<Class>/*.avi and ucfTrainTestlist/ from crcv.ucf.edu/data/UCF101.php "
          "(UCF101.rar + UCF101TrainTestSplits-RecognitionTask.zip)"),
    kind="classification", version="1", protocols=FROZEN, metric="top1", load=_ucf,
    splits=("1", "2", "3"), layout="ucf101", groups=ucf101_groups))

TASKS.add("ucf101-av", Task(
    name="ucf101-av",
    summary="UCF101's 51 classes whose videos have sound, audio-visual features",
    data="the UCF101 tree (see ucf101); only videos with an audio stream are used",
    kind="classification", version="1", protocols=FROZEN, metric="top1",
    load=functools.partial(_ucf, audio_subset=True), splits=("1", "2", "3"), modality="av",
    layout="ucf101", groups=ucf101_groups))


def hmdb51_groups(video_ids) -> np.ndarray | None:
    """HMDB51's source video of each clip: the name before its six tags
    (``<source>_<class>_<body>_<camera>_<people>_<view>_<quality>_<index>``; one movie gives
    several clips), or None when a name does not end in those tags."""
    heads = [str(v).rsplit("_", 6) for v in video_ids]
    if not heads or any(len(h) < 7 or not h[-1].isdigit() for h in heads):
        return None
    return np.array([h[0] for h in heads])


TASKS.add("hmdb51", Task(
    name="hmdb51",
    summary="HMDB51 action recognition, 51 classes, 3 splits (Kuehne et al. 2011)",
    data=("hmdb51/<class>/*.avi and testTrainMulti_7030_splits/ from serre-lab.clps.brown.edu "
          "(hmdb51_org.rar + test_train_splits.rar)"),
    kind="classification", version="1", protocols=FROZEN, metric="top1", load=_hmdb,
    splits=("1", "2", "3"), layout="hmdb51", groups=hmdb51_groups))

TASKS.add("kinetics", Task(
    name="kinetics",
    summary="Kinetics-style CSV layout (400/600/700 or Mini-Kinetics): train on train, test on val",
    data=("train.csv / validate.csv with clips <ytid>_<start:06d>_<end:06d>.mp4, as written by "
          "the Kinetics downloaders (github.com/cvdfoundation/kinetics-dataset)"),
    kind="classification", version="1", protocols=FROZEN, metric="top1", load=_kinetics,
    splits=("val",), layout="kinetics"))

TASKS.add("vggsound", Task(
    name="vggsound",
    summary="VGGSound sound classification, 309 classes (Chen et al. 2020), audio features",
    data=("vggsound.csv (ytid,start_seconds,label,split) and <ytid>_<start:06d>.mp4 clips from "
          "robots.ox.ac.uk/~vgg/data/vggsound"),
    kind="classification", version="1", protocols=FROZEN, metric="top1", load=_vggsound,
    splits=("test",), modality="audio", layout="vggsound"))
