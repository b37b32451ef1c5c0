"""Pretrain a video and an audio encoder by audio-visual synchronisation (AVTS / Multisensory).

    accelerate launch recipes/pretrain_sync.py                      # synthetic world, 2-core CPU
    accelerate launch recipes/pretrain_sync.py --data.path=/videos --model.video=r3d18 \\
        --model.video_kwargs='{}' --data.size=128 --data.crop=112 --data.fps=16 \\
        --optim.steps=100000    # video_kwargs: the default's time_strides are i3d options
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 \\
        recipes/pretrain_sync.py                                    # two CPU processes (gloo)
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 recipes/pretrain_sync.py
    accelerate launch recipes/pretrain_sync.py --run.resume                 # continue latest run
    python recipes/pretrain_sync.py --help                                  # every option

Towers: ``model.video`` and ``model.audio`` (any registered encoders) with MLP projection heads.
For every clip the loader decodes the video window, the audio of the same window (the positive)
and the same video's audio shifted by |Δ| in [min_shift_s, max_shift_s] (the hard negative);
audio of the other clips of the (global) batch gives the easy negatives. Hard negatives enter the
loss from ``loss.hard_start_step`` on (curriculum). Objective:
:class:`avssl.objectives.sync.SyncObjective` (Korbar et al. 2018; Owens & Efros 2018).

Without ``--data.path`` the synthetic world is written on first use to ``$AVSSL_CACHE/synthetic``
(default ``~/.cache/avssl``) as real .mp4 files and read through the same decoders as real data;
held-out synthetic clips measure sync accuracy at the end. Measured time and accuracy of the
default run: README.md ("Pretraining").

Output ``runs/pretrain_sync/<run>/``: ``config.json``, ``metrics.csv``, ``step_NNNNNNN/``
checkpoints (safetensors + accelerate state, written atomically), ``final_metrics.json``;
``runs/pretrain_sync/latest`` points at the newest complete checkpoint. On several machines
(``accelerate launch --num_machines N --machine_rank R ...``) ``--run.out`` must be a folder they
all share: every process writes its RNG state into each checkpoint (checked before training).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from avssl import checkpoints
from avssl.config import config_hash, parse_args, save_config
from avssl.encoders import build_encoder, require_modality
from avssl.errors import AvsslError, ConfigError
from avssl.launch import (check_shared_run_dir, decided_by_main, fsdp_adopt_head,
                          fsdp_batchnorm_in_fp32, fsdp_keep_built_weights, launch_warning)
from avssl.objectives.sync import SyncObjective
from avssl.speed import prepare_module
from avssl.towers import AVTowers
from avssl.pretraining import (OptimConfig, PairDataConfig, RunConfig, StepGuard,
                               build_pair_datasets, check_same_processes, cosine_lr, flat_hparams,
                               fsdp_forward_methods, held_out_batches, loader_config, mel,
                               nothing_left, pair_loader, run_location, speed_settings)
from avssl.tracking import default_trackers

RECIPE = "pretrain_sync"
# logged per step (metrics.csv), each the mean over the step's micro-batches
LOGGED = ("loss", "loss_easy", "loss_hard", "acc_easy", "acc_hard")


@dataclass
class ModelConfig:
    video: str = "i3d_r18_tiny"
    # no temporal stride in i3d's stem: 8 frames stay 8 time steps, so the sync head sees when
    video_kwargs: dict = field(
        default_factory=lambda: {"time_strides": {"conv1": 1, "maxpool": 1}},
        metadata={"help": "JSON keyword arguments of the video encoder ('{}' for none)"})
    audio: str = "audio_resnet18_tiny"
    audio_kwargs: dict = field(default_factory=dict)
    proj_dim: int = 128
    temporal_bins: int = field(default=4, metadata={
        "help": "keep this many time bins of the feature maps in the embedding (sync is about "
                "when; 0 = the encoders' time-pooled output)"})

    def __post_init__(self) -> None:
        if self.proj_dim < 1 or self.temporal_bins < 0:
            raise ConfigError(f"--model.proj_dim must be >= 1 and --model.temporal_bins >= 0, "
                              f"got {self.proj_dim} and {self.temporal_bins}")
        require_modality(self.video, "video", "--model.video")
        require_modality(self.audio, "audio", "--model.audio")


@dataclass
class LossConfig:
    kind: Literal["infonce", "margin", "binary"] = "infonce"
    temperature: float = 0.1
    margin: float = 0.5
    hard_weight: float = 1.0
    hard_start_step: int = field(default=60, metadata={"help": "curriculum: easy negatives only "
                                                      "before this step"})
    gather: bool = field(default=True, metadata={"help": "negatives from the global batch"})

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and self.margin > 0 and self.hard_weight >= 0
                and self.hard_start_step >= 0):
            raise ConfigError(f"--loss.temperature and --loss.margin must be > 0, hard_weight and "
                              f"hard_start_step >= 0; got {self.temperature}, {self.margin}, "
                              f"{self.hard_weight}, {self.hard_start_step}")


@dataclass
class Config:
    data: PairDataConfig = field(default_factory=PairDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


def forward_loss(model, objective, batch, cfg: Config, step: int) -> dict:
    out = model(batch["video"], mel(batch["audio"], cfg.data), mel(batch["audio_shift"], cfg.data),
                batch["hard_valid"])  # placeholder rows stay out of the audio BatchNorm batch
    return objective(out, {"hard_valid": batch["hard_valid"], "step": step})


def trainable(*modules) -> list:
    """Each trainable parameter once (under FSDP the binary head is inside the model too)."""
    return list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())


@torch.no_grad()
def evaluate(model, objective, loader, cfg: Config, accelerator: Accelerator) -> dict:
    """Sync accuracy on held-out clips: hard (shifted) and easy (other clip) negatives.

    Every process scores all held-out clips with the unwrapped model and no gathering, so the
    numbers do not depend on the number of processes (easy negatives: the evaluation batch; a
    last batch of one clip has none and is left out of ``val_clips``).
    """
    model, objective = accelerator.unwrap_model(model), accelerator.unwrap_model(objective)
    gather, objective.gather = objective.gather, False
    model.eval()
    sums = torch.zeros(4, device=accelerator.device)
    try:
        for batch in held_out_batches(loader, accelerator):
            if len(batch["video"]) < 2:  # a one-clip tail has no easy negative: the objective
                continue  # refuses it, and the finished run would lose its final metrics
            out = forward_loss(model, objective, batch, cfg, step=cfg.loss.hard_start_step)
            nh = out["n_hard_valid"].float()
            n = torch.tensor(float(len(batch["video"])), device=accelerator.device)
            sums += torch.stack([out["acc_hard"].nan_to_num(0.0) * nh, nh, out["acc_easy"] * n,
                                 n])
    finally:
        objective.gather = gather
        model.train()
    # nothing measured is not 0 % accuracy: leave the number out (as train_acc_hard is)
    return {**({"val_acc_hard": float(sums[0] / sums[1])} if sums[1] > 0 else {}),
            **({"val_acc_easy": float(sums[2] / sums[3])} if sums[3] > 0 else {}),
            "val_clips": int(sums[3])}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(Config, argv, prog="pretrain_sync.py", description=__doc__.split("\n\n")[1])
    # one answer for all processes (a clock-made name could differ; only the main process's
    # view of --run.resume counts, and check_shared_run_dir then checks the others see it)
    run_dir, resume_from, step = decided_by_main(
        lambda: run_location(cfg.run.out, RECIPE, cfg.run.name, cfg.run.resume, asdict(cfg)))
    cfg.run.name = run_dir.name  # a clock-made one too: --config <run>/config.json resumes it
    last = min(cfg.optim.steps, cfg.run.stop_after or cfg.optim.steps)
    if resume_from is not None and (done := nothing_left(run_dir, step, last)) is not None:
        return done
    speed = speed_settings(cfg.run, cfg.data.num_workers)
    accelerator = Accelerator(
        mixed_precision=speed.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        dataloader_config=loader_config(cfg.run.seed),
        step_scheduler_with_optimizer=False,
        log_with=default_trackers(RECIPE, run_dir, step if resume_from else None),
        project_dir=str(run_dir),
    )
    if (warning := launch_warning(accelerator.num_processes)) is not None:
        accelerator.print(warning)
    set_seed(cfg.run.seed)
    check_shared_run_dir(accelerator, run_dir)  # several machines: before anything is written
    if resume_from is not None:  # --data.batch_size is per process: same count, same run
        check_same_processes(resume_from, accelerator.num_processes)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:  # a resumed run keeps the config.json it was started with
            save_config(cfg, run_dir / "config.json")

    train_ds, val_ds = build_pair_datasets(cfg.data, accelerator, run_dir, cfg.run.seed)
    model = AVTowers(build_encoder(cfg.model.video, **cfg.model.video_kwargs),
                      build_encoder(cfg.model.audio, **cfg.model.audio_kwargs), cfg.model.proj_dim,
                      cfg.model.temporal_bins)
    prepare_module(model, speed)
    fsdp_batchnorm_in_fp32(accelerator, model)  # FSDP2 + bf16: before the optimizer takes them
    objective = SyncObjective(cfg.loss.kind, cfg.loss.temperature, cfg.loss.margin,
                              cfg.loss.hard_weight, cfg.loss.hard_start_step,
                              embed_dim=cfg.model.proj_dim, gather=cfg.loss.gather)
    # binary's head: under FSDP a unit inside the towers (accelerate prepares one FSDP model)
    head = any(p.requires_grad for p in objective.parameters())
    inside = head and fsdp_adopt_head(accelerator, model, objective, "sync_head")
    params = trainable(model, objective)
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, cfg.optim.warmup_steps, cfg.optim.steps))
    fsdp_keep_built_weights(accelerator)
    model, optimizer, scheduler, loader = accelerator.prepare(
        model, optimizer, scheduler, pair_loader(train_ds, cfg.data, cfg.run.seed, speed=speed))
    # DDP refuses modules without trainable parameters (infonce/margin have none; binary has a head)
    separate = head and not inside
    objective = accelerator.prepare(objective) if separate else objective.to(accelerator.device)
    # the modules whose gradient sync accumulation holds back: FSDP2's no_sync calls a method
    # of prepared modules only (an unprepared objective raised on the first micro-batch)
    synced = (model, objective) if separate else (model,)
    fsdp_forward_methods(model)
    # the prepared modules' parameters: FSDP2 replaces them with sharded ones (the optimizer is
    # switched to those), so the list taken above would clip stale tensors without gradients
    params = trainable(model, objective)
    val_loader = None
    if val_ds is not None:
        # not prepared: every process scores all held-out clips (evaluate), in batches of the
        # global batch size, so the batch-wise numbers match a one-process run too
        val_loader = pair_loader(val_ds, cfg.data, cfg.run.seed, train=False, speed=speed,
                                 batch_size=cfg.data.batch_size * accelerator.num_processes)
    if resume_from is not None:
        accelerator.load_state(str(resume_from / "state"))
        accelerator.print(f"resumed from {resume_from} at step {step}")
    accelerator.init_trackers(RECIPE, config=flat_hparams(cfg))
    accelerator.print(f"{train_ds.report()}; {accelerator.num_processes} process(es) on "
                      f"{accelerator.device}, mixed precision {accelerator.mixed_precision}")
    accelerator.print(speed.describe())

    steps_per_epoch = len(loader) // cfg.optim.grad_accum
    if steps_per_epoch == 0:
        raise AvsslError(f"{len(train_ds)} training clips make no full batch of "
                         f"{cfg.data.batch_size} x {accelerator.num_processes} process(es)")
    specs = {"video": {"encoder": cfg.model.video, "kwargs": cfg.model.video_kwargs},
             "audio": {"encoder": cfg.model.audio, "kwargs": cfg.model.audio_kwargs}}

    def save(at: int):
        path = checkpoints.save_run_checkpoint(
            accelerator, run_dir, at,
            {"video": (model, "video."), "audio": (model, "audio."),
             "video_proj": (model, "video_proj."), "audio_proj": (model, "audio_proj."),
             "objective": (model, "sync_head.") if inside
             else accelerator.unwrap_model(objective)},
            config=asdict(cfg), specs=specs,
            extra_meta={"recipe": RECIPE, "config_hash": config_hash(cfg)})
        if accelerator.is_main_process:  # other machines' local main processes saved nothing
            print(f"saved {path}")

    bar = tqdm(total=cfg.optim.steps, initial=step, desc=RECIPE,
               disable=not accelerator.is_main_process)
    history: list[dict] = []
    tic, clips = time.perf_counter(), 0
    k, micro = cfg.optim.grad_accum, []
    guard = StepGuard(accelerator, cfg.run.on_nonfinite, model, objective)  # skips bad steps
    model.train()
    while step < last:
        epoch, skip = divmod(step, steps_per_epoch)
        loader.set_epoch(epoch)  # the sampler's permutation and the clips' random windows
        train_ds.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip * k) if skip else loader
        for i, batch in enumerate(batches, start=skip * k):
            if i >= steps_per_epoch * k:  # the last < k micro-batches make no full step: a
                break  # forced short step would shift every later epoch and break resume
            if i % k == 0:
                guard.start()
            with accelerator.accumulate(*synced):
                out = forward_loss(model, objective, batch, cfg, step)
                accelerator.backward(out["loss"])
                norm = (accelerator.clip_grad_norm_(params, cfg.optim.clip_grad)
                        if accelerator.sync_gradients else None)
                if guard.allows_update(out["loss"], norm, step):  # never a non-finite update
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro.append(torch.stack([out[name].detach().float() for name in LOGGED]))
            clips += len(batch["video"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            lr = scheduler.get_last_lr()[0]  # the rate this step trained with
            scheduler.step()
            step += 1
            # the step's numbers: the mean over its micro-batches (NaN ones, e.g. no valid hard
            # negative in a micro-batch, left out)
            logs = dict(zip(LOGGED, torch.stack(micro).nanmean(dim=0).tolist()))
            micro = []
            logs.update(lr=lr, skipped=float(guard.skipped),
                        clips_per_s=clips / (time.perf_counter() - tic))
            history.append(logs)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", sync_hard=f"{logs['acc_hard']:.2f}",
                            sync_easy=f"{logs['acc_easy']:.2f}",
                            clips_s=f"{logs['clips_per_s']:.1f}")
            if step % cfg.run.log_every == 0 or step == last:
                accelerator.log(logs, step=step)
            if step % cfg.run.save_every == 0 or step == last:
                save(step)
            if step >= last:
                break
    bar.close()

    final = {"step": step, "run_dir": str(run_dir), "minutes": (time.perf_counter() - tic) / 60}
    for k in ("loss", "acc_hard", "acc_easy"):  # mean of the last 20 steps of this invocation
        vals = [h[k] for h in history[-20:] if not math.isnan(h[k])]
        if vals:
            final[f"train_{k}"] = sum(vals) / len(vals)
    if val_loader is not None and step >= cfg.optim.steps:
        final.update(evaluate(model, objective, val_loader, cfg, accelerator))
    if accelerator.is_main_process:
        (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    accelerator.print(json.dumps(final))
    accelerator.end_training()
    return final


if __name__ == "__main__":
    try:
        main()
    except AvsslError as e:
        raise SystemExit(f"error: {e}")
