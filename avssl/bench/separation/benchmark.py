"""The ``music`` bench task's pipeline: mix-and-separate on the train split, BSS-eval on test.

1. Train split: every solo video with sound gives up to ``max_windows`` candidate windows
   over the part with sound (:func:`.windows.record_starts`; the test window is centred there);
   their audio at 11,025 Hz and, with the ``frozen`` protocol, the pooled embedding of each
   window's centred clip by the model's video encoder are decoded once and cached
   (``finetune``: the clips themselves, and the encoder trains with the separator).
2. Mix-and-separate training (:mod:`.train`): mixtures of ``num_mix`` windows of different
   instruments, each divided by ``num_mix``.
3. Test split: fixed seeded mixtures, every test video (its centred window) paired with
   ``test_mixtures_per_video`` (default 4) seeded draws of test videos of other instruments
   (duplicates dropped); the references are the sources as mixed (divided
   by ``num_mix``), the estimates the masked mixture with the mixture phase.
4. :func:`avssl.eval.separation.evaluate_separation` -> SDR, SIR, SAR, SDR_mix, NSDR (dB).

``--save-predictions DIR`` writes ``DIR/references/<sample>/<source>.wav``,
``DIR/estimates/<sample>/<source>.wav`` and ``DIR/mixtures/<sample>.wav`` (32-bit float, so
``python -m avssl.eval separation`` on them gives the bench's numbers back). A sample is
``<video a>+<video b>``, a source ``<k>_<instrument>``.
"""
from __future__ import annotations

import copy
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avssl.bench import features as F
from avssl.bench.separation.spectrogram import SAMPLE_RATE, WINDOW, Spectrogram
from avssl.bench.separation.train import (MixtureSet, SeparationConfig, WindowBank,
                                          build_separator, draw_partners, separate,
                                          train_separator)
from avssl.bench.separation.windows import record_starts, window_bank
from avssl.errors import ConfigError, DataError

MAX_WINDOWS = 4   # training windows per video (real MUSIC videos are minutes long)
MUSIC_SPLIT_SEED = 0  # the published split (splits/music_<index>_seed0_v1.csv)


def separation_config(args) -> SeparationConfig:
    """Bench arguments -> config: ``epochs``, ``lr``, ``batch_size``, ``seed`` from BenchArgs;
    anything else from an optional ``args.separation`` dict (e.g. ``{"mask": "ratio"}``)."""
    extra = dict(getattr(args, "separation", None) or {})
    names = {f.name for f in fields(SeparationConfig)}
    unknown = sorted(set(extra) - names)
    if unknown:
        raise ConfigError(f"unknown separation option(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(names))}")
    cfg = SeparationConfig(**extra)
    over = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
            "seed": args.seed}
    return replace(cfg, **{k: v for k, v in over.items() if v is not None and k not in extra})


def _layout(records, part: str):
    """The windows of ``records``: items (record, start_s), their instrument and their video."""
    items = [(r, s) for r in records for s in record_starts(r, part, MAX_WINDOWS)]
    groups = np.asarray([r.label for r, _ in items], np.int64)
    # the YouTube video of each window: one the index JSON lists under two instruments is two
    # records (whichever file holds it)
    videos = {v: k for k, v in enumerate(dict.fromkeys(r.video_id for r in records))}
    source = np.asarray([videos[r.video_id] for r, _ in items], np.int64)
    return items, groups, source


def _bank(task, model, args, records, *, part: str, frozen: bool,
          cache) -> tuple[WindowBank, list]:
    """The part's windows decoded (cached), and the records they come from: with --skip-bad,
    without the videos a window of which failed to decode part-way (not cached then)."""
    items, groups, source = _layout(records, part)
    key = cache.key(model=model.identity() if frozen else "clips", task=task.name,
                    version=task.version, part=part, spec=vars(model.spec),
                    windows=[[r.video_id, s] for r, s in items], rate=SAMPLE_RATE,
                    samples=WINDOW, data=F.manifest_hash(records))
    hit = cache.get(key)
    if hit is not None:
        return WindowBank(torch.from_numpy(hit["audio"]), torch.from_numpy(hit["cond"]),
                          groups, source), records
    failed: list[tuple[int, str]] | None = [] if args.skip_bad else None
    bank = window_bank(items, model.spec, encoder=model.video if frozen else None, groups=groups,
                       batch_size=args.batch_size, num_workers=args.num_workers,
                       desc=f"{task.name} {part} windows", failed=failed)
    if failed:
        broken = {id(items[i][0]) for i, _ in failed}
        rows = torch.tensor([k for k, (r, _) in enumerate(items) if id(r) not in broken])
        records = [r for r in records if id(r) not in broken]
        _, groups, source = _layout(records, part)
        return WindowBank(bank.audio[rows], bank.cond[rows], groups, source), records
    cache.put(key, audio=bank.audio.numpy(), cond=bank.cond.numpy())
    bank.source = source
    return bank, records


def _enough_instruments(task, recs: dict[str, list], num_mix: int) -> None:
    for part, rs in recs.items():
        if len({r.label for r in rs}) < num_mix:
            raise DataError(f"task {task.name}: the {part} split has videos with sound of "
                            f"{len({r.label for r in rs})} instrument(s); mix-and-separate needs "
                            f"{num_mix}")


def test_pairs(labels: np.ndarray, num_mix: int, seed: int, per_video: int = 1,
               source: np.ndarray | None = None) -> np.ndarray:
    """(M, num_mix) test mixtures: ``per_video`` rounds of a fixed seeded draw, in each of which
    every test video i gets ``num_mix - 1`` partners of other instruments (each of a different
    instrument from the rest, and of another video per ``source``). A mixture drawn twice (the
    same set of videos, in any order) is kept once, at its first draw, so M <= n * per_video."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 31])
    draws = np.concatenate([draw_partners(labels, np.arange(len(labels)), num_mix, rng, source)
                            for _ in range(per_video)])
    _, first = np.unique(np.sort(draws, axis=1), axis=0, return_index=True)
    return draws[np.sort(first)]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def write_predictions(out: str | Path, names: list[str], sources: list[list[str]],
                      refs: np.ndarray, ests: np.ndarray, mixes: np.ndarray) -> None:
    """The evaluator's wav folders (see module docstring); arrays (n, N, S), (n, N, S), (n, S)."""
    import soundfile

    out = Path(out)
    for i, name in enumerate(names):
        for kind, arr in (("references", refs), ("estimates", ests)):
            d = out / kind / name
            d.mkdir(parents=True, exist_ok=True)
            for k, src in enumerate(sources[i]):
                soundfile.write(d / f"{src}.wav", arr[i, k], SAMPLE_RATE, subtype="FLOAT")
        (out / "mixtures").mkdir(parents=True, exist_ok=True)
        soundfile.write(out / "mixtures" / f"{name}.wav", mixes[i], SAMPLE_RATE, subtype="FLOAT")


def run_separation(task, model, args, root: str, modality: str) -> dict[str, Any]:
    """The task's ``run``: see module docstring. Returns metrics (dB), used / expected videos,
    the manifest hash."""
    from avssl.bench.run import _load
    from avssl.eval.separation import evaluate_separation

    if modality != "video":
        raise ConfigError(f"task {task.name} conditions separation on the video: --modality must "
                          f"be video, got {modality!r}")
    protocol = args.protocol or task.default_protocol
    frozen = protocol == "frozen"
    encoder = model.encoder_for("video")
    cfg = separation_config(args)
    # the split seed is fixed: --seed varies training and the test pairs, never which videos
    # are test videos (rows of one task version must share a test set; DATASETS.md: "fix and
    # publish one, seeded")
    splits = {part: _load(task, task.load, root, part, skip_bad=args.skip_bad,
                          seed=MUSIC_SPLIT_SEED) for part in ("train", "test")}
    recs = {p: [r for r in s.records if r.has_audio] for p, s in splits.items()}
    _enough_instruments(task, recs, cfg.num_mix)
    cache = F.FeatureCache(task.name, enabled=args.cache)
    banks = {}
    for part in ("train", "test"):
        banks[part], recs[part] = _bank(task, model, args, recs[part], part=part, frozen=frozen,
                                        cache=cache)
    _enough_instruments(task, recs, cfg.num_mix)  # again if --skip-bad left videos out
    train, test = banks["train"], banks["test"]

    net = build_separator(encoder.embed_dim, cfg,
                          encoder=None if frozen else copy.deepcopy(encoder))
    spec = Spectrogram()
    losses = train_separator(net, train, cfg, spec=spec, progress=F.state().is_main_process,
                             desc=f"{task.name} {protocol} mix-and-separate")
    net = net.to(F.state().device).eval()
    pairs = test_pairs(test.group, cfg.num_mix, args.seed, cfg.test_mixtures_per_video,
                       test.source)
    device = F.state().device

    def fn(batch):
        scaled = batch["sources"].to(device) / cfg.num_mix
        conds = [batch["cond"][:, k].to(device) for k in range(cfg.num_mix)]
        return separate(net, spec, scaled.sum(1), conds, cfg.threshold)  # (B, N, S)

    ests = F.map_items(MixtureSet(test, pairs), fn, batch_size=args.batch_size,
                       num_workers=0, desc=f"{task.name} separate")
    refs = (test.audio[torch.from_numpy(pairs)] / cfg.num_mix).numpy()
    mixes = refs.sum(1)
    names = ["+".join(recs["test"][j].video_id for j in p) for p in pairs]
    sources = [[f"{k}_{_safe(recs['test'][j].instrument)}" for k, j in enumerate(p)]
               for p in pairs]
    res = evaluate_separation(list(refs), list(ests), mixtures=list(mixes), names=names)
    if args.save_predictions and F.state().is_main_process:
        write_predictions(args.save_predictions, names, sources, refs, ests, mixes)
    metrics = {k: res[k] for k in ("SDR", "SIR", "SAR", "SDR_mix", "NSDR")}
    if metrics["SDR"] is None:
        raise DataError(f"task {task.name}: every test mixture was near-silent or separated to "
                        f"silence ({res['num_skipped']} skipped); nothing to score")
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    metrics.update(num_samples=res["num_samples"], num_skipped=res["num_skipped"],
                   train_windows=len(train), epochs=cfg.epochs, steps=len(losses),
                   final_loss=float(np.mean(tail)), mask=cfg.mask)
    used = sum(len(r) for r in recs.values())
    expected = sum(s.num_listed for s in splits.values())
    manifest = F.manifest_hash(recs["train"] + recs["test"])
    return {"metrics": metrics, "used": used, "expected": expected, "manifest": manifest}
