"""Standalone evaluators on prediction files: ``python -m avssl.eval <evaluator> ...``.

Each evaluator module holds its metric functions (which :mod:`avssl.bench` calls directly) and
registers one ``add_parser(subparsers)`` function in :data:`EVALUATORS`; the function adds its
subcommand and sets ``run(args) -> dict`` as the subcommand's handler. A new evaluator is one
module plus one import line below.

Conventions: every accuracy, recall and mAP is in percent (0-100), except localization and ava,
which print fractions (0-1) like the official ActivityNet evaluators (the bench's leaderboard rows
store them in percent); separation prints decibels; ranks are 1-based; results
are plain JSON-serialisable dicts; whenever a score tie decides correctness it counts against
the model.
"""
from __future__ import annotations

from avssl.registry import Registry

EVALUATORS: Registry = Registry("evaluator")

# Evaluator modules register their subcommand on import.
from avssl.eval import classification, retrieval, sync  # noqa: E402,F401
from avssl.eval import localization  # noqa: E402,F401
from avssl.eval import ava, separation  # noqa: E402,F401
