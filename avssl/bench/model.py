"""What the bench evaluates: towers from a checkpoint, a named encoder, or the default baseline.

:func:`resolve_model` turns ``--checkpoint PATH`` / ``--encoder NAME`` / neither into a
:class:`BenchModel`: the video and audio encoders (either may be absent), the pretrain_sync
projection heads when the checkpoint has them (:class:`~avssl.towers.AVTowers`, for the sync and
retrieval tasks), the input preprocessing the weights were trained with (:class:`InputSpec`, read
from the checkpoint's ``config.json``), and the provenance columns of a leaderboard row.

Random-init models are built under ``torch.manual_seed(seed)``, so "random-init" is one fixed
baseline per seed, not a new one on every run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avssl import checkpoints
from avssl.data.transforms import AudioPipeline, VideoPipeline
from avssl.errors import AvsslError, ConfigError
from avssl.towers import AVTowers

# The pretrain_sync defaults: the baseline when neither --checkpoint nor --encoder is given.
DEFAULT_VIDEO = ("i3d_r18_tiny", {"time_strides": {"conv1": 1, "maxpool": 1}})
DEFAULT_AUDIO = ("audio_resnet18_tiny", {})
DEFAULT_PROJ = {"proj_dim": 128, "temporal_bins": 4}


@dataclass(frozen=True)
class InputSpec:
    """How clips are decoded and preprocessed for the encoders (recipes' ``data`` section).

    Video: ``clip_s`` seconds at ``fps`` decoded with short side ``size``, centre (or three)
    crop ``crop``, Kinetics-normalised, layout (C, T, H, W). Audio: ``clip_s`` seconds at
    ``sample_rate`` -> log-mel with ``n_mels`` bins standardised by ``mel_mean`` / ``mel_std``.
    """

    clip_s: float = 1.0
    fps: float = 8.0
    size: int = 64
    crop: int = 56
    sample_rate: int = 16000
    n_mels: int = 64
    mel_mean: float = -2.0
    mel_std: float = 2.5

    @classmethod
    def from_config(cls, config: dict) -> "InputSpec":
        data = config.get("data", {}) if isinstance(config, dict) else {}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})

    def replace(self, **overrides: Any) -> "InputSpec":
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def video_transform(self, crops: int = 1) -> VideoPipeline:
        """One centre ``crop`` of frames resized to short side ``size`` or, for three crops,
        the SlowFast multi-view test: short side resized to ``crop`` itself, so that the three
        crops along the long side cover the whole frame."""
        if crops not in (1, 3):
            raise ConfigError(f"views: crops must be 1 (centre) or 3 (three crops), got {crops}")
        return VideoPipeline("eval", size=self.crop,
                             short_side=self.crop if crops == 3 else self.size,
                             crop="three" if crops == 3 else "center", encoder_layout=True)

    def audio_transform(self) -> AudioPipeline:
        return AudioPipeline("eval", sample_rate=self.sample_rate, n_mels=self.n_mels,
                             mean=self.mel_mean, std=self.mel_std)


@dataclass
class BenchModel:
    """Encoders under evaluation and where they came from (the leaderboard row's provenance)."""

    video: nn.Module | None
    audio: nn.Module | None
    towers: AVTowers | None            # video/audio + projection heads (sync, retrieval)
    spec: InputSpec
    video_name: str | None
    audio_name: str | None
    recipe: str                        # pretrain_sync, pretrain_mbt, ... or random-init
    checkpoint: str = ""               # the step folder loaded (``latest`` resolved)
    checkpoint_sha256: str = ""
    config_hash: str = ""
    seed: int = 0
    kwargs: dict = field(default_factory=dict)

    def encoder_name(self, modality: str) -> str:
        names = {"video": self.video_name, "audio": self.audio_name,
                 "av": f"{self.video_name}+{self.audio_name}"}
        return names[modality] or ""

    def identity(self) -> str:
        """What makes features differ between models (part of the feature cache key)."""
        if self.checkpoint_sha256:
            return f"ckpt:{self.checkpoint_sha256}"
        # both names: the towers are drawn from one seeded stream, video first, so even the
        # audio tower's weights depend on which video encoder was built before it
        return (f"random-init:{self.seed}:{self.video_name}:{self.audio_name}:"
                f"{json.dumps(self.kwargs, sort_keys=True)}")

    def encoder_for(self, modality: str) -> nn.Module:
        enc = self.video if modality == "video" else self.audio
        if enc is None:
            have = [m for m in ("video", "audio") if getattr(self, m) is not None]
            raise ConfigError(f"this model has no {modality} encoder (it has: {', '.join(have)}); "
                              f"pass --modality {have[0] if have else 'video'} or a checkpoint "
                              f"with a {modality} tower")
        return enc


def _is_audio(name: str) -> bool:
    from avssl.encoders import ENCODERS, _load_all

    _load_all()
    return getattr(ENCODERS.get(name), "modality", "video") == "audio"


def random_model(video: str | None = None, audio: str | None = None, *, video_kwargs=None,
                 audio_kwargs=None, seed: int = 0, spec: InputSpec = InputSpec(),
                 proj: dict | None = None) -> BenchModel:
    """Random-init encoders (and AVTowers heads when both exist), built under a fixed seed."""
    from avssl.encoders import build_encoder

    if video is None and audio is None:
        (video, video_kwargs), (audio, audio_kwargs) = DEFAULT_VIDEO, DEFAULT_AUDIO
    torch.manual_seed(seed)
    v = build_encoder(video, **(video_kwargs or {})) if video else None
    a = build_encoder(audio, **(audio_kwargs or {})) if audio else None
    towers = None
    if v is not None and a is not None:
        p = proj or DEFAULT_PROJ
        try:
            towers = AVTowers(v, a, p["proj_dim"], p["temporal_bins"])
        except AvsslError:
            towers = AVTowers(v, a, p["proj_dim"], 0)
    kwargs = {"video": video_kwargs or {}, "audio": audio_kwargs or {}}
    # the row's config_hash: without it, `--encoder vit_video_tiny` and the same name with
    # --encoder-kwargs (or the default baseline's i3d strides) would be one run on the leaderboard
    blob = json.dumps({"video": video, "audio": audio, "kwargs": kwargs}, sort_keys=True,
                      default=str)
    return BenchModel(v, a, towers, spec, video, audio, "random-init", seed=seed, kwargs=kwargs,
                      config_hash=with_inputs(hashlib.sha256(blob.encode()).hexdigest()[:16],
                                              InputSpec(), spec))


INPUT_FLAGS = ("clip_s", "fps", "size", "crop")  # the bench's --clip-s/--fps/--size/--crop


def with_inputs(config_hash: str, base: InputSpec, spec: InputSpec) -> str:
    """The leaderboard row's ``config_hash``: the model's, extended by the input settings the
    bench command changed from the model's own (``base``), so a run at another frame rate or
    resolution is another run on the leaderboard (it was one: ``--latest`` kept only one of
    them); runs at the model's own settings keep the model's hash."""
    changed = {k: getattr(spec, k) for k in INPUT_FLAGS if getattr(spec, k) != getattr(base, k)}
    if not changed:
        return config_hash
    blob = json.dumps({"model": config_hash, "inputs": changed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_model(path: str | Path, spec_overrides: dict | None = None) -> BenchModel:
    """Towers of a recipe checkpoint (folder, ``runs/<recipe>/latest`` or a run folder)."""

    ckpt = checkpoints.load_checkpoint(path)
    comps = ckpt.meta.get("components", {})
    built: dict[str, nn.Module] = {}
    names: dict[str, str | None] = {"video": None, "audio": None}
    for part in ("video", "audio"):
        spec = comps.get(part)
        if spec and "encoder" in spec:
            built[part], names[part] = checkpoints.build_component(ckpt, part), spec["encoder"]
    if not built:
        raise AvsslError(f"checkpoint {ckpt.path} has no video or audio encoder (components: "
                         f"{', '.join(sorted(comps)) or 'none'})")
    towers = None
    if "video" in built and "audio" in built and {"video_proj", "audio_proj"} <= set(comps):
        model_cfg = ckpt.config.get("model", {})
        towers = AVTowers(built["video"], built["audio"], int(model_cfg.get("proj_dim", 128)),
                          int(model_cfg.get("temporal_bins", 0)))
        for head in ("video_proj", "audio_proj"):
            checkpoints.load_state_strict(getattr(towers, head), ckpt.component_state(head),
                                          f"{ckpt.path} [{head}]")
    base = InputSpec.from_config(ckpt.config)
    spec = base.replace(**(spec_overrides or {}))
    return BenchModel(built.get("video"), built.get("audio"), towers, spec, names["video"],
                      names["audio"], ckpt.meta.get("recipe", "unknown"),
                      checkpoint=_provenance_path(ckpt.path),
                      checkpoint_sha256=checkpoints.file_sha256(ckpt.path),
                      config_hash=with_inputs(str(ckpt.meta.get("config_hash", "")), base,
                                              spec),
                      seed=int(ckpt.config.get("run", {}).get("seed", 0)))


def _provenance_path(folder: Path) -> str:
    """The folder actually loaded, not ``runs/<recipe>/latest`` (which moves on with the next
    save): relative to the working directory when inside it, like the paths users type."""
    folder = Path(folder).resolve()
    try:
        return folder.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(folder)


def resolve_model(checkpoint: str | None = None, encoder: str | None = None,
                  audio_encoder: str | None = None, *, encoder_kwargs: dict | None = None,
                  seed: int = 0, spec_overrides: dict | None = None) -> BenchModel:
    """``--checkpoint`` wins; ``--encoder`` (video or audio name) builds random init; neither
    gives the default random-init baseline (pretrain_sync's towers)."""
    if encoder_kwargs is not None and not isinstance(encoder_kwargs, dict):
        raise ConfigError(f"--encoder-kwargs must be a JSON object of keyword arguments, e.g. "
                          f"'{{\"stem\": \"conv\"}}', got {json.dumps(encoder_kwargs)}")
    if checkpoint:
        if encoder or audio_encoder:
            raise ConfigError("pass either --checkpoint or --encoder/--audio-encoder, not both "
                              "(a checkpoint already names its encoders)")
        if encoder_kwargs:
            raise ConfigError("--encoder-kwargs configures a random-init --encoder; a checkpoint "
                              "rebuilds its encoders with the arguments it was trained with: "
                              "leave --encoder-kwargs out")
        return load_model(checkpoint, spec_overrides)
    if encoder_kwargs and encoder is None:
        raise ConfigError("--encoder-kwargs needs --encoder NAME (they are that encoder's keyword "
                          "arguments; --audio-encoder is built with its defaults)")
    spec = InputSpec().replace(**(spec_overrides or {}))
    video = audio = None
    vkw = akw = None
    if encoder is not None:  # a video or an audio encoder
        if _is_audio(encoder):
            audio, akw = encoder, encoder_kwargs
        else:
            video, vkw = encoder, encoder_kwargs
    if audio_encoder is not None:
        from avssl.encoders import list_encoders

        if not _is_audio(audio_encoder):
            raise ConfigError(f"--audio-encoder {audio_encoder} is a video encoder; pass an audio "
                              f"encoder ({', '.join(list_encoders('audio'))}) or give it as "
                              f"--encoder")
        if audio is not None:
            raise ConfigError(f"--encoder {encoder} and --audio-encoder {audio_encoder} are both "
                              f"audio encoders; pass a video encoder as --encoder, or leave "
                              f"--audio-encoder out")
        audio = audio_encoder
    if encoder is None and audio_encoder is None:
        return random_model(seed=seed, spec=spec)
    return random_model(video, audio, video_kwargs=vkw, audio_kwargs=akw, seed=seed, spec=spec)


def cost(model: nn.Module, spec: InputSpec, modality: str,
         size: int | None = None) -> tuple[float, float | None]:
    """(params in millions, GMACs per clip at the bench's input size or None if not countable).

    ``size``: the side of the square video clips the task actually feeds the encoder when it is
    not ``spec.crop`` (AVA's detection clips are ``2 * crop``)."""
    from avssl.encoders.cost import count_cost, count_params

    params = count_params(model) / 1e6
    if modality == "video":
        side = size or spec.crop
        shape = (3, max(1, round(spec.clip_s * spec.fps)), side, side)
    else:
        frames = spec.audio_transform()(torch.zeros(1, round(spec.clip_s * spec.sample_rate)))
        shape = tuple(frames.shape)
    try:
        return params, count_cost(model, shape)["gmacs"]
    except Exception:  # an encoder that refuses this input size still gets a row
        return params, None
