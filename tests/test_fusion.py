"""Fusion models (MBT bottleneck, cross-attention, late) and the joint space-time video ViT."""
from __future__ import annotations

import pytest
import torch

from avssl.encoders import build_encoder
from avssl.encoders.audio_vit import AudioViT
from avssl.errors import ConfigError, UnknownNameError
from avssl.fusion import FUSIONS, build_fusion, patchify_audio, patchify_video
from avssl.objectives import build_objective
from avssl.objectives.masked import random_token_mask

torch.set_num_threads(1)
D, L = 32, 3
VIDEO_KW = dict(dim=D, depth=L, num_heads=2, num_frames=4, img_size=32)  # 2x2x2 = 8 tokens


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _streams():
    video = build_encoder("vit_video_tiny", **VIDEO_KW)
    audio = AudioViT(D, L, 2, spec_size=(32, 48))  # 2x3 = 6 tokens
    return video, audio


def _model(name, **kw):
    video, audio = _streams()
    return build_fusion(name, video_encoder=video, audio_encoder=audio, **kw).eval()


def _inputs(requires_grad=False):
    video = torch.randn(2, 3, 4, 32, 32, requires_grad=requires_grad)
    logmel = torch.randn(2, 1, 32, 48, requires_grad=requires_grad)
    return video, logmel


def _grad(out, inp):
    # A random direction, not out.sum(): the sum of a LayerNorm output has zero gradient.
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return torch.autograd.grad((out * direction).sum(), inp, allow_unused=True,
                               materialize_grads=True)[0]


CASES = [("bottleneck", dict(num_bottlenecks=2)), ("cross_attention", {}), ("late", {})]


@pytest.mark.parametrize("name,kw", CASES)
def test_streams_are_isolated_before_the_fusion_layer_and_connected_after(name, kw):
    layers = [L] if name == "late" else [L, 1, 0]
    for fusion_layer in layers:
        fl = {} if name == "late" else {"fusion_layer": fusion_layer}
        model = _model(name, **kw, **fl)
        video, logmel = _inputs(requires_grad=True)
        out = model(video, logmel)
        g_audio = _grad(out["audio_cls"], video)  # audio output w.r.t. the video input
        g_video = _grad(model(video, logmel)["video_cls"], logmel)
        if fusion_layer == L:
            assert torch.equal(g_audio, torch.zeros_like(video))
            assert torch.equal(g_video, torch.zeros_like(logmel))
        else:
            assert g_audio.abs().sum() > 0 and g_video.abs().sum() > 0


@pytest.mark.parametrize("name,kw", CASES)
def test_without_exchange_each_stream_equals_its_plain_encoder(name, kw):
    fl = {} if name == "late" else {"fusion_layer": L}
    model = _model(name, **kw, **fl)
    video, logmel = _inputs()
    with torch.no_grad():
        out = model(video, logmel)
        torch.testing.assert_close(out["video_cls"], model.video(video))
        torch.testing.assert_close(out["audio_cls"], model.audio(logmel))
        torch.testing.assert_close(out["fused"], torch.cat([out["video_cls"], out["audio_cls"]], 1))
    assert out["logits"].shape == (2, 3)
    assert out["video_tokens"].shape == (2, 8, D) and out["audio_tokens"].shape == (2, 6, D)


@pytest.mark.parametrize("name,kw", CASES)
def test_contrast_embeddings_come_from_before_any_exchange(name, kw):
    fl = {} if name == "late" else {"fusion_layer": 1}
    model = _model(name, **kw, **fl, contrast_dim=5, head="product")
    video, logmel = _inputs(requires_grad=True)
    out = model(video, logmel)
    assert out["video_embed"].shape == (2, 5) and out["audio_embed"].shape == (2, 5)
    assert out["logits"].shape == (2, 3)
    # each embedding sees only its own modality, even where the CLS outputs are fused
    assert torch.equal(_grad(out["video_embed"], logmel), torch.zeros_like(logmel))
    assert torch.equal(_grad(model(video, logmel)["audio_embed"], video),
                       torch.zeros_like(video))
    assert _grad(model(video, logmel)["video_embed"], video).abs().sum() > 0
    # = the projected CLS token of the stream's first fusion_layer blocks, run alone
    with torch.no_grad():
        tokens, _ = model.video.tokenizer(video)
        x = torch.cat([model.video.cls_token.expand(2, -1, -1), tokens], 1)
        for block in model.video.transformer.blocks[: model.fusion_layer]:
            x = block(x)
        torch.testing.assert_close(model(video, logmel)["video_embed"],
                                   model.contrast_video(x[:, 0]))
    # embed_logmel: the audio embedding of another spectrogram (each row's in-sync audio),
    # while the pair itself is still classified from logmel
    other = torch.randn_like(logmel)
    with torch.no_grad():
        both = model(video, logmel, embed_logmel=other)
        torch.testing.assert_close(both["audio_embed"], model(video, other)["audio_embed"])
        torch.testing.assert_close(both["logits"], model(video, logmel)["logits"])
    with pytest.raises(ConfigError, match="contrast_dim"):
        _model(name, **kw, **fl)(video, logmel, embed_logmel=other)
    # no projection parameters without contrast_dim (an unused parameter breaks DDP)
    assert "video_embed" not in _model(name, **kw, **fl)(video, logmel)
    assert not hasattr(_model(name, **kw, **fl), "contrast_video")
    with pytest.raises(ConfigError, match="head"):
        _model(name, **kw, **fl, head="bilinear")
    if name != "late":  # no isolated layer: the CLS would be one learned vector for all clips
        with pytest.raises(ConfigError, match="fusion_layer >= 1"):
            _model(name, **kw, fusion_layer=0, contrast_dim=5)


def test_bottleneck_exchanges_only_through_its_tokens():
    # The streams share nothing but z: MBT's update equals running each stream's block on
    # [x; z] and averaging the two copies of z, written out here layer by layer.
    model = _model("bottleneck", num_bottlenecks=2, fusion_layer=1)
    assert model.bottleneck.shape == (1, 2, D)
    video, logmel = _inputs()
    with torch.no_grad():
        tv, _ = model.video.tokenizer(video)
        ta, _ = model.audio.tokenizer(logmel)
        xv = torch.cat([model.video.cls_token.expand(2, -1, -1), tv], 1)
        xa = torch.cat([model.audio.cls_token.expand(2, -1, -1), ta], 1)
        bv, ba = model.video.transformer.blocks, model.audio.transformer.blocks
        xv, xa = bv[0](xv), ba[0](xa)
        z = model.bottleneck.expand(2, -1, -1)
        for i in (1, 2):
            yv, ya = bv[i](torch.cat([xv, z], 1)), ba[i](torch.cat([xa, z], 1))
            xv, xa, z = yv[:, :9], ya[:, :7], (yv[:, 9:] + ya[:, 7:]) / 2
        out = model(video, logmel)
    torch.testing.assert_close(out["video_cls"], model.video.transformer.norm(xv)[:, 0])
    torch.testing.assert_close(out["audio_cls"], model.audio.transformer.norm(xa)[:, 0])
    # no bottleneck parameter when no layer would use it (an unused parameter breaks DDP)
    assert not hasattr(_model("bottleneck", fusion_layer=L), "bottleneck")


def test_masked_tokens_hide_their_content_and_reconstruction_trains_everything():
    model = _model("bottleneck", num_bottlenecks=2, fusion_layer=1, recon=True).train()
    video, logmel = _inputs()
    gen = torch.Generator().manual_seed(0)
    vmask, amask = random_token_mask(2, 8, 0.5, gen), random_token_mask(2, 6, 0.5, gen)
    out = model(video, logmel, video_mask=vmask, audio_mask=amask)
    assert out["recon_pred"]["video"].shape == out["recon_target"]["video"].shape == (2, 8, 1536)
    assert out["recon_pred"]["audio"].shape == (2, 6, 256)
    assert torch.equal(out["recon_mask"]["audio"], amask)
    # Changing the pixels of a masked tubelet changes no output; an unmasked one does.
    idx_m = vmask[0].nonzero()[0].item()
    idx_u = (~vmask[0]).nonzero()[0].item()

    def poke(idx):
        v = video.clone()
        t, h, w = idx // 4, (idx // 2) % 2, idx % 2
        v[0, :, 2 * t:2 * t + 2, 16 * h:16 * h + 16, 16 * w:16 * w + 16] += 3.0
        return v

    model.eval()
    with torch.no_grad():
        base = model(video, logmel, video_mask=vmask, audio_mask=amask)["fused"]
        masked = model(poke(idx_m), logmel, video_mask=vmask, audio_mask=amask)["fused"]
        unmasked = model(poke(idx_u), logmel, video_mask=vmask, audio_mask=amask)["fused"]
    torch.testing.assert_close(masked, base, rtol=0, atol=1e-6)
    assert not torch.allclose(unmasked, base, atol=1e-4)
    # The objective's loss reaches every parameter (what DDP without find_unused needs).
    model.train()
    out = model(video, logmel, video_mask=vmask, audio_mask=amask)
    objective = build_objective("fusion", recon_weight=1.0)
    loss = objective(out, {"pair_label": torch.tensor([0, 2])})
    assert loss["loss_recon"] > 0
    loss["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []
    with pytest.raises(ConfigError, match="recon=True"):
        _model("late")(video, logmel, video_mask=vmask)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_masked_content_reaches_no_output_whatever_the_stem(stem):
    """A conv stem reaches across patch borders (3x3 convs, a temporal conv, GroupNorm over the
    clip): unless the masked patches' pixels are hidden from it, the visible tokens carry what
    the masked ones must reconstruct (CAV-MAE / MAE mask before any cross-patch mixing)."""
    video = build_encoder("vit_video_tiny", **VIDEO_KW, stem=stem)
    audio = AudioViT(D, L, 2, spec_size=(32, 48), stem=stem)
    model = build_fusion("bottleneck", video_encoder=video, audio_encoder=audio, fusion_layer=1,
                         recon=True).eval()
    video_in, logmel = _inputs()
    vmask = torch.zeros(2, 8, dtype=torch.bool)
    amask = torch.zeros(2, 6, dtype=torch.bool)
    vmask[0, 0] = amask[0, 0] = True  # token 0: frames 0-1 x rows 0-15 x cols 0-15; mel 0-15
    poked_v, poked_a = video_in.clone(), logmel.clone()
    poked_v[0, :, 0:2, 0:16, 0:16] += 3.0
    poked_a[0, :, 0:16, 0:16] += 3.0
    with torch.no_grad():
        base = model(video_in, logmel, video_mask=vmask, audio_mask=amask)
        poked = model(poked_v, poked_a, video_mask=vmask, audio_mask=amask)
    for key in ("fused", "video_tokens", "audio_tokens"):
        torch.testing.assert_close(poked[key], base[key], rtol=0, atol=1e-6)
    for k in ("video", "audio"):  # the targets do see the change: they are what is hidden
        assert not torch.equal(poked["recon_target"][k], base["recon_target"][k])


def test_reconstruction_refuses_overlapping_audio_patches():
    video = build_encoder("vit_video_tiny", **VIDEO_KW)
    audio = AudioViT(D, L, 2, spec_size=(32, 48), patch=16, patch_stride=8)
    with pytest.raises(ConfigError, match="non-overlapping audio patches"):
        build_fusion("late", video_encoder=video, audio_encoder=audio, recon=True)


def test_patchify_matches_the_tokenizer_order():
    video, audio = _streams()
    x, spec = torch.randn(1, 3, 5, 35, 33), torch.randn(1, 1, 32, 48)  # remainders cropped
    tok = video.tokenizer
    tokens, _ = tok(x)
    lin = patchify_video(x, tok.tubelet) @ tok.proj.weight.reshape(D, -1).T + tok.proj.bias
    torch.testing.assert_close(tokens - tok.pos_embed, lin, rtol=1e-4, atol=1e-4)
    overlap = AudioViT(D, 1, 2, spec_size=(32, 48), patch=16, patch_stride=8).tokenizer
    tokens, grid = overlap(spec)
    assert grid == (3, 5)
    lin = patchify_audio(spec, 16, 8) @ overlap.proj.weight.reshape(D, -1).T + overlap.proj.bias
    torch.testing.assert_close(tokens - overlap.pos_embed, lin, rtol=1e-4, atol=1e-4)


def test_video_stream_state_dict_loads_into_the_registered_encoder(tmp_path):
    model = build_fusion("bottleneck", video_kwargs=VIDEO_KW, audio_kwargs=dict(
        n_mels=32, num_frames=48), fusion_layer=1)
    assert model.audio.embed_dim == D and len(model.audio.transformer.blocks) == L
    with torch.no_grad():
        for p in model.video.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # "trained"
    enc = build_encoder("vit_video_tiny", **VIDEO_KW).eval()
    enc.load_state_dict(model.video.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), model.video.eval()(x))


def test_build_fusion_registry_and_errors():
    assert FUSIONS.names() == ["bottleneck", "cross_attention", "late"]
    with pytest.raises(UnknownNameError, match="bottleneck"):
        build_fusion("botleneck")
    video, _ = _streams()
    with pytest.raises(ConfigError, match="equal width and depth"):
        build_fusion("late", video_encoder=video, audio_encoder=AudioViT(D, L + 1, 2, (32, 48)))
    with pytest.raises(ConfigError, match="fusion_layer"):
        _model("bottleneck", fusion_layer=L + 1)
    with pytest.raises(ConfigError, match="ViT"):
        build_fusion("late", video_encoder=build_encoder("c3d_tiny"))
    with pytest.raises(ConfigError, match="num_bottlenecks"):
        _model("bottleneck", num_bottlenecks=0)


def test_vit_video_joint_attention_encoder():
    enc = build_encoder("vit_video_tiny", **VIDEO_KW).eval()
    assert enc.modality == "video" and enc.embed_dim == D
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        feats = enc.forward_features(x)
        assert feats["map"].shape == (2, D, 2, 2, 2)
        torch.testing.assert_close(enc(x), feats["cls"])
        assert not torch.allclose(enc(x.flip(2)), enc(x), atol=1e-4)  # sees temporal order
        assert enc(torch.randn(1, 3, 8, 48, 32)).shape == (1, D)  # other sizes: interpolated
    default = build_encoder("vit_video_tiny")
    assert default.example_input_shape == (3, 8, 64, 64) and default.embed_dim == 96
