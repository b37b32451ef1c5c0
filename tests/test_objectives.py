"""Objectives against brute-force references (value and gradient), curriculum, accuracies,
symmetry, masked reconstruction and gathering across a (fake and a real gloo) world."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avssl.errors import ConfigError, UnknownNameError
from avssl.objectives import build_objective, gather, list_objectives
from avssl.objectives.contrastive import InfoNCE
from avssl.objectives.fusion import FusionObjective
from avssl.objectives.masked import masked_reconstruction_loss, random_token_mask
from avssl.objectives.sync import SyncObjective

torch.set_num_threads(1)
B, D = 5, 6
VALID = torch.tensor([True, False, True, True, False])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _emb(*shape):
    return torch.randn(*shape, dtype=torch.float64).float().requires_grad_(True)


def _unit(x):
    return x / x.norm()


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True,
                               retain_graph=True)


def _assert_same_value_and_grad(ours, ref, inputs):
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(_grads(ours, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


# ---- sync: brute-force references (explicit loops over rows) ------------------------------


def _ref_sync_infonce(v, a, s, valid, T, w):
    easy, extra = [], []
    for i in range(len(v)):
        vi = _unit(v[i])
        logits = [vi @ _unit(a[j]) / T for j in range(len(v))]
        z_easy = sum(torch.exp(x) for x in logits)
        easy.append(-torch.log(torch.exp(logits[i]) / z_easy))
        if valid[i]:
            z_full = z_easy + torch.exp(vi @ _unit(s[i]) / T)
            extra.append(torch.log(z_full) - torch.log(z_easy))
        else:
            extra.append(torch.zeros(()))
    return sum(easy) / len(v) + w * sum(extra) / len(v)


def _ref_sync_margin(v, a, s, valid, m, w):
    n = len(v)
    pos = sum((_unit(v[i]) - _unit(a[i])).norm() ** 2 for i in range(n)) / n
    easy = sum(torch.clamp(m - (_unit(v[i]) - _unit(a[i - 1])).norm(), min=0) ** 2
               for i in range(n)) / n
    hard_rows = [i for i in range(n) if valid[i]]
    hard = sum(torch.clamp(m - (_unit(v[i]) - _unit(s[i])).norm(), min=0) ** 2
               for i in hard_rows) / len(hard_rows)
    return pos + easy + w * hard


def _ref_sync_binary(head, v, a, s, valid, w):
    def logit(x, y):
        x, y = _unit(x), _unit(y)
        return head(torch.cat([x, y, x * y, (x - y).abs()]))[0]

    def bce(z, label):  # -log sigmoid(z) for label 1, -log(1 - sigmoid(z)) for 0
        p = 1 / (1 + torch.exp(-z))
        return -torch.log(p) if label else -torch.log(1 - p)

    n = len(v)
    pos = sum(bce(logit(v[i], a[i]), 1) for i in range(n)) / n
    easy = sum(bce(logit(v[i], a[i - 1]), 0) for i in range(n)) / n
    rows = [i for i in range(n) if valid[i]]
    hard = sum(bce(logit(v[i], s[i]), 0) for i in rows) / len(rows)
    return pos + easy + w * hard


@pytest.mark.parametrize("kind", ["infonce", "margin", "binary"])
@pytest.mark.parametrize("w", [1.0, 0.5])
def test_sync_matches_brute_force_value_and_gradient(kind, w):
    v, a, s = _emb(B, D), _emb(B, D), _emb(B, D)
    obj = SyncObjective(kind, temperature=0.2, margin=1.6, hard_weight=w, embed_dim=D)
    out = obj({"video": v, "audio": a, "audio_shift": s}, {"hard_valid": VALID})
    if kind == "infonce":
        ref = _ref_sync_infonce(v, a, s, VALID, 0.2, w)
    elif kind == "margin":
        ref = _ref_sync_margin(v, a, s, VALID, 1.6, w)
    else:
        ref = _ref_sync_binary(obj.head, v, a, s, VALID, w)
    _assert_same_value_and_grad(out["loss"], ref, [v, a, s, *obj.parameters()])
    torch.testing.assert_close(out["loss"], out["loss_easy"] + w * out["loss_hard"])
    assert out["loss_hard"] > 0


def test_sync_infonce_with_unit_hard_weight_is_the_full_softmax_cross_entropy():
    v, a, s = _emb(B, D), _emb(B, D), _emb(B, D)
    out = SyncObjective("infonce", temperature=0.1)({"video": v, "audio": a, "audio_shift": s},
                                                     {"hard_valid": torch.ones(B, dtype=bool)})
    vn, an, sn = (F.normalize(x, dim=-1) for x in (v, a, s))
    logits = torch.cat([vn @ an.T, (vn * sn).sum(-1, keepdim=True)], dim=1) / 0.1
    _assert_same_value_and_grad(out["loss"], F.cross_entropy(logits, torch.arange(B)), [v, a, s])


@pytest.mark.parametrize("kind", ["infonce", "margin", "binary"])
def test_sync_curriculum_keeps_hard_negatives_out_until_start_step(kind):
    v, a, s = _emb(B, D), _emb(B, D), _emb(B, D)
    obj = SyncObjective(kind, margin=1.5, hard_start_step=5, embed_dim=D)
    s2 = torch.randn(B, D)
    for step, changes in ((0, False), (4, False), (5, True), (9, True)):
        batch = {"hard_valid": VALID, "step": step}
        o1 = obj({"video": v, "audio": a, "audio_shift": s}, batch)
        o2 = obj({"video": v, "audio": a, "audio_shift": s2}, batch)
        assert (not torch.equal(o1["loss"], o2["loss"])) == changes, step
        assert float(o1["hard_active"]) == float(changes)
        if not changes:
            assert o1["loss_hard"].item() == 0.0
            assert torch.equal(_grads(o1["loss"], [s])[0], torch.zeros_like(s))
        # accuracies on hard negatives are reported before they enter the loss too
        assert float(o1["n_hard_valid"]) == 3 and not math.isnan(float(o1["acc_hard"]))
    with pytest.raises(ConfigError, match="step"):
        obj({"video": v, "audio": a, "audio_shift": s}, {})


def _set_binary_head_to_dot_product(obj):
    # logit = sum(relu(v * a)): equals the cosine for non-negative unit embeddings.
    with torch.no_grad():
        first, last = obj.head[0], obj.head[2]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[:, 2 * D:3 * D] = torch.eye(D)
        last.weight.fill_(1.0)
        last.bias.zero_()


@pytest.mark.parametrize("kind", ["infonce", "margin", "binary"])
def test_sync_accuracies_on_hand_made_embeddings(kind):
    obj = SyncObjective(kind, embed_dim=D)
    if kind == "binary":
        _set_binary_head_to_dot_product(obj)
    eye = torch.eye(D)[:4]
    # Perfect: audio == video, shifted audio orthogonal.
    shift = torch.eye(D)[[4, 5, 4, 5]]
    out = obj({"video": eye, "audio": eye, "audio_shift": shift}, {})
    assert float(out["acc_easy"]) == 1.0 and float(out["acc_hard"]) == 1.0
    # Rows 0, 1: shifted audio matches the video exactly and the in-sync audio only partly.
    audio = eye.clone()
    audio[:2] = F.normalize(eye[:2] + torch.eye(D)[[4, 5]], dim=-1)
    shift = torch.eye(D)[[0, 1, 4, 5]]
    valid = torch.tensor([True, True, True, False])
    out = obj({"video": eye, "audio": audio, "audio_shift": shift}, {"hard_valid": valid})
    assert float(out["acc_hard"]) == pytest.approx(1 / 3)  # rows 0, 1 wrong; row 3 not counted
    assert float(out["acc_easy"]) == 1.0  # other videos' audio stays orthogonal
    # Row 2's audio equals video 3 (and so does row 3's): rows 2 and 3 fail the easy test.
    audio = eye.clone()
    audio[2] = eye[3]
    out = obj({"video": eye, "audio": audio}, {})
    assert float(out["acc_easy"]) == 0.5
    assert math.isnan(float(out["acc_hard"])) and float(out["loss_hard"]) == 0.0


def test_sync_rejects_bad_config_and_inputs():
    with pytest.raises(ConfigError, match="kind"):
        SyncObjective("triplet")
    with pytest.raises(ConfigError, match="embed_dim"):
        SyncObjective("binary")
    obj = SyncObjective()
    with pytest.raises(ConfigError, match="at least 2"):
        obj({"video": torch.randn(1, D), "audio": torch.randn(1, D)}, {})
    with pytest.raises(ConfigError, match="equal shape"):
        obj({"video": torch.randn(3, D), "audio": torch.randn(3, D + 1)}, {})


# ---- InfoNCE ------------------------------------------------------------------------------


def _ref_infonce(v, a, T):
    n = len(v)
    sim = [[_unit(v[i]) @ _unit(a[j]) / T for j in range(n)] for i in range(n)]
    v2a = sum(-torch.log(torch.exp(sim[i][i]) / sum(torch.exp(sim[i][j]) for j in range(n)))
              for i in range(n)) / n
    a2v = sum(-torch.log(torch.exp(sim[j][j]) / sum(torch.exp(sim[i][j]) for i in range(n)))
              for j in range(n)) / n
    return (v2a + a2v) / 2


def test_infonce_matches_brute_force_and_is_symmetric():
    v, a = _emb(B, D), _emb(B, D)
    obj = InfoNCE(temperature=0.3)
    out = obj({"video": v, "audio": a}, {})
    _assert_same_value_and_grad(out["loss"], _ref_infonce(v, a, 0.3), [v, a])
    swapped = obj({"video": a, "audio": v}, {})
    torch.testing.assert_close(swapped["loss"], out["loss"])
    torch.testing.assert_close(swapped["loss_v2a"], out["loss_a2v"])
    assert not torch.allclose(out["loss_v2a"], out["loss_a2v"])
    assert float(out["temperature"]) == pytest.approx(0.3)


def test_infonce_accuracy_and_learnable_temperature():
    eye = torch.eye(4)
    audio = eye.clone()
    audio[0] = 0.6 * eye[0] + 0.8 * eye[1]  # video 0 still retrieves audio 0 (0.6 vs 0), but
    out = InfoNCE()({"video": eye, "audio": audio})  # audio 0 retrieves video 1 (0.8 > 0.6)
    assert float(out["acc_v2a"]) == 1.0 and float(out["acc_a2v"]) == 0.75
    obj = InfoNCE(temperature=0.5, learnable_temperature=True)
    assert [n for n, _ in obj.named_parameters()] == ["log_scale"]
    v, a = _emb(B, D), _emb(B, D)
    obj({"video": v, "audio": a})["loss"].backward()
    assert obj.log_scale.grad is not None and obj.log_scale.grad != 0
    with torch.no_grad():
        obj.log_scale.fill_(math.log(1000.0))
    out = obj({"video": v, "audio": a})
    assert float(out["temperature"]) == pytest.approx(0.01)
    # the parameter is projected back to the bound, and still gets a gradient there, so a loss
    # that wants a higher temperature can move it (a clamp on the value gave zero gradient)
    assert obj.log_scale.item() == pytest.approx(math.log(100.0))
    obj.log_scale.grad = None
    (-out["loss"]).backward()  # pretend the loss wants 1/T up: the gradient must be nonzero
    assert obj.log_scale.grad is not None and float(obj.log_scale.grad) != 0.0
    opt = torch.optim.SGD(obj.parameters(), lr=1.0)
    for _ in range(3):  # anti-aligned pairs want a high temperature: T leaves the bound
        opt.zero_grad()
        obj({"video": v, "audio": -v})["loss"].backward()
        opt.step()
    assert obj({"video": v, "audio": -v})["temperature"].item() > 0.011
    # CLIP clamps the learned scale only; a fixed temperature under 0.01 is used as given
    fixed = InfoNCE(temperature=0.005)({"video": v, "audio": a})
    assert fixed["temperature"].item() == pytest.approx(0.005)
    ref = _ref_infonce(v.detach().double(), a.detach().double(), 0.005)  # exp(200): float64
    assert fixed["loss"].item() == pytest.approx(float(ref), rel=1e-4)


# ---- gathering ----------------------------------------------------------------------------


def _fake_rank_gather(fulls, rank, world):
    """gather_rows for rank ``rank`` of ``world``: local rows in place, other ranks' rows
    taken from the full tensors (constants, as they come from other processes)."""

    def fake(x):
        for full in fulls:
            b = len(full) // world
            part = full[rank * b:(rank + 1) * b]
            if x.shape == part.shape and torch.equal(x.detach(), part.detach()):
                return torch.cat([full[:rank * b].detach(), x, full[(rank + 1) * b:].detach()])
        raise AssertionError("gathered an unexpected tensor")

    return fake


@pytest.mark.parametrize("name,kw", [("sync", dict(kind="infonce")), ("sync", dict(kind="margin")),
                                     ("sync", dict(kind="binary", embed_dim=D)), ("infonce", {})])
def test_gather_two_fake_ranks_give_the_full_batch_loss_and_gradient(monkeypatch, name, kw):
    n = 6
    v, a, s = _emb(n, D), _emb(n, D), _emb(n, D)
    valid = torch.tensor([True, False, True, True, True, False])
    obj = build_objective(name, gather=True, **kw)
    full = obj({"video": v, "audio": a, "audio_shift": s}, {"hard_valid": valid})
    full_grads = _grads(full["loss"], [v, a, s])
    for rank in (0, 1):
        sl = slice(rank * n // 2, (rank + 1) * n // 2)
        local = [x[sl].detach().clone().requires_grad_(True) for x in (v, a, s)]
        monkeypatch.setattr(gather, "gather_rows", _fake_rank_gather([v, a, s, valid], rank, 2))
        out = obj({"video": local[0], "audio": local[1], "audio_shift": local[2]},
                  {"hard_valid": valid[sl]})
        for key in full:
            torch.testing.assert_close(out[key], full[key], rtol=1e-6, atol=1e-6, equal_nan=True)
        for g, fg in zip(_grads(out["loss"], local), full_grads):
            torch.testing.assert_close(g, fg[sl], rtol=1e-5, atol=1e-7)


def _gloo_worker(rank, world, init, out_dir, v, a, s, valid):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        b = len(v) // world
        sl = slice(rank * b, (rank + 1) * b)
        local_v = v[sl].clone().requires_grad_(True)
        sync = SyncObjective("infonce", gather=True)({"video": local_v, "audio": a[sl],
                                                      "audio_shift": s[sl]},
                                                     {"hard_valid": valid[sl]})
        nce = InfoNCE(gather=True)({"video": local_v, "audio": a[sl]})
        grad = torch.autograd.grad(sync["loss"], local_v)[0]
        torch.save({"values": torch.stack([sync["loss"], sync["acc_hard"], nce["loss"]]).detach(),
                    "grad": grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_with_two_real_gloo_processes(tmp_path):
    v, a, s = torch.randn(6, D), torch.randn(6, D), torch.randn(6, D)
    valid = torch.tensor([True, False, True, True, True, False])
    vg = v.clone().requires_grad_(True)
    ref = SyncObjective("infonce")({"video": vg, "audio": a, "audio_shift": s},
                                   {"hard_valid": valid})
    expect = torch.stack([ref["loss"], ref["acc_hard"],
                          InfoNCE()({"video": v, "audio": a})["loss"]]).detach()
    full_grad = torch.autograd.grad(ref["loss"], vg)[0]
    # fork, not spawn: children need not re-import torch (seconds on a shared CPU).
    torch.multiprocessing.start_processes(
        _gloo_worker, args=(2, f"file://{tmp_path}/rdv", tmp_path, v, a, s, valid), nprocs=2,
        start_method="fork")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["values"], expect, rtol=1e-5, atol=1e-6)
        # all_gather's backward sums over ranks: world_size x the true gradient of this rank's
        # rows, which DDP's gradient averaging divides back by world_size.
        torch.testing.assert_close(got["grad"], 2 * full_grad[rank * 3:(rank + 1) * 3],
                                   rtol=1e-5, atol=1e-6)


# ---- masked reconstruction ---------------------------------------------------------------


def test_masked_reconstruction_counts_only_masked_tokens():
    pred, target = _emb(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    loss = masked_reconstruction_loss(pred, target, mask)
    rows = [(b, n) for b in range(2) for n in range(5) if mask[b, n]]
    ref = sum(((pred[b, n] - target[b, n]) ** 2).mean() for b, n in rows) / len(rows)
    _assert_same_value_and_grad(loss, ref, [pred])
    assert torch.equal(_grads(loss, [pred])[0][~mask], torch.zeros(6, 4))
    changed = pred.detach().clone()
    changed[~mask] = float("nan")  # even garbage in unmasked predictions does not matter
    assert torch.equal(masked_reconstruction_loss(changed, target, mask), loss.detach())
    zero = masked_reconstruction_loss(pred, target, torch.zeros(2, 5, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


def test_masked_reconstruction_normalised_targets():
    pred, target = torch.randn(1, 3, 8), torch.randn(1, 3, 8) * 5 + 2
    mask = torch.ones(1, 3, dtype=torch.bool)
    ref = sum(((pred[0, n] - (target[0, n] - target[0, n].mean()) / target[0, n].std()) ** 2)
              .mean() for n in range(3)) / 3
    torch.testing.assert_close(masked_reconstruction_loss(pred, target, mask, norm_pix=True), ref,
                               rtol=1e-4, atol=1e-5)


def test_random_token_mask_exact_count_random_positions_reproducible():
    m = random_token_mask(64, 10, 0.75, generator=torch.Generator().manual_seed(1))
    assert m.dtype == torch.bool and m.shape == (64, 10)
    assert (m.sum(1) == 8).all()  # round(7.5) = 8
    assert len({tuple(r.tolist()) for r in m}) > 10  # positions differ across rows
    assert 0.6 < m.float().mean(0).min() <= m.float().mean(0).max() < 0.95  # every token used
    again = random_token_mask(64, 10, 0.75, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m, again)
    with pytest.raises(ConfigError):
        random_token_mask(2, 10, 1.0)


# ---- fusion objective ---------------------------------------------------------------------


def test_fusion_objective_matches_brute_force_and_sync_accuracy():
    logits = _emb(6, 3)
    label = torch.tensor([0, 1, 2, 0, 1, 2])
    out = FusionObjective()({"logits": logits}, {"pair_label": label})
    ref = sum(-torch.log(torch.exp(logits[i, label[i]]) / torch.exp(logits[i]).sum())
              for i in range(6)) / 6
    _assert_same_value_and_grad(out["loss"], ref, [logits])
    assert float(out["loss_recon"]) == 0.0
    hand = torch.tensor([[3.0, 1, 0], [0, 2, 5], [0, 0, 1], [1, 2, 3], [0, 2, 1], [1, 0, 0]])
    out = FusionObjective()({"logits": hand}, {"pair_label": label})
    assert float(out["acc"]) == pytest.approx(3 / 6)  # rows 0, 2, 4
    # in-sync vs shifted rows 0, 1, 3, 4 (labels 0, 1, 0, 1): logits[:, 0] vs logits[:, 1] say
    # sync, shifted, shifted, shifted -> 3/4 (row 1's argmax is class 2, yet its pair is right)
    assert float(out["acc_sync"]) == pytest.approx(3 / 4)


def test_fusion_objective_recon_term_over_modalities():
    logits, label = torch.randn(2, 3), torch.tensor([0, 2])
    pv, tv = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    pa, ta = torch.randn(2, 3, 2), torch.zeros(2, 3, 2)
    mv, ma = torch.rand(2, 4) > 0.3, torch.ones(2, 3, dtype=torch.bool)
    outputs = {"logits": logits, "recon_pred": {"video": pv, "audio": pa},
               "recon_target": {"video": tv, "audio": ta}, "recon_mask": {"video": mv, "audio": ma}}
    out = FusionObjective(recon_weight=0.5)(outputs, {"pair_label": label})
    recon = (masked_reconstruction_loss(pv, tv, mv) + masked_reconstruction_loss(pa, ta, ma)) / 2
    torch.testing.assert_close(out["loss_recon"], recon)
    torch.testing.assert_close(out["loss"], out["loss_cls"] + 0.5 * recon)
    with pytest.raises(ConfigError, match="recon"):
        FusionObjective(recon_weight=0.5)({"logits": logits}, {"pair_label": label})


def test_fusion_contrast_term_matches_brute_force():
    # rows: 0 in-sync, 1 shifted, 2 mismatched, 3 in-sync, 4 in-sync, 5 shifted
    label = torch.tensor([0, 1, 2, 0, 0, 1])
    v, a, logits = _emb(6, 4), _emb(6, 4), _emb(6, 3)
    t = 0.2
    out = FusionObjective(contrast_weight=0.5, temperature=t)(
        {"logits": logits, "video_embed": v, "audio_embed": a}, {"pair_label": label})
    cand = [0, 1, 3, 4, 5]                   # own-video audio; the mismatched row is left out

    def cos(x, y):
        return (x * y).sum() / (x.norm() * y.norm())

    terms = []
    for i in (0, 3, 4):                      # queries: the in-sync rows
        for q, c in ((v, a), (a, v)):        # video -> audio and audio -> video
            s = torch.stack([cos(q[i], c[j]) / t for j in cand])
            terms.append(-(s[cand.index(i)] - torch.logsumexp(s, 0)))
    ref = sum(terms) / len(terms)
    _assert_same_value_and_grad(out["loss_contrast"], ref, [v, a])
    torch.testing.assert_close(out["loss"], out["loss_cls"] + 0.5 * out["loss_contrast"])
    # embed_label: the embeddings' own pair types (all in sync -> the full 6 x 6 InfoNCE)
    full = FusionObjective(contrast_weight=1.0, temperature=t)(
        {"logits": logits, "video_embed": v, "audio_embed": a},
        {"pair_label": label, "embed_label": torch.zeros(6, dtype=torch.long)})
    vn, an = torch.nn.functional.normalize(v, dim=1), torch.nn.functional.normalize(a, dim=1)
    sim = vn @ an.T / t
    clip = (torch.nn.functional.cross_entropy(sim, torch.arange(6))
            + torch.nn.functional.cross_entropy(sim.T, torch.arange(6))) / 2
    torch.testing.assert_close(full["loss_contrast"], clip)
    # fewer than two in-sync rows: no term, but a graph that still reaches the embeddings
    one = FusionObjective(contrast_weight=1.0)(
        {"logits": logits, "video_embed": v, "audio_embed": a},
        {"pair_label": torch.tensor([0, 1, 2, 1, 2, 1])})
    assert one["loss_contrast"].item() == 0.0 and one["loss_contrast"].requires_grad
    with pytest.raises(ConfigError, match="contrast_dim"):
        FusionObjective(contrast_weight=1.0)({"logits": logits}, {"pair_label": label})
    with pytest.raises(ConfigError, match="temperature"):
        FusionObjective(temperature=0.0)


def test_objective_registry():
    assert list_objectives() == ["fusion", "infonce", "sync"]
    assert isinstance(build_objective("sync", kind="margin"), SyncObjective)
    with pytest.raises(UnknownNameError, match="sync"):
        build_objective("synk")
    with pytest.raises(ConfigError, match="temprature"):
        build_objective("infonce", temprature=0.1)
