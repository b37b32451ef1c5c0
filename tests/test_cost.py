"""Model cost counting (FlopCounterMode) and its CLI, checked against brute-force MAC formulas."""
from __future__ import annotations

import json
import runpy
import sys

import pytest
import torch
import torchvision
import torch.nn.functional as F
from torch import nn

from avssl.encoders import build_encoder
from avssl.encoders.cost import count_cost, main, parse_shape


class _Toy(nn.Module):
    """Conv3d -> BN -> attention over positions -> Linear; MACs computable by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.head = nn.Sequential(nn.Linear(8, 5))

    def forward(self, x):
        y = self.bn(self.conv(x))  # (B, 8, T, H, W)
        tokens = y.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, 8)
        z = F.scaled_dot_product_attention(tokens, tokens, tokens).squeeze(1).mean(1)
        return self.head(z)


def test_count_cost_matches_hand_count_and_restores_state():
    model = _Toy().train()
    bn_before = model.bn.running_mean.clone()
    t, h, w = 2, 4, 5
    n = t * h * w
    cost = count_cost(model, (3, t, h, w))
    conv = 8 * n * 3 * 27  # output elements x (C_in x kernel volume)
    attn = 2 * n * n * 8  # q k^T and attn v
    linear = 8 * 5
    assert cost["params"] == sum(p.numel() for p in model.parameters())
    assert cost["gmacs"] * 1e9 == pytest.approx(conv + attn + linear)
    assert cost["per_layer"]["conv"] * 1e9 == pytest.approx(conv)
    assert cost["per_layer"]["head"] * 1e9 == pytest.approx(linear)
    assert cost["per_layer"]["head.0"] == cost["per_layer"]["head"]  # parents include children
    assert "bn" not in cost["per_layer"]  # no counted ops
    assert model.training  # mode restored
    assert torch.equal(model.bn.running_mean, bn_before)  # counted in eval: stats untouched


class _Rnn(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_count_cost_counts_recurrent_layers(cls):
    steps, inp, hid = 7, 12, 10
    gates = 4 if cls is nn.LSTM else 3
    model = _Rnn(cls(inp, hid, num_layers=2, batch_first=True))
    # per step: layer 1 multiplies by W_ih (gates*hid x inp) and W_hh; layer 2 by two (x hid)
    expected = steps * gates * hid * ((inp + hid) + (hid + hid))
    assert count_cost(model, (steps, inp))["gmacs"] * 1e9 == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cls,kw", [(nn.LSTM, {}), (nn.GRU, {"bidirectional": True}),
                                    (nn.LSTM, {"proj_size": 4})])
def test_cudnn_rnn_rule_counts_what_the_gpu_kernel_computes(cls, kw):
    """On a GPU nn.LSTM/GRU run as one aten._cudnn_rnn call; its count must be the CPU one."""
    from avssl.encoders.cost import _EXTRA_FLOP_RULES

    steps, batch, inp, hid = 7, 3, 12, 10
    rnn = cls(inp, hid, num_layers=2, batch_first=True, **kw)
    gates = 4 if cls is nn.LSTM else 3
    dirs = 2 if kw.get("bidirectional") else 1
    out = kw.get("proj_size", hid)  # what each step passes on (LSTM's projection)
    per_dir = gates * hid * (inp + out) + gates * hid * (out * dirs + out)
    per_dir += 2 * hid * out if "proj_size" in kw else 0  # W_hr, once per step and layer
    rule = _EXTRA_FLOP_RULES[torch.ops.aten._cudnn_rnn]
    shapes = [tuple(w.shape) for w in rnn._flat_weights]
    assert rule((batch, steps, inp), shapes) == 2 * batch * steps * dirs * per_dir


def test_count_cost_counts_per_clip():
    model = build_encoder("c3d_tiny")
    one = count_cost(model, (3, 16, 32, 32))["gmacs"]
    assert one > 0
    # c3d_tiny convs scale with T*H*W; doubling H and W ~ quadruples conv MACs (fc6 is fixed,
    # so build a matching model for the larger clip)
    big = build_encoder("c3d_tiny", input_size=(16, 64, 64))
    four = count_cost(big, (3, 16, 64, 64))["gmacs"]
    assert 3.5 < four / one < 4.1


@pytest.mark.parametrize("name,weights,shape", [
    ("s3d", "S3D_Weights", (3, 16, 224, 224)),
    ("r2plus1d18", "R2Plus1D_18_Weights", (3, 16, 112, 112)),
])
def test_gmacs_match_torchvision_published_ops(name, weights, shape):
    """torchvision publishes each video model's cost ("_ops", in GMACs) in its weights' metadata
    (read offline: nothing is downloaded)."""
    published = getattr(torchvision.models.video, weights).DEFAULT.meta["_ops"]
    assert count_cost(build_encoder(name), shape)["gmacs"] == pytest.approx(published, rel=2e-3)


def test_parse_shape():
    assert parse_shape("3x16x112x112") == (3, 16, 112, 112)
    for bad in ("3x16x", "axb", "", "3x0x4"):
        with pytest.raises(ValueError, match="3x16x112x112"):
            parse_shape(bad)


def test_cli_json_and_table(capsys):
    assert main(["--names", "c3d_tiny,slow_fusion_tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["c3d_tiny", "slow_fusion_tiny"]
    for r in rows:
        model = build_encoder(r["name"])
        assert r["input"] == "x".join(map(str, model.example_input_shape))
        assert r["params"] == sum(p.numel() for p in model.parameters())
        assert r["gmacs"] == pytest.approx(count_cost(model, model.example_input_shape)["gmacs"],
                                           rel=1e-3)
    assert main(["--names", "slow_fusion_tiny", "--input", "3x8x32x32"]) == 0
    out = capsys.readouterr().out
    assert "| slow_fusion_tiny | 3x8x32x32 |" in out


def test_cli_errors(capsys):
    assert main(["--names", "c3d_tiy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c3d_tiny" in err and "did you mean" in err
    assert main(["--names", "c3d_tiny", "--input", "3by16"]) == 2
    assert "--input" in capsys.readouterr().err
    # a model that cannot take the requested input gets an error row, exit status 1
    assert main(["--names", "c3d_tiny", "--input", "3x8x32x32", "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["gmacs"] is None and "input_size" in row["error"]


def test_cli_runs_as_module(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cost", "--names", "slow_fusion_tiny", "--json"])
    monkeypatch.delitem(sys.modules, "avssl.encoders.cost")  # run it fresh, as `python -m` does
    with pytest.raises(SystemExit) as done:
        runpy.run_module("avssl.encoders.cost", run_name="__main__")
    assert done.value.code == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "slow_fusion_tiny" and row["gmacs"] > 0
