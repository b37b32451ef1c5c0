"""The synthetic world written once into the cache, for recipes run without ``--data.path``.

``synthetic_tree(layout, clips_per_class, ...)`` returns the root of a tree in any layout's
format (the bench's synthetic tasks); ``synthetic_folder(n, seed=..., cfg=...)`` returns a folder of ``n`` unlabeled synthetic videos
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
from avssl.errors import DataError
from avssl.data.synthetic.motion import ACTIONS
from avssl.data.synthetic.world import WORLD_VERSION, WorldConfig


def synthetic_tree(layout: str, clips_per_class: int, *, seed: int = 0,
                   cfg: WorldConfig = WorldConfig(), workers: int | None = None,
                   manifest: bool = False) -> Path:
    """Root of a cached synthetic tree in ``layout``'s format, written on first use.

    ``manifest=True`` also probes the files into ``<root>/manifest.csv`` (the recipes' folder
    input). The name encodes every setting, so two callers asking for the same tree share it.
    """
    key_d = {"per_class": clips_per_class, "seed": seed, "cfg": asdict(cfg),
             "version": WORLD_VERSION}
    if layout != "folder":  # folder trees keep the key they had before other layouts were cached
        key_d["layout"] = layout
    key = json.dumps(key_d, sort_keys=True)
    name = (f"{layout}-{clips_per_class * len(ACTIONS)}-seed{seed}-"
            f"{hashlib.sha256(key.encode()).hexdigest()[:10]}")
    root = cache_dir("synthetic")
    final = root / name
    done = final / ("manifest.csv" if manifest else "ground_truth.json")
    if not done.exists():
        tmp = root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        nw = workers or os.cpu_count() or 1
        if final.exists():  # written without a manifest by an earlier caller: add it in place
            tmp = final
        else:
            write_layout(layout, tmp, clips_per_class=clips_per_class, seed=seed, cfg=cfg,
                         workers=nw)
        if manifest:
            from avssl.data.manifest import scan, write_manifest

            table = scan(tmp, workers=nw)
            bad = table[~table["decodable"].astype(bool)]
            if len(bad):  # avssl wrote these files: a failed probe is this run's (a crashed
                # worker, a timeout on a busy machine), and a cached manifest would keep it
                first = bad.iloc[0]
                if tmp != final:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise DataError(f"probing the cached synthetic tree {tmp} failed for {len(bad)} "
                                f"of {len(table)} files (first: {first['path']}: "
                                f"{first['error']}); nothing was cached, run again")
            # paths relative to the manifest's folder (the tree root): still right after the rename
            write_manifest(table, tmp / "manifest.csv", root=tmp)
        if tmp != final:
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def synthetic_folder(n: int, *, seed: int = 0, cfg: WorldConfig = WorldConfig(),
                     workers: int | None = None) -> Path:
    """Path of a cached manifest CSV over >= ``n`` synthetic clips (``folder`` layout)."""
    per_class = max(1, math.ceil(n / len(ACTIONS)))
    return synthetic_tree("folder", per_class, seed=seed, cfg=cfg, workers=workers,
                          manifest=True) / "manifest.csv"
