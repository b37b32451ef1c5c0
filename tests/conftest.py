"""Synthetic data trees that several test modules use. Module scope: each module that asks for
one writes its own copy once (a module that defines a fixture of the same name uses its own)."""
from __future__ import annotations

import json
import shutil

import pytest

from avssl.data.synthetic import WorldConfig, write_layout


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    """A UCF101-format tree: 14 classes x 4 clips (split 1: 3 train / 1 test per class)."""
    root = tmp_path_factory.mktemp("ucf")
    write_layout("ucf101", root, clips_per_class=4, seed=3,
                 cfg=WorldConfig(size=32, duration_s=2.0), workers=2)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """28 unlabeled 7-s clips with sound (every 7th has none) for the audio-visual tasks (av-sync
    shifts audio by up to 3 s around a 1-s clip)."""
    root = tmp_path_factory.mktemp("folder")
    write_layout("folder", root, clips_per_class=2, seed=4,
                 cfg=WorldConfig(size=32, duration_s=7.0), workers=2)
    return root


@pytest.fixture(scope="module")
def thumos(tmp_path_factory):
    """A THUMOS14-format tree: 2 validation + 2 test untrimmed videos of 8-10 s."""
    root = tmp_path_factory.mktemp("thumos")
    write_layout("thumos14", root, clips_per_class=1, seed=6, cfg=WorldConfig(size=32),
                 workers=2, min_duration_s=8, max_duration_s=10)
    return root


MUSIC_KEEP = ("cello", "flute", "trumpet")  # three instruments keep BSS-eval (slow) to 3 mixtures


@pytest.fixture(scope="module")
def music3(tmp_path_factory):
    """MUSIC layout, 3 solo videos per instrument (split: 1 train / 1 val / 1 test each), the
    JSON cut down to three instruments (a subset list, as users make)."""
    root = write_layout("music", tmp_path_factory.mktemp("music") / "m", clips_per_class=3,
                        seed=0, cfg=WorldConfig(size=32), workers=2)
    index = root / "MUSIC_solo_videos.json"
    videos = json.loads(index.read_text())["videos"]
    index.write_text(json.dumps({"videos": {k: videos[k] for k in MUSIC_KEEP}}))
    for d in (root / "solo").iterdir():
        if d.name not in MUSIC_KEEP:
            shutil.rmtree(d)
    return root
