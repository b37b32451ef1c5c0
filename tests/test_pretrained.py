"""``load_pretrained``: stranger's files never run code or crash with a traceback; common
training-checkpoint wrappers are unwrapped; weights that would be cast silently are refused."""
from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from avssl.encoders.layers import load_pretrained
from avssl.errors import ConfigError


def _net() -> nn.Module:
    """Float weights plus BatchNorm's int64 ``num_batches_tracked``, as real encoders have."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


class NotATensor:  # pickled by torch.save; the weights-only unpickler must refuse it
    pass


def _int_state() -> dict:
    return {k: v.long() for k, v in _net().state_dict().items()}


def _truncated(path, save) -> None:
    save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {  # name -> (file name, writer)
    "pickled object": ("w.pt", lambda p: torch.save({"0.weight": NotATensor()}, p)),
    "truncated torch file": ("w.pt", lambda p: _truncated(p, lambda q: torch.save(
        _net().state_dict(), q))),
    "truncated safetensors": ("w.safetensors", lambda p: _truncated(p, lambda q: save_file(
        _net().state_dict(), q))),
    "foreign file": ("w.pt", lambda p: p.write_text("id,label\nv_001,3\n")),
    "foreign .safetensors": ("w.safetensors", lambda p: p.write_text("id,label\n")),
    "bare tensor": ("w.pt", lambda p: torch.save(torch.zeros(3), p)),
    "integer weights": ("w.pt", lambda p: torch.save(_int_state(), p)),
    "integer safetensors": ("w.safetensors", lambda p: save_file(_int_state(), str(p))),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_a_one_line_config_error(tmp_path, case):
    name, write = BAD_FILES[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(ConfigError) as err:
        load_pretrained(_net(), str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    if case.startswith("integer"):  # load_state_dict used to cast them to float silently
        assert "int64" in message and "floating point" in message


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state"])
def test_training_checkpoint_wrappers_are_unwrapped(tmp_path, wrapper):
    src = _net()
    with torch.no_grad():
        src[0].weight.add_(1.0)
        src[1].running_mean.fill_(0.5)
    state = collections.OrderedDict((f"module.{k}", v) for k, v in src.state_dict().items())
    torch.save({wrapper: state, "epoch": 7, "optimizer": {"state": {}}}, tmp_path / "ckpt.pth")
    loaded = load_pretrained(_net(), str(tmp_path / "ckpt.pth"))
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_safetensors_content_is_read_whatever_the_file_name(tmp_path):
    src = _net()
    save_file(src.state_dict(), str(tmp_path / "weights.pt"))
    loaded = load_pretrained(_net(), str(tmp_path / "weights.pt"))
    assert torch.equal(loaded[0].weight, src[0].weight)


def test_a_number_is_not_a_file_descriptor(tmp_path):
    """`"pretrained_path": 5` in a stranger's meta.json: os.path.isfile / open took it as file
    descriptor 5, read whatever file the process had open there and closed it (in the test
    suite: pytest's own capture file, which ended the run without a word)."""
    import os

    with open(tmp_path / "open.bin", "wb") as f:
        fd = f.fileno()
        with pytest.raises(ConfigError, match=f"pretrained_path {fd} is not a file"):
            load_pretrained(_net(), fd)
        os.fstat(fd)  # still open
        f.write(b"x")
