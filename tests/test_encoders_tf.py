"""Transformer layers, ViViT (factorised encoder / factorised self-attention) and audio ViT."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from avssl.encoders import build_encoder
from avssl.encoders.layers import (
    Attention,
    AudioTokenizer,
    Block,
    VideoTokenizer,
    interpolate_pos_embed,
)
from avssl.encoders.vivit import FactorisedBlock
from avssl.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_naive_attention_equals_sdpa_with_and_without_mask():
    sdpa = Attention(32, 4, attn_impl="sdpa").eval()
    naive = Attention(32, 4, attn_impl="naive").eval()
    naive.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(naive(x), sdpa(x), rtol=1e-5, atol=1e-5)
    mask = torch.rand(7, 7) > 0.4
    mask |= torch.eye(7, dtype=torch.bool)  # every query attends to something
    torch.testing.assert_close(naive(x, mask), sdpa(x, mask), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sdpa(x, mask), sdpa(x), atol=1e-4)
    # a query with every key masked: SDPA attends to nothing; naive must not give NaN
    mask[3] = False
    x.requires_grad_(True)
    out = naive(x, mask)
    torch.testing.assert_close(out, sdpa(x, mask), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_attention_rejects_bad_config():
    with pytest.raises(ConfigError, match="divisible"):
        Attention(30, 4)
    with pytest.raises(ConfigError, match="attn_impl"):
        Attention(32, 4, attn_impl="flash3")


def test_block_is_permutation_equivariant_over_tokens():
    # Without positional embeddings self-attention + per-token MLP commute with token order.
    blk = Block(32, 4).eval()
    x = torch.randn(2, 9, 32)
    perm = torch.randperm(9)
    torch.testing.assert_close(blk(x)[:, perm], blk(x[:, perm]), rtol=1e-5, atol=1e-5)


def test_interpolate_pos_embed_identity_constant_and_2x_downsample():
    pos = torch.randn(1, 2 * 4 * 6, 8)
    assert interpolate_pos_embed(pos, (2, 4, 6), (2, 4, 6)) is pos
    const = torch.full((1, 12, 3), 0.7)
    up = interpolate_pos_embed(const, (3, 4), (7, 9))
    assert up.shape == (1, 63, 3)
    torch.testing.assert_close(up, torch.full_like(up, 0.7))
    # Halving every dim with align_corners=False samples the centre of each 2x2x2 block,
    # i.e. the block mean (trilinear), a brute-force reference.
    down = interpolate_pos_embed(pos, (2, 4, 6), (1, 2, 3))
    ref = pos.reshape(1, 1, 2, 2, 2, 3, 2, 8).mean(dim=(2, 4, 6)).reshape(1, 6, 8)
    torch.testing.assert_close(down, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        interpolate_pos_embed(pos, (2, 4, 5), (2, 4, 6))


def test_video_tokenizer_orders_tokens_t_h_w():
    tok = VideoTokenizer(dim=4, clip_size=(4, 8, 12), tubelet=(2, 4, 4))
    assert tok.grid == (2, 2, 3)
    with torch.no_grad():
        tok.pos_embed.zero_()
        tok.proj.bias.zero_()
    x = torch.zeros(1, 3, 4, 8, 12)
    x[0, :, 2:4, 4:8, 8:12] = 1.0  # tubelet (t=1, h=1, w=2)
    tokens, grid = tok(x)
    assert grid == (2, 2, 3) and tokens.shape == (1, 12, 4)
    nonzero = tokens.abs().sum(-1)[0].nonzero().flatten().tolist()
    assert nonzero == [1 * 6 + 1 * 3 + 2]


def test_audio_tokenizer_overlapping_grid_and_errors():
    tok = AudioTokenizer(dim=8, spec_size=(64, 96), patch=16, stride=10)
    tokens, grid = tok(torch.randn(2, 1, 64, 96))
    assert grid == ((64 - 16) // 10 + 1, (96 - 16) // 10 + 1) == (5, 9)
    assert tokens.shape == (2, 45, 8)
    with pytest.raises(ConfigError, match="smaller than the patch"):
        tok(torch.randn(2, 1, 64, 8))
    with pytest.raises(ConfigError, match=r"\(B, 1, F, T\)"):
        tok(torch.randn(64, 96))


def test_conv_stem_keeps_the_patch_grid_and_is_per_sample():
    tok = VideoTokenizer(dim=16, clip_size=(4, 32, 32), tubelet=(2, 16, 16), stem="conv")
    assert isinstance(tok.proj, torch.nn.Sequential)
    for size in [(4, 32, 32), (5, 35, 47), (6, 64, 48)]:   # remainders are cropped, as by patch
        tokens, grid = tok(torch.randn(1, 3, *size))
        patch_grid = VideoTokenizer(16, (4, 32, 32), (2, 16, 16)).grid_for(size)
        assert grid == patch_grid and tokens.shape == (1, grid[0] * grid[1] * grid[2], 16)
    # per-sample normalisation (GroupNorm): a clip's tokens do not depend on the rest of the
    # batch, so several processes compute what one does
    x = torch.randn(3, 3, 4, 32, 32)
    torch.testing.assert_close(tok(x)[0][:1], tok(x[:1])[0])
    atok = AudioTokenizer(dim=16, spec_size=(64, 96), patch=16, stride=16, stem="conv")
    tokens, grid = atok(torch.randn(2, 1, 64, 101))
    assert grid == (4, 6) and tokens.shape == (2, 24, 16)
    with pytest.raises(ConfigError, match="stem must be one of"):
        VideoTokenizer(16, (4, 32, 32), stem="convs")
    with pytest.raises(ConfigError, match="multiple of 4"):
        VideoTokenizer(16, (4, 30, 30), tubelet=(2, 10, 10), stem="conv")
    with pytest.raises(ConfigError, match="patch_stride must equal patch"):
        AudioTokenizer(16, (64, 96), patch=16, stride=10, stem="conv")
    with pytest.raises(ConfigError, match="got dim=100"):  # not torch's GroupNorm ValueError
        VideoTokenizer(100, (4, 32, 32), stem="conv")
    # the registered encoders take it as a keyword, and still load into the same shape
    v = build_encoder("vit_video_tiny", stem="conv")
    a = build_encoder("audio_vit_tiny", stem="conv")
    assert v(torch.randn(2, 3, 8, 64, 64)).shape == (2, 96)
    assert a(torch.randn(2, 1, 64, 96)).shape == (2, 64)


@pytest.mark.parametrize("name", ["vivit_fe_tiny", "vivit_fsa_tiny"])
def test_vivit_accepts_other_clip_sizes(name):
    model = build_encoder(name).eval()
    assert model.example_input_shape == (3, 8, 32, 32)
    x = torch.randn(2, 3, 16, 48, 40)  # 2x frames, other resolution
    with torch.no_grad():
        out = model(x)
        fmap = model.forward_features(x)["map"]
    assert out.shape == (2, model.embed_dim) and torch.isfinite(out).all()
    assert fmap.shape == (2, model.embed_dim, 8, 6, 5)
    with pytest.raises(ConfigError, match="tubelet"):
        model(torch.randn(1, 3, 1, 32, 32))


def test_vivit_fe_spatial_stage_is_per_time_index():
    model = build_encoder("vivit_fe_tiny").eval()
    x = torch.randn(1, 3, 8, 32, 32)
    y = x.clone()
    y[:, :, 6:] += 1.0  # frames 6, 7 = temporal index 3 (tubelet t = 2)
    with torch.no_grad():
        fx, fy = model.forward_features(x), model.forward_features(y)
    torch.testing.assert_close(fx["map"][:, :, :3], fy["map"][:, :, :3])
    assert (fx["map"][:, :, 3] - fy["map"][:, :, 3]).abs().max() > 1e-3
    assert fx["temporal"].shape == (1, 1 + 4, model.embed_dim)
    assert (fx["temporal"][:, 0] - fy["temporal"][:, 0]).abs().max() > 1e-4


def test_factorised_block_attends_within_time_then_within_location():
    blk = FactorisedBlock(16, 2).eval()
    x = torch.randn(1, 3, 5, 16)  # (B, T', S, D)
    # Without temporal attention and MLP, time steps must not mix.
    with torch.no_grad():
        for p in list(blk.attn_t.parameters()) + list(blk.mlp.parameters()):
            p.zero_()
        y = x.clone()
        y[:, 2] += torch.randn(5, 16)  # random: LayerNorm would hide a constant shift
        torch.testing.assert_close(blk(x)[:, :2], blk(y)[:, :2])
        assert (blk(x)[:, 2] - blk(y)[:, 2]).abs().amax(-1).min() > 1e-4  # spatial mixing
    blk = FactorisedBlock(16, 2).eval()
    # Without spatial attention, a change at spatial location 3 stays at location 3.
    with torch.no_grad():
        for p in blk.attn_s.parameters():
            p.zero_()
        y = x.clone()
        y[:, 0, 3] += torch.randn(16)
        diff = (blk(x) - blk(y)).abs().amax(dim=(0, 3))  # (T', S)
    assert (diff[:, 3] > 1e-4).all()  # temporal attention spreads it over time
    assert diff[:, [0, 1, 2, 4]].max() < 1e-6


@pytest.mark.parametrize("name", ["vivit_fe_tiny", "vivit_fsa_tiny", "audio_vit_tiny"])
def test_naive_attention_model_matches_sdpa_model(name):
    model = build_encoder(name).eval()
    naive = build_encoder(name, attn_impl="naive").eval()
    naive.load_state_dict(model.state_dict())
    x = torch.randn(2, *model.example_input_shape)
    with torch.no_grad():
        torch.testing.assert_close(naive(x), model(x), rtol=1e-4, atol=1e-5)


def test_paper_sizes_match_vivit_and_ast():
    with torch.device("meta"):  # shapes only: no memory, no init time
        _check_paper_sizes()


def _check_paper_sizes():
    for name, dim, tokens in [("vivit_fe_base", 768, 16 * 14 * 14),
                              ("vivit_fsa_small", 384, 16 * 14 * 14)]:
        model = build_encoder(name)
        assert model.embed_dim == dim and model.example_input_shape == (3, 32, 224, 224)
        assert model.tokenizer.proj.kernel_size == (2, 16, 16)
        assert model.tokenizer.pos_embed.shape == (1, tokens, dim)
    fe = build_encoder("vivit_fe_base")
    assert len(fe.spatial.blocks) == 12 and len(fe.temporal.blocks) == 4
    assert fe.spatial.blocks[0].attn.num_heads == 12
    ast = build_encoder("audio_vit_base", patch_stride=10)
    assert ast.embed_dim == 768 and ast.example_input_shape == (1, 128, 1024)
    assert ast.tokenizer.grid == (12, 101)  # AST's 1212 patches at stride 10
    assert len(ast.transformer.blocks) == 12


def test_audio_vit_other_lengths_and_feature_map():
    model = build_encoder("audio_vit_tiny").eval()
    assert model.modality == "audio" and model.example_input_shape == (1, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, 64, 200))
        out = model(torch.randn(2, 1, 64, 200))
    assert feats["map"].shape == (2, 64, 4, 12) and feats["cls"].shape == (2, 64)
    assert out.shape == (2, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_path_round_trip_and_errors(tmp_path, suffix):
    src = build_encoder("audio_vit_tiny").eval()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = build_encoder("audio_vit_tiny", pretrained_path=str(path)).eval()
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))
    with pytest.raises(ConfigError, match="vivit|does not"):
        build_encoder("vivit_fe_tiny", pretrained_path=str(path))
    with pytest.raises(ConfigError, match="not a file"):
        build_encoder("audio_vit_tiny", pretrained_path=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="does not fit|does not match"):
        build_encoder("audio_vit_small", pretrained_path=str(path))
