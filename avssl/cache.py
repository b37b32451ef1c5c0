"""Where avssl keeps things it can rebuild: ``$AVSSL_CACHE`` or ``~/.cache/avssl``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``cache_dir("flow")`` -> ``$AVSSL_CACHE/flow`` (created)."""
    base = os.environ.get("AVSSL_CACHE") or os.path.join(Path.home(), ".cache", "avssl")
    path = Path(base, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
