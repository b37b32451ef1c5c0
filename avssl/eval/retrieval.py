"""Retrieval metrics: paired (cross-modal) recall@k and median rank, and class-match retrieval.

- Paired retrieval (``retrieval_metrics``, ``cross_modal_retrieval``): row i of the queries and
  row i of the gallery are a true pair; the rank of the true item is 1 + the number of other
  gallery items scoring at least as high (:func:`avssl.retrieval.true_ranks`), so ties count
  against the model and constant embeddings get R@1 ~ 0 and median rank N. ``R@k`` = percent
  of queries whose true item has rank <= k; ``median_rank`` / ``mean_rank`` are 1-based (1 is
  perfect; the median of an even count is the mean of the two middle ranks).
- Class-match retrieval (``class_retrieval``, the video-SSL "video retrieval" protocol of e.g.
  Xu et al. 2019, test clips querying train clips): a query scores a hit at k when one of its k
  nearest gallery items (cosine) has its class. Ties: hit@k iff
  ``#{other-class j : s_j >= best same-class score} < k``, i.e. other-class items tied with the
  best same-class item are ranked ahead of it.

Scores are cosine similarities (``normalize=True``), exact by default (``kind="flat"``);
``kind="ivfpq"`` uses an approximate FAISS IVF-PQ index for large galleries (paired ranks
beyond the search depth are reported as depth + 1; class-match retrieval looks at the
max(ks) + 1 items the index returns, and a query whose best same-class item ties with the last
of them does not score, as the tied items beyond the depth are unseen).

File CLI: ``python -m avssl.eval retrieval --queries Q.npy --gallery G.npy [--kind ivfpq]``
(two float ``.npy`` arrays (N, D) and (G >= N, D), row i of each a true pair) prints
``R@1``, ``R@5``, ``R@10``, ``median_rank``, ``mean_rank``, ``num_queries`` and
``gallery_size`` (G: recall falls as distractors are added, so a number needs it).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Literal, Sequence

import numpy as np
import torch

from avssl.errors import ConfigError, DataError
from avssl.eval import EVALUATORS
from avssl.retrieval import Index, as_matrix, l2_normalize, score_chunks, true_ranks


def _ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ConfigError(f"expected recall cut-offs k >= 1, got {list(ks)}")
    return ks


def rank_metrics(ranks: Any, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """``R@k`` (percent with rank <= k), ``median_rank``, ``mean_rank``, ``num_queries`` of
    1-based ``ranks`` (N,)."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ConfigError(f"ranks: expected a non-empty 1-D array, got shape {tuple(r.shape)}")
    out: dict = {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in _ks(ks)}
    out.update(median_rank=float(np.median(r)), mean_rank=float(r.mean()), num_queries=len(r))
    return out


def retrieval_metrics(queries: Any, gallery: Any, *, ks: Sequence[int] = (1, 5, 10),
                      kind: Literal["flat", "ivfpq"] = "flat", normalize: bool = True,
                      **index_kw) -> dict:
    """Paired retrieval of ``gallery`` (G, D) row i by ``queries`` (N, D) row i (G >= N).

    Returns ``R@k`` for each k (percent), ``median_rank``, ``mean_rank`` (1-based),
    ``num_queries`` and ``gallery_size`` (G). ``index_kw`` go to
    :func:`avssl.retrieval.true_ranks` (``depth``, ``gpu``, IVF-PQ settings).
    """
    ks = _ks(ks)
    depth = index_kw.get("depth")
    if kind == "ivfpq" and depth is not None and int(depth) < max(ks):
        raise ConfigError(f"search depth {depth} is smaller than the largest k {max(ks)}")
    ranks = true_ranks(queries, gallery, normalize=normalize, kind=kind, **index_kw)
    return {**rank_metrics(ranks, ks), "gallery_size": len(gallery)}


def cross_modal_retrieval(video: Any, audio: Any, **kw) -> dict:
    """``{"v2a": ..., "a2v": ...}``: :func:`retrieval_metrics` of video (N, D) embeddings
    querying audio (N, D) ones and back; row i of each comes from the same clip."""
    return {"v2a": retrieval_metrics(video, audio, **kw),
            "a2v": retrieval_metrics(audio, video, **kw)}


def _class_labels(y: Any, n: int, name: str) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.shape != (n,):
        raise ConfigError(f"{name}: expected one label per row, shape ({n},), got "
                          f"{tuple(y.shape)}")
    return y


def class_retrieval(query_x: Any, query_y: Any, gallery_x: Any, gallery_y: Any,
                    ks: Sequence[int] = (1, 5, 10), *, kind: Literal["flat", "ivfpq"] = "flat",
                    normalize: bool = True, **index_kw) -> dict:
    """Class-match retrieval: ``R@k`` = percent of queries (M, D) with a same-class item among
    their k nearest gallery items (G, D), ties counted against (module docstring), plus
    ``num_queries`` and ``gallery_size``. Labels (M,) / (G,) may be ints or strings; a query
    whose class is absent from the gallery never scores."""
    ks = _ks(ks)
    qx, gx = as_matrix(query_x, "query_x"), as_matrix(gallery_x, "gallery_x")
    qy = _class_labels(query_y, len(qx), "query_y")
    gy = _class_labels(gallery_y, len(gx), "gallery_y")
    if qx.shape[1] != gx.shape[1]:
        raise ConfigError(f"queries {tuple(qx.shape)} and gallery {tuple(gx.shape)} must have "
                          f"the same embedding dimension")
    # classes as integer codes shared by both sides, so the comparison can run in torch
    _, codes = np.unique(np.concatenate([qy, gy]), return_inverse=True)
    qc, gc = codes[:len(qy)].astype(np.int64), codes[len(qy):].astype(np.int64)

    ahead = np.empty(len(qx), dtype=np.int64)  # other-class items at least as close as the best
    found = np.empty(len(qx), dtype=bool)       # same-class one; found: the query has one at all
    if kind == "flat":
        unknown = set(index_kw) - {"gpu"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for kind='flat'; only 'gpu'")
        gal_c = None
        for start, s, tol in score_chunks(qx, gx, normalize=normalize, gpu=index_kw.get("gpu")):
            if gal_c is None:
                gal_c = torch.from_numpy(gc).to(s.device)
            q_c = torch.from_numpy(qc[start:start + len(s)]).to(s.device)
            same = gal_c[None, :] == q_c[:, None]
            best = s.masked_fill(~same, -torch.inf).max(dim=1, keepdim=True).values
            n_ahead = ((s >= best - tol) & ~same).sum(1)
            ahead[start:start + len(s)] = n_ahead.cpu().numpy()
            found[start:start + len(s)] = same.any(1).cpu().numpy()
    elif kind == "ivfpq":
        if normalize:
            qx, gx = l2_normalize(qx), l2_normalize(gx)
        index = Index(qx.shape[1], kind="ivfpq", **index_kw)
        index.add(gx)
        # one item past the largest k, so a tie between the best same-class item and the items
        # cut off by the search depth shows as a tie with the last returned item
        scores, ids = index.search(qx, max(ks) + 1)
        valid = ids >= 0
        same = valid & (gc[np.where(valid, ids, 0)] == qc[:, None])
        best = np.where(same, scores, -np.inf).max(axis=1, initial=-np.inf)
        ahead = ((scores >= best[:, None]) & valid & ~same).sum(axis=1)
        found = same.any(axis=1)
        # how many unseen items tie with it is then unknown: ties count against the model, so
        # the query does not score (unless the search returned the whole gallery: none unseen)
        unseen_ties = valid[:, -1] & (scores[:, -1] >= best) & (ids.shape[1] < index.ntotal)
        found &= ~unseen_ties
    else:
        raise ConfigError(f"unknown index kind {kind!r}; expected 'flat' or 'ivfpq'")
    # a query with no same-class item (in the gallery, or in the IVF-PQ results) never scores,
    # however large k is
    out: dict = {f"R@{k}": float(100.0 * np.mean(found & (ahead < k))) for k in ks}
    out.update(num_queries=int(len(qx)), gallery_size=int(len(gx)))
    return out


# ------------------------------------------------------------------------------------- files
def _load(path: str | os.PathLike, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError(f"{what} file {path} not found (expected a .npy float array (N, D))")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / OSError / UnpicklingError variants
        raise DataError(f"cannot read {what} file {path} as a .npy array: "
                        f"{' '.join(str(e).split())}") from None


def evaluate_retrieval_files(queries: str | os.PathLike, gallery: str | os.PathLike, *,
                             kind: Literal["flat", "ivfpq"] = "flat",
                             normalize: bool = True) -> dict:
    """:func:`retrieval_metrics` of two ``.npy`` files whose row i is a true pair."""
    return retrieval_metrics(_load(queries, "queries"), _load(gallery, "gallery"), kind=kind,
                             normalize=normalize)


def _run(args: argparse.Namespace) -> dict:
    return evaluate_retrieval_files(args.queries, args.gallery, kind=args.kind,
                                    normalize=not args.no_normalize)


@EVALUATORS.register("retrieval")
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Subcommand ``retrieval``: paired R@1/5/10 and median rank of two .npy embedding files."""
    p = subparsers.add_parser(
        "retrieval", help="R@1/5/10 and median rank of paired .npy embeddings",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", required=True, metavar="Q.npy", help="float array (N, D)")
    p.add_argument("--gallery", required=True, metavar="G.npy",
                   help="float array (G >= N, D); row i pairs with query i")
    p.add_argument("--kind", choices=("flat", "ivfpq"), default="flat",
                   help="flat = exact (default); ivfpq = approximate FAISS IVF-PQ")
    p.add_argument("--no-normalize", action="store_true",
                   help="score raw inner products instead of cosine similarity")
    p.set_defaults(run=_run)
    return p
