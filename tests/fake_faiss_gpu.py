"""A stand-in for faiss's GPU API on a CPU-only faiss build, for tests of the GPU code paths.

:func:`install` patches ``faiss.get_num_gpus``, ``StandardGpuResources``, ``GpuClonerOptions``,
``index_cpu_to_gpu`` and ``index_gpu_to_cpu`` with fakes that run the CPU index underneath but
refuse what the real GPU kernels refuse (faiss/gpu, 1.8-1.14, without cuVS):

- search with ``k`` or ``nprobe`` above 2048 (``GPU_MAX_SELECTION_K``);
- ``GpuIndexIVFPQ``: ``nbits != 8``; a code size (``M``) outside the kernels' list; a lookup
  table (``M * 256`` entries of 4 bytes, or 2 with ``useFloat16``) above the 48 KiB of shared
  memory per block every NVIDIA GPU reports;
- any use after the ``StandardGpuResources`` it was made with has been garbage-collected.

Every clone is recorded in ``calls`` as ``(device, options)``.
"""
from __future__ import annotations

import gc
import weakref

import faiss
import numpy as np

MAX_K = 2048
SMEM_PER_BLOCK = 48 * 1024
PQ_CODE_SIZES = {1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96}


class StandardGpuResources:
    pass


class GpuClonerOptions:
    def __init__(self):
        self.useFloat16 = False
        self.useFloat16CoarseQuantizer = False
        self.usePrecomputed = False
        self.use_cuvs = False


class FakeGpuIndex:
    """A CPU index behind the GPU index's checks; ``nprobe`` is a plain attribute, as on
    ``GpuIndexIVF``."""

    def __init__(self, res, device, cpu, options):
        self._res = weakref.ref(res)  # the real GPU index does not keep the Python object
        self.device, self.cpu, self.options = device, cpu, options
        self.nprobe = getattr(cpu, "nprobe", 1)
        if isinstance(cpu, faiss.IndexIVFPQ):
            m, nbits = cpu.pq.M, cpu.pq.nbits
            if nbits != 8:
                raise RuntimeError(f"Bits per code must be 8 (passed {nbits})")
            if m not in PQ_CODE_SIZES:
                raise RuntimeError(f"Number of bytes per encoded vector / sub-quantizers ({m}) "
                                   f"is not supported")
            need = (2 if options.useFloat16 else 4) * m * 2 ** nbits
            if need > SMEM_PER_BLOCK:
                raise RuntimeError(f"Device {device} has {SMEM_PER_BLOCK} bytes of shared memory, "
                                   f"while {nbits} bits per code and {m} sub-quantizers requires "
                                   f"{need} bytes. Consider useFloat16LookupTables")

    def _alive(self):
        if self._res() is None:
            raise RuntimeError("GPU resources were freed while the index lives (segfault)")

    @property
    def ntotal(self):
        return self.cpu.ntotal

    @property
    def is_trained(self):
        return self.cpu.is_trained

    def train(self, x):
        self._alive()
        self.cpu.train(x)

    def add(self, x):
        self._alive()
        self.cpu.add(x)

    def search(self, x, k):
        self._alive()
        if not 0 < k <= MAX_K:
            raise RuntimeError(f"GPU index only supports min/max-K selection up to {MAX_K} "
                               f"(requested {k})")
        if hasattr(self.cpu, "nprobe"):
            if not 0 < self.nprobe <= MAX_K:
                raise RuntimeError(f"GPU IVF index only supports nprobe selection up to {MAX_K} "
                                   f"(requested {self.nprobe})")
            self.cpu.nprobe = self.nprobe
        gc.collect()  # a resources object with no other reference goes now
        self._alive()
        return self.cpu.search(np.ascontiguousarray(x, dtype=np.float32), k)


def install(monkeypatch) -> list:
    """Patch faiss (through pytest's ``monkeypatch``) so it sees one fake GPU; returns the list
    that records ``(device, options)`` of every ``index_cpu_to_gpu`` call."""
    calls: list = []

    def index_cpu_to_gpu(res, device, index, options=None):
        options = options or GpuClonerOptions()
        calls.append((device, options))
        return FakeGpuIndex(res, device, faiss.clone_index(index), options)

    def index_gpu_to_cpu(index):
        index._alive()
        cpu = faiss.clone_index(index.cpu)
        if hasattr(cpu, "nprobe"):
            cpu.nprobe = index.nprobe
        return cpu

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", StandardGpuResources, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", GpuClonerOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", index_gpu_to_cpu, raising=False)
    return calls
