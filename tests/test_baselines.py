"""The lecture's 2D-CNN video baselines and the two-stream network with its optical flow."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision.models import resnet18

import avssl.encoders.two_stream as ts
from avssl.encoders import build_encoder
from avssl.encoders.baselines import ConvGRUCell, make_trunk, per_frame
from avssl.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_per_frame_equals_trunk_on_each_frame():
    trunk = make_trunk("tiny").eval()
    x = torch.randn(2, 3, 4, 16, 16)
    maps = per_frame(trunk, x)
    assert maps.shape == (2, 4, trunk.out_channels, 2, 2)
    with torch.no_grad():
        for b in range(2):
            for t in range(4):
                torch.testing.assert_close(maps[b, t], trunk(x[b : b + 1, :, t])[0])


def test_resnet18_trunk_is_torchvision_resnet18_without_fc():
    ref = resnet18(weights=None)
    no_fc = sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in ref.fc.parameters())
    model = build_encoder("single_frame")
    assert sum(p.numel() for p in model.parameters()) == no_fc
    assert model.embed_dim == 512 and model.example_input_shape == (3, 16, 112, 112)
    early = build_encoder("early_fusion", num_frames=10)
    assert early.trunk[0].in_channels == 30  # first conv sees all 3T channels


@pytest.mark.parametrize("name", ["lrcn_tiny", "convgru_tiny"])
def test_recurrent_models_are_causal_over_time(name):
    # A recurrent network's state at step t only depends on frames <= t.
    model = build_encoder(name).eval()
    x = torch.randn(2, *model.example_input_shape)
    y = x.clone()
    y[:, :, -1] = torch.randn_like(y[:, :, -1])
    with torch.no_grad():
        fx, fy = model.forward_features(x), model.forward_features(y)
    time_dim = 1 if name.startswith("lrcn") else 2
    last = fx.shape[time_dim] - 1
    torch.testing.assert_close(fx.narrow(time_dim, 0, last), fy.narrow(time_dim, 0, last))
    assert (fx.narrow(time_dim, last, 1) - fy.narrow(time_dim, last, 1)).abs().max() > 1e-5


def test_convgru_cell_gates_interpolate_between_state_and_candidate():
    cell = ConvGRUCell(3, 4)
    x, h = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        cell.gates.weight.zero_()
        cell.gates.bias.fill_(-30.0)  # update gate z ~ 0: keep the state
        torch.testing.assert_close(cell(x, h), h, atol=1e-6, rtol=0)
        cell.gates.bias.fill_(30.0)  # z ~ 1, r ~ 1: take the candidate tanh(conv([x, h]))
        out = cell(x, h)
    assert out.abs().max() <= 1.0 and (out - h).abs().max() > 0.1


def test_fixed_size_models_reject_other_clips_and_fc_sees_order():
    fc = build_encoder("late_fusion_fc_tiny").eval()
    x = torch.randn(2, *fc.example_input_shape)
    with pytest.raises(ConfigError, match="num_frames"):
        fc(torch.randn(2, 3, 4, 32, 32))
    with pytest.raises(ConfigError, match="img_size"):
        fc(torch.randn(2, 3, 8, 48, 48))
    with pytest.raises(ConfigError, match="num_frames"):
        build_encoder("early_fusion_tiny")(torch.randn(2, 3, 6, 32, 32))
    # Concatenating frame features keeps their order: shuffling frames changes the output.
    with torch.no_grad():
        assert (fc(x) - fc(x[:, :, torch.randperm(8)])).abs().max() > 1e-5
    assert build_encoder("late_fusion_fc_tiny", num_frames=4, img_size=48)(
        torch.randn(1, 3, 4, 48, 48)).shape == (1, 32)


def _translating_clip(dx: float, dy: float, frames: int = 5, size: int = 64) -> np.ndarray:
    """uint8 (T, 3, H, W): a smooth random texture shifted by (dx, dy) px per frame."""
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.random((3 * size, 3 * size)).astype(np.float32), (0, 0), 2.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 255
    out = []
    for t in range(frames):
        shift = np.float32([[1, 0, dx * t], [0, 1, dy * t]])
        img = cv2.warpAffine(tex, shift, tex.shape[::-1], flags=cv2.INTER_LINEAR)
        crop = img[size : 2 * size, size : 2 * size].astype(np.uint8)
        out.append(np.repeat(crop[None], 3, axis=0))
    return np.stack(out)


@pytest.mark.parametrize("dx,dy", [(2.0, -1.0), (-1.5, 3.0)])
def test_flow_recovers_translation(dx, dy):
    flow = ts.compute_flow(_translating_clip(dx, dy))
    assert flow.shape == (4, 2, 64, 64) and flow.dtype == torch.float32
    est = flow[:, :, 8:-8, 8:-8].median(dim=-1).values.median(dim=-1).values  # (T-1, 2)
    true = torch.tensor([dx, dy])
    for v in est:
        cos = torch.dot(v, true) / (v.norm() * true.norm())
        assert cos > 0.98
        assert abs(v.norm() - true.norm()) < 0.2 * true.norm()


def test_flow_cache_hits_keys_by_content_and_uses_env(tmp_path, monkeypatch):
    calls = []
    real = ts.compute_flow
    monkeypatch.setattr(ts, "compute_flow", lambda v: calls.append(1) or real(v))
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path))
    clip = _translating_clip(1.0, 0.0, frames=3, size=32)
    first = ts.flow_cache("vids/a b.mp4@0s", clip)
    again = ts.flow_cache("vids/a b.mp4@0s", torch.from_numpy(clip))
    assert len(calls) == 1
    files = list((tmp_path / "flow").glob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "flow").glob("*.tmp"))
    torch.testing.assert_close(again, first, atol=0.02, rtol=0.01)  # stored as float16
    ts.flow_cache("vids/a b.mp4@0s", _translating_clip(2.0, 0.0, frames=3, size=32))
    assert len(calls) == 2  # same id, other content: recomputed
    files[0].write_bytes(b"garbage")
    torch.testing.assert_close(ts.flow_cache("vids/a b.mp4@0s", clip), first, atol=0.02, rtol=0.01)
    assert len(calls) == 3  # an unreadable entry is recomputed, not trusted
    ts.flow_cache("x", clip, cache_dir=tmp_path / "elsewhere")
    assert len(list((tmp_path / "elsewhere").glob("x-*.npy"))) == 1


def test_two_stream_denormalises_and_precomputed_flow_matches():
    model = build_encoder("two_stream_tiny").eval()
    assert model.embed_dim == 64
    u8 = torch.from_numpy(_translating_clip(1.0, 1.0, frames=8, size=32))  # (T, 3, H, W)
    mean, std = model.mean.view(3, 1, 1), model.std.view(3, 1, 1)
    x = ((u8.float() / 255 - mean) / std).transpose(0, 1)[None]  # (1, 3, T, H, W)
    torch.testing.assert_close(model.flow_from_video(x)[0], ts.compute_flow(u8))
    flow = ts.compute_flow(u8)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(x, flow=flow), model(x))
        # The RGB stream sees only the middle frame T // 2 = 4.
        y = x.clone()
        y[:, :, [0, 7]] = 0.0
        torch.testing.assert_close(model.forward_features(y, flow)["rgb"],
                                   model.forward_features(x, flow)["rgb"])
        # Camera-motion compensation: adding a constant flow changes nothing.
        torch.testing.assert_close(model(x, flow=flow + 3.0), model(x, flow=flow))
    with pytest.raises(ConfigError, match="flow must be"):
        model(x, flow=flow[:, :3])
    with pytest.raises(ConfigError, match="num_frames"):
        model(x[:, :, :5])
