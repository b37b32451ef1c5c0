"""The synthetic world written once into the cache, for recipes run without ``--data.path``.

``synthetic_folder(n, seed=..., cfg=...)`` returns a folder of ``n`` unlabeled synthetic videos
(the ``folder`` layout: real .mp4 files) plus its ``manifest.csv``, writing them on first use.
The folder name encodes every setting, and it is written into a temporary folder that is renamed
into place, so a killed first run never leaves a half-written dataset that a later run would use.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from avssl.cache import cache_dir
from avssl.data.synthetic.layouts import write_layout
from avssl.data.synthetic.motion import ACTIONS
from avssl.data.synthetic.world import WORLD_VERSION, WorldConfig


def synthetic_folder(n: int, *, seed: int = 0, cfg: WorldConfig = WorldConfig(),
                     workers: int | None = None) -> Path:
    """Path of a cached manifest CSV over >= ``n`` synthetic clips (``folder`` layout)."""
    per_class = max(1, math.ceil(n / len(ACTIONS)))
    key = json.dumps({"per_class": per_class, "seed": seed, "cfg": asdict(cfg),
                      "version": WORLD_VERSION}, sort_keys=True)
    name = f"folder-{per_class * len(ACTIONS)}-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    root = cache_dir("synthetic")
    final = root / name
    if not (final / "manifest.csv").exists():
        from avssl.data.manifest import scan, write_manifest

        tmp = root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write_layout("folder", tmp, clips_per_class=per_class, seed=seed, cfg=cfg,
                     workers=workers or os.cpu_count() or 1)
        write_manifest(scan(tmp, workers=workers or os.cpu_count() or 1), tmp / "manifest.csv")
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "manifest.csv"
