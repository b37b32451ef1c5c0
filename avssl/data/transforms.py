"""Pure tensor transforms for video clips and audio, on CPU or GPU. They never open files.

Layouts
-------
* video: ``(..., T, C, H, W)``, uint8 or float. Leading dims are independent clips: each clip gets
  its own random parameters, and every frame of one clip gets the same crop / flip.
* audio: ``(..., C, S)`` float waveform; spectrograms ``(..., C, n_mels, frames)``.

Randomness comes only from an explicit ``torch.Generator`` (``generator=None`` falls back to
torch's global RNG), so a dataset that seeds a generator from ``(seed, epoch, index)`` gets the same
augmentation whatever the DataLoader worker count.

Transform callables
-------------------
Datasets accept ``video_transform`` / ``audio_transform``: any callable with the signature::

    transform(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor

:class:`VideoPipeline` and :class:`AudioPipeline` are such callables (train: random resized crop +
flip + normalise; eval: resize short side + centre or three crop + normalise; audio: log-mel +
optional SpecAugment). Geometric ops run on uint8 before the float conversion, which keeps the
pipeline cheap compared with decoding.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torchaudio
from torchvision.transforms.v2 import functional as TF

from avssl.errors import ConfigError

# Mean / std of Kinetics-400 frames in [0, 1] (RGB), as used by torchvision's video models.
KINETICS_MEAN: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
KINETICS_STD: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ConfigError(f"crop/resize size must be positive, got {size}")
    return int(h), int(w)


def _check_video(video: torch.Tensor) -> None:
    if video.ndim < 4:
        raise ConfigError(
            f"expected a video tensor (..., T, C, H, W) with at least 4 dims, got shape {tuple(video.shape)}"
        )
    if video.shape[-3] > 4 and video.shape[-1] <= 3:  # decord / numpy frames are channels-last
        raise ConfigError(
            f"expected a video tensor (..., T, C, H, W), got shape {tuple(video.shape)}, which "
            f"looks channels-last (..., T, H, W, C): permute it with x.movedim(-1, -3) first"
        )


def _rand(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) numbers on the generator's device (CPU for None), float64 for exact draws."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """One integer in [low, high)."""
    return low + int(_rand(generator, 1).item() * (high - low))


def _per_clip(video: torch.Tensor, fn, out_hw: tuple[int, int]) -> torch.Tensor:
    """Apply ``fn(clip (T, C, H, W)) -> (T, C, *out_hw)`` to every clip of ``(..., T, C, H, W)``.

    Clips are processed in order (so a shared generator is consumed in a fixed order); an empty
    batch gives an empty ``(..., T, C, *out_hw)`` tensor, as batched tensor ops do.
    """
    if video.ndim == 4:
        return fn(video)
    lead = video.shape[:-4]
    if math.prod(lead) == 0:
        return video.new_empty(*lead, *video.shape[-4:-2], *out_hw)
    outs = [fn(clip) for clip in video.reshape(-1, *video.shape[-4:])]
    return torch.stack(outs).reshape(*lead, *outs[0].shape)


# ----------------------------------------------------------------------------------------- video
def resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(..., T, C, H, W)`` so that min(H, W) == size, keeping the aspect ratio.

    Bilinear with antialias; uint8 stays uint8 (torchvision's native uint8 kernel on CPU).
    """
    _check_video(video)
    return TF.resize(video, [int(size)], antialias=True)


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop (torchvision's algorithm).

    The crop covers a fraction in ``scale`` of the frame area with aspect ratio (w / h) in
    ``ratio`` (log-uniform); after 10 failed tries it falls back to the largest centred crop
    whose ratio is clamped into ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = _rand(generator, 2)
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0].item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1].item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(generator, 0, height - h + 1)
            left = _randint(generator, 0, width - w + 1)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    video: torch.Tensor,
    size: Size,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop of ``(..., T, C, H, W)`` resized to ``size`` -> ``(..., T, C, h, w)``.

    One crop box per clip (drawn with :func:`random_resized_crop_params`), shared by its frames.
    """
    _check_video(video)
    out_size = list(_pair(size))
    H, W = video.shape[-2:]

    def one(clip: torch.Tensor) -> torch.Tensor:
        top, left, h, w = random_resized_crop_params(H, W, scale, ratio, generator)
        return TF.resized_crop(clip, top, left, h, w, out_size, antialias=True)

    return _per_clip(video, one, (out_size[0], out_size[1]))


def _centre_offset(full: int, crop: int) -> int:
    # Same rounding as torchvision's center_crop, so three_crop's middle view equals center_crop.
    return int(round((full - crop) / 2.0))


def _check_fits(video: torch.Tensor, h: int, w: int) -> None:
    H, W = video.shape[-2:]
    if h > H or w > W:
        raise ConfigError(
            f"crop {h}x{w} is larger than the {H}x{W} frames; resize the short side to at least "
            f"the crop size first (resize_short_side)"
        )


def center_crop(video: torch.Tensor, size: Size) -> torch.Tensor:
    """Centred ``size`` crop of ``(..., T, C, H, W)``; the frame must be at least ``size``."""
    _check_video(video)
    h, w = _pair(size)
    _check_fits(video, h, w)
    return TF.center_crop(video, [h, w])


def three_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """Three ``size x size`` crops along the long side: start, centre, end -> ``(3, ..., T, C, s, s)``.

    As in the SlowFast multi-view test (after resizing the short side to ``size`` they cover the
    whole frame); on the short side the crops are centred.
    """
    _check_video(video)
    s = int(size)
    _check_fits(video, s, s)
    H, W = video.shape[-2:]
    long_len, short_len = (W, H) if W >= H else (H, W)
    short_off = _centre_offset(short_len, s)
    crops = []
    for long_off in (0, _centre_offset(long_len, s), long_len - s):
        top, left = (short_off, long_off) if W >= H else (long_off, short_off)
        crops.append(video[..., top : top + s, left : left + s])
    return torch.stack(crops)


def hflip(video: torch.Tensor) -> torch.Tensor:
    """Mirror ``(..., H, W)`` left-right."""
    return TF.horizontal_flip(video)


def random_hflip(
    video: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flip each clip of ``(..., T, C, H, W)`` with probability ``p`` (all its frames together)."""
    _check_video(video)
    lead = video.shape[:-4]
    flip = _rand(generator, *lead) < p  # one draw per clip, in clip order
    if video.ndim == 4:
        return hflip(video) if bool(flip) else video
    mask = flip.to(video.device).reshape(*lead, 1, 1, 1, 1)
    return torch.where(mask, hflip(video), video)


def to_float(video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> float in [0, 1]; float input is only cast to ``dtype``."""
    if video.dtype == torch.uint8:
        return video.to(dtype).div_(255.0)
    return video.to(dtype)


def _channel_stats(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
    C = video.shape[-3]
    if len(mean) != C or len(std) != C:
        raise ConfigError(f"mean/std need {C} values (one per channel), got {len(mean)}/{len(std)}")
    m = torch.as_tensor(mean, dtype=video.dtype, device=video.device).reshape(C, 1, 1)
    s = torch.as_tensor(std, dtype=video.dtype, device=video.device).reshape(C, 1, 1)
    return m, s


def normalize(
    video: torch.Tensor,
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``(..., C, H, W)``; uint8 input is first scaled to [0, 1].

    Returns a new float tensor (float32 for uint8 input); one allocation, the rest in place.
    """
    if not (video.dtype == torch.uint8 or video.is_floating_point()):
        raise ConfigError(f"expected a uint8 [0, 255] or float [0, 1] video, got {video.dtype}")
    if video.dtype == torch.uint8:
        # Fold the 1/255 of to_float into the constants: one pass instead of three.
        out = video.to(torch.float32)
        m, s = _channel_stats(out, [255.0 * v for v in mean], [255.0 * v for v in std])
        return out.sub_(m).div_(s)
    m, s = _channel_stats(video, mean, std)
    return video.sub(m).div_(s)


def denormalize(
    video: torch.Tensor,
    mean: Sequence[float] = KINETICS_MEAN,
    std: Sequence[float] = KINETICS_STD,
) -> torch.Tensor:
    """Inverse of :func:`normalize` (for visualisation): ``x * std + mean``."""
    m, s = _channel_stats(video, mean, std)
    return video * s + m


def to_encoder_layout(video: torch.Tensor) -> torch.Tensor:
    """``(..., T, C, H, W) -> (..., C, T, H, W)``, the layout of 3D-conv / video encoders (a view)."""
    _check_video(video)
    return video.transpose(-4, -3)


# ----------------------------------------------------------------------------------------- audio
def resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling of ``(..., S)`` from ``orig_sr`` to ``new_sr`` Hz (torchaudio)."""
    if int(orig_sr) == int(new_sr):
        return audio
    return torchaudio.functional.resample(audio, int(orig_sr), int(new_sr))


@functools.lru_cache(maxsize=32)
def _mel_module(
    sample_rate: int,
    n_fft: int,
    win_length: int,
    hop_length: int,
    f_min: float,
    f_max: float | None,
    n_mels: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torchaudio.transforms.MelSpectrogram:
    # Building the filterbank and window costs more than a short clip's STFT, so cache per
    # parameters / device / dtype (one per DataLoader worker process).
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft,
        win_length=win_length,
        hop_length=hop_length,
        f_min=f_min,
        f_max=f_max,
        n_mels=n_mels,
        power=2.0,
        mel_scale="htk",
    )
    return mel.to(device=device, dtype=dtype)


def mel_params(
    sample_rate: int,
    n_fft: int | None = None,
    hop_length: int | None = None,
    win_length: int | None = None,
) -> tuple[int, int, int]:
    """Defaults of :func:`log_mel`: 25 ms window, 10 ms hop, n_fft = next power of two >= 64 ms.

    The window is zero-padded to the longer FFT so that even 128 HTK mel filters (narrower than a
    25 ms window's bin spacing at low frequencies) each cover at least one FFT bin; the spectral
    resolution stays that of the 25 ms window. Returns ``(n_fft, win_length, hop_length)``.
    """
    win = int(win_length) if win_length else int(round(0.025 * sample_rate))
    hop = int(hop_length) if hop_length else int(round(0.010 * sample_rate))
    nfft = int(n_fft) if n_fft else 1 << (max(win, int(0.064 * sample_rate)) - 1).bit_length()
    if win > nfft:
        raise ConfigError(f"win_length {win} must be <= n_fft {nfft}")
    return nfft, win, hop


def log_mel(
    audio: torch.Tensor,
    sample_rate: int,
    n_mels: int = 128,
    n_fft: int | None = None,
    hop_length: int | None = None,
    win_length: int | None = None,
    f_min: float = 0.0,
    f_max: float | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Log mel power spectrogram ``log(mel + eps)``: ``(..., C, S) -> (..., C, n_mels, frames)``.

    HTK mel scale, Hann window, centred frames (``frames = S // hop_length + 1``). Defaults: 25 ms
    window, 10 ms hop, n_fft the next power of two >= 64 ms (16 kHz: win 400, hop 160, n_fft 1024),
    f_max = Nyquist.
    Half-precision input is computed in float32 and cast back. Signed integer PCM (int16 from
    a WAV reader, ...) is scaled to [-1, 1) first, as ``torchaudio.load`` does.
    """
    nfft, win, hop = mel_params(sample_rate, n_fft, hop_length, win_length)
    if not audio.is_floating_point():
        if audio.dtype not in (torch.int8, torch.int16, torch.int32):
            raise ConfigError(f"expected a float waveform in [-1, 1] or signed integer PCM, got "
                              f"{audio.dtype}")
        audio = audio.to(torch.float32) / float(torch.iinfo(audio.dtype).max + 1)
    if audio.shape[-1] <= nfft // 2:  # centred frames reflect-pad n_fft / 2 on each side
        raise ConfigError(
            f"audio of {audio.shape[-1]} samples is too short for a log-mel with n_fft {nfft}: "
            f"it needs more than {nfft // 2} samples ({1000 * (nfft // 2) / sample_rate:.0f} ms "
            f"at {sample_rate} Hz); use a longer clip or a smaller n_fft")
    dtype = audio.dtype if audio.dtype in (torch.float32, torch.float64) else torch.float32
    mel = _mel_module(
        int(sample_rate), nfft, win, hop, float(f_min),
        None if f_max is None else float(f_max), int(n_mels), audio.device, dtype,
    )
    spec = mel(audio.to(dtype))
    return torch.log(spec + eps).to(audio.dtype if audio.is_floating_point() else dtype)


def spec_augment(
    spec: torch.Tensor,
    freq_mask: int = 24,
    time_mask: int = 48,
    num_masks: int = 2,
    fill: Literal["zero", "mean"] = "zero",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment-style masking of ``(..., C, F, T)`` (Park et al., 2019), returns a new tensor.

    ``num_masks`` frequency bands and ``num_masks`` time bands per clip, each of width uniform in
    ``[0, freq_mask]`` / ``[0, time_mask]`` (clamped to F / T) at a uniform position; the
    channels of one clip share the masks. Masked cells become 0 (``fill="zero"``) or the clip's
    mean (``fill="mean"``). A 2-D ``(F, T)`` input is one single-channel clip.
    """
    if spec.ndim < 2:
        raise ConfigError(f"expected a spectrogram (..., C, F, T), got shape {tuple(spec.shape)}")
    x = spec if spec.ndim >= 3 else spec.unsqueeze(0)
    F, T = x.shape[-2:]
    clips = x.reshape(-1, *x.shape[-3:])  # (N, C, F, T)
    N = clips.shape[0]

    def bands(length: int, max_width: int) -> torch.Tensor:
        # Draw widths then starts, shape (N, num_masks), from the explicit generator.
        max_width = min(max(int(max_width), 0), length)
        width = (_rand(generator, N, num_masks) * (max_width + 1)).floor().long()
        start = (_rand(generator, N, num_masks) * (length - width + 1)).floor().long()
        pos = torch.arange(length, device=width.device)
        inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (N, M, L)
        return inside.any(dim=1).to(spec.device)  # (N, L)

    fmask = bands(F, freq_mask)
    tmask = bands(T, time_mask)
    mask = fmask[:, None, :, None] | tmask[:, None, None, :]  # (N, 1, F, T)
    if fill == "zero":
        value = torch.zeros((), dtype=clips.dtype, device=clips.device)
    elif fill == "mean":
        value = clips.mean(dim=(1, 2, 3), keepdim=True)
    else:
        raise ConfigError(f"spec_augment fill must be 'zero' or 'mean', got {fill!r}")
    out = torch.where(mask, value, clips)
    return out.reshape(spec.shape)


# ------------------------------------------------------------------------------------- pipelines
@dataclass
class VideoPipeline:
    """Video clip transform ``(T, C, H, W) uint8 -> float`` for datasets' ``video_transform``.

    * ``mode="train"``: random resized crop to ``size`` (``scale``, ``ratio``), horizontal flip
      with probability ``flip_p``, normalise -> ``(T, C, size, size)``.
    * ``mode="eval"``: resize the short side to ``short_side`` (default ``size``), then a centre
      crop -> ``(T, C, size, size)``, or ``crop="three"`` -> ``(3, T, C, size, size)``.
    * ``encoder_layout=True`` returns ``(..., C, T, H, W)`` instead.

    Leading batch dims are allowed (each clip draws its own crop/flip), so the same object
    can augment a whole batch on the GPU.
    """

    mode: Literal["train", "eval"] = "train"
    size: int = 112
    short_side: int | None = None
    crop: Literal["center", "three"] = "center"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    mean: tuple[float, ...] = KINETICS_MEAN
    std: tuple[float, ...] = KINETICS_STD
    encoder_layout: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("train", "eval"):
            raise ConfigError(f"VideoPipeline mode must be 'train' or 'eval', got {self.mode!r}")
        if self.crop not in ("center", "three"):
            raise ConfigError(f"VideoPipeline crop must be 'center' or 'three', got {self.crop!r}")

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.mode == "train":
            video = random_resized_crop(video, self.size, self.scale, self.ratio, generator)
            video = random_hflip(video, self.flip_p, generator)
        else:
            video = resize_short_side(video, self.short_side or self.size)
            video = three_crop(video, self.size) if self.crop == "three" else center_crop(video, self.size)
        video = normalize(video, self.mean, self.std)
        return to_encoder_layout(video) if self.encoder_layout else video


@dataclass
class AudioPipeline:
    """Audio transform ``(C, S) float -> (C, n_mels, frames)`` for datasets' ``audio_transform``.

    Log-mel (:func:`log_mel` with these parameters), then optional standardisation
    ``(x - mean) / std`` (dataset statistics, as AST does), then in ``mode="train"`` SpecAugment
    when ``freq_mask`` or ``time_mask`` > 0. ``sample_rate`` must be the rate of the input.
    """

    mode: Literal["train", "eval"] = "train"
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int | None = None
    hop_length: int | None = None
    win_length: int | None = None
    f_min: float = 0.0
    f_max: float | None = None
    eps: float = 1e-6
    mean: float | None = None
    std: float | None = None
    freq_mask: int = 0
    time_mask: int = 0
    num_masks: int = 2
    fill: Literal["zero", "mean"] = "zero"

    def __post_init__(self) -> None:
        if self.mode not in ("train", "eval"):
            raise ConfigError(f"AudioPipeline mode must be 'train' or 'eval', got {self.mode!r}")

    def __call__(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        spec = log_mel(
            audio, self.sample_rate, self.n_mels, self.n_fft, self.hop_length, self.win_length,
            self.f_min, self.f_max, self.eps,
        )
        if self.mean is not None and self.std is not None:
            spec = (spec - self.mean) / self.std
        if self.mode == "train" and (self.freq_mask > 0 or self.time_mask > 0):
            spec = spec_augment(spec, self.freq_mask, self.time_mask, self.num_masks, self.fill, generator)
        return spec
