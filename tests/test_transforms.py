"""Video and audio transforms: geometry against slicing, determinism, spectral checks."""
from __future__ import annotations

import math

import pytest
import torch
import torchaudio
from torchvision.transforms.v2 import functional as TF

from avssl.data import transforms as T
from avssl.errors import ConfigError

torch.set_num_threads(1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _video(*lead: int, t: int = 4, h: int = 24, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    return torch.randint(0, 256, (*lead, t, 3, h, w), generator=g, dtype=torch.uint8)


# ----------------------------------------------------------------------------------------- video
def test_resize_short_side_keeps_aspect_and_dtype():
    v = _video(t=2, h=24, w=32)
    out = T.resize_short_side(v, 12)
    assert out.shape == (2, 3, 12, 16) and out.dtype == torch.uint8
    tall = T.resize_short_side(_video(t=2, h=40, w=20), 10)
    assert tall.shape == (2, 3, 20, 10)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_resize_short_side_values_are_antialiased_bilinear(dtype):
    v = _video(2, t=2, h=24, w=32, seed=4)
    v = v if dtype == torch.uint8 else v.float() / 255
    out = T.resize_short_side(v, 10)  # downscale by 2.4: antialiasing and the kernel both matter
    assert out.shape == (2, 2, 3, 10, 13) and out.dtype == dtype
    expected = TF.resize(v, [10, 13], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    torch.testing.assert_close(out, expected, atol=1 if dtype == torch.uint8 else 1e-6, rtol=0)
    for other in (TF.InterpolationMode.NEAREST, TF.InterpolationMode.BICUBIC):
        wrong = TF.resize(v, [10, 13], interpolation=other, antialias=True)
        assert (wrong.float() - out.float()).abs().max() > (10 if dtype == torch.uint8 else 0.04)
    no_aa = TF.resize(v, [10, 13], antialias=False)
    assert (no_aa.float() - out.float()).abs().max() > (10 if dtype == torch.uint8 else 0.04)


def test_random_resized_crop_content_equals_slicing():
    v = _video(2, t=3).float()
    top_left = []
    for seed in range(5):
        g1, g2 = _gen(seed), _gen(seed)
        out = T.random_resized_crop(v, (10, 12), generator=g1)
        assert out.shape == (2, 3, 3, 10, 12)
        for b in range(2):  # each clip draws its own box, in order, from the generator
            i, j, h, w = T.random_resized_crop_params(24, 32, generator=g2)
            assert 0 <= i and i + h <= 24 and 0 <= j and j + w <= 32
            expected = TF.resize(v[b, ..., i : i + h, j : j + w], [10, 12], antialias=True)
            torch.testing.assert_close(out[b], expected)
            top_left.append((i, j, h, w))
    assert len(set(top_left)) > 1  # the boxes really are random


def test_random_resized_crop_of_an_empty_batch_is_empty_and_draws_nothing():
    g = _gen(3)
    out = T.random_resized_crop(_video(0, 2, t=3), (10, 12), generator=g)
    assert out.shape == (0, 2, 3, 3, 10, 12) and out.dtype == torch.uint8
    assert torch.equal(g.get_state(), _gen(3).get_state())


def test_random_resized_crop_params_respect_scale_and_ratio():
    g = _gen(1)
    for _ in range(50):
        i, j, h, w = T.random_resized_crop_params(100, 120, scale=(0.3, 0.6), ratio=(0.8, 1.25), generator=g)
        area = h * w / (100 * 120)
        assert 0.3 - 0.03 <= area <= 0.6 + 0.03
        assert 0.8 - 0.05 <= w / h <= 1.25 + 0.05


def test_same_crop_for_every_frame():
    base = torch.rand(1, 3, 24, 32)
    v = base + torch.arange(5.0).reshape(5, 1, 1, 1)  # frame t = frame 0 + t everywhere
    out = T.random_resized_crop(v, 8, generator=_gen(3))
    diff = out - out[:1]
    torch.testing.assert_close(diff, torch.arange(5.0).reshape(5, 1, 1, 1).expand_as(diff))
    flipped = T.random_hflip(v, p=0.5, generator=_gen(0))
    assert torch.equal(flipped - flipped[:1], v - v[:1])


def test_center_crop_equals_slicing_and_rejects_too_large():
    v = _video(t=2, h=24, w=31)
    out = T.center_crop(v, 10)
    top, left = round((24 - 10) / 2), round((31 - 10) / 2)
    assert torch.equal(out, v[..., top : top + 10, left : left + 10])
    with pytest.raises(ConfigError, match="larger than"):
        T.center_crop(v, 25)


@pytest.mark.parametrize("h,w", [(16, 40), (40, 16)])
def test_three_crop_covers_both_ends_of_long_side(h, w):
    v = _video(2, t=3, h=h, w=w)
    out = T.three_crop(v, 16)
    assert out.shape == (3, 2, 3, 3, 16, 16)
    if w > h:
        assert torch.equal(out[0], v[..., :16])
        assert torch.equal(out[2], v[..., -16:])
    else:
        assert torch.equal(out[0], v[..., :16, :])
        assert torch.equal(out[2], v[..., -16:, :])
    assert torch.equal(out[1], T.center_crop(v, 16))


def test_three_crop_centres_short_side():
    v = _video(t=1, h=20, w=40)
    out = T.three_crop(v, 16)
    assert torch.equal(out[0], v[..., 2:18, 0:16])


def test_hflip_twice_is_identity_and_mirrors():
    v = _video(2)
    once = T.hflip(v)
    assert torch.equal(once[..., 0], v[..., -1])
    assert torch.equal(T.hflip(once), v)


def test_random_hflip_per_clip_and_probability():
    v = _video(64, t=1, h=2, w=4)
    out = T.random_hflip(v, p=0.5, generator=_gen(0))
    flipped = [bool(torch.equal(o, T.hflip(c))) and not torch.equal(o, c) for o, c in zip(out, v)]
    kept = [bool(torch.equal(o, c)) for o, c in zip(out, v)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 15 < sum(flipped) < 49
    assert torch.equal(T.random_hflip(v, p=0.0, generator=_gen(0)), v)
    assert torch.equal(T.random_hflip(v, p=1.0, generator=_gen(0)), T.hflip(v))


def test_same_generator_seed_same_output_other_seed_differs():
    v = _video(3)
    pipe = T.VideoPipeline(mode="train", size=16)
    a = pipe(v, _gen(7))
    b = pipe(v, _gen(7))
    c = pipe(v, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_video_pipeline_train_flips_with_flip_p():
    """flip_p=1 gives the mirror image of flip_p=0 with the same seed (same crop boxes: the flip
    draws come after the crop draws); flip_p=0.5 flips some clips of a batch and not others."""
    v = _video(24, t=2, h=12, w=16, seed=5)
    kw = dict(mode="train", size=8, scale=(0.5, 1.0))
    never = T.VideoPipeline(flip_p=0.0, **kw)(v, _gen(11))
    always = T.VideoPipeline(flip_p=1.0, **kw)(v, _gen(11))
    crop_only = T.normalize(T.random_resized_crop(v, 8, scale=(0.5, 1.0), generator=_gen(11)))
    assert torch.equal(never, crop_only)  # flip_p=0 never flips
    assert torch.equal(always, T.hflip(never))
    assert not torch.equal(always, never)
    half = T.VideoPipeline(flip_p=0.5, **kw)(v, _gen(11))
    flipped = [bool(torch.equal(h, T.hflip(n))) for h, n in zip(half, never)]
    kept = [bool(torch.equal(h, n)) for h, n in zip(half, never)]
    assert all(f != k for f, k in zip(flipped, kept))  # every clip is exactly one of the two
    assert 4 <= sum(flipped) <= 20, sum(flipped)


def test_to_float_and_normalize_inverse():
    v = _video(2)
    f = T.to_float(v)
    assert f.dtype == torch.float32 and f.min() >= 0 and f.max() <= 1
    torch.testing.assert_close(f * 255, v.float())
    n = T.normalize(v)
    # channel c of the normalised clip has mean (mean_c_raw - KINETICS_MEAN[c]) / KINETICS_STD[c]
    raw_mean = f.mean(dim=(0, 1, 3, 4))
    exp_mean = (raw_mean - torch.tensor(T.KINETICS_MEAN)) / torch.tensor(T.KINETICS_STD)
    torch.testing.assert_close(n.mean(dim=(0, 1, 3, 4)), exp_mean)
    torch.testing.assert_close(T.denormalize(n), f)
    with pytest.raises(ConfigError, match="one per channel"):
        T.normalize(f, mean=(0.5,), std=(0.5,))


def test_channels_last_and_integer_videos_are_refused_by_name():
    """decord / numpy give (T, H, W, C) frames; a clear error beats a wrong-channel mean/std
    message or a silently garbled crop. Non-uint8 integers have no defined range."""
    v = _video(t=4)  # (T, C, H, W)
    with pytest.raises(ConfigError, match="looks channels-last .*x.movedim"):
        T.VideoPipeline("eval", size=16)(v.permute(0, 2, 3, 1).contiguous())
    with pytest.raises(ConfigError, match="looks channels-last"):
        T.center_crop(v.permute(0, 2, 3, 1), 16)
    with pytest.raises(ConfigError, match="uint8 .* or float .* got torch.int64"):
        T.normalize(v.long())
    flow = torch.zeros(4, 2, 24, 32)  # two-channel optical flow is channels-first, and legal
    assert T.center_crop(flow, 16).shape == (4, 2, 16, 16)


def test_to_encoder_layout():
    v = _video(2, t=5)
    out = T.to_encoder_layout(v)
    assert out.shape == (2, 3, 5, 24, 32)
    assert torch.equal(out[1, 2, 4], v[1, 4, 2])


def test_video_pipeline_eval_shapes():
    v = _video(t=4, h=24, w=32)
    centre = T.VideoPipeline(mode="eval", size=16)(v)
    assert centre.shape == (4, 3, 16, 16) and centre.dtype == torch.float32
    three = T.VideoPipeline(mode="eval", size=16, crop="three", encoder_layout=True)(v)
    assert three.shape == (3, 3, 4, 16, 16)
    # eval is deterministic and its centre view equals resize + center crop + normalise
    expected = T.normalize(T.center_crop(T.resize_short_side(v, 16), 16))
    torch.testing.assert_close(centre, expected)
    with pytest.raises(ConfigError):
        T.VideoPipeline(mode="test")


# ----------------------------------------------------------------------------------------- audio
def _tone(freq: float, sr: int, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return torch.sin(2 * math.pi * freq * t).float().unsqueeze(0)  # (1, S)


def _peak_hz(x: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(x[0] * torch.hann_window(x.shape[-1]))
    return float(torch.argmax(spec.abs())) * sr / x.shape[-1]


def test_resample_preserves_tone_frequency():
    x = _tone(440.0, 44100)
    y = T.resample(x, 44100, 16000)
    assert y.shape == (1, 16000)
    assert abs(_peak_hz(y, 16000) - 440.0) <= 1.0
    assert T.resample(x, 16000, 16000) is x


@pytest.mark.parametrize("n_mels,k", [(64, 40), (128, 90), (128, 5)])
def test_log_mel_tone_peaks_at_right_bin(n_mels, k):
    import librosa  # local: the GPU machine's image has no librosa

    sr = 16000
    centres = librosa.mel_frequencies(n_mels=n_mels + 2, fmin=0.0, fmax=sr / 2, htk=True)[1:-1]
    x = _tone(float(centres[k]), sr)
    spec = T.log_mel(x, sr, n_mels=n_mels)
    assert spec.shape == (1, n_mels, sr // 160 + 1)
    assert int(spec[0].mean(dim=1).argmax()) == k
    # the same bin is where torchaudio's filterbank row for that frequency peaks
    fb = torchaudio.functional.melscale_fbanks(513, 0.0, sr / 2, n_mels, sr, mel_scale="htk")
    assert int(fb[round(centres[k] / (sr / 1024))].argmax()) == k
    assert bool((fb.sum(dim=0) > 0).all())  # the default n_fft leaves no mel filter empty


def test_log_mel_is_log_of_power_mel_plus_eps():
    x = torch.zeros(2, 1600)
    spec = T.log_mel(x, 16000, n_mels=64, eps=1e-3)
    torch.testing.assert_close(spec, torch.full_like(spec, math.log(1e-3)))
    assert spec.shape == (2, 64, 11)


def test_log_mel_scales_integer_pcm_and_refuses_too_short_audio():
    """int16 PCM (a WAV reader's output) equals the float waveform it encodes (it used to come
    out 2 ln 32768 = 20.8 higher); audio shorter than the centred frame's padding is refused."""
    g = _gen(0)
    x = torch.rand(1, 4000, generator=g) * 1.6 - 0.8
    pcm = (x * 32768).round().to(torch.int16)
    torch.testing.assert_close(T.log_mel(pcm, 16000, n_mels=32),
                               T.log_mel(pcm.float() / 32768, 16000, n_mels=32))
    assert (T.log_mel(pcm, 16000, n_mels=32) - T.log_mel(x, 16000, n_mels=32)).abs().mean() < 0.05
    with pytest.raises(ConfigError, match="signed integer PCM, got torch.uint8"):
        T.log_mel(pcm.to(torch.uint8), 16000)
    with pytest.raises(ConfigError, match="500 samples is too short .* n_fft 1024: it needs more "
                                          "than 512 samples \\(32 ms at 16000 Hz\\)"):
        T.log_mel(torch.zeros(1, 500), 16000)
    assert T.log_mel(torch.zeros(1, 513), 16000).shape[-1] == 513 // 160 + 1


def test_spec_augment_masks_requested_widths():
    spec = torch.randn(4, 1, 40, 100) + 10.0  # no natural zeros
    widths_f, widths_t = [], []
    for seed in range(20):
        out = T.spec_augment(spec, freq_mask=7, time_mask=15, num_masks=1, generator=_gen(seed))
        for clip, orig in zip(out, spec):
            zero = clip[0] == 0
            rows = zero.all(dim=1)  # masked frequency band
            cols = zero.all(dim=0)  # masked time band
            # untouched cells are unchanged; everything zero lies in a full row or column band
            assert torch.equal(clip[0][~zero], orig[0][~zero])
            assert torch.equal(zero, rows[:, None] | cols[None, :])
            for band, store in ((rows, widths_f), (cols, widths_t)):
                idx = torch.nonzero(band).flatten()
                if len(idx):
                    assert int(idx[-1] - idx[0]) + 1 == len(idx)  # one contiguous band
                store.append(len(idx))
    assert max(widths_f) == 7 and max(widths_t) == 15
    assert min(widths_f) < 7 and min(widths_t) < 15


def test_spec_augment_mean_fill_and_determinism():
    spec = torch.randn(2, 20, 30)
    a = T.spec_augment(spec, 5, 5, fill="mean", generator=_gen(1))
    b = T.spec_augment(spec, 5, 5, fill="mean", generator=_gen(1))
    assert torch.equal(a, b)
    changed = a != spec
    assert changed.any()
    # both channels share the masks; masked cells hold the clip mean
    assert torch.equal(changed[0], changed[1])
    torch.testing.assert_close(a[changed], torch.full_like(a[changed], float(spec.mean())))


def _runs(band: torch.Tensor) -> int:
    """Number of contiguous True runs in a 1-D bool tensor."""
    b = band.int()
    return int(b[0]) + int(((b[1:] - b[:-1]) == 1).sum())


def test_spec_augment_draws_num_masks_bands():
    spec = torch.randn(4, 1, 60, 120) + 10.0  # no natural zeros
    for num_masks in (1, 2, 3):
        most_f = most_t = 0
        for seed in range(6):
            out = T.spec_augment(spec, freq_mask=4, time_mask=6, num_masks=num_masks,
                                 generator=_gen(seed))
            for clip in out:
                zero = clip[0] == 0
                rows, cols = zero.all(dim=1), zero.all(dim=0)
                assert torch.equal(zero, rows[:, None] | cols[None, :])
                assert int(rows.sum()) <= 4 * num_masks and int(cols.sum()) <= 6 * num_masks
                nf, nt = _runs(rows), _runs(cols)
                assert nf <= num_masks and nt <= num_masks
                most_f, most_t = max(most_f, nf), max(most_t, nt)
        # narrow bands in a wide spectrogram: some clip shows them all separately
        assert most_f == num_masks and most_t == num_masks, (num_masks, most_f, most_t)


def test_spec_augment_mean_fill_uses_each_clips_own_mean():
    g = _gen(0)
    spec = torch.randn(2, 2, 20, 30, generator=g)
    spec += torch.tensor([[0.0, 10.0], [100.0, 300.0]]).reshape(2, 2, 1, 1)  # per clip, channel
    out = T.spec_augment(spec, 6, 8, num_masks=2, fill="mean", generator=_gen(3))
    for clip, orig in zip(out, spec):
        changed = clip != orig
        assert changed.any() and torch.equal(changed[0], changed[1])  # channels share the mask
        own = float(orig.mean())  # the clip's mean over its channels: 5 and 200
        torch.testing.assert_close(clip[changed], torch.full_like(clip[changed], own))


def test_audio_pipeline_train_masks_eval_does_not():
    x = _tone(1000.0, 16000, 0.5)
    train = T.AudioPipeline(mode="train", n_mels=64, freq_mask=8, time_mask=10, fill="zero", mean=-4.0, std=4.0)
    evalp = T.AudioPipeline(mode="eval", n_mels=64, freq_mask=8, time_mask=10, mean=-4.0, std=4.0)
    e = evalp(x)
    torch.testing.assert_close(e, (T.log_mel(x, 16000, n_mels=64) + 4.0) / 4.0)
    seen_mask = False
    for seed in range(5):
        t = train(x, _gen(seed))
        assert t.shape == e.shape == (1, 64, 51)
        masked = t != e
        assert torch.all(t[masked] == 0)
        seen_mask |= bool(masked.any())
    assert seen_mask


# ------------------------------------------------------------------------------------------- GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_gpu_video_ops_match_cpu():
    v = _video(3, t=4, h=24, w=32)
    cuda = v.cuda()
    pipe = T.VideoPipeline(mode="train", size=16)
    # a CPU generator gives the same boxes and flips for a CUDA clip as for a CPU one
    out = pipe(cuda, _gen(5))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), pipe(v, _gen(5)), atol=0.05, rtol=0)  # GPU resize rounds differently
    # a CUDA generator draws on the device, reproducibly
    g1, g2 = (torch.Generator(device="cuda").manual_seed(5) for _ in range(2))
    assert torch.equal(pipe(cuda, g1), pipe(cuda, g2))
    assert torch.equal(T.random_hflip(cuda, generator=_gen(1)).cpu(), T.random_hflip(v, generator=_gen(1)))
    assert torch.equal(T.three_crop(cuda, 16).cpu(), T.three_crop(v, 16))
    torch.testing.assert_close(T.normalize(cuda).cpu(), T.normalize(v))


@pytest.mark.gpu
@needs_cuda
def test_gpu_audio_ops_match_cpu():
    x = torch.randn(2, 1, 8000)
    spec = T.log_mel(x, 16000, n_mels=64)
    spec_gpu = T.log_mel(x.cuda(), 16000, n_mels=64)
    assert spec_gpu.device.type == "cuda"
    torch.testing.assert_close(spec_gpu.cpu(), spec, atol=1e-3, rtol=1e-3)
    masked_gpu = T.spec_augment(spec.cuda(), 8, 10, generator=_gen(2))
    assert torch.equal(masked_gpu.cpu(), T.spec_augment(spec, 8, 10, generator=_gen(2)))
    g = torch.Generator(device="cuda").manual_seed(3)
    assert T.spec_augment(spec.cuda(), 8, 10, generator=g).device.type == "cuda"
    resampled = T.resample(x.cuda(), 16000, 8000)
    torch.testing.assert_close(resampled.cpu(), T.resample(x, 16000, 8000), atol=1e-4, rtol=1e-4)
