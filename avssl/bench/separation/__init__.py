"""Visually-guided source separation (Sound of Pixels, Zhao et al. 2018) for the ``music`` task.

:mod:`.spectrogram` (STFT, log-frequency warp, masked inverse), :mod:`.unet` (U-Net + visual
conditioning), :mod:`.train` (mix-and-separate), :mod:`.windows` (audio windows + visual inputs
decoded into banks), :mod:`.benchmark` (the bench pipeline).
"""
from __future__ import annotations

from avssl.bench.separation.spectrogram import (HOP, N_FFT, SAMPLE_RATE, WARP_BINS, WINDOW,
                                                Spectrogram, unwarp, warp)
from avssl.bench.separation.train import (SeparationConfig, WindowBank, build_separator,
                                          separate, separation_loss, train_separator)
from avssl.bench.separation.unet import Separator, UNet

__all__ = ["HOP", "N_FFT", "SAMPLE_RATE", "WARP_BINS", "WINDOW", "SeparationConfig", "Separator",
           "Spectrogram", "UNet", "WindowBank", "build_separator", "separate",
           "separation_loss", "train_separator", "unwarp", "warp"]
