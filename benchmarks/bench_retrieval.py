"""Retrieval: FAISS exact and IVF-PQ (``avssl.retrieval.Index``) vs torch matmul + ``topk``.

    python benchmarks/bench_retrieval.py --quick               # 20k x 128 gallery
    python benchmarks/bench_retrieval.py --gallery 100000      # 100k x 512
    python benchmarks/bench_retrieval.py --gallery 1000000     # 1M x 512 (2 GB float32)
    python benchmarks/bench_retrieval.py --gallery 1000000 --device cuda   # torch top-k on the GPU

Gallery ``(G, D)`` and ``Q`` queries are random unit vectors (queries are noisy copies of gallery
rows, so neighbourhoods are not uniform). For each method: build/train time, queries/s over all
queries (searched in blocks of ``--block``), and recall@10 = |top-10 ∩ exact top-10| / 10
against the FAISS flat index's answer. Methods:

* ``faiss_flat``: ``Index(kind="flat")`` (exact inner product);
* ``faiss_ivfpq``: ``Index(kind="ivfpq", nlist, m, nprobe)`` (trained on the gallery);
* ``torch_topk``: ``(queries @ gallery.T).topk(10)`` in float32, blocks of queries, on
  ``--device`` (cuda: the gallery is copied to the GPU once, as part of "build"; the queries
  travel per block and the time ends after a synchronize, so it is end to end).

FAISS uses its GPU index only where a GPU build of faiss is installed (``Index(gpu=None)``).

Prints a markdown table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import torch

from avssl.retrieval import Index, faiss_gpu_available, l2_normalize

from common import cli, cpu_name, positive_int  # benchmarks/common.py

K = 10


def make_data(g: int, q: int, d: int, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-norm gallery (g, d), queries (q, d) = gallery rows + noise, float32, and each
    query's planted neighbour (q,): the gallery row it was made from."""
    rng = np.random.default_rng(seed)
    gallery = l2_normalize(rng.standard_normal((g, d), dtype=np.float32))
    rows = rng.integers(0, g, q)
    queries = gallery[rows] + 0.5 * rng.standard_normal((q, d), dtype=np.float32) / np.sqrt(d)
    return gallery, l2_normalize(queries), rows


def torch_topk(queries: np.ndarray, g: torch.Tensor, k: int, block: int) -> np.ndarray:
    """Top-k gallery ids (Q, k) of each query, by blocks of queries; ``g`` (G, D) on the device
    the search runs on."""
    out = []
    for s in range(0, len(queries), block):
        q = torch.from_numpy(queries[s:s + block]).to(g.device)
        out.append((q @ g.T).topk(k, dim=1).indices.cpu())
    return torch.cat(out).numpy()


def faiss_search(index: Index, queries: np.ndarray, k: int, block: int) -> np.ndarray:
    return np.concatenate([index.search(queries[s:s + block], k)[1]
                           for s in range(0, len(queries), block)])


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(ids, exact)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=positive_int, default=None, help="gallery size (default 100000; "
                   "quick 20000)")
    p.add_argument("--dim", type=positive_int, default=None, help="embedding dim (default 512, quick 128)")
    p.add_argument("--queries", type=positive_int, default=None, help="queries (default 1000, quick 500)")
    p.add_argument("--block", type=positive_int, default=256, help="queries per search call")
    p.add_argument("--nlist", type=positive_int, default=1024, help="IVF cells")
    p.add_argument("--m", type=positive_int, default=64, help="PQ sub-quantizers")
    p.add_argument("--nprobe", type=positive_int, default=32, help="IVF cells visited per query")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where torch_topk runs (FAISS: its GPU index when installed)")
    p.add_argument("--quick", action="store_true", help="20k x 128 gallery, 500 queries")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU here")
    g = args.gallery or (20_000 if args.quick else 100_000)
    d = args.dim or (128 if args.quick else 512)
    nq = args.queries or (500 if args.quick else 1000)
    for flag, v in (("gallery", g), ("dim", d), ("queries", nq), ("block", args.block)):
        if v < 1:
            p.error(f"--{flag} must be >= 1")
    if g < K:
        p.error(f"--gallery must hold at least {K} vectors")

    t0 = time.perf_counter()
    gallery, queries, planted = make_data(g, nq, d)
    print(f"data {g}x{d} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows, exact = [], None
    for method in ("faiss_flat", "torch_topk", "faiss_ivfpq"):
        t0 = time.perf_counter()
        if method == "torch_topk":
            g_dev = torch.from_numpy(gallery).to(args.device)
            if args.device == "cuda":  # CUDA context and cuBLAS set-up are not search time
                torch_topk(queries[:8], g_dev, K, args.block)
                torch.cuda.synchronize()
            build_s = time.perf_counter() - t0  # the copy to the device (0 on CPU)
            t0 = time.perf_counter()
            ids = torch_topk(queries, g_dev, K, args.block)
            if args.device == "cuda":
                torch.cuda.synchronize()
        else:
            kw = dict(nlist=args.nlist, m=args.m, nprobe=args.nprobe) if method == "faiss_ivfpq" else {}
            index = Index(d, kind=method.split("_")[1], gpu=None, **kw)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nlist/m adjustments are reported in the JSON
                index.add(gallery)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ids = faiss_search(index, queries, K, args.block)
        search_s = time.perf_counter() - t0
        if exact is None:
            exact = ids
        row = {"method": method, "gallery": g, "dim": d, "queries": nq,
               "build_s": round(build_s, 3), "search_s": round(search_s, 3),
               "queries_per_s": round(nq / search_s, 1), "recall_at_10": round(recall(ids, exact), 4),
               # the one true neighbour at rank 1: on structure-free vectors the exact top-10's
               # other 9 are unrelated rows within a few hundredths of each other, so recall@10
               # mostly measures ranking noise, while this measures finding the neighbour
               "planted_at_1": round(float(np.mean(ids[:, 0] == planted)), 4)}
        row["on"] = args.device if method == "torch_topk" else ("cuda" if index.gpu else "cpu")
        if method == "faiss_ivfpq":
            row.update(nlist=index.nlist, m=index.m, nbits=index.nbits, nprobe=index.nprobe)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)

    lines = ["| method | on | gallery | build (s) | queries/s | recall@10 vs exact | "
             "planted neighbour at 1 |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['on']} | {g}x{d} | {r['build_s']:.2f} | "
                     f"{r['queries_per_s']:.0f} | {r['recall_at_10']:.3f} | "
                     f"{r['planted_at_1']:.3f} |")
    print("\n".join(lines))
    print(json.dumps({"bench": "retrieval", "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "hardware": cpu_name(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch_device": args.device, "faiss_gpu": faiss_gpu_available(), "k": K,
        "block": args.block, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
