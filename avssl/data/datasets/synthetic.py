"""``SyntheticClips``: the synthetic audio-visual world as an in-memory dataset (no files).

Each item is rendered on the fly by :func:`avssl.data.synthetic.render_clip` (a pure function of
``(seed, index)``), so it needs no disk and no decoder, and tests and smoke runs of every recipe
work out of the box. The sample dict is the one of :class:`~avssl.data.datasets.base.ClipDataset`
(``video`` uint8 ``(T, 3, H, W)``, ``audio`` float32 ``(1, S)``, ``has_audio``, ``fps``,
``sample_rate``, ``clip_start_s``, ``video_id``, ``index``, ``video_index``, ``label``) plus the
world's ground truth, padded to ``cfg.max_actors`` sounding actors so batches collate:

- ``stems`` float32 ``(max_actors, S)``: isolated audio per sounding actor (zeros when padded);
- ``boxes`` float32 ``(T, max_actors, 4)`` normalised x1, y1, x2, y2; ``visible`` bool
  ``(T, max_actors)``;
- ``actor_actions`` int64 ``(max_actors,)`` (-1 when padded); ``num_actors`` int;
- ``offset_s`` float: the true audio offset (0.0: audio and video are in sync).

Variable-length ground truth (``events``, ``actor_shapes``, distractors) is left out because it
does not collate; call ``render_clip`` for it. Splits use disjoint index ranges of one world.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from avssl.data.datasets.base import MODES, apply_transform, takes_generator, torch_generator
from avssl.data.synthetic import ACTIONS, WorldConfig, render_clip
from avssl.errors import ConfigError

# Items of split s are world indices SPLIT_OFFSET[s] + i: disjoint, and every range of
# len(ACTIONS) consecutive indices is class-balanced.
SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class SyntheticClips(Dataset):
    """``num_clips`` rendered clips of world ``seed`` (see module docstring for the sample)."""

    def __init__(
        self,
        num_clips: int,
        *,
        seed: int = 0,
        cfg: WorldConfig = WorldConfig(),
        split: str = "train",
        mode: str = "train",
        video_transform: Callable | None = None,
        audio_transform: Callable | None = None,
        audio: bool = True,
    ):
        if num_clips < 1:
            raise ConfigError(f"SyntheticClips needs num_clips >= 1, got {num_clips}")
        if split not in SPLIT_OFFSET:
            raise ConfigError(f"synthetic: split must be one of {', '.join(SPLIT_OFFSET)}, "
                              f"got {split!r}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.num_clips = int(num_clips)
        self.seed = int(seed)
        self.cfg = cfg
        self.split = split
        self.mode = mode
        self.offset = SPLIT_OFFSET[split]
        self.video_transform = video_transform
        self.audio_transform = audio_transform
        self._vt_gen = takes_generator(video_transform)
        self._at_gen = takes_generator(audio_transform)
        self.audio = audio
        self.epoch = 0
        self.class_names = list(ACTIONS)
        self.num_classes = len(ACTIONS)
        self.num_listed = self.num_clips  # same reporting attributes as ClipDataset
        self.missing: list[str] = []
        self.bad: list[tuple[str, str]] = []

    @property
    def num_used(self) -> int:
        return self.num_clips

    @property
    def labels(self) -> list[int]:
        return [(self.offset + i) % len(ACTIONS) for i in range(self.num_clips)]

    def report(self) -> str:
        return f"synthetic-{self.split}: using {self.num_clips} of {self.num_clips} rendered clips"

    def set_epoch(self, epoch: int) -> None:
        """Changes only the transforms' randomness: the clips are fixed functions of the index."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} items")
        clip = render_clip(self.seed, self.offset + int(index), cfg=self.cfg)
        epoch = self.epoch if self.mode == "train" else 0
        gen = torch_generator(np.random.default_rng([self.seed, epoch, int(index)]))
        video = torch.from_numpy(clip["video"])
        if self.video_transform is not None:
            video = apply_transform(self.video_transform, video, gen, self._vt_gen)
        a_max = self.cfg.max_actors
        n_act = len(clip["actor_actions"])
        stems = np.zeros((a_max, clip["stems"].shape[1]), np.float32)
        stems[:n_act] = clip["stems"]
        boxes = np.zeros((clip["boxes"].shape[0], a_max, 4), np.float32)
        boxes[:, :n_act] = clip["boxes"]
        visible = np.zeros((clip["visible"].shape[0], a_max), bool)
        visible[:, :n_act] = clip["visible"]
        actions = np.full(a_max, -1, np.int64)
        actions[:n_act] = clip["actor_actions"]
        sample: dict[str, Any] = {
            "video": video,
            "fps": float(clip["fps"]),
            "sample_rate": int(clip["sample_rate"]),
            "clip_start_s": float(clip["clip_start_s"]),
            "video_id": clip["video_id"],
            "index": int(index),
            "video_index": int(index),
            "label": int(clip["label"]),
            "stems": torch.from_numpy(stems),
            "boxes": torch.from_numpy(boxes),
            "visible": torch.from_numpy(visible),
            "actor_actions": torch.from_numpy(actions),
            "num_actors": n_act,
            "offset_s": float(clip["offset_s"]),
        }
        if self.audio:
            wav = torch.from_numpy(clip["audio"])
            if self.audio_transform is not None:
                wav = apply_transform(self.audio_transform, wav, gen, self._at_gen)
            sample["audio"] = wav
            sample["has_audio"] = True
        return sample


def synthetic(
    root: Any = None,
    split: str = "train",
    *,
    num_clips: int = 96,
    mode: str | None = None,
    **kw: Any,
) -> SyntheticClips:
    """Registry entry: ``root`` is ignored (nothing is read from disk)."""
    mode = mode if mode is not None else ("train" if split == "train" else "eval")
    return SyntheticClips(num_clips, split=split, mode=mode, **kw)
