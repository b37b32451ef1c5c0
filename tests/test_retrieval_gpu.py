"""avssl.retrieval's GPU branch against a fake of faiss's GPU API (tests/fake_faiss_gpu.py): the
real kernels' limits (k and nprobe <= 2048, IVF-PQ lookup tables in 48 KiB of shared memory,
nbits 8) on CPU indexes, so these run without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fake_faiss_gpu
from avssl.retrieval import Index, l2_normalize, search, true_ranks


@pytest.fixture(autouse=True)
def one_faiss_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
def gpu(monkeypatch):
    return fake_faiss_gpu.install(monkeypatch)


def test_flat_index_goes_to_the_gpu_and_keeps_its_resources(gpu):
    g = l2_normalize(np.random.default_rng(0).normal(size=(300, 8)))
    index = Index(8)
    index.add(g)
    assert index.gpu and len(gpu) == 1
    # the fake collects garbage during search and fails if the resources went with it
    _, ids = index.search(g[:4], 3)
    np.testing.assert_array_equal(ids[:, 0], np.arange(4))


def test_gpu_index_sits_on_the_processes_own_device(gpu, monkeypatch):
    # accelerate gives process i the device cuda:i; faiss must not pile every process on GPU 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    Index(8)
    assert gpu[0][0] == 3


def test_search_deeper_than_the_gpu_limit_runs_on_the_cpu(gpu):
    rng = np.random.default_rng(1)
    g, q = rng.normal(size=(3000, 8)), rng.normal(size=(5, 8))
    with pytest.warns(UserWarning, match="k=2500.*at most 2048.*CPU"):
        scores, ids = search(q, g, 2500)
    ref_scores, ref_ids = search(q, g, 2500, gpu=False)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_ivfpq_true_ranks_deeper_than_the_gpu_limit(gpu):
    rng = np.random.default_rng(2)
    g = rng.normal(size=(10_000, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="k=2500, nprobe=8.*CPU"):
        ranks = true_ranks(g[:20], g, kind="ivfpq", depth=2500, nlist=8, m=2, nbits=8)
    assert ranks.shape == (20,) and (ranks >= 1).all() and (ranks <= 2501).all()


def test_ivfpq_with_64_codes_uses_float16_lookup_tables_on_the_gpu(gpu):
    # m=64, nbits=8: 64 KiB of float32 lookup tables, over the 48 KiB of shared memory of every
    # NVIDIA GPU; in float16 they fit (faiss's own advice), so the default stays on the GPU.
    # The GPU refuses a configuration when the index is copied there, before training (which
    # would take a minute here): build the index for a 10k gallery without adding it.
    index = Index(512, kind="ivfpq", nlist=4)
    index._build_ivfpq(10_000)
    assert (index.m, index.nbits) == (64, 8) and index.gpu
    assert gpu[-1][1].useFloat16


def test_ivfpq_configuration_the_gpu_cannot_hold_falls_back_to_the_cpu(gpu):
    x = np.random.default_rng(4).normal(size=(700, 8)).astype(np.float32)
    index = Index(8, kind="ivfpq", m=8, nbits=4, nlist=4)
    with pytest.warns(UserWarning, match="Bits per code must be 8.*using the CPU"):
        index.add(x)
    assert not index.gpu and index.ntotal == 700
    assert index.search(x[:3], 4)[1].shape == (3, 4)
