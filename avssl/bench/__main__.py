"""``python -m avssl.bench``: benchmark a checkpoint (or an encoder) on a task.

    python -m avssl.bench --list
    python -m avssl.bench --task synthetic                                  # random-init baseline
    python -m avssl.bench --task synthetic --checkpoint runs/pretrain_sync/latest
    python -m avssl.bench --task ucf101 --checkpoint CKPT --data-root data/ucf101 --split 2 \\
        --protocol knn --views 10x3
    accelerate launch --num_processes 4 -m avssl.bench --task ucf101 ...    # same numbers

Prints the metrics and appends one row to ``<leaderboard>/<task>.csv``.
"""
from __future__ import annotations

import argparse
import json
import sys

from avssl.errors import AvsslError


def _table(result: dict, args) -> str:
    m = result["metrics"]
    lines = [f"| task | protocol | split | videos | {result['metric']} | other |",
             "|---|---|---|---|---:|---|"]
    from avssl.leaderboard import format_number

    other = ", ".join(f"{k} {format_number(v)}" for k, v in m.items()
                      if k != result["metric"] and isinstance(v, (int, float))
                      and not isinstance(v, bool))
    lines.append(f"| {result['task']} | {result['protocol']} | {result['split']} | "
                 f"{result['videos_used']}/{result['videos_expected']} | "
                 f"{result['value']:.2f} | {other} |")
    return "\n".join(lines)


def list_tasks() -> str:
    from avssl.bench.tasks import TASKS

    out = []
    for name in TASKS.names():
        t = TASKS.get(name)
        out.append(f"{name:14s} {t.summary}\n{'':14s} data: {t.data}\n{'':14s} protocols: "
                   f"{', '.join(t.protocols)} (default {t.default_protocol}); splits: "
                   f"{', '.join(t.splits)}; metric: {t.metric}; views: {t.views}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m avssl.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.add_argument("--task", help="task name (see --list)")
    p.add_argument("--checkpoint", help="checkpoint folder or runs/<recipe>/latest")
    p.add_argument("--encoder", help="registered encoder, random init (video or audio)")
    p.add_argument("--audio-encoder", help="registered audio encoder, random init")
    p.add_argument("--encoder-kwargs", type=json.loads, default={},
                   help="JSON keyword arguments of --encoder")
    p.add_argument("--protocol", help="one of the task's protocols (see --list): linear, knn, "
                                      "fewshot, finetune, retrieval, zeroshot, actionformer, "
                                      "roi-linear, frozen")
    p.add_argument("--split", help="split to evaluate (task default: the first)")
    p.add_argument("--data-root", help="dataset root (task default if omitted)")
    p.add_argument("--views", help="test views CLIPSxCROPS, crops 1 or 3 (e.g. 10x3)")
    p.add_argument("--modality", choices=["video", "audio", "av"],
                   help="features to evaluate (task default)")
    p.add_argument("--leaderboard", default="leaderboard",
                   help="folder of leaderboard CSVs ('' to append nothing)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave unreadable videos out and report videos used vs expected")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--no-cache", action="store_true", help="recompute features")
    p.add_argument("--save-predictions", metavar="DIR",
                   help="write the test scores in python -m avssl.eval's file formats")
    g = p.add_argument_group("input (default: what the checkpoint was trained with)")
    g.add_argument("--clip-s", type=float)
    g.add_argument("--fps", type=float)
    g.add_argument("--size", type=int, help="decode short side")
    g.add_argument("--crop", type=int)
    g = p.add_argument_group("protocol options")
    g.add_argument("--shots", type=lambda s: tuple(int(x) for x in s.split(",")), default=(1, 5),
                   help="few-shot n per class, comma-separated")
    g.add_argument("--k", type=int, default=20, help="kNN neighbours")
    g.add_argument("--index", choices=["flat", "ivfpq"], default="flat",
                   help="retrieval: exact ranks, or a FAISS IVF-PQ index for large galleries")
    g.add_argument("--epochs", type=int, help="finetune epochs (10) / localization head (30)")
    g.add_argument("--stride-s", type=float, help="localization: window stride in seconds "
                   "(default: half the clip length)")
    g.add_argument("--lr", type=float, default=1e-3, help="finetune learning rate")
    g.add_argument("--separation", type=json.loads, default={}, metavar="JSON",
                   help='music: separator options, e.g. \'{"mask": "ratio", "width": 16}\'')
    p.add_argument("--json", action="store_true", help="print the metrics as JSON too")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            print(list_tasks())
            return 0
        if not args.task:
            raise AvsslError("give --task NAME (python -m avssl.bench --list shows the tasks)")
        from avssl.bench.run import BenchArgs, run_bench

        bench = BenchArgs(
            task=args.task, checkpoint=args.checkpoint, encoder=args.encoder,
            audio_encoder=args.audio_encoder, encoder_kwargs=args.encoder_kwargs,
            protocol=args.protocol, split=args.split, data_root=args.data_root, views=args.views,
            modality=args.modality, leaderboard=args.leaderboard or None, skip_bad=args.skip_bad,
            seed=args.seed, batch_size=args.batch_size, num_workers=args.num_workers,
            cache=not args.no_cache, save_predictions=args.save_predictions, clip_s=args.clip_s,
            fps=args.fps, size=args.size,
            crop=args.crop, shots=args.shots, k=args.k, epochs=args.epochs,
            stride_s=args.stride_s, lr=args.lr, index=args.index,
            separation=args.separation)

        def report(result: dict) -> None:  # called before the row is appended
            print(_table(result, args), flush=True)
            if args.json:
                keys = ("task", "protocol", "split", "metric", "value", "metrics",
                        "videos_used", "videos_expected")
                print(json.dumps({k: result[k] for k in keys}, sort_keys=True), flush=True)

        result = run_bench(bench, report=report)
    except Exception as err:
        if "\n" in str(err):  # loaders outside map_items (finetune's training loader) re-raise
            from avssl.bench.features import worker_error  # a worker's error as torch's wrapper

            err = worker_error(err) or err
        if not isinstance(err, AvsslError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result["row"] is not None:
        print(f"appended a row to {args.leaderboard}/{result['task']}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
