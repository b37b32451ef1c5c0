"""Task ``music`` end to end on a tiny synthetic MUSIC tree: Sound of Pixels mix-and-separate
with a frozen or finetuned video encoder, BSS-eval metrics, the evaluator's wav folders (the CLI
gives the bench's SDR back), the leaderboard row and the helpful errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from avssl.bench.run import BenchArgs, run_bench
from avssl.bench.separation import SAMPLE_RATE, WINDOW
from avssl.errors import ConfigError, DataError
from avssl.leaderboard import read_task

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
TINY_NET = {"depth": 4, "width": 4, "channels": 4}


@pytest.fixture(scope="module")
def tree(music3):
    return music3


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _args(tree, **kw) -> BenchArgs:
    base = dict(task="music", data_root=str(tree), leaderboard=None, fps=4.0, size=32, crop=32,
                num_workers=0, batch_size=4, epochs=1)
    args = BenchArgs(**{**base, **kw})
    args.separation = dict(TINY_NET)  # BenchArgs has no field for the separator's size yet
    return args


def test_music_frozen_end_to_end_and_the_evaluator_agrees(tree, tmp_path):
    pred = tmp_path / "pred"
    res = run_bench(_args(tree, save_predictions=str(pred), leaderboard=str(tmp_path / "lb")))
    m = res["metrics"]
    assert res["metric"] == "SDR" and res["protocol"] == "frozen" and res["split"] == "test"
    assert res["videos_used"] == res["videos_expected"] == 6      # 3 train + 3 test
    assert m["num_samples"] == 3 and m["num_skipped"] == 0
    assert m["train_windows"] == 3 * 3  # 8-s videos, 1-s stride: windows at 0, 1.03, 2.06 s
    for k in ("SDR", "SIR", "SAR", "SDR_mix", "NSDR"):
        assert np.isfinite(m[k])
    assert m["NSDR"] == pytest.approx(m["SDR"] - m["SDR_mix"])
    # the evaluator's folders: one mixture per test video, with another instrument
    samples = sorted(p.name for p in (pred / "references").iterdir())
    assert len(samples) == 3 and sorted(p.name for p in (pred / "estimates").iterdir()) == samples
    for s in samples:
        srcs = sorted(p.name for p in (pred / "references" / s).iterdir())
        assert len(srcs) == 2 and srcs[0].split("_", 1)[1] != srcs[1].split("_", 1)[1]
        refs = [soundfile.read(pred / "references" / s / f)[0] for f in srcs]
        mix, sr = soundfile.read(pred / "mixtures" / f"{s}.wav")
        assert sr == SAMPLE_RATE and len(mix) == WINDOW
        np.testing.assert_allclose(mix, refs[0] + refs[1], atol=1e-6)  # sources divided by N
    out = subprocess.run(
        [sys.executable, "-m", "avssl.eval", "separation", "--references", str(pred / "references"),
         "--estimates", str(pred / "estimates"), "--mixtures", str(pred / "mixtures")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    for k in ("SDR", "SIR", "SAR", "SDR_mix", "NSDR"):
        assert cli[k] == pytest.approx(m[k], abs=1e-4)
    rows = read_task(tmp_path / "lb" / "music.csv")
    assert len(rows) == 1 and rows[0].metric == "SDR"
    assert rows[0].value == pytest.approx(m["SDR"]) and rows[0].protocol == "frozen"


def test_music_finetune_trains_the_encoder_too(tree, monkeypatch):
    from avssl.bench.separation import benchmark

    built, initial = [], []
    real = benchmark.build_separator

    def build(*a, **k):
        net = real(*a, **k)
        built.append(net)
        initial.append({n: p.detach().clone() for n, p in net.named_parameters()})
        return net

    monkeypatch.setattr(benchmark, "build_separator", build)
    res = run_bench(_args(tree, protocol="finetune", seed=5))
    assert res["protocol"] == "finetune" and res["metrics"]["num_samples"] == 3
    assert np.isfinite(res["metrics"]["SDR"])
    # the separator conditions on clips through its own copy of the video encoder, and
    # training moved that encoder's weights (a frozen one would keep them all)
    (net,), (before,) = built, initial
    assert net.encoder is not None
    enc = [n for n in before if n.startswith("encoder.")]
    changed = [n for n, p in net.named_parameters()
               if n in enc and not torch.equal(before[n], p.detach())]
    assert enc and len(changed) > len(enc) // 2, f"{len(changed)}/{len(enc)} encoder tensors"
    # --seed varies training, never which videos are test videos: the one published split
    assert [p.name for p in (tree / "splits").iterdir()] == ["music_solo_seed0_v1.csv"]


def test_music_helpful_errors(tree, tmp_path):
    with pytest.raises(DataError, match=r"python -m avssl\.data\.synthetic --layout music"):
        run_bench(_args(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="--modality must be video"):
        run_bench(_args(tree, modality="audio"))
    args = _args(tree)
    args.separation = {"masks": "ratio"}
    with pytest.raises(ConfigError, match="unknown separation option.*mask"):
        run_bench(args)
