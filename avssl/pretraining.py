"""Pieces the pretraining recipes share: clip-pair data, log-mel, schedule, run folders, guards.

The recipes (``recipes/pretrain_*.py``) keep their models, objectives and the explicit Accelerator
loop in one readable file; what would otherwise be copied between them lives here.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, send_to_device

from avssl import checkpoints
from avssl.data.datasets import folder_dataset
from avssl.data.synthetic import WorldConfig
from avssl.data.synthetic.cache import synthetic_folder
from avssl.data.transforms import VideoPipeline, log_mel
from avssl.errors import AvsslError, ConfigError
from avssl.launch import process_state
from avssl.objectives.gather import gather_rows
from avssl.speed import SpeedSettings, apply_threads, pick, worker_init


@dataclass
class PairDataConfig:
    """Clips with their in-sync audio and the same video's shifted audio (the hard negative)."""

    path: Optional[str] = field(default=None, metadata={"help": "folder of videos or manifest "
                                "CSV; default: the synthetic world (written on first use)"})
    synthetic_videos: int = field(default=384, metadata={
        "help": "synthetic clips to write (rounded up to a multiple of the 14 actions)"})
    synthetic_duration_s: float = 4.0
    synthetic_seed: int = 0
    val_videos: int = field(default=48, metadata={
        "help": "held-out synthetic clips (0: none; rounded up to a multiple of 14)"})
    clip_s: float = 1.0
    fps: float = 8.0
    size: int = field(default=64, metadata={"help": "decode size (short side)"})
    crop: int = field(default=56, metadata={"help": "training crop"})
    sample_rate: int = 16000
    n_mels: int = 64
    mel_mean: float = field(default=-2.0, metadata={"help": "log-mel standardisation"})
    mel_std: float = 2.5
    min_shift_s: float = 0.5
    max_shift_s: float = 1.5
    batch_size: int = field(default=32, metadata={"help": "per process"})
    num_workers: int = 2
    backend: str = "auto"

    def __post_init__(self) -> None:
        _at_least("data", self, synthetic_videos=1, val_videos=0, batch_size=1, num_workers=0,
                  sample_rate=1, n_mels=1, crop=1, synthetic_seed=0)  # numpy seeds are >= 0
        _positive("data", self, synthetic_duration_s=self.synthetic_duration_s,
                  clip_s=self.clip_s, fps=self.fps, mel_std=self.mel_std)
        if self.crop > self.size:
            raise ConfigError(f"--data.crop={self.crop} must be <= --data.size={self.size} "
                              "(the crop is taken from frames decoded at that short side)")
        if not 0 <= self.min_shift_s <= self.max_shift_s:
            raise ConfigError(f"--data.min_shift_s / max_shift_s must satisfy 0 <= min <= max, got "
                              f"{self.min_shift_s} and {self.max_shift_s}")
        if self.min_shift_s < 1.0 / self.fps - 1e-9:  # 0 would make the positive its own negative
            raise ConfigError(f"--data.min_shift_s must be at least one frame (1 / --data.fps = "
                              f"{1.0 / self.fps:.3g} s), got {self.min_shift_s}: a shorter shift "
                              f"leaves the shifted audio in sync with the same frames")


@dataclass
class OptimConfig:
    steps: int = 240
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    grad_accum: int = 1
    clip_grad: float = 1.0

    def __post_init__(self) -> None:
        _at_least("optim", self, steps=1, warmup_steps=0, grad_accum=1)
        _positive("optim", self, lr=self.lr, clip_grad=self.clip_grad)
        if self.weight_decay < 0:
            raise ConfigError(f"--optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps >= self.steps:  # legal (a smoke test), but rarely what was meant
            logging.getLogger(__name__).warning(
                "--optim.warmup_steps=%d >= --optim.steps=%d: the learning rate never reaches "
                "--optim.lr=%g and never decays", self.warmup_steps, self.steps, self.lr)


@dataclass
class RunConfig:
    out: str = "runs"
    name: Optional[str] = None
    seed: int = 0
    save_every: int = 150
    log_every: int = 10
    resume: bool = False
    stop_after: int = field(default=0, metadata={"help": "end this invocation after this many "
                            "steps in total (a preemptible job's slice; --run.resume continues)"})
    on_nonfinite: Literal["skip", "stop"] = "skip"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "auto: bf16 on a bf16 GPU, fp32 on CPU (measured; avssl/speed.py), unless "
                "accelerate launch --mixed_precision set one"})
    channels_last: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "channels-last-3d video convolutions (auto: off, measured slower on CPU)"})
    compile: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "torch.compile the towers (auto: off, 88-124 s to compile for no measured gain)"})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0: auto, which replaces accelerate launch's default of 1 by "
                "this process's share of the cores)"})
    decoder_threads: int = field(default=0, metadata={
        "help": "threads per video/audio decoder (0: auto, measured: 1 in each DataLoader "
                "worker, this process's share of the cores without workers; avssl/speed.py)"})

    def __post_init__(self) -> None:
        _at_least("run", self, save_every=1, log_every=1, stop_after=0, threads=0,
                  decoder_threads=0, seed=0)
        if self.seed >= 2**32:  # numpy's legacy seeding (accelerate's set_seed) takes 32 bits
            raise ConfigError(f"--run.seed must be < 2**32, got {self.seed}")
        # one folder directly under runs/<recipe>/, beside the `latest` link: a nested name put
        # its own `latest` one level down, and "latest" itself wrote into the linked checkpoint
        name = self.name
        if name is not None and (name in ("", "latest") or name.startswith(".")
                                 or any(c in name for c in "/\\:") or not name.isprintable()):
            raise ConfigError(f"--run.name must be one plain folder name (no / \\ :, not "
                              f"starting with '.', not 'latest'), got {name!r}")


def _at_least(section: str, cfg, **minimum: int) -> None:
    """ConfigError naming the flag when ``cfg.<field>`` is below its ``minimum``."""
    for name, low in minimum.items():
        if getattr(cfg, name) < low:
            raise ConfigError(f"--{section}.{name} must be >= {low}, got {getattr(cfg, name)}")


def _positive(section: str, cfg, **values: float) -> None:
    for name, v in values.items():
        if not v > 0:  # also refuses NaN
            raise ConfigError(f"--{section}.{name} must be > 0, got {v}")


def speed_settings(run: RunConfig, num_workers: int) -> SpeedSettings:
    """The measured-fastest settings for the device this process will use (avssl/speed.py).

    Called before the Accelerator is built, so its mixed precision can come from here; the
    device is the one accelerate will pick (``accelerate launch --cpu`` included)."""
    device = process_state().device
    settings = pick(device, mixed_precision=run.mixed_precision, channels_last=run.channels_last,
                    compile=run.compile, num_workers=num_workers, threads=run.threads,
                    decoder_threads=run.decoder_threads)
    apply_threads(settings)
    return settings


def build_pair_datasets(d: PairDataConfig, accelerator: Accelerator, run_dir: Path, seed: int):
    """(train, val or None) ClipDatasets yielding ``video`` (C, T, crop, crop) normalised float,
    ``audio`` and ``audio_shift`` (1, S) waveforms and ``hard_valid``."""
    val_root = None
    if d.path is None:  # one process writes the cache, the others wait for it
        world = WorldConfig(size=d.size, duration_s=d.synthetic_duration_s)
        with accelerator.main_process_first():
            root = synthetic_folder(d.synthetic_videos, seed=d.synthetic_seed, cfg=world)
            if d.val_videos > 0:
                val_root = synthetic_folder(d.val_videos, seed=d.synthetic_seed + 1000, cfg=world)
    else:
        root = Path(d.path)
    common = dict(clip_s=d.clip_s, fps=d.fps, size=d.size, sample_rate=d.sample_rate,
                  require_audio=True, audio_shift=(d.min_shift_s, d.max_shift_s),
                  backend=d.backend, progress=accelerator.is_main_process)
    train = folder_dataset(root, mode="train", seed=seed, quarantine=run_dir / "quarantine.jsonl",
                           video_transform=VideoPipeline("train", size=d.crop, scale=(0.5, 1.0),
                                                         encoder_layout=True), **common)
    val = None
    if val_root is not None:
        val = folder_dataset(val_root, mode="train", seed=seed + 1,
                             video_transform=VideoPipeline("eval", size=d.crop, short_side=d.size,
                                                           encoder_layout=True), **common)
    return train, val


def pair_loader(ds, d: PairDataConfig, seed: int, train: bool = True,
                speed: SpeedSettings | None = None, batch_size: int | None = None):
    """Shuffled training (or ordered validation) batches of ``batch_size`` (default
    ``d.batch_size``); ``speed`` sets pinned memory, persistent workers and the workers'
    decoder threads (default: pin only with a GPU; persistent workers when training; the
    decoders' own thread counts)."""
    pin = speed.pin_memory if speed is not None else torch.cuda.is_available()
    persistent = speed.persistent_workers if speed is not None else d.num_workers > 0
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size or d.batch_size, shuffle=train, drop_last=train,
        num_workers=d.num_workers, persistent_workers=train and persistent, pin_memory=pin,
        worker_init_fn=worker_init(speed) if speed is not None else None,
        generator=torch.Generator().manual_seed(seed))


SEED_STRIDE = 2**20  # epochs a run may have before its sampler seeds reach the next --run.seed's


def loader_config(seed: int) -> DataLoaderConfiguration:
    """accelerate's seedable sampler (the same order on every process, resumable mid-epoch),
    seeded ``seed * SEED_STRIDE``. The sampler shuffles epoch e with seed ``data_seed + e`` and
    by default takes ``data_seed`` = the torch seed, so --run.seed 0's second epoch was --run.seed
    1's first: a seed sweep shared its data orders. Seed 0 keeps the order it always had."""
    return DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed * SEED_STRIDE)


def held_out_batches(loader, accelerator: Accelerator):
    """Every batch of the (unsharded) held-out ``loader`` on this process's device.

    Each process scores the whole held-out set itself (a few dozen synthetic clips), so a run on
    N processes reports the numbers of one process: a sharded loader would pad the last batches
    with repeated clips to even out the processes, and those would be counted twice.
    """
    for batch in loader:
        yield send_to_device(batch, accelerator.device)


# pretrain_mbt's (video, audio) pairs: their random draws and the mismatched audio.


def draw_generator(base: int, micro: int) -> torch.Generator:
    """A CPU generator for one micro-batch: seeded by ``base`` (from the run seed and step) for
    the first micro-batch, as before accumulation drew per micro-batch (so runs without
    accumulation keep their numbers), and by (``base``, ``micro``) for the others."""
    if micro == 0:
        return torch.Generator().manual_seed(base)
    return torch.Generator().manual_seed(int(np.random.SeedSequence(
        [base % 2**32, micro]).generate_state(1)[0]))


def mask_seed(seed: int, step: int) -> int:
    """The token masks' seed for (run seed, step): a stream of its own. (It was seed * 7919 +
    step, equal to the pair draw's seed * 1_000_003 + step at seed 0: the masks' noise repeated
    the pair-type draw, so row 0's first video token was masked exactly when its pair was
    shifted.)"""
    return int(np.random.SeedSequence([seed % 2**32, step % 2**32, 7919]).generate_state(1)[0])


def previous_rows(audio: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Each row's mismatched audio (B, 1, S): the previous row's in the global batch (rank-major;
    the first row takes the last), so N processes pair what one process with the same global
    batch pairs (a local roll would pair other clips, and nothing on one-row processes)."""
    if world == 1:
        return audio.roll(1, dims=0)
    B = len(audio)
    return gather_rows(audio).roll(1, dims=0)[rank * B:(rank + 1) * B]


def own_audio_as_mismatched(label: torch.Tensor, batch: dict, rank: int,
                            world: int) -> torch.Tensor:
    """``label`` (B,) with the mismatched rows (2) whose :func:`previous_rows` audio is of the
    same video made shifted (1; in sync, 0, without a valid shift window). A folder's silent
    videos are replaced by substitutes drawn from the dataset, so one video can fill two rows
    of a batch, and its "mismatched" audio was its own, shifted by any amount. Decided on the
    global batch (``video_index`` gathered), so N processes decide what one does."""
    index = batch.get("video_index")
    if index is None:
        return label
    index = index.to(label.device).reshape(-1)
    own = (previous_rows(index, rank, world) == index) & (label == 2)
    return torch.where(own, torch.where(batch["hard_valid"].bool().reshape(-1), 1, 0), label)


def with_previous_clip(batches: Iterable[dict]) -> Iterator[dict]:
    """Held-out ``batches`` (in loader order) with each clip's mismatched audio ``audio_other``
    (B, 1, S), the previous clip's ``audio``, and ``pair_rows`` (B, 3) bool: the pair types (in
    sync, shifted, mismatched) each row is scored with (shifted only where ``hard_valid``).

    The previous clip is carried across batches, and the first clip takes the last one (the whole
    set rolled by one, as rolling it in one batch would): a roll within each batch paired each
    batch's first clip with that batch's last, so the numbers depended on the batch size. The
    last clip is known only at the end, so the first clip's mismatched pair comes as one extra
    row, ``pair_rows`` [False, False, True], after the last batch (none for a single clip, whose
    only other clip would be itself).
    """
    first = last = None
    clips = 0
    for batch in batches:
        audio = batch["audio"]
        rows = torch.ones(len(audio), 3, dtype=torch.bool, device=audio.device)
        rows[:, 1] = batch["hard_valid"].bool()
        if last is None:  # the first clip: its previous clip comes last
            rows[0, 2] = False
            # cloned: a view would keep the whole first batch alive until the end
            first = {k: v[:1].clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
        # row 0 of the first batch gets a placeholder, never scored (rows[0, 2] is False)
        previous = torch.cat([audio[:1] if last is None else last, audio[:-1]])
        yield {**batch, "audio_other": previous, "pair_rows": rows}
        last, clips = audio[-1:], clips + len(audio)
    if clips > 1:
        rows = torch.tensor([[False, False, True]], device=last.device)
        yield {**first, "audio_other": last, "pair_rows": rows}


def mel(audio: torch.Tensor, d: PairDataConfig) -> torch.Tensor:
    """(B, 1, S) waveform -> standardised log-mel (B, 1, n_mels, frames), on the batch's device."""
    return (log_mel(audio, d.sample_rate, d.n_mels) - d.mel_mean) / d.mel_std


def cosine_lr(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def flat_hparams(cfg) -> dict:
    """Dotted scalar hyper-parameters (TensorBoard's hparams take no nesting or None)."""
    out = {}
    for section, values in asdict(cfg).items():
        for k, v in (values.items() if isinstance(values, dict) else [("", values)]):
            out[f"{section}.{k}".rstrip(".")] = "none" if v is None else (
                v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
    return out


# Settings a resumed run may change: where and how long this invocation runs, how often it
# logs, and speed settings. Everything else (data, model, loss, optimiser, seed) must match the
# run's config.json, or the "continued" run would be a different run under the same name.
RESUME_MAY_CHANGE = frozenset({
    "run.out", "run.name", "run.resume", "run.stop_after", "run.save_every", "run.log_every",
    "run.on_nonfinite", "run.mixed_precision", "run.channels_last", "run.compile", "run.threads",
    "run.decoder_threads", "data.num_workers", "data.backend"})


def run_location(out: str, recipe: str, name: Optional[str], resume: bool,
                 config: Optional[dict] = None):
    """(run_dir, checkpoint to resume from or None, its step).

    A new run refuses a folder that already holds a run (its checkpoints and config would be
    overwritten). ``resume`` continues ``<out>/<recipe>/<name>``'s newest complete checkpoint,
    or with no name the one ``<out>/<recipe>/latest`` points at; ``config`` (the resolved config
    as a dict) must then agree with the run's ``config.json`` outside :data:`RESUME_MAY_CHANGE`
    (the number of processes is checked by :func:`check_same_processes` once the recipe has
    checked that every process sees the run folder).
    """
    recipe_dir = Path(out) / recipe
    if not resume:
        run_dir = recipe_dir / (name or time.strftime("%Y%m%d-%H%M%S"))
        # only checkpoints make a folder a run: one that stopped before its first checkpoint
        # (a bad --data.path, a crash) holds nothing to continue and may be started again
        held = sorted(p.name for p in run_dir.glob("step_*"))
        if held:
            raise AvsslError(f"{run_dir} already holds a run ({', '.join(held[-2:])}); pass "
                             f"--run.resume to continue it, or another --run.name for a new run")
        _check_writable(run_dir)
        return run_dir, None, 0
    if name:
        ckpt = checkpoints.newest_step(recipe_dir / name)
        if ckpt is None:
            raise AvsslError(f"--run.resume: {recipe_dir / name} holds no complete checkpoint "
                             f"(step_NNNNNNN/) to continue; drop --run.resume to start it")
    else:
        if not (recipe_dir / "latest").exists():
            raise AvsslError(f"--run.resume: no {recipe_dir / 'latest'} to continue; start a run "
                             f"first, or name the run to continue with --run.name")
        ckpt = checkpoints.resolve(recipe_dir / "latest")
        if ckpt.parent.parent == recipe_dir.resolve() and ckpt.name.startswith("step_"):
            ckpt = recipe_dir / ckpt.parent.name / ckpt.name  # --run.out's form (relative stays)
        else:  # `latest` is a folder: a copy of the runs tree that followed links (cp -rL)
            ckpt = _copied_latest(recipe_dir, ckpt)
    if config is not None and (ckpt.parent / "config.json").is_file():
        _check_same_run(ckpt.parent, config)
    step = json.loads((ckpt / "meta.json").read_text())["step"]
    _check_writable(ckpt.parent)
    return ckpt.parent, ckpt, step


def _check_writable(run_dir: Path) -> None:
    """AvsslError unless ``run_dir`` can be created and written, before the run starts: the
    recipe's first mkdir, or in a read-only run folder metrics.csv and the checkpoints, failed
    with a traceback. Creates nothing: processes that did not join one group each run this at
    once, and a probe made and removed by one raced with the other's (a folder was left)."""
    existing = next(d for d in (run_dir, *run_dir.parents) if d.exists())
    why = ("Not a directory" if not existing.is_dir() else
           None if os.access(existing, os.W_OK | os.X_OK) else "not writable")
    if why:
        raise AvsslError(f"cannot write the run folder {run_dir} ({why}: {existing}); pass a "
                         f"writable --run.out")


def _copied_latest(recipe_dir: Path, copy: Path) -> Path:
    """The run checkpoint a copied ``latest`` folder duplicates, found by the run name and step
    it records: resuming "in" the copy made the recipe folder the run folder."""
    try:
        name = json.loads((copy / "config.json").read_text())["run"]["name"]
        step = int(json.loads((copy / "meta.json").read_text())["step"])
        ckpt = recipe_dir / str(name) / f"step_{step:07d}"
    except (OSError, ValueError, KeyError, TypeError):
        ckpt = None
    if ckpt is None or not (ckpt / checkpoints.WEIGHTS).is_file():
        raise AvsslError(f"--run.resume: {recipe_dir / 'latest'} is a folder, not a link to a "
                         f"run's checkpoint (a copy that followed links?), and the run it came "
                         f"from is not there ({ckpt}); name the run to continue with --run.name")
    return ckpt


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k not in
                   ("video_kwargs", "audio_kwargs") else {f"{prefix}{k}": v})
    return out


def _check_same_run(run_dir: Path, config: dict) -> None:
    saved = _flat(json.loads((run_dir / "config.json").read_text()))
    now = _flat(json.loads(json.dumps(config)))
    differ = [k for k in sorted(set(saved) | set(now))
              if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k)]
    if differ:
        was = ", ".join(f"{k}={json.dumps(saved.get(k))}" for k in differ[:4])
        asked = ", ".join(f"{k}={json.dumps(now.get(k))}" for k in differ[:4])
        raise AvsslError(f"--run.resume: {run_dir} was started with {was} but this command sets "
                         f"{asked}; resume with the run's settings (--config "
                         f"{run_dir / 'config.json'} --run.name {run_dir.name} --run.resume) or "
                         f"start a new run with another --run.name")


def check_same_processes(ckpt: Path, processes: int) -> None:
    """AvsslError unless ``ckpt`` was saved by ``processes`` processes (accelerate's
    ``save_state`` writes one ``random_states_<rank>.pkl`` per process). ``--data.batch_size`` is
    per process, so on another count the resumed run silently trained with another global batch
    and data order, and the processes without a saved RNG state started from a fresh one."""
    saved = len(list((ckpt / "state").glob("random_states_*.pkl")))
    if saved and saved != processes:
        raise AvsslError(f"--run.resume: {ckpt} was saved by {saved} process(es) but this launch "
                         f"has {processes}; --data.batch_size is per process, so the global "
                         f"batch and the data order would change: resume with {saved} "
                         f"process(es) (accelerate launch --num_processes {saved})")


def nothing_left(run_dir: Path, step: int, last: int) -> Optional[dict]:
    """When a resumed run is already at (or past) the step this invocation would end at: say so
    and return its final metrics, writing nothing (re-running would replace final_metrics.json
    with an empty summary); else None."""
    if step < last:
        return None
    if process_state().is_main_process:
        print(f"{run_dir} is already at step {step} (this invocation would end at step {last}); "
              f"nothing to do. Raise --optim.steps in a new run to train longer.")
    final = run_dir / "final_metrics.json"
    return json.loads(final.read_text()) if final.is_file() else {"step": step,
                                                                 "run_dir": str(run_dir)}


def all_finite(accelerator: Accelerator, loss: torch.Tensor, grad_norm) -> bool:
    """Whether the loss and gradient norm are finite on EVERY process (one shared decision, or
    DDP would deadlock when one rank skips the step)."""
    ok = torch.isfinite(loss.detach().float())
    if hasattr(grad_norm, "full_tensor"):  # FSDP2's clip_grad_norm_ returns a replicated DTensor,
        grad_norm = grad_norm.full_tensor()  # which the all-reduce below refuses
    if grad_norm is not None:
        ok = ok & torch.isfinite(torch.as_tensor(grad_norm, device=loss.device).float())
    # "max" of the failures: accelerate's reduce knows sum, mean and max only, and treated the
    # "min" this asked for as a sum, so one finite process outvoted the others
    return not bool(accelerator.reduce((~ok).float(), "max") > 0)


def fsdp_forward_methods(model: torch.nn.Module) -> None:
    """Under FSDP2, make ``forward_features`` of the model's FSDP units gather their weights as
    ``forward`` does (the towers' time bins call it, not ``forward``): with an encoder as its
    own unit (a size-based or per-class wrap policy) its own weights stayed shards and the
    first convolution raised "got mixed torch.Tensor and DTensor". A no-op otherwise."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    for module in model.modules():
        if isinstance(module, FSDPModule) and hasattr(module, "forward_features"):
            register_fsdp_forward_method(module, "forward_features")


class BufferGuard:
    """The floating-point buffers of ``modules`` (BatchNorm running statistics) as a step found
    them. A forward pass updates them before the loss is known, so a step skipped for a
    non-finite loss must put them back: one NaN batch otherwise poisons every later eval-mode
    feature while the run reports that it recovered."""

    def __init__(self, *modules: torch.nn.Module):
        self.buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        self.saved: list[torch.Tensor] = []

    def save(self) -> None:
        self.saved = [b.detach().clone() for b in self.buffers]

    @torch.no_grad()
    def restore(self) -> None:
        for b, old in zip(self.buffers, self.saved):
            b.copy_(old)


class StepGuard(BufferGuard):
    """A recipe step's non-finite check over its ``grad_accum`` micro-batches: :meth:`start` at
    a step's first micro-batch, :meth:`allows_update` after each backward (call it on every
    micro-batch and process: the check is collective). The first non-finite loss or gradient
    norm of a step holds back the update at its last micro-batch, where the buffers are put back
    and ``policy`` (``skip`` / ``stop``) is applied once: acting on each bad micro-batch printed
    the skip once per micro-batch, the later ones quoting a finite loss."""

    def __init__(self, accelerator: Accelerator, policy: str, *modules: torch.nn.Module):
        super().__init__(*modules)
        self.accelerator, self.policy, self.bad = accelerator, policy, None

    def start(self) -> None:
        self.save()
        self.bad = None

    @property
    def skipped(self) -> bool:
        return self.bad is not None

    def allows_update(self, loss: torch.Tensor, grad_norm, step: int) -> bool:
        if not all_finite(self.accelerator, loss, grad_norm) and self.bad is None:
            self.bad = loss.detach()
        if self.bad is not None and self.accelerator.sync_gradients:
            self.restore()
            nonfinite_action(self.policy, step, self.bad, self.accelerator)
        return self.bad is None  # (optimizer.step() is a no-op before the last micro-batch)


def nonfinite_action(policy: str, step: int, loss: torch.Tensor, accelerator: Accelerator) -> None:
    """Raise (``stop``) or say that the update is skipped (``skip``)."""
    msg = f"non-finite loss or gradient at step {step} (loss={loss.item():.4g})"
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and accelerator.sync_gradients:  # fp16: clipping unscaled the
        # gradients; without the update the skipped optimizer step would have made, the scale
        # never drops and the next unscale_ raises "unscale_() has already been called"
        scaler.update()
    if policy == "stop":
        raise AvsslError(msg + "; stopped before the optimizer update "
                         "(--run.on_nonfinite=skip skips such steps instead)")
    accelerator.print(msg + "; skipped the optimizer update")
