"""How this process was launched: catch the multi-process launches that silently go wrong.

Used by the recipes and ``python -m avssl.bench`` right after the process group is set up.
"""
from __future__ import annotations

import os

from avssl.errors import AvsslError


def process_state():
    """accelerate's ``PartialState`` for this run, set up as ``AcceleratorState`` will set it up:
    ``ACCELERATE_USE_CPU=1`` makes a launch of CPU processes one gloo group. The first call
    joins the process group and fixes the state for the whole process."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


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


def check_shared_run_dir(accelerator, run_dir) -> None:
    """Stop every process of a multi-process run, before training, when ``run_dir`` is not one
    folder that all processes see (machines without a shared filesystem).

    accelerate's ``save_state`` has each process write its own RNG state into the checkpoint;
    the main process writes the rest and publishes the folder. A process on a machine that does
    not see the main process's disk writes its file where nobody reads it, and every checkpoint
    of the run is then missing it: ``--run.resume`` would fail after days of training. The main
    process writes a token file; every process looks for it; all processes agree (a gather) so
    none is left waiting in a collective.
    """
    if accelerator.num_processes == 1:
        return
    import secrets
    from pathlib import Path

    import torch
    from accelerate.utils import broadcast_object_list

    run_dir = Path(run_dir)
    token = [secrets.token_hex(8) if accelerator.is_main_process else None]
    broadcast_object_list(token)
    probe = run_dir / f".shared-check-{token[0]}"
    # the folders this check creates (run_dir and missing parents), removed again on failure
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text(token[0])
    accelerator.wait_for_everyone()
    try:
        seen = probe.read_text() == token[0]
    except OSError:
        seen = False
    flags = accelerator.gather(torch.tensor([float(seen)], device=accelerator.device))
    accelerator.wait_for_everyone()
    blind = [i for i, f in enumerate(flags.tolist()) if f < 0.5]
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)
        if blind:  # the run never started: leave no empty folders behind
            for d in created:  # run_dir first, then its parents; rmdir refuses non-empty ones
                d.rmdir()
    if blind:
        raise AvsslError(f"process(es) {blind} cannot see {run_dir}, which the main process "
                         "wrote: a run on several machines needs --run.out on a filesystem they "
                         "all share (each process saves its RNG state into every checkpoint)")


def decided_by_main(fn):
    """``fn()`` computed by the main process and handed to every process (its error too).

    For what all processes must agree on before the run starts, such as the run folder: a name
    made from the clock can differ between processes, and a checkpoint that only the main
    process's machine sees makes the other processes fail alone while the main one waits for
    them in a collective. Sets up the process group (accelerate's ``PartialState``) if needed.
    """
    from accelerate.utils import broadcast_object_list

    state = process_state()
    if state.num_processes == 1:
        return fn()
    payload: list = [None]
    error = None
    if state.is_main_process:
        try:
            payload = [("ok", fn())]
        except Exception as e:  # every process stops with the main process's message
            error, payload = e, [("error", str(e))]
    broadcast_object_list(payload)
    kind, value = payload[0]
    if error is not None:
        raise error
    if kind == "error":
        raise AvsslError(value)
    return value


def fsdp_keep_built_weights(accelerator) -> None:
    """Under FSDP, prepare the model each process built instead of reloading rank 0's weights.

    ``accelerate launch --use_fsdp`` turns ``cpu_ram_efficient_loading`` on by default: FSDP2's
    prepare then moves the model to the meta device and loads rank 0's state dict into the
    shards, code written for 🤗 Transformers models that fails on ours (a parameter at the model's
    root, such as MBT's bottleneck tokens: "not enough values to unpack"; BatchNorm's running
    statistics: "'Tensor' object has no attribute 'device_mesh'"). It saves memory only when a
    big pretrained checkpoint is loaded on one process; every process here builds the same model
    from the run's seed, so it is switched off, and the log says so."""
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if (accelerator.distributed_type != DistributedType.FSDP or plugin is None
            or not plugin.cpu_ram_efficient_loading):
        return
    plugin.cpu_ram_efficient_loading = False
    accelerator.print("FSDP: cpu_ram_efficient_loading off (each process built the same model "
                      "from the seed; accelerate's reload of rank 0's weights is for 🤗 "
                      "Transformers checkpoints)")


def fsdp_batchnorm_in_fp32(accelerator, model) -> int:
    """Under FSDP2 with bf16 / fp16, make each BatchNorm of ``model`` its own FSDP unit that keeps
    fp32 weights; returns how many. Call it before the optimizer is built (it replaces those
    parameters with their shards, and accelerate's prepare maps only the others).

    FSDP2 casts a unit's parameters to the policy's dtype for the forward but not its buffers, so
    a BatchNorm inside a bf16 unit met bf16 weights beside fp32 running statistics and stopped
    ("Expected running_mean to have type BFloat16 but got Float"; on CPU "expect parameter to
    have scalar type of Float"): ``pretrain_sync``'s default towers could not use FSDP with bf16.
    FSDP1 kept BatchNorm in fp32 by itself; for FSDP2 PyTorch's answer is a unit per BatchNorm
    with its own policy. This one casts nothing: weights, gradients' reduction and statistics
    stay fp32 and the bf16 activations go through the mixed-precision kernel, whose output keeps
    their dtype. A no-op without FSDP2 or mixed precision."""
    import torch
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if (accelerator.distributed_type != DistributedType.FSDP or plugin is None
            or getattr(plugin, "fsdp_version", 1) != 2 or accelerator.mixed_precision == "no"):
        return 0
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        _fp32_unit(accelerator, plugin, m)
    if norms:
        accelerator.print(f"FSDP: {len(norms)} BatchNorm layers sharded as their own fp32 units "
                          f"(FSDP2 casts weights, not running statistics, to "
                          f"{accelerator.mixed_precision})")
    return len(norms)


def fsdp_adopt_head(accelerator, model, head, name: str) -> bool:
    """Under FSDP2, shard ``head`` as its own fp32 unit and register it as ``model.<name>``;
    returns whether it did (not under FSDP). Call it before the optimizer is built.

    ``head``: trainable parameters the training step calls apart from ``model`` (the binary
    sync objective's classifier). accelerate's FSDP prepares one model with its optimizer: a
    second prepared model failed (a KeyError mapping the optimizer's parameters). Inside the
    model, as a unit of its own, the head is gathered by its own forward hooks wherever it is
    called, its parameters are among the model's (one optimizer, one gradient norm, gradient
    sync held back with the model's in accumulation) and its weights are in the model's state
    dict under ``<name>.``. fp32 and no input cast, as the BatchNorm units: the model's outputs
    reach it in fp32. FSDP1 is refused: it cannot be given a unit called outside the model's
    forward this way."""
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if accelerator.distributed_type != DistributedType.FSDP or plugin is None:
        return False
    if getattr(plugin, "fsdp_version", 1) != 2:
        from avssl.errors import ConfigError

        raise ConfigError(f"{type(head).__name__} has trainable parameters outside the model "
                          f"(e.g. --loss.kind=binary), which need FSDP2: launch with "
                          f"--fsdp_version 2")
    kind = type(head).__name__  # before fully_shard renames the class FSDP<kind>
    _fp32_unit(accelerator, plugin, head)
    model.add_module(name, head)
    accelerator.print(f"FSDP: {kind} sharded as its own fp32 unit of the model ({name}.)")
    return True


def _fp32_unit(accelerator, plugin, module) -> None:
    """Shard ``module`` as its own FSDP2 unit that casts nothing (fp32 weights, inputs as they
    come), on the mesh and with the resharding and offloading accelerate's prepare will use."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = getattr(accelerator, "torch_device_mesh", None)  # None: all processes
    if mesh is not None:
        mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    fully_shard(module, mesh=mesh, reshard_after_forward=plugin.reshard_after_forward,
                offload_policy=plugin.cpu_offload,
                mp_policy=MixedPrecisionPolicy(cast_forward_inputs=False))
