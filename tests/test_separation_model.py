"""Sound of Pixels separator pieces: STFT / log-frequency warp round trips, mask targets, U-Net
shapes, visual conditioning, and a tiny mix-and-separate training on synthetic tones that learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from avssl.bench.separation import (HOP, N_FFT, SAMPLE_RATE, WARP_BINS, WINDOW, SeparationConfig,
                                    Separator, Spectrogram, UNet, WindowBank, build_separator,
                                    separate, train_separator, unwarp, warp)
from avssl.bench.separation.train import draw_partners, mix, targets
from avssl.errors import ConfigError, DataError
from avssl.eval.separation import evaluate_separation

torch.set_num_threads(2)
SHORT = 8191  # test window: 32 STFT frames


def _tone(f0: float, n: int, rng: np.random.Generator, harmonics=(1, 2, 3)) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    env = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6)))
    f = f0 * (1 + 0.02 * rng.standard_normal())
    wave = sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6)) / h for h in harmonics)
    return (0.3 * env * wave).astype(np.float32)


def _sdr(refs, ests, mixes) -> dict:
    return evaluate_separation([r.numpy() for r in refs], [e.numpy() for e in ests],
                               mixtures=[m.numpy() for m in mixes])


def test_sound_of_pixels_shapes_and_identity_mask_reconstructs_the_mixture():
    wave = torch.randn(2, WINDOW, generator=torch.Generator().manual_seed(0)) * 0.1
    spec = Spectrogram()
    f = spec.features(wave)
    assert f["stft"].shape == (2, N_FFT // 2 + 1, 256) and N_FFT // 2 + 1 == 512
    assert f["log_mag"].shape == (2, 1, WARP_BINS, 256) and HOP == 256
    out = spec.apply_mask(f["stft"], torch.ones(2, 1, WARP_BINS, 256), WINDOW)
    assert out.shape == wave.shape
    assert torch.allclose(out, wave, atol=1e-5)
    # a zero mask (binary, thresholded) separates silence
    silent = spec.apply_mask(f["stft"], torch.zeros(2, 1, WARP_BINS, 256), WINDOW, threshold=0.5)
    assert silent.abs().max() == 0


def test_warp_is_log_spaced_and_unwarp_inverts_it_on_smooth_spectra():
    bins = torch.arange(512, dtype=torch.float32).reshape(1, 1, 512, 1)
    rows = warp(bins, 256)[0, 0, :, 0]
    assert rows[0] == pytest.approx(0, abs=1e-3) and rows[-1] == pytest.approx(511, abs=1e-2)
    gaps = rows.diff()
    assert (gaps > 0).all() and gaps[-1] > 10 * gaps[0]  # denser at low frequencies
    # log spacing: (bin + c) grows geometrically for the warp's offset c = 511 / 20
    ratios = (rows[1:] + 511 / 20) / (rows[:-1] + 511 / 20)
    assert ratios.std() / ratios.mean() < 1e-3
    f = torch.linspace(0, 1, 512).reshape(1, 1, 512, 1)
    t = torch.linspace(0, 1, 16).reshape(1, 1, 1, 16)
    smooth = 1 + 0.5 * torch.sin(3 * f + 2 * t) + torch.exp(-((f - 0.3) / 0.2) ** 2)
    back = unwarp(warp(smooth, 256), 512)
    assert back.shape == smooth.shape
    assert (back - smooth).abs().max() < 0.01


def test_binary_and_ratio_targets_follow_the_sources():
    """Two tones far apart in frequency: each source owns the bins around its own pitch."""
    n = SHORT
    t = torch.arange(n) / SAMPLE_RATE
    sources = torch.stack([torch.sin(2 * np.pi * 300 * t), torch.sin(2 * np.pi * 2500 * t)])[None]
    spec = Spectrogram(warp_bins=64)
    mix_wave, scaled = mix(sources)
    assert torch.allclose(mix_wave, sources.sum(1) / 2)
    freqs = warp(torch.linspace(0, SAMPLE_RATE / 2, 512).reshape(1, 1, 512, 1), 64)[0, 0, :, 0]
    row300, row2500 = (freqs - 300).abs().argmin(), (freqs - 2500).abs().argmin()
    for mask in ("binary", "ratio"):
        log_mag, target, weight = targets(spec, mix_wave, scaled, mask)
        mid = target[0, :, :, 8:-8].mean(-1)  # (N, F): away from the window's edges
        assert mid[0, row300] > 0.9 and mid[0, row2500] < 0.1
        assert mid[1, row2500] > 0.9 and mid[1, row300] < 0.1
        assert weight.min() >= 1e-3 and log_mag.shape == (1, 1, 64, 32)


def test_oracle_binary_masks_give_high_sdr_through_warp_and_unwarp():
    rng = np.random.default_rng(1)
    sources = torch.tensor(np.stack([[_tone(196, SHORT, rng), _tone(880, SHORT, rng)]
                                     for _ in range(3)]))
    spec = Spectrogram(warp_bins=64)
    mix_wave, scaled = mix(sources)
    _, target, _ = targets(spec, mix_wave, scaled, "binary")
    stft = spec.stft(mix_wave)
    est = torch.stack([spec.apply_mask(stft, target[:, k:k + 1], SHORT, threshold=0.5)
                       for k in range(2)], 1)
    res = _sdr(scaled, est, mix_wave)
    assert res["SDR"] > res["SDR_mix"] + 10


def test_unet_shapes_and_size_check():
    net = UNet(out_channels=5, depth=3, width=4)
    assert net(torch.randn(2, 1, 64, 32)).shape == (2, 5, 64, 32)
    with pytest.raises(ConfigError, match="divisible by 8"):
        net(torch.randn(2, 1, 60, 32))
    sep = Separator(embed_dim=7, channels=5, depth=3, width=4)
    logits = sep(torch.randn(2, 1, 64, 32), [torch.randn(2, 7), torch.randn(2, 7)])
    assert logits.shape == (2, 2, 64, 32)
    with pytest.raises(ConfigError):
        SeparationConfig(mask="soft")
    with pytest.raises(ConfigError):
        SeparationConfig(num_mix=1)


def test_visual_conditioning_changes_the_mask():
    torch.manual_seed(0)
    sep = Separator(embed_dim=8, channels=6, depth=3, width=4).eval()
    log_mag = torch.randn(1, 1, 32, 32)
    a, b = torch.randn(1, 8), torch.randn(1, 8)
    with torch.no_grad():
        out = sep(log_mag, [a, b, a])
    assert torch.equal(out[:, 0], out[:, 2])             # same video -> same mask
    assert (out[:, 0] - out[:, 1]).abs().mean() > 1e-3    # another video -> another mask


def test_partners_are_other_instruments_and_seeded():
    group = np.array([0, 0, 1, 1, 2, 2, 2])
    first = np.arange(7)
    p = draw_partners(group, first, 3, np.random.default_rng(0))
    assert (p[:, 0] == first).all()
    assert all(len(set(group[row])) == 3 for row in p)
    assert np.array_equal(p, draw_partners(group, first, 3, np.random.default_rng(0)))
    with pytest.raises(DataError, match="4 different instruments"):
        draw_partners(group, first, 4, np.random.default_rng(0))


def test_a_video_listed_under_two_instruments_is_never_its_own_partner():
    """Such a video is two records (one per instrument): told apart only by instrument, it was
    mixed with itself - the same audio twice - in training and in 4 of 5 test seeds."""
    from avssl.bench.separation.benchmark import test_pairs

    group = np.array([0, 1, 1, 2, 2])
    source = np.array([0, 0, 1, 2, 3])  # windows 0 and 1: one video, two instruments
    for seed in range(20):
        p = draw_partners(group, np.arange(5), 2, np.random.default_rng(seed), source)
        assert all(source[a] != source[b] and group[a] != group[b] for a, b in p)
        assert all(source[a] != source[b] for a, b in test_pairs(group, 2, seed, 3, source))
    # without a clash the draw is the one without `source`: no number moves
    plain = np.array([0, 0, 1, 1, 2, 2, 2])
    assert np.array_equal(draw_partners(plain, np.arange(7), 3, np.random.default_rng(0)),
                          draw_partners(plain, np.arange(7), 3, np.random.default_rng(0),
                                        np.arange(7)))
    with pytest.raises(DataError, match="different videos of different instruments"):
        draw_partners(np.array([0, 1]), np.arange(2), 2, np.random.default_rng(0),
                      np.array([5, 5]))


def test_test_mixtures_draw_several_partners_and_drop_repeats():
    from avssl.bench.separation.benchmark import test_pairs

    group = np.repeat(np.arange(5), 4)                   # 5 instruments x 4 test videos
    one = test_pairs(group, 2, seed=0, per_video=1)
    assert (np.diff(one[:, 0]) > 0).all() and len(one) >= 10   # video i first, at most once
    many = test_pairs(group, 2, seed=0, per_video=4)
    assert 20 < len(many) <= 80
    keys = {tuple(sorted(row)) for row in many}
    assert len(keys) == len(many)                        # {a, b} and {b, a} count once
    assert {tuple(sorted(row)) for row in one} <= keys   # the first round is the 1-per-video draw
    assert all(group[a] != group[b] for a, b in many)
    assert np.array_equal(many, test_pairs(group, 2, seed=0, per_video=4))
    assert not np.array_equal(many, test_pairs(group, 2, seed=1, per_video=4))
    # 3 videos of 3 instruments: only 3 distinct pairs exist, however many draws
    assert len(test_pairs(np.arange(3), 2, seed=0, per_video=4)) == 3


def _tone_bank(n: int, seed: int) -> tuple[WindowBank, torch.Tensor]:
    """Four 'instruments' (pitches); the visual condition is a noisy one-hot of the instrument."""
    rng = np.random.default_rng(seed)
    pitches = [220.0, 330.0, 494.0, 740.0]
    group = np.arange(n) % 4
    audio = torch.tensor(np.stack([_tone(pitches[g], SHORT, rng) for g in group]))
    onehot = torch.eye(4)[group]
    cond = onehot + 0.1 * torch.tensor(rng.standard_normal((n, 4)), dtype=torch.float32)
    return WindowBank(audio, cond, group), onehot


def _snr(ref: torch.Tensor, est: torch.Tensor) -> float:
    """Mean plain SNR (dB) of estimates (B, N, S): a cheap check next to BSS-eval."""
    err = ((ref - est) ** 2).sum(-1).clamp_min(1e-12)
    return float((10 * torch.log10((ref ** 2).sum(-1) / err)).mean())


def test_tiny_mix_and_separate_learns_on_tones():
    bank, _ = _tone_bank(48, seed=0)
    test, onehot = _tone_bank(8, seed=1)
    spec = Spectrogram(warp_bins=32)
    cfg = SeparationConfig(depth=3, width=8, channels=8, epochs=12, batch_size=8, lr=2e-3)
    net = build_separator(4, cfg)
    losses = train_separator(net, bank, cfg, spec=spec, progress=False)
    assert len(losses) == 12 * 6
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6])
    pairs = np.array([[i, (i + 1) % 8] for i in range(0, 8, 2)])  # neighbours: other instruments
    mix_wave, scaled = mix(test.audio[torch.from_numpy(pairs)])
    est = separate(net, spec, mix_wave, [onehot[pairs[:, 0]], onehot[pairs[:, 1]]], 0.5)
    res = _sdr(scaled, est, mix_wave)
    assert res["num_samples"] == 4
    assert res["SDR"] > res["SDR_mix"] + 5
    # the visual condition is what picks the source: swapped conditions swap the estimates
    swapped = separate(net, spec, mix_wave, [onehot[pairs[:, 1]], onehot[pairs[:, 0]]], 0.5)
    assert _snr(scaled, swapped) < _snr(scaled, torch.stack([mix_wave] * 2, 1)) < _snr(scaled, est)


def test_training_is_seeded():
    bank, _ = _tone_bank(16, seed=3)
    spec = Spectrogram(warp_bins=32)
    runs = []
    for seed in (0, 0, 1):
        cfg = SeparationConfig(depth=3, width=4, channels=4, epochs=1, batch_size=4, seed=seed)
        net = build_separator(4, cfg)
        runs.append((train_separator(net, bank, cfg, spec=spec, progress=False), net))
    assert runs[0][0] == runs[1][0] and runs[0][0] != runs[2][0]
    for a, b in zip(runs[0][1].state_dict().values(), runs[1][1].state_dict().values()):
        assert torch.equal(a, b)


def test_finetune_trains_the_encoder_with_the_separator():
    bank, _ = _tone_bank(16, seed=2)
    clips = bank.cond[:, :, None, None, None].expand(-1, -1, 2, 4, 4).contiguous()
    bank = WindowBank(bank.audio, clips, bank.group)  # "videos": (N, C=4, T, H, W)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 4 * 4, 6))
    encoder.embed_dim = 6
    before = [p.detach().clone() for p in encoder.parameters()]
    cfg = SeparationConfig(depth=3, width=4, channels=4, epochs=1, batch_size=8)
    net = build_separator(6, cfg, encoder=encoder)
    train_separator(net, bank, cfg, spec=Spectrogram(warp_bins=32), progress=False)
    assert any(not torch.equal(b, p) for b, p in zip(before, net.encoder.parameters()))


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(epochs=2.5), dict(epochs=True),
                                 dict(batch_size=0), dict(batch_size=-4), dict(lr=0.0),
                                 dict(lr=-1e-3), dict(lr=float("nan")), dict(lr=float("inf")),
                                 dict(threshold=0.0), dict(threshold=1.0),
                                 dict(threshold=1.5), dict(threshold="0.5")])
def test_config_refuses_bad_schedules_and_thresholds(bad):
    # epochs=0 trained nothing and scored the random separator; batch_size=0 divided by zero
    # deep in training; lr <= 0 ascended; a threshold outside (0, 1) kept every cell or none
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=rf"separation {name} must be") as e:
        SeparationConfig(**bad)
    assert "\n" not in str(e.value)


def test_config_accepts_its_documented_values():
    for ok in (dict(threshold=None), dict(threshold=0.5), dict(epochs=1, batch_size=1, lr=1e-6),
               dict(epochs=np.int64(3), lr=np.float32(1e-3))):
        SeparationConfig(**ok)


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_a_non_finite_gradient_never_reaches_the_weights():
    """Finite loss, infinite gradient: clipping made it NaN and AdamW wrote it into every weight
    (only the loss was checked)."""
    bank, _ = _tone_bank(8, seed=4)
    cfg = SeparationConfig(depth=3, width=4, channels=4, epochs=1, batch_size=4)
    net = build_separator(4, cfg)
    first = next(net.parameters())
    calls = []
    first.register_hook(lambda g: calls.append(1) or (g * float("inf") if len(calls) == 1 else g))
    with pytest.warns(UserWarning, match="non-finite loss or gradient at step 0.*skipped"):
        losses = train_separator(net, bank, cfg, spec=Spectrogram(warp_bins=32), progress=False)
    assert len(calls) == 2 and len(losses) == 1  # step 0 skipped, step 1 trained
    assert _finite(net.parameters()) and _finite(net.buffers())


def test_a_non_finite_loss_leaves_the_batchnorm_statistics_as_they_were():
    """A NaN window: the step was skipped, but its forward pass had already written NaN running
    statistics, so every eval-mode mask afterwards was NaN."""
    bank, _ = _tone_bank(8, seed=4)
    bank.audio[0, 100] = float("nan")
    cfg = SeparationConfig(depth=3, width=4, channels=4, epochs=1, batch_size=4)
    net = build_separator(4, cfg)
    with pytest.warns(UserWarning, match="non-finite loss or gradient"):
        losses = train_separator(net, bank, cfg, spec=Spectrogram(warp_bins=32), progress=False)
    assert len(losses) == 1
    assert _finite(net.parameters()) and _finite(net.buffers())
    mix_wave = bank.audio[2:4].sum(0, keepdim=True) / 2  # a clean mixture separates to numbers
    est = separate(net, Spectrogram(warp_bins=32), mix_wave, [bank.cond[2:3], bank.cond[3:4]])
    assert _finite([est])
