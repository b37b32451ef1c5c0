"""The synthetic MUSIC stand-in (Sound of Pixels): solo videos of 11 instruments + the JSON index.

``python -m avssl.data.synthetic --layout music --out DIR`` writes::

    DIR/MUSIC_solo_videos.json          {"videos": {instrument: [youtube ids]}}
    DIR/MUSIC_duet_videos.json          {"videos": {"<a> <b>": [ids]}}  (ids only, no files)
    DIR/solo/<instrument>/<id>.mp4      H.264 + AAC at cfg.sample_rate
    DIR/ground_truth.json, DIR/README.txt

Each instrument is one sounding actor with a fixed look and its own voice
(:mod:`avssl.data.synthetic.solo`), playing the whole video among silent distractors.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from avssl.errors import ConfigError
from avssl.data.synthetic.layouts import LAYOUTS, Job, _check, _finish, _run, _ytids
from avssl.data.synthetic.solo import INSTRUMENT_SPECS, INSTRUMENTS, render_solo
from avssl.data.synthetic.sound import COLOURS
from avssl.data.synthetic.world import WorldConfig

COLOUR_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]
assert len(COLOUR_NAMES) == len(COLOURS)
NUM_DUETS = 4  # duet pairs listed in MUSIC_duet_videos.json, two ids each


def _write_solo(args: tuple[Job, str, WorldConfig]) -> dict[str, Any]:
    """Render and encode one solo video (runs in a worker process); returns its ground truth."""
    from avssl.data.decoding import write_av  # codec libraries load only where clips are written

    job, root, cfg = args
    s = render_solo(job.seed, job.index, job.label, cfg=cfg)
    path = os.path.join(root, job.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_av(path, s["video"], cfg.fps, s["audio"], cfg.sample_rate)
    spec = INSTRUMENT_SPECS[job.label]
    return {
        "path": job.path, "label": job.label, "instrument": spec.name, "seed": job.seed,
        "index": job.index, "fps": cfg.fps, "sample_rate": cfg.sample_rate, "has_audio": True,
        "num_frames": int(s["video"].shape[0]), "duration_s": cfg.duration_s,
        "action": s["action"], "shape": spec.shape, "colour": COLOUR_NAMES[spec.colour],
        "timbre": spec.timbre, "pitch_hz": spec.pitch,
        "num_distractors": int(s["distractor_boxes"].shape[1]),
        "events": [{"time_s": e["time_s"], "kind": e["kind"]} for e in s["events"]],
        **job.info,
    }


@LAYOUTS.register("music")
def write_music(out: Path, *, clips_per_class: int = 4, seed: int = 0,
                cfg: WorldConfig = WorldConfig(), workers: int = 1,
                duration_s: float = 8.0) -> Path:
    """``out/solo/<instrument>/<ytid>.mp4`` (``clips_per_class`` per instrument, ``duration_s``
    long: Sound of Pixels windows need >= 6 s) + ``MUSIC_solo_videos.json`` + a
    ``MUSIC_duet_videos.json`` listing a few duets (ids only) + ``ground_truth.json``.

    ``cfg.duration_s`` is replaced by ``duration_s``; the audio is at ``cfg.sample_rate``.
    Deterministic in ``seed`` (same ids, same renders) whatever the number of workers.
    """
    _check(clips_per_class)
    if not duration_s > 0:
        raise ConfigError(f"music: duration_s must be > 0 seconds, got {duration_s}")
    cfg = replace(cfg, duration_s=float(duration_s))
    n, k = clips_per_class, len(INSTRUMENTS)
    ids = _ytids(np.random.default_rng([seed, 11]), n * k + 2 * NUM_DUETS)
    jobs = []
    for ci, name in enumerate(INSTRUMENTS):
        for j in range(n):
            yid = ids[ci * n + j]
            # index ci + k*j: instrument-major ids, but clip j of every instrument shares a block
            jobs.append(Job(f"solo/{name}/{yid}.mp4", seed, ci + k * j, ci, cfg.fps, True,
                            {"video_id": yid, "youtube_id": yid, "position": j}))
    clips = _run(jobs, out, cfg, workers, "music", write=_write_solo, unit="video")
    solo = {name: [c["video_id"] for c in clips if c["instrument"] == name]
            for name in INSTRUMENTS}
    (out / "MUSIC_solo_videos.json").write_text(json.dumps({"videos": solo}, indent=1) + "\n")
    rng = np.random.default_rng([seed, 12])
    duet_ids = iter(ids[n * k:])
    duets: dict[str, list[str]] = {}
    while len(duets) < NUM_DUETS:
        a, b = (INSTRUMENTS[int(i)] for i in rng.choice(k, size=2, replace=False))
        key = f"{a} {b}"  # the real file's keys: two instruments joined by a space
        if key not in duets and f"{b} {a}" not in duets:
            duets[key] = [next(duet_ids), next(duet_ids)]
    (out / "MUSIC_duet_videos.json").write_text(json.dumps({"videos": duets}, indent=1) + "\n")
    return _finish(out, "music", seed, cfg, clips_per_class, INSTRUMENTS, clips, f"""
MUSIC_solo_videos.json: {{"videos": {{instrument: [11-character YouTube-style ids]}}}}; files
solo/<instrument>/<id>.mp4 (H.264 + AAC, {cfg.sample_rate} Hz, {duration_s:g} s). Each video
shows one sounding instrument playing throughout (its own fixed look: "shape" and "colour" in
ground_truth.json; its own voice: "timbre", "pitch_hz") among silent distractors whose looks no
instrument has. MUSIC_duet_videos.json lists {NUM_DUETS} duet pairs ("<a> <b>": ids) for the
format only: no duet file is written. "actions" is the world's motion list, "action" of a clip
its performer's motion.""", class_meaning='instrument k ("classes")',
                   instruments=[{"name": s.name, "shape": s.shape,
                                 "colour": COLOUR_NAMES[s.colour], "timbre": s.timbre,
                                 "pitch_hz": s.pitch} for s in INSTRUMENT_SPECS],
                   duets=duets, duration_s=float(duration_s))
