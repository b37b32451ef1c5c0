"""The cache folder: $AVSSL_CACHE, and a one-line error when it cannot be created."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avssl.cache import cache_dir
from avssl.errors import ConfigError


def test_cache_dir_is_created_under_avssl_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "c"))
    assert cache_dir("features", "t") == tmp_path / "c" / "features" / "t"
    assert (tmp_path / "c" / "features" / "t").is_dir()


def test_an_uncreatable_cache_is_a_config_error_naming_avssl_cache(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")  # fails as root too (a read-only folder would not)
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(ConfigError, match=r"cannot create the cache folder .*file/cache/flow "
                                          r"\(Not a directory\); set AVSSL_CACHE"):
        cache_dir("flow")


def test_the_bench_says_so_in_one_line(tmp_path):
    """It was a NotADirectoryError / PermissionError traceback from the synthetic task's data."""
    (tmp_path / "file").write_text("")
    env = {**os.environ, "AVSSL_CACHE": str(tmp_path / "file" / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "avssl.bench", "--task", "synthetic",
                           "--leaderboard", ""], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot create the cache folder {tmp_path}/file/cache/synthetic (Not a "
        f"directory); set AVSSL_CACHE to a writable folder"]
