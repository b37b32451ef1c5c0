"""Nearest-neighbour search by inner product: a FAISS index wrapper and exact true-pair ranks.

- :class:`Index` wraps ``faiss.IndexFlatIP`` (exact) or ``faiss.IndexIVFPQ`` (approximate, for
  large galleries), on a GPU when faiss sees one, on the CPU otherwise.
- :func:`search` is the one-call top-k: ``scores (Q, k) float32, ids (Q, k) int64``.
- :func:`true_ranks` gives the 1-based rank of the true gallery item of every query (row i of
  ``queries`` pairs with row i of ``gallery``); ties count against the model, so constant
  embeddings rank every true item last.
- :func:`score_chunks` is the exact scorer behind ``true_ranks`` (and the class-match retrieval
  of :mod:`avssl.eval.retrieval`): blocks of queries against the whole gallery in float64.

With ``normalize=True`` (the default) vectors are L2-normalised in float32 first, so scores are
cosine similarities; zero vectors stay zero (score 0 against everything), never NaN.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Literal

import numpy as np
import torch

from avssl.errors import ConfigError

# One query block of exact scores holds at most this many float64 values (128 MiB), so a
# 100k x 100k problem never materialises the full similarity matrix.
_CHUNK_ELEMS = 1 << 24
# IVF coarse k-means and PQ codebooks want >= 39 training points per centroid (faiss's own rule).
_POINTS_PER_CENTROID = 39
# faiss GPU indexes select at most this many results (k) and IVF cells (nprobe) per query
# (GPU_MAX_SELECTION_K); deeper searches run on a CPU copy of the index.
_GPU_MAX_K = 2048


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def as_matrix(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested list) as a C-contiguous float32 (N, D) array.

    Raises ConfigError unless ``x`` is 2-D with at least one row and column and every value is
    finite.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    try:
        arr = np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: expected a 2-D float array (N, D), got {type(x).__name__} "
                          f"({' '.join(str(e).split())})") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"{name}: expected a non-empty 2-D array (N, D), got shape "
                          f"{tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ConfigError(f"{name}: expected finite values, {bad} of {len(arr)} rows of shape "
                          f"{tuple(arr.shape)} hold NaN or inf")
    return arr


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) float32 divided by their L2 norm; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True).astype(np.float32)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _pair(queries: Any, gallery: Any, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    q, g = as_matrix(queries, "queries"), as_matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ConfigError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must have the "
                          f"same embedding dimension")
    if normalize:
        q, g = l2_normalize(q), l2_normalize(g)
    return q, g


class Index:
    """An inner-product index over (N, D) float32 vectors.

    ``kind="flat"`` is exact. ``kind="ivfpq"`` clusters the gallery into ``nlist`` cells,
    compresses each vector into ``m`` codes of ``nbits`` bits and visits ``nprobe`` cells per
    query; it is trained on the first :meth:`add`. Small galleries get a smaller ``nlist``,
    ``nbits`` (and an ``m`` that divides ``dim``) so that training is possible; every such
    change is announced with ``warnings.warn``.

    ``gpu=None`` puts the index on a GPU when faiss sees one (torch's current CUDA device, so
    each process of a multi-GPU launch uses its own); ``gpu=True`` requires one. IVF-PQ lookup
    tables too large for the GPU's shared memory in float32 (``m * 2**nbits * 4`` bytes above
    48 KiB, e.g. the default ``m=64``) use float16 there; a configuration the GPU cannot hold at
    all (``nbits != 8``, an unsupported ``m``) falls back to the CPU with a warning, and so does
    a search deeper than faiss's GPU limit of 2048 results or cells per query.
    """

    def __init__(self, dim: int, *, kind: Literal["flat", "ivfpq"] = "flat", nlist: int = 1024,
                 m: int = 64, nbits: int = 8, nprobe: int = 32, gpu: bool | None = None):
        import faiss

        if int(dim) < 1:
            raise ConfigError(f"expected an embedding dimension >= 1, got {dim}")
        if kind not in ("flat", "ivfpq"):
            raise ConfigError(f"unknown index kind {kind!r}; expected 'flat' or 'ivfpq'")
        for key, value in (("nlist", nlist), ("m", m), ("nbits", nbits), ("nprobe", nprobe)):
            if int(value) < 1:
                raise ConfigError(f"expected {key} >= 1, got {value}")
        has_gpu = faiss_gpu_available()
        if gpu and not has_gpu:
            raise ConfigError("gpu=True but faiss sees no GPU; install faiss-gpu-cu12 on a GPU "
                              "machine or pass gpu=None to use the CPU")
        self.dim, self.kind = int(dim), kind
        self.nlist, self.m, self.nbits, self.nprobe = int(nlist), int(m), int(nbits), int(nprobe)
        self.gpu = has_gpu if gpu is None else bool(gpu)
        self._res = None  # faiss GPU resources must outlive the index
        # ivfpq is built at the first add(), when the gallery size fixes nlist and nbits
        self._index = self._place(faiss.IndexFlatIP(self.dim)) if kind == "flat" else None

    @property
    def ntotal(self) -> int:
        """Number of vectors added so far."""
        return 0 if self._index is None else int(self._index.ntotal)

    def _place(self, index):
        if not self.gpu:
            return index
        import faiss

        # the process's own GPU: faiss and torch number the visible devices alike
        device = torch.cuda.current_device() if torch.cuda.is_available() else 0
        try:
            if self._res is None:
                self._res = faiss.StandardGpuResources()
            try:
                return faiss.index_cpu_to_gpu(self._res, device, index)
            except Exception:
                if self.kind != "ivfpq":
                    raise
                half = faiss.GpuClonerOptions()
                half.useFloat16 = True  # float16 lookup tables: half the shared memory
                return faiss.index_cpu_to_gpu(self._res, device, index, half)
        except Exception as e:  # e.g. a PQ code size the GPU kernels do not support
            warnings.warn(f"faiss GPU index unavailable for this configuration "
                          f"({' '.join(str(e).split())[:200]}); using the CPU", stacklevel=3)
            self.gpu = False
            return index

    def _build_ivfpq(self, n: int) -> None:
        import faiss

        if n < 2:  # PQ trains at least 2 centroids (nbits >= 1) by k-means on these vectors
            raise ConfigError(f"IVF-PQ needs at least 2 vectors to train its codebooks, got {n}; "
                              "use kind='flat' (exact) for a gallery this small")
        nlist = min(self.nlist, max(1, n // _POINTS_PER_CENTROID))
        nbits = min(self.nbits, max(1, int(math.log2(max(2, n // _POINTS_PER_CENTROID)))))
        m = max(d for d in range(1, min(self.m, self.dim) + 1) if self.dim % d == 0)
        changed = [f"{k}={old}->{new}" for k, old, new in
                   (("nlist", self.nlist, nlist), ("nbits", self.nbits, nbits), ("m", self.m, m))
                   if old != new]
        if changed:
            warnings.warn(f"IVF-PQ on {n} training vectors of dim {self.dim}: using "
                          f"{', '.join(changed)} (nlist and 2**nbits need about "
                          f"{_POINTS_PER_CENTROID} vectors each; m must divide dim)",
                          stacklevel=3)
        self.nlist, self.nbits, self.m = nlist, nbits, m
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        self._quantizer = quantizer  # faiss does not own it: keep it alive with the index
        self._index = self._place(index)

    def add(self, x: Any) -> None:
        """Add ``x`` (N, D) float32 (ids continue from :attr:`ntotal`); trains IVF-PQ first."""
        x = as_matrix(x, "vectors")
        if x.shape[1] != self.dim:
            raise ConfigError(f"vectors {tuple(x.shape)} do not match the index dimension "
                              f"{self.dim}")
        if self._index is None:
            self._build_ivfpq(len(x))
        if not self._index.is_trained:
            try:
                self._index.train(x)
            except RuntimeError as e:  # faiss reports bad training sets as RuntimeError
                raise ConfigError(f"IVF-PQ training on {len(x)} vectors failed: "
                                  f"{' '.join(str(e).split())[:300]}") from None
        self._index.add(x)

    def search(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products of ``q`` (Q, D): ``scores`` (Q, k) float32 (descending) and
        ``ids`` (Q, k) int64.

        ``k`` is clamped to :attr:`ntotal`, so a flat index never returns a missing id; IVF-PQ
        returns id -1 (score -inf) where the visited cells hold fewer than ``k`` vectors.
        """
        q = as_matrix(q, "queries")
        if q.shape[1] != self.dim:
            raise ConfigError(f"queries {tuple(q.shape)} do not match the index dimension "
                              f"{self.dim}")
        if self.ntotal == 0:
            raise ConfigError("the index is empty; add() gallery vectors before searching")
        if int(k) < 1:
            raise ConfigError(f"expected k >= 1, got {k}")
        k = min(int(k), self.ntotal)
        nprobe = min(self.nprobe, self.nlist) if self.kind == "ivfpq" else 1
        if self.gpu and max(k, nprobe) > _GPU_MAX_K:
            import faiss

            asked = f"k={k}" + (f", nprobe={nprobe}" if self.kind == "ivfpq" else "")
            warnings.warn(f"{asked}: faiss GPU indexes select at most {_GPU_MAX_K} per query; "
                          f"moving the index to the CPU", stacklevel=2)
            self._index, self.gpu = faiss.index_gpu_to_cpu(self._index), False
        if self.kind == "ivfpq":
            self._index.nprobe = nprobe
        scores, ids = self._index.search(q, k)
        return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)


def search(queries: Any, gallery: Any, k: int, *, normalize: bool = True,
           kind: Literal["flat", "ivfpq"] = "flat", **index_kw) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery items for every query: ``scores`` (Q, k) float32, ``ids`` (Q, k) int64.

    ``queries`` (Q, D) and ``gallery`` (G, D) are numpy arrays or torch tensors; ``k`` is
    clamped to G. ``index_kw`` go to :class:`Index` (``nlist``, ``m``, ``nbits``, ``nprobe``,
    ``gpu``).
    """
    q, g = _pair(queries, gallery, normalize)
    index = Index(g.shape[1], kind=kind, **index_kw)
    index.add(g)
    return index.search(q, k)


def _torch_device(gpu: bool | None) -> torch.device:
    if gpu and not torch.cuda.is_available():
        raise ConfigError("gpu=True but torch sees no CUDA device; pass gpu=None to use the CPU")
    use = torch.cuda.is_available() if gpu is None else bool(gpu)
    return torch.device("cuda" if use else "cpu")


def score_chunks(queries: Any, gallery: Any, *, normalize: bool = True, gpu: bool | None = None,
                 chunk_elems: int = _CHUNK_ELEMS,
                 ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Exact scores of every query against the whole gallery, one block of queries at a time.

    Yields ``(start, scores, tol)``: ``scores`` float64 (B, G) are the inner products of queries
    ``start:start + B`` (after float32 normalisation when ``normalize``) with every gallery row,
    and ``tol`` float64 (B, 1) is a bound on their rounding error. Two scores of one row closer
    than ``tol`` are a tie: products of float32 inputs are exact in float64, so only the sums
    round, by at most ``D * 2**-53 * |q| * |g|``; ``tol`` is 8x that (different BLAS code paths
    may sum identical rows in a different order). On CUDA when available (``gpu=None``).
    """
    q, g = _pair(queries, gallery, normalize)
    device = _torch_device(gpu)
    gal = torch.from_numpy(g).to(device, torch.float64)
    gmax = float(torch.linalg.vector_norm(gal, dim=1).max())
    step = max(1, int(chunk_elems) // len(g))
    for start in range(0, len(q), step):
        qb = torch.from_numpy(q[start:start + step]).to(device, torch.float64)
        tol = (q.shape[1] * 2.0 ** -50 * gmax) * torch.linalg.vector_norm(qb, dim=1, keepdim=True)
        yield start, qb @ gal.T, tol


def true_ranks(queries: Any, gallery: Any, *, normalize: bool = True,
               kind: Literal["flat", "ivfpq"] = "flat", depth: int | None = None,
               **index_kw) -> np.ndarray:
    """1-based rank (N,) int64 of gallery item i for query i; row i of each is the true pair.

    ``rank_i = 1 + #{j != i : s_ij >= s_ii}``: ties count against the model, so constant
    embeddings give every query rank N. Needs as many gallery rows as queries (extra gallery
    rows are distractors and allowed).

    - ``kind="flat"``: exact, from :func:`score_chunks` (scores equal within float rounding
      count as ties); ``depth`` caps the reported rank at ``depth + 1`` if given. Memory stays
      at one block of about 128 MiB plus the gallery in float64; ``index_kw`` may hold ``gpu``.
    - ``kind="ivfpq"``: approximate, from a FAISS IVF-PQ search of depth ``depth`` (default
      ``min(G, 1000)``) with approximate (PQ) scores; a true item not retrieved within the
      depth, or tied with the last item retrieved (more ties may lie beyond), is reported as
      ``depth + 1``. R@k (k <= depth) is then an estimate, and a median rank above the depth
      reads ``depth + 1``.
    """
    q, g = _pair(queries, gallery, normalize)
    n, n_gallery = len(q), len(g)
    if n_gallery < n:
        raise ConfigError(f"queries {tuple(q.shape)} need a gallery with at least as many rows "
                          f"(row i of each is a true pair), got gallery {tuple(g.shape)}")
    if depth is not None and int(depth) < 1:
        raise ConfigError(f"expected depth >= 1, got {depth}")
    if kind == "flat":
        unknown = set(index_kw) - {"gpu"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)} for kind='flat'; only 'gpu'")
        ranks = np.empty(n, dtype=np.int64)
        for start, s, tol in score_chunks(q, g, normalize=False, gpu=index_kw.get("gpu")):
            rows = torch.arange(len(s), device=s.device)
            true = s[rows, rows + start].unsqueeze(1)
            # the true item itself is always counted (s_ii >= s_ii - tol), hence no "+ 1"
            ranks[start:start + len(s)] = (s >= true - tol).sum(1).cpu().numpy()
        return ranks if depth is None else np.minimum(ranks, int(depth) + 1)
    if kind != "ivfpq":
        raise ConfigError(f"unknown index kind {kind!r}; expected 'flat' or 'ivfpq'")
    depth = min(n_gallery, 1000 if depth is None else int(depth))
    index = Index(q.shape[1], kind="ivfpq", **index_kw)
    index.add(g)
    scores, ids = index.search(q, depth)
    ranks = np.full(n, depth + 1, dtype=np.int64)
    hit = ids == np.arange(n)[:, None]
    found = hit.any(axis=1)
    true = np.where(found, scores[np.arange(n), hit.argmax(axis=1)], np.inf)
    ahead = ((scores >= true[:, None]) & (ids >= 0) & ~hit).sum(axis=1)
    ranks[found] = 1 + ahead[found]
    # a true item tied with the last item returned may have more ties beyond the depth, unseen:
    # ties count against the model, so it is ranked beyond the depth (unless nothing is unseen)
    unseen_ties = (ids[:, -1] >= 0) & (scores[:, -1] >= true) & (depth < index.ntotal)
    ranks[found & unseen_ties] = depth + 1
    return ranks
