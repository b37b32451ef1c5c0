"""Typed dataclass configs with dotted command-line overrides.

A config is a (nested) dataclass. Leaf fields are ``int``, ``float``, ``str``, ``bool``, an
``Optional`` of those, a ``Literal[...]``, a ``tuple``/``list`` of scalars, or a ``dict`` (given
as JSON on the command line, e.g. ``--model.video_kwargs='{"num_frames": 16}'``). Sections are
dataclass-typed fields. From the command line::

    --optim.lr=3e-4 --data.path /videos --model.tiny=true --data.size=112,112

Every value is checked against the field's type; an unknown key is an error that names the
closest key. The resolved config is saved as JSON and loads back to an equal object::

    cfg = parse_args(TrainConfig, sys.argv[1:])
    save_config(cfg, run_dir / "config.json")
    assert load_config(TrainConfig, run_dir / "config.json") == cfg

Help text comes from ``field(metadata={"help": ...})``; ``--help`` lists every key with its type
and default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from avssl.errors import ConfigError
from avssl.registry import did_you_mean

C = TypeVar("C")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a CLI string or a JSON value) to type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"--{key}: expected {_type_name(tp)}, got {value!r}")

    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in _NONE):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise bad
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"--{key}: expected one of {', '.join(map(str, args))}, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError:
                    raise bad from None
            else:
                items = [v for v in text.strip("()").split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise bad
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ConfigError(f"--{key}: expected {len(args)} values, got {value!r}")
            out = [_coerce(v, a, key) for v, a in zip(items, args)]
        else:
            item_tp = args[0] if args else str
            out = [_coerce(v.strip() if isinstance(v, str) else v, item_tp, key) for v in items]
        return tuple(out) if origin is tuple else out
    if tp is dict or origin is dict:
        if isinstance(value, str):
            try:  # NaN / Infinity are not JSON: config.json (strict JSON) could not be written
                value = json.loads(value, parse_constant=_not_json)
            except (json.JSONDecodeError, ValueError):
                raise ConfigError(f"--{key}: expected a JSON object (finite numbers), got "
                                  f"{value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"--{key}: expected a JSON object, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:  # exact first: float() would round integers above 2**53
            return int(str(value).strip())
        except ValueError:
            pass
        try:  # then spellings such as 1e3 or 2.0
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not f.is_integer():
            raise bad
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(f):  # nan / inf: no setting means that, and JSON cannot hold it
            raise ConfigError(f"--{key}: expected a finite number, got {value!r}")
        return f
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is Any:
        return value
    raise ConfigError(f"--{key}: unsupported config type {_type_name(tp)}")


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """``[(dotted_key, type, default, help), ...]`` of every leaf field of a config class."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if _is_dataclass_type(tp):
            out.extend(flat_fields(tp, key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((key, tp, default, f.metadata.get("help", "")))
    return out


def from_dict(cls: type[C], data: dict, prefix: str = "") -> C:
    """Build ``cls`` from a (nested) dict, type-checking values; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a JSON object, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            keys = [prefix + n for n in names]
            raise ConfigError(f"unknown config key {prefix + k!r}{did_you_mean(prefix + k, keys)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if _is_dataclass_type(tp):
            kwargs[name] = from_dict(tp, data[name], prefix + name + ".")
        else:
            kwargs[name] = _coerce(data[name], tp, prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """A JSON-ready nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(cfg: C, overrides: dict[str, str | bool]) -> C:
    """Return a copy of ``cfg`` with dotted ``{key: value}`` overrides applied and checked."""
    data = dataclasses.asdict(cfg)
    kinds = {k: tp for k, tp, *_ in flat_fields(type(cfg))}
    keys = list(kinds)
    for key, value in overrides.items():
        if key not in keys:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, keys)}; "
                              f"see --help for the list")
        if value is True:  # a bare --flag: only a switch may be given without a value
            if bool not in (kinds[key], *typing.get_args(kinds[key])):
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE (see --help)")
            value = "true"
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return from_dict(type(cfg), data)


def parse_overrides(argv: list[str]) -> dict[str, str | bool]:
    """``["--a.b=1", "--c", "x", "--d"]`` -> ``{"a.b": "1", "c": "x", "d": True}``: a bare
    ``--flag`` is ``True``, which :func:`apply_overrides` accepts for switches only (``--data.path``
    without its value was the path "true")."""
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: options look like --section.field=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 1
        else:
            key, value = body, True
        out[key.replace("-", "_")] = value
        i += 1
    return out


def format_help(cls: type, prog: str = "", description: str = "") -> str:
    lines = [f"usage: {prog} [--config FILE.json] [--section.field=value ...]", ""]
    if description:
        lines += [description.strip(), ""]
    lines.append("options (default in brackets):")
    try:  # an instance knows the defaults that sections' default_factory lambdas set
        values = dataclasses.asdict(cls())
    except TypeError:
        values = None
    for key, tp, default, help_ in flat_fields(cls):
        if values is not None:
            default = values
            for part in key.split("."):
                default = default[part]
        shown = "required" if default is dataclasses.MISSING else json.dumps(
            list(default) if isinstance(default, tuple) else default)
        lines.append(f"  --{key}={_type_name(tp)}  [{shown}]" + (f"  {help_}" if help_ else ""))
    return "\n".join(lines)


def parse_args(cls: type[C], argv: list[str] | None = None, *, prog: str = "",
               description: str = "", base: C | None = None) -> C:
    """Config from defaults (or ``base``), an optional ``--config FILE.json``, then overrides.

    ``--help`` prints every key with type and default and exits 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(cls, prog or Path(sys.argv[0]).name, description))
        raise SystemExit(0)
    overrides = parse_overrides(argv)
    cfg_file = overrides.pop("config", None)
    if cfg_file is True:
        raise ConfigError("--config needs a value: --config=FILE.json (e.g. a run's config.json)")
    if cfg_file is not None:
        cfg = load_config(cls, cfg_file)
    else:
        cfg = base if base is not None else _default(cls)
    return apply_overrides(cfg, overrides)


def _default(cls: type[C]) -> C:
    try:
        return cls()
    except TypeError as e:
        raise ConfigError(f"{cls.__name__} has required fields: {e}") from None


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_dict(cfg), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 hid the run's config from the rest of the group
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)  # a config that cannot be written leaves nothing behind
        raise
    return path


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    except OSError as e:  # a folder (--config=runs/x), no permission, ...
        raise ConfigError(f"--config {path or repr(path)}: expected a JSON file such as a run's "
                          f"config.json ({e.strerror or e})") from None
    return from_dict(cls, data)


def config_hash(cfg: Any) -> str:
    """Short sha256 of the canonical JSON of a config (for leaderboard rows and caches)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
