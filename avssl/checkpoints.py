"""Checkpoints: safetensors weights + resolved config, written atomically, loaded without pickle.

A checkpoint is a folder::

    step_000500/
      model.safetensors   every tensor, keys prefixed by component ("video.", "audio.", "head.")
      config.json         the resolved run config (what produced these weights)
      meta.json           {"format": 1, "step", "components": {name: {"encoder", "kwargs"}}, ...}
      state/              optional: accelerate's optimizer / scheduler / RNG / sampler state
                          (written by recipes for --resume; never read by load_checkpoint)

It is written into a hidden temporary folder and renamed into place, so a folder with the final
name is always complete; a kill mid-write leaves only a ``.tmp-*`` folder that nothing loads.
``<run root>/latest`` is a relative symlink to the newest complete checkpoint, replaced atomically;
on a filesystem without symlinks (exFAT, some SMB mounts) it is a one-line text file holding that
relative path instead, which :func:`resolve` follows the same way.

Loading reads only JSON and safetensors, so a stranger's checkpoint never executes code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from avssl.encoders.layers import non_float_for_float
from avssl.errors import AvsslError, ConfigError, DataError, UnknownNameError

log = logging.getLogger(__name__)

FORMAT = 1
WEIGHTS = "model.safetensors"


@dataclass
class Checkpoint:
    path: Path
    weights: dict[str, torch.Tensor]
    config: dict
    meta: dict

    def component_state(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict of one component (prefix ``name.`` stripped)."""
        prefix = name + "."
        state = {k[len(prefix):]: v for k, v in self.weights.items() if k.startswith(prefix)}
        if not state:
            have = sorted(self.meta.get("components", {}))
            raise AvsslError(f"checkpoint {self.path} has no component {name!r}; it has: "
                             f"{', '.join(have) or 'none'}")
        return state


def save_checkpoint(path: str | os.PathLike, components: dict[str, nn.Module], *, config: dict,
                    step: int, specs: dict[str, dict] | None = None,
                    extra_meta: dict | None = None,
                    write_state: Callable[[Path], None] | None = None,
                    tmp: Path | None = None) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``components``: name -> module (its ``state_dict()``) or a state dict, saved under ``name.``.
    ``specs``: name -> ``{"encoder": registered name, "kwargs": {...}}`` so that
    :func:`load_encoder` can rebuild the module without the recipe.
    ``write_state(tmp_dir)``: optional callback writing extra files (accelerate state) into the
    folder before it is renamed into place.
    ``tmp``: a hidden folder next to ``path`` already holding files (e.g. accelerate state written
    by every process); the weights are added to it and it is renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        tensors = {}
        for name, module in components.items():
            state = module if isinstance(module, Mapping) else module.state_dict()
            for k, v in state.items():
                # safetensors refuses shared/non-contiguous storage: store independent copies
                tensors[f"{name}.{k}"] = v.detach().to("cpu").contiguous().clone()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": str(FORMAT)})
        meta = {"format": FORMAT, "step": int(step),
                "components": {n: (specs or {}).get(n, {}) for n in components}}
        meta.update(extra_meta or {})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if write_state is not None:
            write_state(tmp / "state")
        if path.exists():  # re-saving the same step: swap the new one in, then delete the old
            # (deleting first left no checkpoint at all if the process died before the rename)
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".old-{path.name}-"))
            os.replace(path, old)  # onto the empty folder mkdtemp made
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def update_latest(run_root: str | os.PathLike, ckpt: str | os.PathLike,
                  name: str = "latest") -> Path:
    """Point ``run_root/<name>`` at ``ckpt`` (relative symlink, replaced atomically; a pointer
    file where symlinks cannot be made).

    A ``latest`` that is a real folder - a copy of the runs tree that followed links (``cp -rL``,
    ``rsync -L``, an object-store sync) - is kept, renamed ``latest.copy-<step>``, since
    ``os.replace`` cannot put a link over a folder."""
    run_root = Path(run_root)
    link = run_root / name
    target = os.path.relpath(Path(ckpt).resolve(), run_root.resolve())
    tmp = run_root / f".{name}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target, tmp)
    except OSError:  # no symlinks here: the same relative path, in a file
        tmp.write_text(Path(target).as_posix() + "\n", encoding="utf-8")
    if link.is_dir() and not link.is_symlink():
        step = _json_object(link / "meta.json").get("step", "unknown") if (
            link / "meta.json").is_file() else "unknown"
        aside = run_root / f"{name}.copy-{step}"
        if aside.exists():  # (an empty folder that os.replace may overwrite)
            aside = Path(tempfile.mkdtemp(dir=run_root, prefix=f"{name}.copy-{step}-"))
        os.replace(link, aside)
        log.warning("%s was a folder (a copy that followed links?), not a link; kept as %s",
                    link, aside.name)
    os.replace(tmp, link)
    return link


def _pointer(p: Path) -> Path:
    """The checkpoint a ``latest`` pointer file names (relative to the file's folder)."""
    try:
        text = p.read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        text = ""
    if not text or "\n" in text or len(text) > 4096:
        raise AvsslError(f"{p} is neither a checkpoint folder nor a link or pointer file to one; "
                         f"pass runs/<recipe>/<run>/step_N")
    return p.parent / text


def newest_step(run_dir: str | os.PathLike) -> Path | None:
    """The highest-numbered complete ``step_N`` checkpoint folder of a run folder, or None."""
    steps = [d for d in Path(run_dir).glob("step_*") if d.name[5:].isdigit()
             and (d / WEIGHTS).is_file() and (d / "meta.json").is_file()]
    return max(steps, key=lambda d: int(d.name[5:]), default=None)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder, a ``latest`` link, a recipe folder holding
    ``latest`` (``runs/<recipe>``: the newest run) or a run folder (``runs/<recipe>/<run>``: its
    newest complete ``step_N``)."""
    p = Path(path)
    if p.is_dir() and not (p / WEIGHTS).exists():
        if (p / "latest").exists():
            p = p / "latest"
        elif (step := newest_step(p)) is not None:
            p = step
    if p.is_file() and p.stat().st_size < 4096:  # a ``latest`` pointer file (no symlinks)
        p = _pointer(p)
    p = p.resolve()
    if not p.exists():
        raise AvsslError(f"checkpoint {path} does not exist; pass a checkpoint folder written by "
                         f"a recipe (runs/<recipe>/<run>/step_N) or runs/<recipe>/latest")
    if not (p / WEIGHTS).is_file() or not (p / "meta.json").is_file():
        raise AvsslError(f"{path} is not an avssl checkpoint: expected {WEIGHTS} and meta.json "
                         f"inside it")
    return p


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    p = resolve(path)
    meta = _json_object(p / "meta.json")
    if meta.get("format") != FORMAT:
        raise AvsslError(f"checkpoint {p} has format {meta.get('format')!r}; this avssl reads "
                         f"format {FORMAT}")
    cfg_file = p / "config.json"
    config = _json_object(cfg_file) if cfg_file.exists() else {}
    try:
        weights = load_file(str(p / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as e:  # truncated copy, interrupted download, not weights
        raise DataError(f"{p / WEIGHTS} is damaged ({_one_line(e)}); expected a complete "
                        f"safetensors file: copy the checkpoint folder again") from None
    return Checkpoint(p, weights, config, meta)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _json_object(path: Path) -> dict:
    """A checkpoint's JSON file, which must hold an object; a damaged one is a one-line error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path} is damaged ({_one_line(e)}); expected the JSON object a recipe "
                        f"writes: copy the checkpoint folder again") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is damaged: expected a JSON object, got "
                        f"{type(data).__name__}; copy the checkpoint folder again")
    return data


def load_encoder(path: str | os.PathLike, component: str = "video") -> nn.Module:
    """Rebuild a registered encoder saved as ``component`` and load its weights (strict)."""
    ckpt = load_checkpoint(path)
    components = ckpt.meta.get("components", {})
    if not isinstance(components, dict):
        raise DataError(f"{ckpt.path / 'meta.json'}: components must be a JSON object, got "
                        f"{type(components).__name__}; copy the checkpoint folder again")
    spec = components.get(component)
    if not spec or not isinstance(spec, dict) or "encoder" not in spec:
        raise AvsslError(f"checkpoint {ckpt.path} does not describe a {component!r} encoder "
                         f"(meta.json components: {sorted(ckpt.meta.get('components', {}))})")
    return build_component(ckpt, component)


def build_component(ckpt: Checkpoint, component: str) -> nn.Module:
    """The registered encoder meta.json names for ``component``, with its saved weights."""
    from avssl.encoders import build_encoder  # late: the zoo imports many modules

    spec = ckpt.meta["components"][component]
    kwargs = spec.get("kwargs", {})
    if not isinstance(spec["encoder"], str):
        raise DataError(f"{ckpt.path / 'meta.json'}: components.{component}.encoder must be an "
                        f"encoder name, got {json.dumps(spec['encoder'])[:80]}")
    if not isinstance(kwargs, dict):
        raise DataError(f"{ckpt.path / 'meta.json'}: components.{component}.kwargs must be a JSON "
                        f"object, got {type(kwargs).__name__}")
    try:
        model = build_encoder(spec["encoder"], **kwargs)
    except (ConfigError, UnknownNameError) as e:  # the checkpoint's fault, not a flag's: name it
        raise DataError(f"{ckpt.path / 'meta.json'}: components.{component}: "
                        f"{str(e).strip(chr(34) + chr(39))}") from None
    load_state_strict(model, ckpt.component_state(component), f"{ckpt.path} [{component}]")
    return model


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with one-line errors, refusing tensors whose
    dtype kind differs (integer weights into float parameters would be cast silently)."""
    bad = non_float_for_float(module, state)
    if bad:
        raise DataError(f"{where}: {len(bad)} tensor(s) are {state[bad[0]].dtype}, expected floating "
                        f"point (e.g. {bad[0]}); a quantized or foreign checkpoint?")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(f"{where} does not fit {type(module).__name__} as built from meta.json: "
                        f"{_one_line(e)[:400]}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a checkpoint folder's weights file."""
    p = Path(path)
    if p.is_dir():
        p = resolve(p) / WEIGHTS
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def share_buffers(modules) -> None:
    """Give every process the main process's buffers (BatchNorm running statistics) of
    ``modules``: a collective, so every process calls it with the same modules.

    DDP broadcasts them at every forward; FSDP does not, so each process's statistics follow its
    own batches. A sharded save (accelerate's SHARDED_STATE_DICT) writes each buffer once, from
    whichever process torch.distributed.checkpoint picks (measured: all from process 1 of 2),
    while the safetensors weights come from the main process: a resumed run then continued
    from another process's statistics and ended with other weights than a run straight through.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    seen: set[int] = set()
    with torch.no_grad():
        for m in modules:
            for b in m.buffers():
                if id(b) not in seen:
                    seen.add(id(b))
                    torch.distributed.broadcast(b, src=0)


def save_run_checkpoint(accelerator, run_dir: Path, step: int, components: dict, *,
                        config: dict, specs: dict[str, dict], latest_root: Path | None = None,
                        extra_meta: dict | None = None) -> Path:
    """Save ``run_dir/step_NNNNNNN`` from a recipe: weights + config + accelerate state.

    ``components``: name -> ``(prepared_model, prefix[, exclude])``: the keys of the model's
    full state dict under ``prefix``, stripped of it, leaving out keys that start with any of the
    ``exclude`` prefixes (e.g. ``(model, "video.")``, ``(model, "", ("video.", "audio."))``), or
    a module / state dict as in :func:`save_checkpoint`. Full state dicts come from
    ``accelerator.get_state_dict`` on every process, because under FSDP gathering the shards
    is a collective and the submodules of a wrapped model do not hold their full weights.

    Every process must call this (accelerate writes each process's RNG state). The state goes
    into a hidden folder first; the main process then adds the weights and renames it into place,
    and points ``latest_root/latest`` (default: the recipe folder above the run) at it.
    """
    run_dir = Path(run_dir)
    final = run_dir / f"step_{step:07d}"
    tmp = run_dir / f".tmp-step_{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "state").mkdir(parents=True)  # before any rank writes its RNG state into it
    accelerator.wait_for_everyone()
    if getattr(accelerator.distributed_type, "value", None) == "FSDP":
        share_buffers([c[0] if isinstance(c, tuple) else c for c in components.values()
                       if not isinstance(c, Mapping)])
    accelerator.save_state(str(tmp / "state"))
    full: dict[int, Mapping] = {}  # one gather per prepared model, on every process
    for c in components.values():
        if isinstance(c, tuple) and id(c[0]) not in full:
            # accelerate launch --dynamo_backend compiles the prepared model and get_state_dict
            # keeps the compiled wrapper: its keys start with "_orig_mod."
            full[id(c[0])] = {k.removeprefix("_orig_mod."): v
                              for k, v in accelerator.get_state_dict(c[0]).items()}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = {}
        for k, c in components.items():
            if isinstance(c, tuple):
                model, prefix, exclude = (*c, ())[:3]
                unwrapped[k] = {n[len(prefix):]: v for n, v in full[id(model)].items()
                                if n.startswith(prefix) and not n.startswith(tuple(exclude))}
                if not unwrapped[k]:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ValueError(f"checkpoint component {k!r}: no weights under {prefix!r}")
            else:
                unwrapped[k] = c if isinstance(c, Mapping) else accelerator.unwrap_model(c)
        save_checkpoint(final, unwrapped, config=config, step=step, specs=specs,
                        extra_meta=extra_meta, tmp=tmp)
        update_latest(latest_root or run_dir.parent, final)
    accelerator.wait_for_everyone()
    return final
