"""Dataset loaders: one small file per source, all returning a ``ClipDataset`` (or, for the
synthetic world, an in-memory ``SyntheticClips``) that yields the DESIGN.md sample dict.

``build_dataset(name, root, **kw)`` looks a loader up in :data:`DATASETS` (an unknown name raises
:class:`~avssl.errors.UnknownNameError` with suggestions) and passes ``root`` and ``kw`` on.
"""
from __future__ import annotations

import functools
import os
from typing import Any

from avssl.data.datasets.activitynet import activitynet
from avssl.data.datasets.audioset import audioset
from avssl.data.datasets.ava import ava
from avssl.data.datasets.base import ClipDataset, VideoRecord
from avssl.data.datasets.folder import folder_dataset
from avssl.data.datasets.hmdb51 import hmdb51
from avssl.data.datasets.kinetics import kinetics
from avssl.data.datasets.music import music
from avssl.data.datasets.synthetic import SyntheticClips, synthetic
from avssl.data.datasets.thumos14 import thumos14
from avssl.data.datasets.ucf101 import ucf101
from avssl.data.datasets.vggsound import vggsound
from avssl.registry import Registry

DATASETS: Registry = Registry("dataset")
DATASETS.add("folder", folder_dataset)
DATASETS.add("ucf101", ucf101)
DATASETS.add("ucf101-av", functools.partial(ucf101, audio_subset=True))
DATASETS.add("hmdb51", hmdb51)
DATASETS.add("kinetics", kinetics)
DATASETS.add("vggsound", vggsound)
DATASETS.add("audioset", audioset)
DATASETS.add("synthetic", synthetic)
DATASETS.add("thumos14", thumos14)
DATASETS.add("activitynet", activitynet)
DATASETS.add("ava", ava)  # returns an AVASplit of keyframes, not a ClipDataset
DATASETS.add("music", music)  # returns a MusicSplit of solo videos


def build_dataset(name: str, root: str | os.PathLike | None,
                  **kw: Any) -> ClipDataset | SyntheticClips:
    """``DATASETS.get(name)(root, **kw)``, e.g. ``build_dataset("ucf101", "data/", split=2)``."""
    return DATASETS.get(name)(root, **kw)


__all__ = ["DATASETS", "ClipDataset", "SyntheticClips", "VideoRecord", "audioset",
           "build_dataset", "folder_dataset", "hmdb51", "kinetics", "synthetic", "ucf101",
           "vggsound"]
__all__ += ["activitynet", "ava", "music", "thumos14"]
