"""The embedded synthetic audio-visual world and its dataset-format writers.

``render_clip(seed, index)`` and ``render_long(seed, index, duration_s=...)`` are pure functions
of their arguments; ``write_layout(layout, out)`` (or ``python -m avssl.data.synthetic --layout
ucf101 --out DIR``) lays clips out on disk in a real dataset's format.
"""
from __future__ import annotations

from avssl.data.synthetic.motion import ACTIONS, EVENT_KIND, PERIODIC
from avssl.data.synthetic.sound import COLOURS, PITCHES, SHAPES, TIMBRES
from avssl.data.synthetic.world import WorldConfig, render_clip, render_long
from avssl.data.synthetic.layouts import (AUDIOSET_CLASSES, HMDB51_CLASSES, KINETICS_CLASSES,
                                          LAYOUTS, UCF101_CLASSES, UCF101_FILE_NAMES,
                                          VGGSOUND_CLASSES, write_layout)
from avssl.data.synthetic import ava_layout, music_layout  # noqa: F401  (register layouts)

__all__ = ["ACTIONS", "AUDIOSET_CLASSES", "COLOURS", "EVENT_KIND", "HMDB51_CLASSES",
           "KINETICS_CLASSES", "LAYOUTS", "PERIODIC", "PITCHES", "SHAPES", "TIMBRES",
           "UCF101_CLASSES", "UCF101_FILE_NAMES", "VGGSOUND_CLASSES", "WorldConfig",
           "render_clip", "render_long", "write_layout"]
