"""Sound of Pixels spectrograms: STFT, log-frequency warp, and the masked inverse.

Zhao et al. 2018 (Sound of Pixels): audio at 11,025 Hz, windows of 65,535 samples (~6 s), STFT
with n_fft 1022 and hop 256 (hann) -> 512 linear bins x 256 frames, warped to 256 log-spaced bins.

The warp is a ``grid_sample`` on a log-spaced frequency grid, exactly as the SoP code does
(``warpgrid``): output row ``i`` of ``F_out`` reads the linear spectrum at normalised height
``y = (21 ** ((v + 1) / 2) - 11) / 10`` with ``v`` evenly spaced in [-1, 1], i.e. frequencies
spaced geometrically from 0 Hz to Nyquist (denser at low frequencies). It is chosen over a
librosa-style filterbank because its inverse is the same operation with the inverse map
``v = 2 log(10 y + 11) / log(21) - 1``: a mask predicted on the warped grid is resampled back to
the 512 linear bins without a pseudo-inverse (a filterbank pools bins, and un-pooling it smears
masks), both directions are differentiable, and it runs on the GPU.

Reconstruction (SoP): the linear-grid mask multiplies the mixture's complex STFT, i.e. the mask
scales the mixture magnitude and the mixture phase is kept, and ``torch.istft`` returns the
waveform of the original length.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SAMPLE_RATE = 11025
WINDOW = 65535          # samples per training / test window (~5.94 s)
N_FFT = 1022            # -> 512 frequency bins
HOP = 256               # -> 256 frames for WINDOW samples (centre-padded STFT)
WARP_BINS = 256

_BASE = 21.0  # SoP's warp: log-spaced rows with base 21 (y = -1 .. 1 maps to 0 .. Nyquist)


def _warp_rows(n: int, device=None) -> torch.Tensor:
    """Normalised source heights in the linear spectrum for ``n`` log-spaced output rows."""
    v = torch.linspace(-1.0, 1.0, n, device=device, dtype=torch.float32)
    return (torch.pow(torch.tensor(_BASE, device=device), (v + 1) / 2) - 11) / 10


def _unwarp_rows(n: int, device=None) -> torch.Tensor:
    """Normalised heights in the warped spectrum for ``n`` linear output rows (inverse map)."""
    y = torch.linspace(-1.0, 1.0, n, device=device, dtype=torch.float32)
    return torch.log(y * 10 + 11) / math.log(_BASE) * 2 - 1


def _resample_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, len(rows), W): bilinear read at normalised heights ``rows``
    (columns, i.e. frames, are kept)."""
    b, _, _, w = x.shape
    cols = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=torch.float32)
    gy, gx = torch.meshgrid(rows, cols, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype).expand(b, -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def warp(x: torch.Tensor, bins: int = WARP_BINS) -> torch.Tensor:
    """Linear-frequency (B, C, F_lin, T) -> log-frequency (B, C, bins, T)."""
    return _resample_rows(x, _warp_rows(bins, x.device))


def unwarp(x: torch.Tensor, bins: int = N_FFT // 2 + 1) -> torch.Tensor:
    """Log-frequency (B, C, F_log, T) -> linear-frequency (B, C, bins, T) (inverse of warp)."""
    return _resample_rows(x, _unwarp_rows(bins, x.device))


class Spectrogram:
    """STFT front end and masked inverse of one configuration (no parameters; any device).

    ``stft(wave)``: (B, S) float -> complex (B, F_lin, T) with F_lin = n_fft // 2 + 1 and
    T = 1 + S // hop. ``features(wave)`` -> dict with ``stft``, ``mag`` (B, 1, F_lin, T),
    ``mag_warped`` (B, 1, warp_bins, T) and ``log_mag`` = log of ``mag_warped`` (the U-Net input).
    ``apply_mask(stft, mask_warped, length, threshold=None)``: a (B, 1, warp_bins, T) mask on the
    warped grid -> unwarped to F_lin bins (and binarised at ``threshold`` when given), times the
    mixture STFT (mixture magnitude and phase) -> (B, length).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
                 warp_bins: int = WARP_BINS):
        self.sample_rate, self.n_fft, self.hop, self.warp_bins = sample_rate, n_fft, hop, warp_bins
        self.bins = n_fft // 2 + 1

    def _window(self, like: torch.Tensor) -> torch.Tensor:
        return torch.hann_window(self.n_fft, device=like.device, dtype=like.dtype)

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.stft(wave, self.n_fft, self.hop, window=self._window(wave), center=True,
                          return_complex=True)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        window = self._window(spec.real)
        return torch.istft(spec, self.n_fft, self.hop, window=window, center=True, length=length)

    def features(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        spec = self.stft(wave)
        mag = spec.abs().unsqueeze(1)
        mag_w = warp(mag, self.warp_bins)
        return {"stft": spec, "mag": mag, "mag_warped": mag_w,
                "log_mag": torch.log(mag_w.clamp_min(1e-10))}

    def magnitude_warped(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, 1, warp_bins, T): warped magnitude (targets are built from these)."""
        return warp(self.stft(wave).abs().unsqueeze(1), self.warp_bins)

    def apply_mask(self, spec: torch.Tensor, mask_warped: torch.Tensor, length: int,
                   threshold: float | None = None) -> torch.Tensor:
        mask = unwarp(mask_warped, self.bins)[:, 0]  # (B, F_lin, T)
        if threshold is not None:  # SoP's binary masks are thresholded on the linear grid
            mask = (mask > threshold).to(spec.real.dtype)
        return self.istft(spec * mask, length)
