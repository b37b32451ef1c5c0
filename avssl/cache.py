"""Where avssl keeps things it can rebuild: ``$AVSSL_CACHE`` or ``~/.cache/avssl``."""
from __future__ import annotations

import os
from pathlib import Path

from avssl.errors import ConfigError


def cache_dir(*parts: str) -> Path:
    """``cache_dir("flow")`` -> ``$AVSSL_CACHE/flow`` (created). Raises :class:`ConfigError`
    when it cannot be created (a read-only home, ``AVSSL_CACHE`` naming a file)."""
    base = os.environ.get("AVSSL_CACHE") or os.path.join(Path.home(), ".cache", "avssl")
    path = Path(base, *parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # every recipe and the bench start here: one line, not a traceback
        raise ConfigError(f"cannot create the cache folder {path} ({e.strerror or e}); set "
                          f"AVSSL_CACHE to a writable folder") from None
    return path
