"""The leaderboard row schema: one place that says what a result row is and what makes it valid.

One row records one benchmark run (task, model, protocol, split) and where its number came from:
checkpoint path and sha256, pretraining recipe, config and data-manifest hashes, how many videos
were used of how many expected, test views, model size and cost, the metric, and the avssl
version and git commit that produced it. ``avssl.leaderboard`` appends rows to
``leaderboard/<task>.csv`` in :data:`COLUMNS` order; everything it writes or reads passes through
:func:`validate_row`, so an invalid row is never written and a corrupt one is reported by column.

In the CSV every field is a string: booleans are ``true``/``false``, an absent GMACs value or
checkpoint is the empty string, and ``secondary`` is a compact JSON object.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from avssl.errors import DataError

COLUMNS = ["timestamp", "task", "task_version", "split", "protocol", "encoder", "modality",
           "checkpoint", "checkpoint_sha256", "recipe", "config_hash", "data_manifest_hash",
           "videos_used", "videos_expected", "views", "params_m", "gmacs_per_clip", "metric",
           "value", "higher_is_better", "secondary", "seed", "avssl_version", "git_commit"]

MODALITIES = ("video", "audio", "av")

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
# The task names a file (<task>.csv), so it must not be able to name a path elsewhere.
_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256_OR_EMPTY = re.compile(r"([0-9a-f]{64})?")
_HEX = re.compile(r"[0-9a-f]*")
_VIEWS = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")
_COMMIT = re.compile(r"([0-9a-f]{40}|unknown)(-dirty)?")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOATS = ("params_m", "gmacs_per_clip", "value")


@dataclass
class ResultRow:
    """One leaderboard row; field order is :data:`COLUMNS`. See the module docstring."""

    timestamp: str            # ISO-8601 UTC, seconds: 2026-11-26T15:04:05Z
    task: str
    task_version: str
    split: str                # "1", "test", ...
    protocol: str             # linear, knn, fewshot, finetune, retrieval, ...
    encoder: str
    modality: str             # video | audio | av
    checkpoint: str           # path, or "" for random init
    checkpoint_sha256: str    # 64 hex, or ""
    recipe: str               # pretrain_sync, pretrain_mbt, random-init, ...
    config_hash: str          # hex or ""
    data_manifest_hash: str   # hex or ""
    videos_used: int
    videos_expected: int
    views: str                # clips x crops: "1x1", "10x3"
    params_m: float           # parameters, millions
    gmacs_per_clip: float | None
    metric: str
    value: float
    higher_is_better: bool
    secondary: dict = field(default_factory=dict)  # numbers or nested dicts of numbers
    seed: int = 0
    avssl_version: str = ""
    git_commit: str = "unknown"

    def to_csv_dict(self) -> dict[str, str]:
        """Every column as its CSV string; not validated here (see :func:`validate_row`)."""
        out: dict[str, str] = {}
        for name in COLUMNS:
            v = getattr(self, name)
            if name == "secondary":
                # sorted keys + compact separators: the same dict always gives the same bytes
                out[name] = json.dumps(v, sort_keys=True, separators=(",", ":"),
                                       default=_json_scalar)
            elif isinstance(v, bool):
                out[name] = "true" if v else "false"
            elif v is None:
                out[name] = ""
            elif name in _FLOATS and not isinstance(v, str):
                try:  # numpy / torch scalars too; repr round-trips a float exactly
                    out[name] = repr(float(v))
                except (TypeError, ValueError):
                    out[name] = str(v)  # left for validate_row to reject by column
            else:
                out[name] = str(v)
        return out

    @classmethod
    def from_csv_dict(cls, d: Mapping[str, str]) -> ResultRow:
        """Parse and validate one CSV row; :class:`DataError` names the bad column and value."""
        return validate_row(d)


def make_row(**fields_: Any) -> ResultRow:
    """A :class:`ResultRow` with ``timestamp`` (now), ``avssl_version`` and ``git_commit`` filled
    in unless given, and empty ``checkpoint``/hashes, ``gmacs_per_clip=None``, ``secondary={}``
    defaults; the remaining columns are required keyword arguments."""
    defaults: dict[str, Any] = {"checkpoint": "", "checkpoint_sha256": "", "config_hash": "",
                                "data_manifest_hash": "", "gmacs_per_clip": None}
    if "timestamp" not in fields_:
        defaults["timestamp"] = now_utc()
    if "avssl_version" not in fields_ or "git_commit" not in fields_:
        defaults.update(provenance())
    return ResultRow(**{**defaults, **fields_})


# ------------------------------------------------------------------------------------ validation
def _json_scalar(obj: Any) -> Any:
    """numpy / torch scalars in ``secondary`` become plain numbers; anything else a string
    (which validation then rejects by name)."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def _bad(column: str, value: str, expected: str) -> DataError:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return DataError(f"column {column!r}: expected {expected}, got {shown!r}")


def _string(d: Mapping[str, str], col: str, *, nonempty: bool = False,
            pattern: re.Pattern | None = None, expected: str = "a string") -> str:
    v = d[col]
    if not isinstance(v, str):
        raise _bad(col, repr(v), expected)
    if "\n" in v or "\r" in v:  # one row = one line, so errors can name file:line
        raise _bad(col, v, f"{expected} without line breaks")
    if nonempty and not v.strip():
        raise _bad(col, v, expected)
    if pattern is not None and not pattern.fullmatch(v):
        raise _bad(col, v, expected)
    return v


def _int(d: Mapping[str, str], col: str, *, minimum: int | None = None) -> int:
    v = _string(d, col).strip()
    expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    if not _INT.fullmatch(v) or (minimum is not None and int(v) < minimum):
        raise _bad(col, v, expected)
    return int(v)


def _float(d: Mapping[str, str], col: str, *, optional: bool = False,
           nonnegative: bool = False) -> float | None:
    v = _string(d, col).strip()
    expected = ("a finite number" + (" >= 0" if nonnegative else "")
                + (" or empty" if optional else ""))
    if optional and v == "":
        return None
    try:
        x = float(v)
    except ValueError:
        raise _bad(col, v, expected) from None
    if not math.isfinite(x) or (nonnegative and x < 0):
        raise _bad(col, v, expected)
    return x


def _check_secondary(obj: Any, where: str) -> None:
    """Numbers (finite), lists of numbers, or nested dicts of those."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not str(k).isprintable():  # a decoded "\n" would break the rendered table row
                raise ValueError(f"key {k!r} holds a control character")
            _check_secondary(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list)):
                raise ValueError(f"{where}[{i}] is nested in a list; use a dict")
            _check_secondary(v, f"{where}[{i}]")
    elif isinstance(obj, bool) or not isinstance(obj, (int, float)):
        raise ValueError(f"{where or 'value'} is {type(obj).__name__}, not a number")
    elif not math.isfinite(obj):
        raise ValueError(f"{where} is not finite")


def _secondary(d: Mapping[str, str], col: str) -> dict:
    v = _string(d, col)
    expected = "a JSON object of numbers or nested objects, e.g. {\"top5\": 91.2}"
    if v.strip() == "":
        return {}

    def no_constants(name: str) -> float:  # json.loads would accept NaN / Infinity
        raise ValueError(f"{name} is not finite")

    try:
        obj = json.loads(v, parse_constant=no_constants)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        _check_secondary(obj, "")
    except ValueError as e:
        raise _bad(col, v, f"{expected} ({e})") from None
    return obj


def validate_row(d: Mapping[str, str]) -> ResultRow:
    """Check one raw CSV row (column -> string) against the schema and parse it.

    Raises :class:`DataError` with a one-line message naming the column and the bad value.
    """
    keys = set(d)
    missing = [c for c in COLUMNS if c not in keys]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; a row has the columns "
                        f"{','.join(COLUMNS)}")
    extra = sorted(str(k) for k in keys - set(COLUMNS))
    if extra:
        raise DataError(f"unexpected column(s) {', '.join(extra)}; a row has the columns "
                        f"{','.join(COLUMNS)}")

    ts = _string(d, "timestamp", pattern=_TIMESTAMP,
                 expected="an ISO-8601 UTC time with seconds like 2026-11-26T15:04:05Z")
    try:
        datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise _bad("timestamp", ts, "a valid date and time like 2026-11-26T15:04:05Z") from None
    hib = _string(d, "higher_is_better", expected="true or false").strip().lower()
    if hib not in ("true", "false"):
        raise _bad("higher_is_better", d["higher_is_better"], "true or false")
    used = _int(d, "videos_used", minimum=0)
    expected_n = _int(d, "videos_expected", minimum=0)
    if used > expected_n:
        raise _bad("videos_used", d["videos_used"],
                   f"at most videos_expected ({expected_n})")

    return ResultRow(
        timestamp=ts,
        task=_string(d, "task", pattern=_TASK,
                     expected="a task name of letters, digits, '.', '_' or '-'"),
        task_version=_string(d, "task_version"),
        split=_string(d, "split", nonempty=True, expected="a non-empty split name like 1 or test"),
        protocol=_string(d, "protocol", nonempty=True, expected="a non-empty protocol name"),
        encoder=_string(d, "encoder", nonempty=True, expected="a non-empty encoder name"),
        modality=_string(d, "modality", pattern=re.compile("|".join(MODALITIES)),
                         expected=" or ".join(MODALITIES)),
        checkpoint=_string(d, "checkpoint", expected="a checkpoint path or empty"),
        checkpoint_sha256=_string(d, "checkpoint_sha256", pattern=_SHA256_OR_EMPTY,
                                  expected="64 lowercase hex characters or empty"),
        recipe=_string(d, "recipe", nonempty=True,
                       expected="a recipe name like pretrain_sync or random-init"),
        config_hash=_string(d, "config_hash", pattern=_HEX, expected="lowercase hex or empty"),
        data_manifest_hash=_string(d, "data_manifest_hash", pattern=_HEX,
                                   expected="lowercase hex or empty"),
        videos_used=used,
        videos_expected=expected_n,
        views=_string(d, "views", pattern=_VIEWS, expected="CLIPSxCROPS like 1x1 or 10x3"),
        params_m=_float(d, "params_m", nonnegative=True),  # type: ignore[arg-type]
        gmacs_per_clip=_float(d, "gmacs_per_clip", optional=True, nonnegative=True),
        metric=_string(d, "metric", nonempty=True, expected="a non-empty metric name"),
        value=_float(d, "value"),  # type: ignore[arg-type]
        higher_is_better=hib == "true",
        secondary=_secondary(d, "secondary"),
        seed=_int(d, "seed"),
        avssl_version=_string(d, "avssl_version", nonempty=True,
                              expected="a non-empty version string"),
        git_commit=_string(d, "git_commit", pattern=_COMMIT,
                           expected="40 lowercase hex characters or 'unknown', optionally "
                                    "followed by -dirty"),
    )


assert [f.name for f in fields(ResultRow)] == COLUMNS  # the dataclass and the header agree


# ------------------------------------------------------------------------------------ provenance
def now_utc() -> str:
    """The current UTC time as ``2026-11-26T15:04:05Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    import avssl

    v = getattr(avssl, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import version

        return version("avssl")
    except Exception:  # not installed (source tree on sys.path) or broken metadata
        return "0+unknown"


def _git(args: list[str], cwd: Path) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index of the user's checkout
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5,
                           env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _git_commit() -> str:
    import avssl

    pkg = Path(avssl.__file__).resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], pkg)
    # An installed copy inside some other repository (e.g. a venv in a project folder) must not
    # report that repository's commit: the checkout has to track avssl's own files.
    if not top or _git(["ls-files", "--error-unmatch", str(pkg / "__init__.py")], pkg) is None:
        return "unknown"
    head = _git(["rev-parse", "HEAD"], pkg)
    if not head or not re.fullmatch(r"[0-9a-f]{40}", head):
        return "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"], Path(top))
    if status is None:
        return "unknown"
    return head + ("-dirty" if status else "")


def provenance() -> dict[str, str]:
    """``{"avssl_version": ..., "git_commit": ...}`` for the running avssl; never raises.

    ``git_commit`` is ``git rev-parse HEAD`` of the avssl source checkout, ``-dirty`` when tracked
    files differ from it, ``unknown`` when git or the checkout is absent (e.g. a wheel install).
    """
    try:
        commit = _git_commit()
    except Exception:  # provenance must never stop a benchmark from recording its result
        commit = "unknown"
    return {"avssl_version": _version(), "git_commit": commit}
