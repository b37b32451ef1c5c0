"""Registry sweep over every encoder: output shape, determinism, gradients, heads, time order.

Fast (default) sweep: every ``*_tiny`` variant at its ``example_input_shape`` and the paper-only
torchvision models at a small clip they accept (``SMALL_INPUT``). Paper sizes that have a tiny
sibling, and encoders that only take their full clip (``FULL_CLIP_ONLY``), run in the ``slow``
sweep (``pytest -m slow``) at their ``example_input_shape``.
"""
from __future__ import annotations

import re

import pytest
import torch

from avssl.encoders import ENCODERS, build_encoder, list_encoders
from avssl.errors import ConfigError, UnknownNameError

torch.set_num_threads(1)

# Paper-only encoders with no tiny variant: a small clip they accept (see their docstrings).
SMALL_INPUT = {
    "r3d18": (3, 4, 32, 32),
    "mc3_18": (3, 4, 32, 32),
    "r2plus1d18": (3, 4, 32, 32),
    "s3d": (3, 8, 64, 64),
}
FULL_CLIP_ONLY = {"mvit_v2_s"}  # relative position tables sized for 3x16x224x224

NAMES = list_encoders()


def _tiny_sibling(name: str) -> str | None:
    for cand in (f"{name}_tiny", re.sub(r"_(small|base|large|huge)$", "_tiny", name)):
        if cand != name and cand in ENCODERS:
            return cand
    return None


FAST = [n for n in NAMES if n.endswith("_tiny") or n in SMALL_INPUT]
SLOW = [n for n in NAMES if n not in FAST]


def _input(name: str, model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    shape = SMALL_INPUT.get(name, model.example_input_shape)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


def test_every_encoder_is_swept_fast_or_has_a_reason():
    assert len(NAMES) >= 30
    for name in SLOW:
        assert _tiny_sibling(name) or name in FULL_CLIP_ONLY, (
            f"{name} has no *_tiny variant and no small input in SMALL_INPUT: add one so the "
            "fast sweep covers it")
    video, audio = set(list_encoders("video")), set(list_encoders("audio"))
    assert video | audio == set(NAMES) and not video & audio
    assert {"audio_resnet18", "audio_vit_base"} <= audio and "vivit_fe_base" in video


@pytest.mark.parametrize("name", FAST)
def test_encoder_contract(name):
    torch.manual_seed(0)
    model = build_encoder(name)
    assert model.modality == ENCODERS.get(name).modality
    assert model.example_input_shape[0] == (3 if model.modality == "video" else 1)
    assert isinstance(model.embed_dim, int) and model.embed_dim > 0
    x = _input(name, model)

    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.embed_dim)
        assert torch.isfinite(out).all()
        assert torch.equal(model(x), out), "eval mode must be deterministic"
        assert model.forward_features(x) is not None

    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    # A random projection: out.sum() would give exactly zero gradient through a final LayerNorm.
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, f"no gradient reaches {dead[:8]}"

    head = build_encoder(name, num_classes=5).eval()
    with torch.no_grad():
        assert head(x).shape == (2, 5)
    assert head.embed_dim == model.embed_dim


def _differs(a: torch.Tensor, b: torch.Tensor, other: torch.Tensor) -> bool:
    """``a`` and ``b`` differ by at least 5% of how much ``a`` differs from an unrelated output.

    Relative to the model's input sensitivity (not to its output scale), because a randomly
    initialised deep net can map every input to nearly the same output.
    """
    return bool((a - b).abs().max() > 0.05 * (a - other).abs().max() > 0)


@pytest.mark.parametrize(
    "name", ["vivit_fe_tiny", "vivit_fsa_tiny", "c3d_tiny", "lrcn_tiny", "convgru_tiny"])
def test_temporal_models_see_time_reversal(name):
    torch.manual_seed(0)
    model = build_encoder(name).eval()
    x = _input(name, model)
    with torch.no_grad():
        out = model(x)
        assert _differs(out, model(x.flip(2)), model(torch.randn_like(x)))


@pytest.mark.parametrize("name", ["single_frame_tiny", "late_fusion_pool_tiny"])
def test_frame_pooling_models_ignore_frame_order(name):
    torch.manual_seed(0)
    model = build_encoder(name).eval()
    x = _input(name, model)
    perm = torch.randperm(x.shape[2], generator=torch.Generator().manual_seed(2))
    assert not torch.equal(perm, torch.arange(x.shape[2]))
    with torch.no_grad():
        out, shuffled = model(x), model(x[:, :, perm])
    torch.testing.assert_close(shuffled, out, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, model(torch.randn_like(x)), rtol=1e-4, atol=1e-5)


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as err:
        build_encoder("vivit_fe_tinny")
    msg = str(err.value)
    assert "vivit_fe_tiny" in msg.split("did you mean")[1].split(")")[0]
    assert "\n" not in msg
    with pytest.raises(UnknownNameError, match="r3d18"):
        build_encoder("r3d_18")


def test_a_wrong_argument_value_is_a_one_line_error():
    """--model.video_kwargs='{"time_strides": 5}' was a TypeError from inside the builder."""
    with pytest.raises(ConfigError) as err:
        build_encoder("i3d_r18_tiny", time_strides=5)
    msg = str(err.value)
    assert msg.startswith("encoder 'i3d_r18_tiny' cannot be built with {'time_strides': 5}: ")
    assert "\n" not in msg


def test_require_modality_names_the_flag_and_the_right_kind():
    """A video encoder as the sync recipe's audio tower died at its first forward pass."""
    from avssl.encoders import require_modality

    require_modality("audio_resnet18_tiny", "audio", "--model.audio")
    with pytest.raises(ConfigError) as err:
        require_modality("i3d_r18_tiny", "audio", "--model.audio")
    msg = str(err.value)
    assert msg.startswith("--model.audio=i3d_r18_tiny is a video encoder; --model.audio takes ")
    assert set(msg.split("takes one of: ")[1].split(", ")) == set(list_encoders("audio"))
    with pytest.raises(ConfigError, match="is an audio encoder"):
        require_modality("audio_resnet18_tiny", "video", "--model.video")


VIT_BUILDERS = [n for n in NAMES if n.startswith(("vit_video_", "vivit_fe_", "vivit_fsa_"))]


@pytest.mark.parametrize("name", VIT_BUILDERS)
def test_vit_builders_refuse_unknown_kwargs_with_one_line(name):
    """The ViT builders wrap a private ``_build(size, ...)``: their signature must be its
    arguments, not ``**kwargs``, or a misspelt one is a TypeError instead of a ConfigError."""
    import inspect

    params = inspect.signature(ENCODERS.get(name)).parameters
    assert "size" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values())
    with pytest.raises(ConfigError) as err:
        build_encoder(name, stme="conv")
    msg = str(err.value)
    assert "takes no argument(s) stme" in msg and "drop_path" in msg and "\n" not in msg
    if name.startswith("vit_video_"):
        assert "stem" in msg.split("it takes:")[1]


def test_every_builder_names_its_arguments():
    """No registered builder hides its options behind **kwargs (build_encoder's unknown-argument
    check is skipped for those, so a typo became a TypeError from deep inside)."""
    import inspect

    hidden = [n for n in list_encoders() if any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(ENCODERS.get(n)).parameters.values())]
    assert hidden == []
    with pytest.raises(ConfigError, match="'lrcn_tiny' takes no argument.s. bogus; it takes: "
                                          "pretrained_path, num_frames, img_size, hidden"):
        build_encoder("lrcn_tiny", bogus=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_paper_size_encoder_runs_at_its_clip(name):
    torch.manual_seed(0)
    model = build_encoder(name, num_classes=5).eval()
    x = torch.randn(1, *model.example_input_shape)
    with torch.no_grad():
        feats, logits = model.encoder(x), model(x)
    assert feats.shape == (1, model.embed_dim) and torch.isfinite(feats).all()
    assert logits.shape == (1, 5)
