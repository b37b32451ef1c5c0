"""``python -m avssl.data.synthetic --layout ucf101 --out DIR``: write a synthetic dataset."""
from __future__ import annotations

import argparse
import sys

from avssl.errors import AvsslError
from avssl.data.synthetic.layouts import LAYOUTS, _write_layout
from avssl.data.synthetic.world import WorldConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avssl.data.synthetic",
                                description="Write the synthetic audio-visual world to disk in a "
                                            "real dataset's format.")
    p.add_argument("--layout", required=True, help=f"one of: {', '.join(LAYOUTS.names())}")
    p.add_argument("--out", required=True,
                   help="output folder: new or empty (a tree written here before with the same "
                        "options is left as it is)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a synthetic tree avssl wrote in --out with other options (or "
                        "left unfinished); a folder holding other files is never touched")
    p.add_argument("--clips-per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="frame height = width (even)")
    p.add_argument("--duration", type=float,
                   help="clip length in seconds (2; music: length of each solo video, 8)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--labelled-test-lists", action="store_true",
                   help="ucf101: append labels to testlist lines, as derived copies do")
    p.add_argument("--min-duration", type=float,
                   help="thumos14 / activitynet: shortest untrimmed video in seconds (30)")
    p.add_argument("--max-duration", type=float,
                   help="thumos14 / activitynet: longest untrimmed video in seconds (120)")
    args = p.parse_args(argv)
    options = {"labelled_test_lists": True} if args.labelled_test_lists else {}
    if args.min_duration is not None:
        options["min_duration_s"] = args.min_duration
    if args.max_duration is not None:
        options["max_duration_s"] = args.max_duration
    if args.duration is not None and args.layout == "music":
        options["duration_s"] = args.duration
    try:
        duration = 2.0 if args.duration is None else args.duration  # --duration 0 is refused
        cfg = WorldConfig(size=args.size, duration_s=duration)
        root, wrote = _write_layout(args.layout, args.out, clips_per_class=args.clips_per_class,
                                    seed=args.seed, cfg=cfg, workers=args.workers,
                                    overwrite=args.overwrite, **options)
    except AvsslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if wrote:
        print(f"wrote {args.layout} layout to {root}")
    else:
        print(f"{root} already holds this {args.layout} layout (same options); left it as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
