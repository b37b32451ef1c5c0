"""avssl.eval.retrieval: paired R@k / ranks and class-match retrieval vs brute force; CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from avssl.errors import ConfigError
from avssl.eval.retrieval import (class_retrieval, cross_modal_retrieval,
                                  evaluate_retrieval_files, rank_metrics, retrieval_metrics)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    # OpenMP threads spin-wait on a loaded 2-core machine: one thread is ~10x faster here
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def brute_paired(q, g, ks=(1, 5, 10)) -> dict:
    ranks = []
    for i in range(len(q)):
        s = [float(np.dot(q[i], g[j])) for j in range(len(g))]
        ranks.append(1 + sum(1 for j in range(len(g)) if j != i and s[j] >= s[i]))
    ranks = sorted(ranks)
    n = len(ranks)
    median = (ranks[(n - 1) // 2] + ranks[n // 2]) / 2
    out = {f"R@{k}": 100.0 * sum(r <= k for r in ranks) / n for k in ks}
    out.update(median_rank=median, mean_rank=sum(ranks) / n, num_queries=n, gallery_size=len(g))
    return out


def brute_class(qx, qy, gx, gy, ks=(1, 5, 10)) -> dict:
    hits = {k: 0 for k in ks}
    for i in range(len(qx)):
        s = [float(np.dot(qx[i], gx[j])) for j in range(len(gx))]
        same = [s[j] for j in range(len(gx)) if gy[j] == qy[i]]
        if not same:
            continue
        ahead = sum(1 for j in range(len(gx)) if gy[j] != qy[i] and s[j] >= max(same))
        for k in ks:
            hits[k] += ahead < k
    return {**{f"R@{k}": 100.0 * hits[k] / len(qx) for k in ks}, "num_queries": len(qx),
            "gallery_size": len(gx)}


def approx(d: dict) -> dict:
    return {k: pytest.approx(v) for k, v in d.items()}


def test_paired_metrics_match_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for n in (9, 30):  # odd and even counts (median of two middle ranks)
        q = rng.integers(-1, 2, size=(n, 3)).astype(np.float32)
        g = rng.integers(-1, 2, size=(n, 3)).astype(np.float32)
        assert retrieval_metrics(q, g, normalize=False) == approx(brute_paired(q, g))


def test_gallery_size_is_stated():
    # recall falls as distractors join the gallery, so a number means little without its size
    rng = np.random.default_rng(7)
    q, g = rng.normal(size=(5, 4)), rng.normal(size=(12, 4))
    m = retrieval_metrics(q, g)
    assert m["num_queries"] == 5 and m["gallery_size"] == 12
    qn, gn = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, g))
    assert m == approx(brute_paired(qn, gn))
    assert class_retrieval(q, np.arange(5) % 2, g, np.arange(12) % 2)["gallery_size"] == 12


def test_constant_embeddings_score_nothing():
    x = np.ones((40, 16), dtype=np.float32)
    m = retrieval_metrics(x, x)
    assert m["R@1"] == 0.0 and m["R@10"] == 0.0 and m["median_rank"] == 40.0


def test_cross_modal_has_both_directions():
    rng = np.random.default_rng(1)
    v = rng.integers(0, 3, size=(25, 4)).astype(np.float32)
    a = rng.integers(0, 3, size=(25, 4)).astype(np.float32)
    m = cross_modal_retrieval(torch.from_numpy(v), torch.from_numpy(a), normalize=False)
    assert m["v2a"] == approx(brute_paired(v, a)) and m["a2v"] == approx(brute_paired(a, v))
    assert json.loads(json.dumps(m)) == m


def test_rank_metrics():
    m = rank_metrics([1, 2, 3, 10, 11], ks=(1, 10))
    assert m == {"R@1": 20.0, "R@10": 80.0, "median_rank": 3.0, "mean_rank": 5.4,
                 "num_queries": 5}


def test_class_retrieval_matches_brute_force_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(4):
        qx = rng.integers(-1, 2, size=(20, 3)).astype(np.float32)
        gx = rng.integers(-1, 2, size=(35, 3)).astype(np.float32)
        qy = rng.choice(["run", "jump", "swim", "fly"], 20)  # "fly" is absent from the gallery
        gy = rng.choice(["run", "jump", "swim"], 35)
        ks = (1, 3, 5, 10, 50)  # 50 > the gallery: "fly" queries must still never score
        got = class_retrieval(qx, qy, gx, gy, ks=ks, normalize=False)
        assert got == approx(brute_class(qx, qy, gx, gy, ks=ks))


def test_class_retrieval_constant_embeddings_and_perfect_clusters():
    y = np.arange(30) % 3
    x = np.ones((30, 8), dtype=np.float32)
    assert class_retrieval(x, y, x, y)["R@10"] == 0.0  # 20 other-class items tie with the best
    x = np.eye(3, dtype=np.float32)[y] + 0.01 * np.random.default_rng(3).normal(size=(30, 3))
    assert class_retrieval(x, y, x, y)["R@1"] == 100.0


def test_class_retrieval_ivfpq_agrees_on_easy_data():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(10, 16))
    gy, qy = rng.integers(0, 10, 1500), rng.integers(0, 10, 100)
    gx = centres[gy] + 0.1 * rng.normal(size=(1500, 16))
    qx = centres[qy] + 0.1 * rng.normal(size=(100, 16))
    with pytest.warns(UserWarning):  # nlist clamped for a small gallery
        got = class_retrieval(qx, qy, gx, gy, kind="ivfpq", m=8, nbits=5)
    assert got["R@1"] > 90.0 and got == approx(class_retrieval(qx, qy, gx, gy))


def test_class_retrieval_ivfpq_counts_ties_beyond_its_search_depth():
    # constant embeddings: the other-class items tied with the best same-class one lie partly
    # beyond the depth IVF-PQ searches; unseen ties must count against the model too
    x = np.ones((300, 8), dtype=np.float32)
    y, few = np.arange(300) % 3, np.array([0] * 10 + [1] * 290)
    with pytest.warns(UserWarning):  # nlist, nbits clamped for a small gallery
        assert class_retrieval(x, y, x, y, kind="ivfpq")["R@10"] == 0.0
    with pytest.warns(UserWarning):
        assert class_retrieval(x[:20], few[:20], x, few, kind="ivfpq")["R@1"] == 0.0


def test_ivfpq_depth_must_cover_k():
    x = np.random.default_rng(5).normal(size=(50, 8))
    with pytest.raises(ConfigError, match="depth 5.*10"):
        retrieval_metrics(x, x, kind="ivfpq", depth=5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "avssl.eval", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _main(capsys, *args):
    """The same command in process (the error path needs no second interpreter start-up)."""
    from types import SimpleNamespace

    from avssl.eval.__main__ import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def test_cli_json_equals_function_and_errors_are_one_line(tmp_path, capsys):
    rng = np.random.default_rng(6)
    q = rng.normal(size=(60, 12)).astype(np.float32)
    g = q + rng.normal(size=q.shape).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "g.npy", g)
    np.save(tmp_path / "bad.npy", g[:, :5])
    ok = _cli("retrieval", "--queries", tmp_path / "q.npy", "--gallery", tmp_path / "g.npy")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == evaluate_retrieval_files(tmp_path / "q.npy",
                                                             tmp_path / "g.npy")
    assert json.loads(ok.stdout) == retrieval_metrics(q, g)
    bad = _main(capsys, "retrieval", "--queries", tmp_path / "q.npy", "--gallery",
                tmp_path / "bad.npy")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "(60, 12)" in bad.stderr and "(60, 5)" in bad.stderr
