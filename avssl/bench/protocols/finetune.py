"""Full finetuning: the encoder(s) plus a linear head trained end to end, multi-view test.

The train split is read in train mode (random window, random resized crop and flip), the model
trained with AdamW, a linear warm-up then cosine schedule and gradient clipping through
Accelerate (one process, several GPUs, bf16 with ``accelerate launch --mixed_precision bf16``).
The test split is read in eval mode with the task's views; the softmax of every view is
averaged per video (the usual multi-view test of video classification). A step whose loss or
gradient is not finite (on any process) is skipped, its BatchNorm statistics restored, and counted
in the ``skipped_steps`` metric.

On N processes the test scores are computed exactly as on one (sharded, see
:func:`avssl.bench.features.map_items`), but training is data-parallel: with BatchNorm encoders
the statistics are per process, so finetuned numbers match a one-process run only approximately.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from torch import nn
from tqdm.auto import tqdm

from avssl.bench import features as F
from avssl.data.transforms import VideoPipeline
from avssl.data.workers import stop_workers
from avssl.launch import fsdp_batchnorm_in_fp32, fsdp_keep_built_weights
from avssl.pretraining import BufferGuard, all_finite, nonfinite_action
from avssl.speed import worker_init


class Classifier(nn.Module):
    """Encoders of the chosen modalities -> concatenated pooled features -> linear head."""

    def __init__(self, towers: dict[str, nn.Module], num_classes: int):
        super().__init__()
        self.towers = nn.ModuleDict(towers)
        self.head = nn.Linear(sum(t.embed_dim for t in towers.values()), num_classes)

    def forward(self, batch: dict) -> torch.Tensor:
        device = self.head.weight.device
        feats = [F.encode(t, batch[m], device) for m, t in self.towers.items()]
        return self.head(torch.cat(feats, dim=1))


def _unsharded(accelerator: Accelerator, net: nn.Module, fresh: nn.Module) -> nn.Module:
    """``fresh`` (``net``'s architecture) holding the FSDP-sharded ``net``'s full weights and
    buffers, on every process: gathered to the main process, then broadcast (collectives)."""
    state = [accelerator.get_state_dict(net)]
    broadcast_object_list(state)
    fresh.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state[0].items()})
    return fresh.to(accelerator.device)


def finetune(task, model, args, root, split, modality, clips, crops) -> dict:
    from avssl.bench.run import _load
    from avssl.eval.classification import classification_metrics

    spec = model.spec
    mods = ("video", "audio") if modality == "av" else (modality,)
    common = dict(clip_s=spec.clip_s, fps=spec.fps, size=spec.size,
                  sample_rate=spec.sample_rate, audio=modality != "video",
                  video=modality != "audio",
                  audio_transform=spec.audio_transform(), seed=args.seed)
    # evaluation (DESIGN.md): a training video that cannot be decoded stops the run naming it,
    # instead of being replaced by another one unsaid and counted as used; --skip-bad probes
    # such files out up front and counts them (one that fails only part-way is still replaced)
    train_ds = _load(task, task.load, root, split, True, mode="train", skip_bad=args.skip_bad,
                     max_retries=10 if args.skip_bad else 0,
                     video_transform=VideoPipeline("train", size=spec.crop, scale=(0.5, 1.0),
                                                   encoder_layout=True), **common)
    test_ds = _load(task, task.load, root, split, False, mode="eval", num_clips=clips,
                    video_transform=spec.video_transform(crops), skip_bad=args.skip_bad,
                    **common)
    num_classes = train_ds.num_classes or int(max(train_ds.labels) + 1)
    torch.manual_seed(args.seed)
    net = Classifier({m: copy.deepcopy(model.encoder_for(m)) for m in mods}, num_classes)

    fast = F.speed(args.num_workers)
    accelerator = Accelerator(mixed_precision=fast.mixed_precision)
    epochs = args.epochs or 10
    bs = min(args.batch_size, len(train_ds))
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=args.num_workers,
        pin_memory=fast.pin_memory, persistent_workers=fast.persistent_workers,
        worker_init_fn=worker_init(fast), generator=torch.Generator().manual_seed(args.seed))
    fsdp_batchnorm_in_fp32(accelerator, net)  # FSDP2 + bf16: before the optimizer takes them
    raw_opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
    fsdp_keep_built_weights(accelerator)  # every process built net from args.seed
    net, opt, loader = accelerator.prepare(net, raw_opt, loader)
    steps = max(1, epochs * len(loader))  # optimizer steps: this process's share of batches
    warmup = max(1, steps // 10)
    # Not prepared: accelerate would step a prepared scheduler once per PROCESS on every
    # optimizer step, so on N processes warm-up and cosine would run N times too fast.
    sched = torch.optim.lr_scheduler.LambdaLR(
        raw_opt, lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup)))))
    net.train()
    bar = tqdm(total=steps, desc=f"{task.name} finetune", disable=not accelerator.is_main_process)
    step, lr_used, skipped = 0, args.lr, 0
    guard = BufferGuard(net)  # BatchNorm statistics as a step found them, for a skipped step
    try:
        for epoch in range(epochs):
            train_ds.set_epoch(epoch)
            loader.set_epoch(epoch) if hasattr(loader, "set_epoch") else None
            for batch in loader:
                guard.save()
                loss = nn.functional.cross_entropy(net(batch), batch["label"])
                accelerator.backward(loss)
                norm = accelerator.clip_grad_norm_(net.parameters(), 1.0)
                if all_finite(accelerator, loss, norm):
                    opt.step()
                    lr_used = raw_opt.param_groups[0]["lr"]
                else:  # a NaN never reaches the weights, nor the BatchNorm statistics
                    guard.restore()
                    nonfinite_action("skip", step, loss, accelerator)
                    skipped += 1
                sched.step()  # the schedule follows the planned steps, skipped or not
                opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
    except BaseException as err:
        stop_workers(loader)  # its persistent workers, now (avssl/data/workers.py)
        if (clean := F.worker_error(err)) is not None:
            raise clean from None
        raise
    bar.close()

    if accelerator.distributed_type == DistributedType.FSDP:
        # sharded weights make every forward a collective, and map_items gives the processes
        # different numbers of test batches (7 blocks on 2: rank 0 waited in a forward while
        # rank 1 gathered the scores, and the run died): test an unsharded copy instead
        net = _unsharded(accelerator, net, Classifier(
            {m: copy.deepcopy(model.encoder_for(m)) for m in mods}, num_classes))
    net = accelerator.unwrap_model(net).eval()

    def fn(batch):
        # three-crop video is (B, crops, C, T, H, W): classify each crop, average the softmax;
        # other inputs (one crop, audio) are the same for every view
        inputs = {m: batch[m].to(accelerator.device) for m in net.towers}
        crops = max(x.shape[1] if x.ndim == 6 else 1 for x in inputs.values())
        probs = 0
        for c in range(crops):
            view = {m: x[:, c] if x.ndim == 6 else x for m, x in inputs.items()}
            probs = probs + net(view).softmax(-1)
        return probs / crops

    failed: list[tuple[int, str]] | None = [] if args.skip_bad else None
    per_item = F.map_items(test_ds, fn, batch_size=args.batch_size, num_workers=args.num_workers,
                           desc=f"{task.name} finetune test", failed=failed)
    scores = per_item.reshape(len(test_ds) // test_ds.num_clips, test_ds.num_clips, -1).mean(1)
    ok = F.decoded(len(scores), failed, test_ds.num_clips)  # False: a test clip failed mid-way
    labels = np.asarray(test_ds.labels, np.int64)[ok]
    metrics = classification_metrics(scores[ok], labels, test_ds.class_names)
    metrics.update(epochs=epochs, lr=args.lr, steps=step, warmup_steps=warmup,
                   lr_last_step=lr_used, skipped_steps=skipped)  # cosine end: near 0 but > 0 on any process count
    test_records = [r for r, k in zip(test_ds.records, ok) if k]
    return {"metrics": metrics, "used": train_ds.num_used + len(test_records),
            "expected": train_ds.num_listed + test_ds.num_listed,
            "manifest": F.manifest_hash(train_ds.records + test_records)}
