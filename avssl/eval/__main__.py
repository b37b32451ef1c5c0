"""``python -m avssl.eval <evaluator> ...``: print an evaluator's metrics as JSON.

One subcommand per registered evaluator (:data:`avssl.eval.EVALUATORS`); output is JSON with
indent 2 and sorted keys on stdout, strict (a metric that is not finite, such as the SIR of a
one-source sample, is ``null``). Bad input prints ``error: <message>`` on stderr and exits 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from avssl.errors import AvsslError
from avssl.eval import EVALUATORS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m avssl.eval",
        description="Evaluate prediction / embedding / score files; prints metrics as JSON "
                    "(accuracies and recalls in percent, ranks 1-based).")
    sub = parser.add_subparsers(dest="evaluator", metavar="EVALUATOR", required=True)
    for name in EVALUATORS:
        EVALUATORS.get(name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except AvsslError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(_strict(result), indent=2, sort_keys=True, allow_nan=False))
    return 0


def _strict(x):
    """``x`` with every non-finite float as ``None``: strict JSON (``null``), which every parser
    reads, instead of Python's ``NaN`` / ``Infinity`` tokens (e.g. the SIR of a one-source sample,
    which has no interference to measure)."""
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


if __name__ == "__main__":
    sys.exit(main())
