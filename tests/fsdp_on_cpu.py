"""accelerate's FSDP on CPU processes (gloo), for the tests: accelerate 1.15 does not do it by
itself. Its AcceleratorState turns FSDP on only for GPU-like process groups, so
``ACCELERATE_USE_CPU=1 accelerate launch --use_fsdp`` silently trains with DDP (and FSDP1's
default ``--fsdp_sync_module_states true`` stops with "no available devices"). FSDP2 itself
(torch's fully_shard) runs on a CPU mesh; FSDP1 does not (measured: a segfault in its forward).

As a runner: ``accelerate launch --use_fsdp --fsdp_version 2 --fsdp_sync_module_states false
--fsdp_cpu_ram_efficient_loading false --num_processes 2 tests/fsdp_on_cpu.py SCRIPT ARGS...``
(with ``ACCELERATE_USE_CPU=1``) runs SCRIPT (or ``-m MODULE``) with FSDP forced on.
"""
from __future__ import annotations

import os
import runpy
import sys


def force_fsdp() -> None:
    """From now on, an Accelerator of CPU processes with ACCELERATE_USE_FSDP=true uses FSDP."""
    from accelerate import state as S
    from accelerate.utils import DistributedType

    init = S.AcceleratorState.__init__
    if getattr(init, "_fsdp_on_cpu", False):
        return

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if (fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU
                and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            # every later AcceleratorState() copies PartialState's type over its own
            S.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    patched._fsdp_on_cpu = True
    S.AcceleratorState.__init__ = patched


if __name__ == "__main__":
    force_fsdp()
    if sys.argv[1] == "-m":  # a module: -m avssl.bench ...
        module, sys.argv = sys.argv[2], sys.argv[2:]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, sys.argv = sys.argv[1], sys.argv[1:]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")
