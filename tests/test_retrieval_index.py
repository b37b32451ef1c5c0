"""avssl.retrieval: FAISS flat / IVF-PQ search and exact true-pair ranks vs brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avssl.errors import ConfigError
from avssl.retrieval import (Index, faiss_gpu_available, l2_normalize, score_chunks, search,
                             true_ranks)


def brute_ranks(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """1 + #{j != i : s_ij >= s_ii}, by python loops in float64."""
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    ranks = []
    for i in range(len(q)):
        s = [float(np.dot(q[i], g[j])) for j in range(len(g))]
        ranks.append(1 + sum(1 for j in range(len(g)) if j != i and s[j] >= s[i]))
    return np.array(ranks)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    # OpenMP threads spin-wait on a loaded 2-core machine: one thread is ~10x faster here
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    x = centres[rng.integers(0, 40, 5000)] + 0.35 * rng.normal(size=(5000, 32))
    return x.astype(np.float32)


def test_flat_search_matches_numpy_topk():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(30, 16)), rng.normal(size=(200, 16))
    for normalize in (True, False):
        scores, ids = search(q, g, 7, normalize=normalize)
        qq, gg = (l2_normalize(q), l2_normalize(g)) if normalize else (q, g)
        ref = np.asarray(qq, np.float64) @ np.asarray(gg, np.float64).T
        ref_ids = np.argsort(-ref, axis=1)[:, :7]
        assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (30, 7)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_ids, 1), rtol=1e-5,
                                   atol=1e-5)


def test_search_clamps_k_and_accepts_tensors():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(5, 8)).astype(np.float32)
    scores, ids = search(torch.from_numpy(g[:2]), torch.from_numpy(g), 50)
    assert ids.shape == (2, 5) and (ids >= 0).all()
    assert ids[0, 0] == 0 and ids[1, 0] == 1  # each vector is its own nearest neighbour
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_zero_vectors_stay_zero():
    x = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    n = l2_normalize(x)
    assert np.isfinite(n).all() and (n[0] == 0).all()
    np.testing.assert_allclose(n[1], [0.6, 0.8], rtol=1e-6)
    scores, _ = search(x[:1], x, 2)
    assert np.isfinite(scores).all() and (scores == 0).all()


def test_true_ranks_exact_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(5):  # small integers: many exact ties among scores
        q = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
        g = rng.integers(-2, 3, size=(55, 3)).astype(np.float32)  # 15 distractors
        np.testing.assert_array_equal(true_ranks(q, g, normalize=False), brute_ranks(q, g))
    # cosine: duplicated gallery rows tie exactly with the true item and must count against
    base = rng.normal(size=(10, 6)).astype(np.float32)
    q, g = base[rng.integers(0, 10, 30)], base[rng.integers(0, 10, 30)]
    np.testing.assert_array_equal(true_ranks(q, g), brute_ranks(l2_normalize(q), l2_normalize(g)))


def test_constant_embeddings_rank_last():
    x = np.ones((25, 8), dtype=np.float32)
    np.testing.assert_array_equal(true_ranks(x, x), np.full(25, 25))
    np.testing.assert_array_equal(true_ranks(np.zeros((4, 3)), np.zeros((4, 3))), [4, 4, 4, 4])
    assert (true_ranks(x, x, depth=5) == 6).all()


def test_score_chunks_cover_all_pairs():
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(23, 5)), rng.normal(size=(17, 5))
    blocks = list(score_chunks(q, g, normalize=False, chunk_elems=40))  # 2 queries per block
    assert len(blocks) == 12 and [b[0] for b in blocks] == list(range(0, 23, 2))
    full = torch.cat([s for _, s, _ in blocks]).cpu().numpy()
    np.testing.assert_allclose(full, q.astype(np.float32).astype(np.float64)
                               @ g.astype(np.float32).astype(np.float64).T, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    ((np.zeros(5), np.zeros((5, 2))), r"queries.*\(5,\)"),
    ((np.zeros((5, 2)), np.zeros((5, 3))), r"\(5, 2\).*\(5, 3\)"),
    ((np.full((2, 2), np.nan), np.zeros((2, 2))), "finite"),
    ((np.zeros((6, 2)), np.zeros((5, 2))), r"at least as many rows"),
])
def test_bad_inputs_raise_config_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        true_ranks(*bad)


def test_index_errors():
    index = Index(4)
    with pytest.raises(ConfigError, match="empty"):
        index.search(np.zeros((1, 4)), 1)
    with pytest.raises(ConfigError, match="dimension 4"):
        index.add(np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="kind"):
        Index(4, kind="hnsw")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="IVF-PQ needs at least 2 vectors.*kind='flat'"):
        Index(4, kind="ivfpq").add(np.ones((1, 4)))  # faiss would raise a bare RuntimeError
    if not faiss_gpu_available():
        with pytest.raises(ConfigError, match="GPU"):
            Index(4, gpu=True)


def test_ivfpq_recall_against_exact(clustered):
    x = l2_normalize(clustered)
    q = x[:300]
    index = Index(32, kind="ivfpq", nlist=64, m=16, nbits=6)
    index.add(x)
    assert index.ntotal == 5000
    _, approx = index.search(q, 10)
    _, exact = search(q, x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
    assert recall > 0.5


def test_ivfpq_clamps_settings_for_small_galleries():
    x = np.random.default_rng(6).normal(size=(300, 12)).astype(np.float32)
    index = Index(12, kind="ivfpq")  # defaults: nlist 1024, m 64, nbits 8
    with pytest.warns(UserWarning, match=r"nlist=1024->7, nbits=8->2, m=64->12"):
        index.add(x)
    assert (index.nlist, index.nbits, index.m) == (7, 2, 12) and index.ntotal == 300
    scores, ids = index.search(x[:3], 5)
    assert scores.shape == ids.shape == (3, 5) and (ids >= 0).all()


def test_ivfpq_true_ranks_are_capped_approximations():
    rng = np.random.default_rng(5)
    g = rng.normal(size=(2000, 32)).astype(np.float32)
    q = g + 0.1 * rng.normal(size=g.shape).astype(np.float32)
    q[:100] = rng.normal(size=(100, 32))  # unrelated queries: true item far down the list
    with pytest.warns(UserWarning):
        approx = true_ranks(q, g, kind="ivfpq", depth=20, nlist=32, m=16, nbits=6)
    exact = true_ranks(q, g)
    assert approx.min() >= 1 and approx.max() <= 21
    assert np.mean(approx[100:] == 1) > 0.8 and (exact[100:] == 1).all()
    # where the exact rank is beyond the depth the approximation reports depth + 1 (or a rank
    # inside the depth only through PQ error, which is rare)
    assert np.mean(approx[:100][exact[:100] > 21] == 21) > 0.8


def test_ivfpq_true_item_tied_with_the_last_result_ranks_beyond_the_depth():
    # more items tied with the last one returned lie beyond the search depth, unseen: ties count
    # against the model, so the true item cannot be ranked within the depth
    x = np.ones((3000, 16), dtype=np.float32)  # constant: every exact rank is 3000
    assert (true_ranks(x, x, kind="ivfpq", depth=10, nlist=8, m=4, nbits=4) == 11).all()
    g = np.random.default_rng(7).normal(size=(3000, 16)).astype(np.float32)
    g[:20] = g[0]  # the true item of query 0 and 19 exact copies: exact rank 20
    rank = true_ranks(g[:1], g, kind="ivfpq", depth=10, nlist=8, m=4, nbits=4)
    assert true_ranks(g[:1], g)[0] == 20 and rank[0] == 11
    # nothing unseen when the depth covers the whole gallery: ties within it are all counted
    with pytest.warns(UserWarning, match="nlist=1024->2"):
        assert (true_ranks(x[:100], x[:100], kind="ivfpq", m=4, nbits=1) == 100).all()
