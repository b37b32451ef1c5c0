"""How this process was launched: catch the multi-process launches that silently go wrong.

Used by the recipes and ``python -m avssl.bench`` right after the process group is set up.
"""
from __future__ import annotations

import os

from avssl.errors import AvsslError


def launch_warning(num_processes: int, env=None) -> str | None:
    """Check how this process was launched: raise for processes that did not join one group,
    return a one-line warning for a multi-process launch that started one process, else None.

    - ``accelerate launch --num_processes N`` (N > 1) without GPUs sends the run to its simple
      launcher, which starts ONE process (its CPU multi-process launch needs ``mpirun``:
      ``--mpirun_hostfile``). It exports MASTER_ADDR and ACCELERATE_USE_CPU but no rank or world
      size, which is how the case is recognised: a warning.
    - ``accelerate launch --multi_gpu`` (or torchrun) without GPUs and without
      ``ACCELERATE_USE_CPU=1`` starts N processes that each find no process group: every one
      would train alone on all the data and write the same run folder. An error, before anything
      is written.
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world > 1 and num_processes == 1:
        raise AvsslError(f"{world} processes were launched but did not join one group (no GPU "
                         "here?): each would train alone and write the same run folder; for "
                         "CPU processes set ACCELERATE_USE_CPU=1 (gloo)")
    ranked = any(k in env for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    if (num_processes == 1 and "MASTER_ADDR" in env and "ACCELERATE_USE_CPU" in env
            and not ranked):
        return ("warning: accelerate launch started one process (without GPUs its multi-process "
                "launch needs mpirun); for N CPU processes run ACCELERATE_USE_CPU=1 accelerate "
                "launch --multi_gpu --num_processes N ...")
    return None
