from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from avssl.config import (apply_overrides, config_hash, format_help, load_config, parse_args,
                          parse_overrides, save_config)
from avssl.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    warmup_steps: int = 10
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Data:
    path: Optional[str] = None
    size: tuple[int, ...] = (112, 112)
    backend: Literal["auto", "decord", "pyav"] = "auto"
    shuffle: bool = True


@dataclass
class Train:
    optim: Optim = field(default_factory=Optim)
    data: Data = field(default_factory=Data)
    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    name: str = "run"


def test_overrides_are_typed():
    cfg = parse_args(Train, ["--optim.lr=3e-4", "--data.path", "/v", "--data.shuffle=false",
                             "--data.size=64,48", "--steps=2e3", "--data.backend=pyav"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.path == "/v" and cfg.data.shuffle is False
    assert cfg.data.size == (64, 48) and cfg.steps == 2000 and cfg.data.backend == "pyav"
    assert isinstance(cfg.steps, int)


def test_bare_flag_means_true_and_none_resets():
    cfg = parse_args(Train, ["--data.shuffle"], base=Train(data=Data(shuffle=False, path="x")))
    assert cfg.data.shuffle is True
    assert parse_args(Train, ["--data.path=none"], base=Train(data=Data(path="x"))).data.path is None
    # only a switch may be bare: --data.path without its value was the path "true"
    for args, flag in ((["--data.path"], "--data.path"), (["--steps", "--data.shuffle"], "--steps"),
                       (["--config"], "--config")):
        with pytest.raises(ConfigError, match=f"{flag} needs a value: {flag}="):
            parse_args(Train, args)


@pytest.mark.parametrize("arg,msg", [
    ("--steps=1.5", "expected int"),
    ("--optim.lr=fast", "expected float"),
    ("--data.shuffle=maybe", "expected bool"),
    ("--data.backend=ffmpeg", "one of auto, decord, pyav"),
    ("--optim.betas=1,2,3", "expected 2 values"),
    ("--optim.lr=nan", "expected a finite number"),  # would write invalid JSON (NaN)
    ("--optim.lr=inf", "expected a finite number"),
])
def test_bad_values_are_one_line_errors(arg, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        parse_args(Train, [arg])
    assert "\n" not in str(e.value)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*did you mean: optim\.lr"):
        parse_args(Train, ["--optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(Train(), {"nope": "1"})


def test_positional_argument_is_rejected():
    with pytest.raises(ConfigError, match="--section.field=value"):
        parse_overrides(["steps=3"])


def test_json_round_trip_and_config_file(tmp_path):
    cfg = parse_args(Train, ["--optim.lr=0.5", "--data.size=8,8,8", "--name=abc"])
    p = save_config(cfg, tmp_path / "sub" / "config.json")
    assert json.loads(p.read_text())["optim"]["lr"] == 0.5
    assert p.stat().st_mode & 0o777 == 0o644  # readable like the run's other files (not 0600)
    back = load_config(Train, p)
    assert back == cfg
    assert config_hash(back) == config_hash(cfg) != config_hash(Train())
    # --config loads the file, later overrides still apply
    cfg2 = parse_args(Train, ["--config", str(p), "--steps=7"])
    assert cfg2.optim.lr == 0.5 and cfg2.steps == 7 and cfg2.data.size == (8, 8, 8)


def test_bad_config_file(tmp_path):
    (tmp_path / "c.json").write_text('{"optim": {"lr": 1, "momentum": 0.9}}')
    with pytest.raises(ConfigError, match="optim.momentum"):
        load_config(Train, tmp_path / "c.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Train, tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="expected a JSON file such as a run's config.json"):
        load_config(Train, tmp_path)  # --config=runs/x: a folder was an IsADirectoryError
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(Train, tmp_path / "bin.json")


def test_help_lists_every_key_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(Train, ["--help"], prog="train")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in ["--optim.lr", "--optim.warmup_steps", "--optim.betas", "--data.path", "--data.size",
                "--data.backend", "--data.shuffle", "--steps", "--name"]:
        assert key in out
    assert "[100]  optimizer steps" in out and "[0.001]" in format_help(Train)


@dataclass
class WithDict:
    kwargs: dict = field(default_factory=dict)


def test_dict_fields_take_json():
    cfg = parse_args(WithDict, ['--kwargs={"time_strides": {"conv1": 1}}'])
    assert cfg.kwargs == {"time_strides": {"conv1": 1}}
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_args(WithDict, ["--kwargs=[1, 2]"])
    # Python's json reads NaN, which config.json (strict JSON) could not hold
    with pytest.raises(ConfigError, match=r"--kwargs: expected a JSON object \(finite numbers\)"):
        parse_args(WithDict, ['--kwargs={"x": NaN}'])


def test_a_config_that_cannot_be_written_leaves_no_temp_file(tmp_path):
    cfg = WithDict(kwargs={"x": float("nan")})  # built in code, past the command line's check
    with pytest.raises(ValueError):
        save_config(cfg, tmp_path / "config.json")
    assert list(tmp_path.iterdir()) == []


@dataclass
class Overridden:
    optim: Optim = field(default_factory=lambda: Optim(lr=0.5))


def test_help_shows_section_defaults_set_by_factories():
    assert "--optim.lr=float  [0.5]" in format_help(Overridden)


def test_large_integers_are_exact():
    """Integers went through float(): above 2**53 they silently lost digits."""
    assert parse_args(Train, ["--steps=12345678901234567891"]).steps == 12345678901234567891
    assert parse_args(Train, ["--steps=1e3"]).steps == 1000  # float spellings still work
