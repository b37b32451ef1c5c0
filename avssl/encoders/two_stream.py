"""Two-stream network (Simonyan & Zisserman, "Two-Stream Convolutional Networks for Action
Recognition in Videos", NeurIPS 2014), plus the optical flow it needs.

- Spatial (RGB) stream: a 2D CNN on the middle frame ``T // 2``.
- Temporal (flow) stream: a 2D CNN whose first conv sees the 2·(T−1) stacked optical-flow
  channels (dx, dy of every consecutive frame pair, pair-major: dx0, dy0, dx1, dy1, ...).
  As in the paper, each pair's mean flow is subtracted (camera-motion compensation); flow is
  clipped to ±20 px and divided by 20.
- Late fusion by **concatenation** of the two streams' pooled features, so ``embed_dim`` is
  2·C; a linear head on it is a learned weighted sum of two per-stream linear classifiers,
  i.e. the paper's score fusion with learned weights.

Input contract: ``forward(x)`` takes the *normalised* RGB video ``(B, 3, T, H, W)`` like every
video encoder. Flow is computed inside, on CPU with OpenCV's DIS, after de-normalising ``x``
back to uint8 with the ``mean``/``std`` the model was built with (pixel values in [0, 1] before
normalisation; torchvision's Kinetics statistics by default). To skip that work, pass
precomputed flow: ``forward(x, flow=F)`` with ``F`` (B, T−1, 2, H, W) in pixels, as returned by
:func:`compute_flow` or the cached :func:`flow_cache` (call that in the data pipeline, where the
clip id is known).

Sizes: ``two_stream`` = two resnet18 trunks (torchvision, ``weights=None``), built for
3x11x112x112 (the paper's L = 10 flow frames); ``two_stream_tiny`` = two 3-layer CNNs, built
for 3x8x32x32. T is fixed at build time (the flow stream's input channels).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from avssl.cache import cache_dir
from avssl.encoders import register_encoder
from avssl.encoders.baselines import make_trunk
from avssl.encoders.layers import load_pretrained
from avssl.errors import ConfigError

# torchvision's video-model (Kinetics) statistics, for pixel values in [0, 1].
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
FLOW_CLIP_PX = 20.0


def compute_flow(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Dense optical flow between consecutive frames with OpenCV DIS (medium preset).

    ``video`` uint8 (T, C, H, W) with C = 3 (RGB) or 1 -> float32 (T−1, 2, H, W): channel 0 is
    dx (pixels, + = right), channel 1 is dy (+ = down), so frame t's pixel (x, y) moves to
    (x + dx, y + dy) in frame t + 1.
    """
    v = video.numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if v.ndim != 4 or v.shape[1] not in (1, 3) or v.dtype != np.uint8 or v.shape[0] < 2:
        raise ConfigError(f"compute_flow expects uint8 (T>=2, C in {{1,3}}, H, W), got "
                          f"{v.dtype} {v.shape}")
    if v.shape[1] == 3:
        gray = [cv2.cvtColor(np.ascontiguousarray(f.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
                for f in v]
    else:
        gray = [np.ascontiguousarray(f[0]) for f in v]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = [dis.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:])]  # (H, W, 2) each
    flow = np.nan_to_num(np.stack(flows).transpose(0, 3, 1, 2), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))


def default_flow_cache_dir() -> Path:
    """``$AVSSL_CACHE/flow`` if ``AVSSL_CACHE`` is set, else ``~/.cache/avssl/flow``."""
    return cache_dir("flow")


def flow_cache(path_key: str, video: torch.Tensor | np.ndarray,
               cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """:func:`compute_flow` with an on-disk cache; returns float32 (T−1, 2, H, W).

    The entry is keyed by ``path_key`` (the clip id, e.g. "path/to/video.mp4@12.0s") plus a hash
    of the frames' bytes and shape, so a changed clip or crop never reuses stale flow. Stored as
    float16 ``.npy`` (0.03 px resolution at 50 px) and written atomically, so concurrent
    DataLoader workers never read a half-written file.
    """
    v = video.numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    v = np.ascontiguousarray(v)
    digest = hashlib.sha1(f"{path_key}|{v.shape}|{v.dtype}|".encode())
    digest.update(v.tobytes())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(path_key))[-80:]
    folder = Path(cache_dir) if cache_dir is not None else default_flow_cache_dir()
    path = folder / f"{slug}-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        except (ValueError, OSError):  # unreadable entry: recompute and overwrite it
            pass
    flow = compute_flow(v)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, flow.numpy().astype(np.float16))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return flow


class TwoStream(nn.Module):
    """RGB stream on the middle frame + flow stream on stacked flow, concatenated features.

    ``forward(x, flow=None)``: ``x`` normalised (B, 3, T, H, W), optional ``flow`` (B, T−1, 2,
    H, W) in pixels -> (B, 2·C).
    """

    modality = "video"
    time_series = False  # one RGB frame and stacked flow: 2D maps, no time axis to bin

    def __init__(self, trunk: str, num_frames: int, img_size: int,
                 mean: tuple[float, float, float] = KINETICS_MEAN,
                 std: tuple[float, float, float] = KINETICS_STD):
        super().__init__()
        if num_frames < 2:
            raise ConfigError(f"two_stream needs num_frames >= 2 for flow, got {num_frames}")
        self.rgb = make_trunk(trunk, in_chans=3)
        self.flow = make_trunk(trunk, in_chans=2 * (num_frames - 1))
        self.embed_dim = self.rgb.out_channels + self.flow.out_channels
        self.example_input_shape = (3, num_frames, img_size, img_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)

    @torch.no_grad()
    def flow_from_video(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, T, H, W) -> flow (B, T−1, 2, H, W) in pixels, on ``x``'s device."""
        u8 = ((x.float() * self.std + self.mean) * 255).round().clamp(0, 255).to(torch.uint8)
        u8 = u8.transpose(1, 2).cpu()  # (B, T, 3, H, W)
        return torch.stack([compute_flow(v) for v in u8]).to(x.device)

    def _flow_input(self, flow: torch.Tensor) -> torch.Tensor:
        """(B, T−1, 2, H, W) pixels -> (B, 2(T−1), H, W): mean-subtracted, clipped, scaled."""
        flow = flow - flow.mean(dim=(3, 4), keepdim=True)
        flow = flow.clamp(-FLOW_CLIP_PX, FLOW_CLIP_PX) / FLOW_CLIP_PX
        return flow.flatten(1, 2)

    def forward_features(self, x: torch.Tensor, flow: torch.Tensor | None = None
                         ) -> dict[str, torch.Tensor]:
        """-> ``{"rgb": (B, C, H', W'), "flow": (B, C, H', W')}`` stream feature maps."""
        T = self.example_input_shape[1]
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != T:
            raise ConfigError(f"two_stream was built for (B, 3, {T}, H, W) clips, got "
                              f"{tuple(x.shape)}; rebuild with num_frames= matching the clips")
        if flow is None:
            flow = self.flow_from_video(x)
        elif flow.shape != (x.shape[0], T - 1, 2, *x.shape[3:]):
            raise ConfigError(f"flow must be (B, T-1, 2, H, W) = "
                              f"{(x.shape[0], T - 1, 2, *x.shape[3:])}, got {tuple(flow.shape)}")
        rgb_maps = self.rgb(x[:, :, T // 2])
        flow_maps = self.flow(self._flow_input(flow.to(x.dtype)))
        return {"rgb": rgb_maps, "flow": flow_maps}

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None = None) -> torch.Tensor:
        maps = self.forward_features(x, flow)
        return torch.cat([maps["rgb"].mean(dim=(2, 3)), maps["flow"].mean(dim=(2, 3))], dim=1)


@register_encoder("two_stream", "video")
def two_stream(pretrained_path: str | None = None, num_frames: int = 11, img_size: int = 112,
               mean: tuple[float, float, float] = KINETICS_MEAN,
               std: tuple[float, float, float] = KINETICS_STD) -> TwoStream:
    """Two resnet18 streams, built for 3x11x112x112 (see module docstring)."""
    model = TwoStream("resnet18", num_frames, img_size, mean, std)
    return load_pretrained(model, pretrained_path)


@register_encoder("two_stream_tiny", "video")
def two_stream_tiny(pretrained_path: str | None = None, num_frames: int = 8, img_size: int = 32,
                    mean: tuple[float, float, float] = KINETICS_MEAN,
                    std: tuple[float, float, float] = KINETICS_STD) -> TwoStream:
    """Two tiny CNN streams, built for 3x8x32x32 (see module docstring)."""
    model = TwoStream("tiny", num_frames, img_size, mean, std)
    return load_pretrained(model, pretrained_path)
