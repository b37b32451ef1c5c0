"""Pretrain audio and video ViT streams with attention-bottleneck fusion (MBT), without labels.

    accelerate launch recipes/pretrain_mbt.py                       # synthetic world, 2-core CPU
    accelerate launch recipes/pretrain_mbt.py --model.fusion=cross_attention      # ablations
    accelerate launch recipes/pretrain_mbt.py --model.fusion=late
    accelerate launch recipes/pretrain_mbt.py --model.num_bottlenecks=8 --model.fusion_layer=1
    accelerate launch recipes/pretrain_mbt.py --loss.recon_weight=1.0 --loss.mask_ratio=0.5
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 recipes/pretrain_mbt.py \\
        --data.path=/videos --model.video=vit_video_base --model.audio=audio_vit_base
    python recipes/pretrain_mbt.py --help                                   # every option

Model (Nagrani et al., "Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021): a video ViT
(``vit_video_*``, tubelets) and an audio ViT (``audio_vit_*``, log-mel patches) of equal width
and depth run side by side; from layer ``fusion_layer`` on they exchange information only through
``num_bottlenecks`` shared tokens (:class:`avssl.fusion.BottleneckFusion`). MBT is supervised in
its paper; here the fused CLS pair classifies each (video, audio) pair as in-sync (0), the same
video's audio shifted by |Δ| in [min_shift_s, max_shift_s] (1) or another video's audio (2)
(:class:`avssl.objectives.fusion.FusionObjective`), plus an optional CAV-MAE-style masked-token
reconstruction term (``loss.recon_weight`` > 0).

Three defaults make the tiny streams learn this from scratch on a CPU budget (without them the
pair loss stays at ln 3 for the whole run): a convolutional stem in both tokenizers
(``model.stem=conv``), a pair classifier that sees the product of the two CLS outputs
(``model.head=product``: a linear map of [v; a] cannot compute their agreement), and CAV-MAE's
contrastive half, an InfoNCE between each clip's and each in-sync audio's CLS token at the fusion
layer, i.e. before any exchange (``loss.contrast_weight=1``, ``model.contrast_dim=128``).
``--model.stem=patch --model.head=linear --loss.contrast_weight=0`` is plain MBT.

The pair type of each row is drawn from a generator seeded by (run seed, step), so a resumed run
sees the same pairs. Without ``--data.path`` the synthetic world is used (see pretrain_sync.py).
Measured time and accuracy of the default run: README.md ("Pretraining").

Output ``runs/pretrain_mbt/<run>/`` as for pretrain_sync; checkpoint components ``video`` and
``audio`` are the streams (loadable with ``avssl.checkpoints.load_encoder``), ``fusion`` the rest.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from avssl import checkpoints
from avssl.config import config_hash, parse_args, save_config
from avssl.errors import AvsslError, ConfigError
from avssl.fusion import build_fusion
from avssl.launch import (check_shared_run_dir, decided_by_main, fsdp_keep_built_weights,
                          launch_warning)
from avssl.objectives.fusion import FusionObjective
from avssl.objectives.masked import random_token_mask
from avssl.pretraining import (OptimConfig, PairDataConfig, RunConfig, StepGuard,
                               build_pair_datasets, check_same_processes, cosine_lr,
                               draw_generator, flat_hparams, held_out_batches, loader_config,
                               mask_seed, mel, nothing_left, own_audio_as_mismatched,
                               pair_loader, previous_rows, run_location, speed_settings,
                               with_previous_clip)
from avssl.speed import prepare_module
from avssl.tracking import default_trackers

RECIPE = "pretrain_mbt"
# logged per step (metrics.csv), each the mean over the step's micro-batches
LOGGED = ("loss", "loss_cls", "loss_recon", "loss_contrast", "acc", "acc_sync")


@dataclass
class ModelConfig:
    fusion: Literal["bottleneck", "cross_attention", "late"] = "bottleneck"
    video: str = "vit_video_tiny"
    audio: str = field(default="audio_vit_tiny", metadata={"help": "built at the video "
                                                             "stream's width and depth"})
    num_bottlenecks: int = 4
    fusion_layer: int = 2
    stem: Literal["conv", "patch"] = field(default="conv", metadata={
        "help": "both streams' tokenizer: conv stem (learns from scratch) or patchify conv"})
    head: Literal["product", "linear"] = field(default="product", metadata={
        "help": "pair classifier: MLP on [v, a, v*a] of the CLS outputs, or linear on [v, a]"})
    contrast_dim: int = field(default=128, metadata={"help": "pre-fusion embedding size "
                                                              "(0: no contrastive term)"})


@dataclass
class LossConfig:
    recon_weight: float = field(default=0.0, metadata={"help": "masked-token reconstruction"})
    contrast_weight: float = field(default=1.0, metadata={
        "help": "InfoNCE on the pre-fusion embeddings (needs model.contrast_dim > 0)"})
    temperature: float = 0.07
    mask_ratio: float = 0.5
    shifted_fraction: float = field(default=0.34, metadata={"help": "pairs of type 1"})
    mismatched_fraction: float = field(default=0.33, metadata={"help": "pairs of type 2"})

    def __post_init__(self) -> None:
        p1, p2 = self.shifted_fraction, self.mismatched_fraction
        if not (p1 >= 0 and p2 >= 0 and p1 + p2 < 1):  # the rest are the in-sync pairs
            raise ConfigError(f"--loss.shifted_fraction and mismatched_fraction must be >= 0 and "
                              f"sum to < 1 (the rest are in-sync pairs), got {p1} and {p2}")
        if not (self.temperature > 0 and 0 <= self.mask_ratio < 1):
            raise ConfigError(f"--loss.temperature must be > 0 and mask_ratio in [0, 1), got "
                              f"{self.temperature} and {self.mask_ratio}")
        if self.recon_weight > 0 and self.mask_ratio == 0:
            raise ConfigError("--loss.recon_weight > 0 needs --loss.mask_ratio > 0 (nothing "
                              "masked leaves nothing to reconstruct)")


@dataclass
class Config:
    # 192 held-out clips (168 with audio, each scored with its 3 pairs): 48 clips gave 3-way
    # accuracies 0.40-0.52 for the same recipe on two CPUs; 504 pairs have a standard error of 0.02
    data: PairDataConfig = field(default_factory=lambda: PairDataConfig(crop=64, val_videos=192))
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=480, warmup_steps=40))
    run: RunConfig = field(default_factory=lambda: RunConfig(save_every=240))


def draw_pair_types(rows: int, cfg: Config, step: int, *, micro: int = 0, rank: int = 0,
                    world: int = 1) -> torch.Tensor:
    """Pair types (``rows``,) of this process's rows: drawn for the global batch (``rows`` x
    ``world``) from a generator seeded by (run seed, step, ``micro``-batch), ``rank``'s part."""
    g = draw_generator(cfg.run.seed * 1_000_003 + step, micro)
    u = torch.rand(rows * world, generator=g)[rank * rows:(rank + 1) * rows]
    p1, p2 = cfg.loss.shifted_fraction, cfg.loss.mismatched_fraction
    return torch.where(u < p1, 1, torch.where(u < p1 + p2, 2, 0))


def make_pairs(batch: dict, cfg: Config, step: int, label: torch.Tensor | None = None, *,
               micro: int = 0, rank: int = 0, world: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio (B, 1, S) for each row and its pair type (B,): 0 in-sync, 1 shifted, 2 mismatched.

    Unless ``label`` (B,) gives them, the types are drawn by :func:`draw_pair_types`: every
    micro-batch draws anew, and N processes draw what one process with the same global batch
    draws. Rows without a valid shifted window become mismatched. Mismatched audio is
    ``batch["audio_other"]`` where given (held-out clips: :func:`with_previous_clip`), else the
    previous row's of the global batch (:func:`previous_rows`; of another video, or the row is
    not mismatched: :func:`own_audio_as_mismatched`)."""
    audio, shifted, valid = batch["audio"], batch["audio_shift"], batch["hard_valid"]
    if label is None:
        label = draw_pair_types(len(audio), cfg, step, micro=micro, rank=rank,
                                world=world).to(audio.device)
    label = torch.where((label == 1) & ~valid.bool(), 2, label)
    other = batch.get("audio_other")
    if other is None:
        if len(audio) * world < 2 and bool((label == 2).any()):  # roll(1) of one row is itself
            raise ConfigError("mismatched pairs need a global batch of at least 2 clips (another "
                              "clip's audio); got 1")
        other = previous_rows(audio, rank, world)
        label = own_audio_as_mismatched(label, batch, rank, world)
    choice = {0: audio, 1: shifted, 2: other}
    pair = torch.zeros_like(audio)
    for k, src in choice.items():
        pair = torch.where((label == k)[:, None, None], src, pair)
    return pair, label


def forward_loss(model, objective, batch, cfg: Config, step: int,
                 label: torch.Tensor | None = None, *, micro: int = 0, rank: int = 0,
                 world: int = 1) -> dict:
    """The objective's dict for this step's pairs (types drawn, or ``label`` (B,)), plus their
    ``pair_label`` (B,). ``micro``, ``rank``, ``world``: see :func:`make_pairs` (the token masks
    are drawn the same way)."""
    pair_audio, label = make_pairs(batch, cfg, step, label, micro=micro, rank=rank, world=world)
    logmel = mel(pair_audio, cfg.data)
    kwargs = {}
    if cfg.loss.recon_weight > 0:
        m = model.module if hasattr(model, "module") else model
        g = draw_generator(mask_seed(cfg.run.seed, step), micro)
        nv = math.prod(m.video.tokenizer.grid_for(batch["video"].shape[2:]))
        na = math.prod(m.audio.tokenizer.grid_for(logmel.shape[2:]))
        B = len(label)
        rows = slice(rank * B, (rank + 1) * B)  # this process's rows of the global batch's masks
        kwargs = {"video_mask": random_token_mask(B * world, nv, cfg.loss.mask_ratio, g)[rows]
                  .to(label.device),
                  "audio_mask": random_token_mask(B * world, na, cfg.loss.mask_ratio, g)[rows]
                  .to(label.device)}
    if cfg.loss.contrast_weight > 0:
        # the contrastive term compares every clip with every row's in-sync audio (B x B), so
        # it does not shrink to the third of the batch whose pair happens to be in sync
        kwargs["embed_logmel"] = mel(batch["audio"], cfg.data)
    out = model(batch["video"], logmel, **kwargs)
    losses = objective(out, {"pair_label": label, "embed_label": torch.zeros_like(label)}
                       if cfg.loss.contrast_weight > 0 else {"pair_label": label})
    return {**losses, "pair_label": label}


@torch.no_grad()
def evaluate(model, objective, loader, cfg: Config, accelerator: Accelerator) -> dict:
    """Pair-type accuracy (3-way, chance 1/3) and in-sync vs shifted accuracy (binary, on the
    rows of those two types) on held-out clips. Every process scores all of them with the
    unwrapped model, so the numbers do not depend on the number of processes.

    Every clip is scored with all three of its pairs (its own audio, the same audio shifted when
    the clip has room for a shift, and the previous held-out clip's audio, whatever the batch
    size: :func:`with_previous_clip`), not one drawn type: with the training fractions about 1/3
    each, this estimates the same accuracy from three times the rows (48 clips gave 0.40 and 0.52
    for the same recipe on two CPUs with one pair per clip).
    """
    model = accelerator.unwrap_model(model)
    # Scored on whole inputs: no token masks (with --loss.recon_weight > 0 training masks half
    # the tokens, which would make the ablations' accuracies incomparable), and the pair
    # classification alone (the accuracies need only the logits).
    cfg = replace(cfg, loss=replace(cfg.loss, recon_weight=0.0, contrast_weight=0.0))
    objective = FusionObjective(num_classes=accelerator.unwrap_model(objective).num_classes)
    model.eval()
    sums = torch.zeros(5, device=accelerator.device)  # acc * n, n, acc_sync * m, m, clips
    for i, batch in enumerate(with_previous_clip(held_out_batches(loader, accelerator))):
        sums[4] += batch["pair_rows"][:, 0].sum()  # the extra row of the first clip is no clip
        for k in (0, 1, 2):
            keep = batch["pair_rows"][:, k]
            if not keep.any():
                continue
            rows = {key: v[keep] for key, v in batch.items() if isinstance(v, torch.Tensor)}
            label = torch.full((len(rows["video"]),), k, device=keep.device)
            out = forward_loss(model, objective, rows, cfg, step=-(i + 1), label=label)
            n = torch.tensor(float(len(label)), device=accelerator.device)
            m = (out["pair_label"] <= 1).sum().float()  # the rows acc_sync is averaged over
            sync = torch.nan_to_num(out["acc_sync"]) * m
            sums[:4] += torch.stack([out["acc"] * n, n, sync, m])
    model.train()
    # nothing scored is not 0 % accuracy: leave the number out
    return {**({"val_acc": float(sums[0] / sums[1])} if sums[1] > 0 else {}),
            **({"val_acc_sync": float(sums[2] / sums[3])} if sums[3] > 0 else {}),
            "val_clips": int(sums[4]), "val_pairs": int(sums[1])}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(Config, argv, prog="pretrain_mbt.py", description=__doc__.split("\n\n")[1])
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
    if cfg.data.batch_size * accelerator.num_processes < 2:  # mismatched: another clip's audio
        raise ConfigError(f"pretrain_mbt needs a global batch of >= 2 clips for mismatched "
                          f"pairs, got --data.batch_size={cfg.data.batch_size} on "
                          f"{accelerator.num_processes} process(es)")
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
    m = cfg.model
    fusion_kw = {"num_bottlenecks": m.num_bottlenecks} if m.fusion == "bottleneck" else {}
    if m.fusion != "late":
        fusion_kw["fusion_layer"] = m.fusion_layer
    if cfg.loss.contrast_weight > 0 and m.contrast_dim <= 0:
        raise AvsslError("loss.contrast_weight > 0 needs model.contrast_dim > 0 (or set "
                         "--loss.contrast_weight=0)")
    stem_kw = {"stem": m.stem}
    model = build_fusion(m.fusion, video_encoder=m.video, audio_encoder=m.audio,
                         video_kwargs=stem_kw, audio_kwargs=stem_kw, num_classes=3,
                         recon=cfg.loss.recon_weight > 0, head=m.head,
                         contrast_dim=m.contrast_dim if cfg.loss.contrast_weight > 0 else 0,
                         **fusion_kw)
    prepare_module(model, speed)
    # gather: the contrast's negatives come from the global batch, as on one process
    objective = FusionObjective(num_classes=3, recon_weight=cfg.loss.recon_weight,
                                contrast_weight=cfg.loss.contrast_weight,
                                temperature=cfg.loss.temperature, gather=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, cfg.optim.warmup_steps, cfg.optim.steps))
    fsdp_keep_built_weights(accelerator)
    model, optimizer, scheduler, loader = accelerator.prepare(
        model, optimizer, scheduler, pair_loader(train_ds, cfg.data, cfg.run.seed, speed=speed))
    val_loader = None
    if val_ds is not None:
        # not prepared: every process scores all held-out clips (evaluate), in batches of the
        # global batch size (the pairs do not depend on it; the kernels' rounding may)
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
    unwrapped = accelerator.unwrap_model(model)
    stream = {"dim": unwrapped.embed_dim, "depth": unwrapped.depth,
              "num_heads": unwrapped.video.transformer.blocks[0].attn.num_heads}
    specs = {"video": {"encoder": m.video, "kwargs": dict(stem_kw)},
             "audio": {"encoder": m.audio, "kwargs": {**stream, **stem_kw}}}

    def save(at: int):
        path = checkpoints.save_run_checkpoint(
            accelerator, run_dir, at, {"video": (model, "video."), "audio": (model, "audio."),
                                       "fusion": (model, "", ("video.", "audio."))},
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
        loader.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip * k) if skip else loader
        for i, batch in enumerate(batches, start=skip * k):
            if i >= steps_per_epoch * k:  # the last < k micro-batches make no full step: a
                break  # forced short step would shift every later epoch and break resume
            if i % k == 0:
                guard.start()
            with accelerator.accumulate(model):
                out = forward_loss(model, objective, batch, cfg, step, micro=i % k,
                                   rank=accelerator.process_index,
                                   world=accelerator.num_processes)
                accelerator.backward(out["loss"])
                norm = (accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
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
            means = torch.stack(micro).nanmean(dim=0)
            if accelerator.num_processes > 1:  # the global batch's numbers, not this process's
                # rows (equal row counts: the mean of the processes' means; acc_sync, averaged
                # over a varying number of rows per process, is approximately the global one)
                means = accelerator.gather(means[None]).nanmean(dim=0)
            logs = dict(zip(LOGGED, means.tolist()))
            micro = []
            logs.update(lr=lr, skipped=float(guard.skipped),
                        clips_per_s=clips / (time.perf_counter() - tic))
            history.append(logs)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['acc']:.2f}",
                            sync=f"{logs['acc_sync']:.2f}", clips_s=f"{logs['clips_per_s']:.1f}")
            if step % cfg.run.log_every == 0 or step == last:
                accelerator.log(logs, step=step)
            if step % cfg.run.save_every == 0 or step == last:
                save(step)
            if step >= last:
                break
    bar.close()

    final = {"step": step, "run_dir": str(run_dir), "minutes": (time.perf_counter() - tic) / 60}
    for k in ("loss", "acc", "acc_sync"):
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
