"""Visually-guided source separation on MUSIC: the Sound of Pixels protocol (task ``music``).

Mix-and-separate (Zhao et al. 2018) on the solo videos' train split: two solo videos of different
instruments are mixed, a U-Net on the mixture's log-frequency spectrogram conditioned on each
source's video embedding (any registered video encoder; ``frozen``, or trained along with
``finetune``) predicts its mask; test mixtures are fixed seeded pairs of test videos, scored by
BSS-eval SDR / SIR / SAR (dB) with the mixture's SDR and NSDR (:mod:`avssl.bench.separation`).
"""
from __future__ import annotations

from avssl.bench.tasks import TASKS, Task


def _load_music(root, split, **kw):
    from avssl.data.datasets.music import music

    return music(root, split, **kw)


def _run(task, model, args, root, modality):
    from avssl.bench.separation.benchmark import run_separation

    return run_separation(task, model, args, root, modality)


TASKS.add("music", Task(
    name="music",
    summary="MUSIC visually-guided source separation (Sound of Pixels mix-and-separate), SDR dB",
    data=("MUSIC_solo_videos.json (github.com/roudimit/MUSIC_dataset) and the solo videos as "
          "solo/<instrument>/<youtube id>.mp4"),
    kind="separation", version="3", protocols=("frozen", "finetune"), metric="SDR",
    load=_load_music, splits=("test",), views="1x1", layout="music", run=_run))
