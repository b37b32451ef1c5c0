"""AVTowers: the pretrain_sync model (video + audio towers with projection heads)."""
from __future__ import annotations

import torch

from avssl.encoders import build_encoder
from avssl.towers import AVTowers


def _towers() -> AVTowers:
    torch.manual_seed(0)
    return AVTowers(build_encoder("i3d_r18_tiny"), build_encoder("audio_resnet18_tiny"), 16).train()


def test_placeholder_shifted_audio_stays_out_of_the_audio_batchnorm_batch():
    """Rows whose shifted window did not fit (hard_valid False, silent placeholder audio) skip
    the audio tower: the other rows' embeddings and the BatchNorm running statistics are those
    of a batch without them, and their audio_shift embedding is zero."""
    g = torch.Generator().manual_seed(1)
    video = torch.randn(4, 3, 8, 32, 32, generator=g)
    mel = torch.randn(4, 1, 64, 101, generator=g)
    mel_shift = torch.randn(4, 1, 64, 101, generator=g)
    valid = torch.tensor([True, False, True, False])
    mel_shift[~valid] = 0.0  # what the dataset gives: silence
    model, ref = _towers(), _towers()
    out = model(video, mel, mel_shift, valid)
    a_ref = ref.embed_audio(torch.cat([mel, mel_shift[valid]]))
    torch.testing.assert_close(out["audio"], a_ref[:4])
    torch.testing.assert_close(out["audio_shift"][valid], a_ref[4:])
    assert torch.equal(out["audio_shift"][~valid], torch.zeros(2, 16))
    for (name, buf), (_, buf_ref) in zip(model.audio.named_buffers(), ref.audio.named_buffers()):
        assert torch.equal(buf, buf_ref), name
    # gradients reach the audio tower through the valid shifted rows
    out["audio_shift"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.audio.parameters())


def test_all_valid_rows_are_one_audio_batch_as_without_the_mask():
    g = torch.Generator().manual_seed(2)
    video = torch.randn(3, 3, 8, 32, 32, generator=g)
    mel = torch.randn(3, 1, 64, 101, generator=g)
    mel_shift = torch.randn(3, 1, 64, 101, generator=g)
    a, b = _towers(), _towers()
    with_mask = a(video, mel, mel_shift, torch.ones(3, dtype=torch.bool))
    without = b(video, mel, mel_shift)
    for k in ("video", "audio", "audio_shift"):
        assert torch.equal(with_mask[k], without[k]), k
