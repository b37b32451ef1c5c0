"""CNN half of the encoder zoo: c3d, torchvision video models, slow fusion, I3D, audio ResNet."""
from __future__ import annotations

import pytest
import torch
import torchvision
import torchvision.models.video as tvv
from safetensors.torch import save_file
from torch import nn

from avssl.encoders import build_encoder
from avssl.encoders.cost import count_cost
from avssl.encoders.i3d import NonLocal3d, inflate_from_2d
from avssl.errors import ConfigError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# (name, input shape without batch): tiny variants at their size, torchvision ones at small clips.
CONTRACT_CASES = [
    ("c3d_tiny", (3, 16, 32, 32)),
    ("slow_fusion_tiny", (3, 8, 32, 32)),
    ("slow_fusion", (3, 10, 64, 64)),
    ("i3d_r18_tiny", (3, 8, 32, 32)),
    ("i3d_r50_tiny", (3, 8, 32, 32)),
    ("audio_resnet18_tiny", (1, 64, 96)),
    ("r3d18", (3, 2, 16, 16)),
    ("mc3_18", (3, 2, 16, 16)),
    ("r2plus1d18", (3, 2, 16, 16)),
    ("s3d", (3, 8, 32, 32)),
]


@pytest.mark.parametrize("name,shape", CONTRACT_CASES, ids=[c[0] for c in CONTRACT_CASES])
def test_contract_shape_determinism_gradients(name, shape):
    model = build_encoder(name)
    x = torch.randn(2, *shape)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, model.embed_dim)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert a[0].ne(a[1]).any()  # the two clips are told apart
    model.train()
    (model(x) ** 2).mean().backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, f"no gradient reaches {dead[:5]}"


@pytest.mark.parametrize("name", ["s3d", "r3d18"])
def test_random_init_features_keep_their_scale(name):
    """Random-init features are every pretraining run's baseline: they must differ between clips
    by far more than the linear probe's std floor (1e-6). torchvision's S3D, with PyTorch's
    default conv init, gave features ~1e-7 whose spread across clips was ~4e-10."""
    torch.manual_seed(0)
    model = build_encoder(name).eval()
    with torch.no_grad():
        f = model(torch.rand(4, 3, 8, 64, 64) * 2 - 1)
    assert f.abs().mean() > 1e-2
    assert f.std(dim=0).median() > 1e-3


@pytest.mark.parametrize("name,frames", [("c3d_tiny", 16), ("slow_fusion_tiny", 8)])
def test_clips_in_the_dataset_layout_get_a_layout_error(name, frames):
    """(B, T, C, H, W), what stacking dataset samples gives, used to get advice about clip
    sizes (C3D: 'build it with input_size=(3, 32, 32)'; slow fusion: '>= 4 frames, got 3')."""
    model = build_encoder(name)
    x = torch.zeros(2, frames, 3, 32, 32)
    for call in (model, model.forward_features):
        with pytest.raises(ConfigError, match=r"\(B, C=3, T, H, W\).*to_encoder_layout"):
            call(x)


def test_c3d_paper_cost_matches_lecture_table():
    model = build_encoder("c3d", num_classes=101)
    cost = count_cost(model, (3, 16, 112, 112))
    assert abs(cost["params"] - 78.4e6) <= 0.1e6
    assert abs(cost["gmacs"] - 38.5) <= 0.1
    table = {"conv1": 1.04, "conv2": 11.10, "conv3a": 5.55, "conv3b": 11.10, "conv4a": 2.77,
             "conv4b": 5.55, "conv5a": 0.69, "conv5b": 0.69}
    for layer, gmacs in table.items():
        assert cost["per_layer"][f"encoder.{layer}"] == pytest.approx(gmacs, abs=0.01), layer
    assert model.embed_dim == 4096 and model.encoder.fc6.in_features == 8192


def test_c3d_sees_temporal_order_and_checks_clip_size():
    model = build_encoder("c3d_tiny").eval()
    x = torch.randn(2, 3, 16, 32, 32)
    with torch.no_grad():
        fwd, rev = model(x), model(x.flip(2))
    assert (fwd - rev).norm() / fwd.norm() > 1e-2  # far above float noise
    with pytest.raises(ConfigError, match="input_size"):
        model(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ConfigError, match="too small"):
        build_encoder("c3d_tiny", input_size=(8, 32, 32))


def _classifier_params(net: nn.Module) -> int:
    head = {tvv.VideoResNet: "fc", tvv.S3D: "classifier", tvv.MViT: "head"}[type(net)]
    return sum(p.numel() for p in getattr(net, head).parameters())


@pytest.mark.parametrize("name,tv_builder", [
    ("r3d18", tvv.r3d_18), ("mc3_18", tvv.mc3_18), ("r2plus1d18", tvv.r2plus1d_18),
    ("s3d", tvv.s3d), ("mvit_v2_s", tvv.mvit_v2_s)])
def test_torchvision_models_have_torchvision_parameters(name, tv_builder):
    with torch.device("meta"):  # shapes only: no init cost
        ours = build_encoder(name)
        ref = tv_builder(weights=None)
    ref_count = sum(p.numel() for p in ref.parameters()) - _classifier_params(ref)
    assert sum(p.numel() for p in ours.parameters()) == ref_count
    # same names and shapes too: a torchvision state dict minus its classifier loads as is
    head = {"fc", "classifier", "head"}
    ref_state = {k: v.shape for k, v in ref.state_dict().items() if k.split(".")[0] not in head}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_state


@pytest.mark.parametrize("name,tv_builder", [
    ("r3d18", tvv.r3d_18), ("s3d", tvv.s3d),
    pytest.param("mvit_v2_s", tvv.mvit_v2_s, marks=pytest.mark.slow)])  # ~7 s to build twice
def test_torchvision_checkpoints_load_without_their_classifier(tmp_path, name, tv_builder):
    """A torchvision checkpoint (Kinetics weights as torchvision saves them) loads as is: the
    classifier the encoder leaves out is dropped instead of failing as unexpected keys."""
    ref = tv_builder(weights=None)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = build_encoder(name, pretrained_path=str(tmp_path / "tv.pth"))
    ref_state = ref.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in ours.state_dict().items())


def test_mvit_takes_exactly_its_clip_size():
    model = build_encoder("mvit_v2_s")
    assert model.example_input_shape == (3, 16, 224, 224) and model.embed_dim == 768
    with pytest.raises(ConfigError, match="16, 224, 224"):
        model(torch.randn(1, 3, 8, 112, 112))


@pytest.mark.slow  # ~10 s on 2 shared CPU cores; 16x224x224 is the only size it accepts
def test_mvit_tokens_at_paper_size():
    model = build_encoder("mvit_v2_s").eval()
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(1, 3, 16, 224, 224))
    assert tokens.shape == (1, 1 + 8 * 7 * 7, 768)
    assert torch.isfinite(tokens).all()


def _randomise_2d(net: nn.Module) -> None:
    """Random weights and non-trivial BatchNorm statistics / affine parameters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif isinstance(m, nn.Conv2d):
                std = (2 / m.weight[0].numel()) ** 0.5  # He init: activations stay O(1)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)


@pytest.mark.parametrize("name,tv_builder,suffix,nonlocal_stages", [
    ("i3d_r18", torchvision.models.resnet18, ".safetensors", ()),
    ("i3d_r50", torchvision.models.resnet50, ".pt", (2, 3)),
])
def test_inflated_resnet_equals_2d_on_constant_video(tmp_path, name, tv_builder, suffix,
                                                     nonlocal_stages):
    net2d = tv_builder(weights=None)
    _randomise_2d(net2d)
    path = tmp_path / f"r2d{suffix}"
    state = {k: v.contiguous() for k, v in net2d.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    net3d = build_encoder(name, pretrained_2d_path=str(path), nonlocal_stages=nonlocal_stages)
    net3d.eval()
    net2d.eval()
    trunk2d = nn.Sequential(*list(net2d.children())[:-2])  # up to layer4, before pooling

    image = torch.randn(2, 3, 48, 48)
    # 5 frames: the temporal strides give ceil(ceil(5/2)/2) = 2 output frames, both touching
    # the clip borders, where replicate padding is what keeps the video constant
    video = image.unsqueeze(2).expand(-1, -1, 5, -1, -1).contiguous()  # (B, 3, T, H, W)
    with torch.no_grad():
        f2 = trunk2d(image)  # (B, C, h, w)
        f3 = net3d.forward_features(video)  # (B, C, T', h, w)
        moving = net3d.forward_features(torch.randn_like(video))
    assert f3.shape == (2, f2.shape[1], 2, *f2.shape[2:])
    for t in range(f3.shape[2]):
        rel = (f3[:, :, t] - f2).norm() / f2.norm()
        assert rel < 1e-4, f"frame {t}: relative error {rel:.2e}"
    # a non-constant clip is not frame-wise 2D: time is mixed
    assert not torch.allclose(moving[:, :, 0], moving[:, :, 1], atol=1e-3)


def test_inflate_from_2d_repeats_and_rejects_other_depths():
    net3d = build_encoder("i3d_r18_tiny")
    net2d = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    unused = inflate_from_2d(net3d, net2d.state_dict())
    assert sorted(unused) == ["fc.bias", "fc.weight"]
    w3, w2 = net3d.conv1.weight, net2d.conv1.weight
    assert w3.shape == (64, 3, 5, 7, 7)
    assert torch.allclose(w3.sum(2), w2, atol=1e-6)
    assert torch.allclose(w3[:, :, 0], w3[:, :, 4])
    r18 = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    with pytest.raises(ConfigError, match="same"):
        inflate_from_2d(build_encoder("i3d_r50_tiny"), r18.state_dict())
    with pytest.raises(ConfigError, match="shares no parameter"):
        inflate_from_2d(net3d, {"foo.weight": torch.zeros(1)})


def test_i3d_time_kernels_strides_and_bad_keys():
    net = build_encoder("i3d_r18_tiny", time_kernels={"layer4.0.conv2": 3},
                        time_strides={"conv1": 1})
    assert net.layer4[0].conv2.weight.shape[2] == 3
    assert net.layer3[0].conv2.weight.shape[2] == 1
    assert net.forward_features(torch.randn(1, 3, 8, 32, 32)).shape[2] == 4  # only maxpool strides
    default = build_encoder("i3d_r18_tiny")
    assert default.forward_features(torch.randn(1, 3, 9, 32, 32)).shape[2] == 3  # ceil(9 / 4)
    with pytest.raises(ConfigError, match="did you mean"):
        build_encoder("i3d_r18_tiny", time_kernels={"layer4.0.conv": 3})
    with pytest.raises(ConfigError, match="odd"):
        build_encoder("i3d_r18_tiny", time_kernels={"conv1": 4})
    with pytest.raises(ConfigError, match="nonlocal_stages"):
        build_encoder("i3d_r18_tiny", nonlocal_stages=(5,))
    with pytest.raises(ConfigError, match="integer"):  # 3.0 used to fail later, in Conv3d
        build_encoder("i3d_r18_tiny", time_kernels={"conv1": 3.0})
    # a residual branch strided in time needs its shortcut strided alike (they are added): the
    # forward used to fail with a broadcast error
    with pytest.raises(ConfigError, match=r"time_strides\['layer3.0.downsample.0'\] = 2"):
        build_encoder("i3d_r18_tiny", time_strides={"layer3.0.conv1": 2})
    with pytest.raises(ConfigError, match="downsample conv"):
        build_encoder("i3d_r18_tiny", time_strides={"layer1.0.conv2": 2})
    both = build_encoder("i3d_r18_tiny", time_strides={"layer3.0.conv1": 2,
                                                       "layer3.0.downsample.0": 2}).eval()
    assert both.forward_features(torch.randn(1, 3, 8, 32, 32)).shape[2] == 1  # 8 / 2 / 2 / 2


def test_nonlocal_block_starts_as_identity_then_attends():
    block = NonLocal3d(8).eval()
    x = torch.randn(2, 8, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(block(x), x)
        block.bn.weight.fill_(1.0)
        y = block(x)
        assert not torch.allclose(y, x)
        # non-local: changing one far-away position changes the output everywhere
        x2 = x.clone()
        x2[:, :, 2, 3, 3] += 5.0
        assert not torch.allclose(block(x2)[:, :, 0, 0, 0], y[:, :, 0, 0, 0])
    block.train()
    block(x).square().mean().backward()
    for n, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_slow_fusion_builds_slowly_in_time():
    model = build_encoder("slow_fusion").eval()
    assert model.min_frames == 10
    conv1 = model.layers[0][0]
    x = torch.randn(1, 3, 10, 64, 64)
    x2 = x.clone()
    x2[:, :, 9] += 1.0  # only the last frame changes
    with torch.no_grad():
        c, c2 = conv1(x), conv1(x2)
        out, out2 = model(x), model(x2)
    assert c.shape[2] == 4  # 10 frames, extent 4, stride 2 -> 4 positions
    changed = [(c[:, :, t] - c2[:, :, t]).abs().max() > 0 for t in range(4)]
    assert changed == [False, False, False, True]  # conv1 sees frames 6..9 at its last position
    assert not torch.allclose(out, out2)  # ... and the top of the network sees all 10
    with pytest.raises(ConfigError, match=">= 10 frames"):
        model(torch.randn(1, 3, 8, 64, 64))


def test_audio_resnet_takes_imagenet_rgb_weights(tmp_path):
    rgb = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    _randomise_2d(rgb)
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    audio = build_encoder("audio_resnet18_tiny", pretrained_path=str(path)).eval()
    rgb.eval()
    spec = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        ref = nn.Sequential(*list(rgb.children())[:-2])(spec.expand(-1, 3, -1, -1))
        ours = audio.forward_features(spec)
    assert ours.shape == (2, 512, 2, 3)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4)
    assert audio.modality == "audio"
