"""Frozen-feature protocols (linear probe, kNN, few-shot) on synthetic features."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avssl.bench.protocols import PROTOCOLS, few_shot, fit_logistic, knn_classify, linear_probe
from avssl.bench.protocols.fewshot import sample_few_shot
from avssl.bench.protocols.linear import predict_scores, standardize, standardizer, stratified_split
from avssl.errors import ConfigError, DataError, UnknownNameError

C, D = 5, 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny full-batch fits: on a shared CPU, thread hand-offs cost 30x the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(seed: int, per_class: int, spread: float, dim: int = D, split: int = 0):
    """Gaussian blobs: class centres ~ N(0, spread²) drawn from ``seed``, unit noise drawn from
    ``(seed, split)`` (so splits share centres). Returns float32 x (C * per_class, dim), int64 y."""
    centres = np.random.default_rng(seed).normal(0, spread, (C, dim))
    y = np.repeat(np.arange(C), per_class)
    noise = np.random.default_rng([seed, split]).normal(0, 1, (len(y), dim))
    return (centres[y] + noise + 3.0).astype(np.float32), y  # offset: standardising must matter


@pytest.fixture(scope="module")
def separated():
    return (*blobs(0, 20, spread=4.0), *blobs(0, 10, spread=4.0, split=1))


@pytest.fixture(scope="module")
def noise():
    rng = np.random.default_rng(2)
    return (rng.normal(size=(100, D)).astype(np.float32), rng.integers(0, C, 100),
            rng.normal(size=(100, D)).astype(np.float32), rng.integers(0, C, 100))


def top1_strict(scores: np.ndarray, y: np.ndarray) -> float:
    """Percent of rows whose true-class score beats every other class (ties count against)."""
    true = scores[np.arange(len(y)), y]
    others = scores.copy()
    others[np.arange(len(y)), y] = -np.inf
    return 100.0 * float(np.mean(true > others.max(1)))


FAST = {"linear": {"weight_decays": (1e-4, 1e-2)}, "knn": {"k": 10},
        "fewshot": {"shots": (1, 5), "seeds": (0, 1, 2)}}


def test_registry_holds_the_frozen_feature_protocols():
    assert {"linear", "knn", "fewshot"} <= set(PROTOCOLS.names())
    assert PROTOCOLS.get("linear") is linear_probe and PROTOCOLS.get("knn") is knn_classify
    with pytest.raises(UnknownNameError, match="did you mean: linear"):
        PROTOCOLS.get("linaer")


@pytest.mark.parametrize("name", ["linear", "knn", "fewshot"])
def test_separable_blobs_are_learned_and_noise_is_not(name, separated, noise):
    fn = PROTOCOLS.get(name)
    good = fn(*separated, C, **FAST[name])
    bad = fn(*noise, C, **FAST[name])
    assert good["top1"] > 90.0, good["top1"]
    assert bad["top1"] < 40.0, bad["top1"]
    for res, y in ((good, separated[3]), (bad, noise[3])):
        assert res["scores"].shape == (len(y), C)
        assert res["scores"].dtype == (np.float64 if name == "knn" else np.float32)
        if name != "fewshot":  # few-shot top1 is a mean over seeds, not one score matrix's
            assert res["top1"] == pytest.approx(top1_strict(res["scores"], y))


def test_stratified_split_keeps_every_class_in_fit():
    y = np.array([0] * 10 + [1] * 2 + [2] * 1 + [3] * 5)
    fit, val = stratified_split(y, 0.2, seed=0)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(y)))
    assert np.bincount(y[val], minlength=4).tolist() == [2, 1, 0, 1]
    assert set(y[fit]) == {0, 1, 2, 3}
    others = [stratified_split(y, 0.2, seed=s)[1] for s in range(1, 6)]
    assert any(not np.array_equal(val, o) for o in others)  # the seed matters
    assert np.array_equal(val, stratified_split(y, 0.2, seed=0)[1])


def test_stratified_split_by_group_holds_out_whole_source_videos():
    """UCF101's clips of one group are cut from one source video: a held-out clip with a sibling
    in fit rewards memorising the video, so the sweep held out whole groups."""
    from avssl.bench.tasks.classification import ucf101_groups as source_groups

    ids = [f"v_C{c}_g{g:02d}_c{k:02d}" for c in range(3) for g in range(8, 14) for k in range(1, 4)]
    y = np.array([int(i.split("_")[1][1:]) for i in ids])
    groups = source_groups(ids)
    assert groups.tolist()[:4] == [8, 8, 8, 9]
    assert source_groups(ids + ["some_clip"]) is None  # not every id names a group
    fit, val = stratified_split(y, 0.2, seed=0, groups=groups)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(y)))
    held = {(y[i], groups[i]) for i in val}
    assert held and not held & {(y[i], groups[i]) for i in fit}
    assert sorted(np.bincount(y[val]).tolist()) == [3, 3, 3]  # round(0.2 * 6) = 1 group a class


def test_hmdb51_groups_are_the_source_movie():
    from avssl.bench.tasks.classification import hmdb51_groups

    ids = ["Veoh_Alpha_Dog_1_walk_f_nm_np1_fr_med_24", "Veoh_Alpha_Dog_1_walk_f_cm_np1_le_goo_3",
           "Pirates!_(1)_walk_u_nm_np2_ba_bad_0"]
    assert hmdb51_groups(ids).tolist() == ["Veoh_Alpha_Dog_1_walk", "Veoh_Alpha_Dog_1_walk",
                                           "Pirates!_(1)_walk"]
    assert hmdb51_groups(ids + ["renamed_clip"]) is None


def test_linear_probe_picks_the_best_held_out_weight_decay():
    # overlapping blobs in more dimensions than the fit part can pin down: the penalty matters
    x, y = blobs(3, 12, spread=0.3, dim=40)
    vx, vy = blobs(3, 6, spread=0.3, dim=40, split=1)
    wds = (1e-5, 1e-2, 0.3, 1.0, 30.0)
    res = linear_probe(x, y, vx, vy, C, seed=3, weight_decays=wds, max_iter=100)

    stats = standardizer(x)
    xs = standardize(x, stats)
    fit, val = stratified_split(y, 0.2, seed=3)
    heldout = {}
    for wd in wds:
        w, b = fit_logistic(xs[fit], y[fit], C, wd, 100)
        heldout[wd] = top1_strict(predict_scores(xs[val], w, b), y[val])
    best = max(heldout.values())
    # the data must make the choice matter, and tie at the top to exercise the tie rule
    assert min(heldout.values()) < best and list(heldout.values()).count(best) == 2, heldout
    expected = max(wd for wd in wds if heldout[wd] == best)  # ties -> the larger wd
    assert res["weight_decay"] == expected
    assert res["sweep"] == pytest.approx({str(wd): v for wd, v in heldout.items()})
    # then refitted on the whole train split with that wd
    w, b = fit_logistic(xs, y, C, expected, 100)
    np.testing.assert_allclose(res["scores"], predict_scores(standardize(vx, stats), w, b),
                               rtol=1e-5, atol=1e-5)


def test_linear_probe_standardises_with_train_statistics_only():
    rng = np.random.default_rng(5)
    # values on a 1/1024 grid, so shifting by 8 is exact in float32 and the test isolates the
    # standardisation from rounding
    x = (np.round(rng.normal(size=(40, 6)) * 1024) / 1024).astype(np.float32)
    y = np.repeat(np.arange(4), 10)
    x[np.arange(40), y] += 2.0
    vx = (np.round(rng.normal(size=(12, 6)) * 1024) / 1024).astype(np.float32)
    vy = np.arange(12) % 4
    kw = dict(weight_decays=(1e-2,), max_iter=50)
    base = linear_probe(x, y, vx, vy, 4, **kw)["scores"]
    shifted_test = linear_probe(x, y, vx + 8.0, vy, 4, **kw)["scores"]
    both = linear_probe(x + 8.0, y, vx + 8.0, vy, 4, **kw)["scores"]
    assert np.abs(shifted_test - base).max() > 1e-2
    np.testing.assert_allclose(both, base, atol=1e-6, rtol=0)
    # test statistics play no part: blowing up one test sample leaves the others' scores alone
    vx2 = vx.copy()
    vx2[0] *= 1000.0
    other = linear_probe(x, y, vx2, vy, 4, **kw)["scores"]
    assert np.array_equal(other[1:], base[1:]) and not np.array_equal(other[0], base[0])


@pytest.mark.parametrize("name", ["linear", "knn", "fewshot"])
def test_protocols_are_deterministic(name, noise):
    a = PROTOCOLS.get(name)(*noise, C, **FAST[name])
    b = PROTOCOLS.get(name)(*noise, C, **FAST[name])
    assert np.array_equal(a.pop("scores"), b.pop("scores"))
    assert a == b


def test_fit_logistic_reaches_a_stationary_point(noise):
    x, y = torch.as_tensor(noise[0], dtype=torch.float64), torch.as_tensor(noise[1])
    wd = 1e-3

    def grad_norm(w: torch.Tensor, b: torch.Tensor) -> float:
        w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
        loss = F.cross_entropy(x @ w + b, y) + wd * (w ** 2).sum()  # bias not penalised
        gw, gb = torch.autograd.grad(loss, [w, b])
        return float(torch.cat([gw.flatten(), gb]).norm())

    w, b = fit_logistic(noise[0], noise[1], C, wd, max_iter=200)
    assert w.shape == (D, C) and b.shape == (C,) and w.dtype == torch.float64
    assert grad_norm(torch.zeros(D, C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)) > 1e-2
    assert grad_norm(w, b) < 1e-4


def test_knn_matches_a_brute_force_weighted_vote():
    rng = np.random.default_rng(6)
    tx, ty = rng.normal(size=(12, 4)).astype(np.float32) * 3, rng.integers(0, 3, 12)
    vx, vy = rng.normal(size=(5, 4)).astype(np.float32), rng.integers(0, 3, 5)

    def reference(k: int, t: float) -> np.ndarray:
        a = vx / np.linalg.norm(vx, axis=1, keepdims=True)
        g = tx / np.linalg.norm(tx, axis=1, keepdims=True)
        sims = a.astype(np.float64) @ g.T.astype(np.float64)
        votes = np.zeros((len(vx), 3))
        for i in range(len(vx)):
            for j in np.argsort(-sims[i])[:k]:
                votes[i, ty[j]] += np.exp(sims[i, j] / t)
        return votes

    res = knn_classify(tx, ty, vx, vy, 3, k=4, temperature=0.1)
    assert res["k"] == 4 and res["temperature"] == 0.1
    np.testing.assert_allclose(res["scores"], reference(4, 0.1), rtol=1e-5)
    clamped = knn_classify(tx, ty, vx, vy, 3, k=100, temperature=0.5)
    assert clamped["k"] == 12
    np.testing.assert_allclose(clamped["scores"], reference(12, 0.5), rtol=1e-5)
    # a near-duplicate neighbour at a small temperature: exp(1 / 0.01) overflows float32
    cold = knn_classify(tx, ty, tx[:5] * 1.0001, ty[:5], 3, k=4, temperature=0.01)
    assert np.isfinite(cold["scores"]).all() and cold["top1"] == 100.0


def test_few_shot_sampling_is_n_per_class_and_seeded():
    y = np.repeat(np.arange(4), [10, 10, 10, 3])
    idx0, short = sample_few_shot(y, 4, 5, seed=0)
    idx1, _ = sample_few_shot(y, 4, 5, seed=1)
    assert np.bincount(y[idx0], minlength=4).tolist() == [5, 5, 5, 3] and short == {3: 3}
    assert len(np.unique(idx0)) == len(idx0)
    assert not np.array_equal(idx0, idx1)
    assert np.array_equal(idx0, sample_few_shot(y, 4, 5, seed=0)[0])


def test_few_shot_accepts_whole_float_shot_counts(noise):
    res = few_shot(*noise, C, shots=(1, 2.0), seeds=(0,), weight_decay=1e-2, max_iter=20)
    assert set(res["shots"]) == {"1", "2"} and res["top1"] == res["shots"]["2"]["mean"]


def test_few_shot_summary_matches_its_runs(noise):
    tx, ty, vx, vy = noise
    seeds = (0, 1, 2, 3)
    res = few_shot(tx, ty, vx, vy, C, shots=(1, 3), seeds=seeds, weight_decay=1e-2, max_iter=50)
    for n in ("1", "3"):
        runs = res["shots"][n]["runs"]
        assert len(runs) == len(seeds)
        assert res["shots"][n]["mean"] == pytest.approx(np.mean(runs))
        assert res["shots"][n]["std"] == pytest.approx(np.std(runs, ddof=0))
    assert len(set(res["shots"]["1"]["runs"])) > 1  # seeds really draw different examples
    assert res["top1"] == res["shots"]["3"]["mean"] and res["top1_std"] == res["shots"]["3"]["std"]
    # the scores are those of the first seed of the largest n
    assert top1_strict(res["scores"], vy) == pytest.approx(res["shots"]["3"]["runs"][0])


def test_few_shot_trains_on_n_per_class_and_reports_short_classes(monkeypatch, noise):
    """Each fit sees exactly n examples of every class (n * C rows), not the largest n's; a class
    with fewer than n train examples gives all it has and is listed in short_classes."""
    import avssl.bench.protocols.fewshot as fewshot_mod

    counts = [6, 6, 6, 6, 2]  # class 4 has only 2 train examples
    ty = np.repeat(np.arange(C), counts)
    tx = np.random.default_rng(8).normal(size=(len(ty), D)).astype(np.float32)
    calls = []

    def recording_fit(x, y, num_classes, weight_decay, max_iter):
        calls.append(np.bincount(np.asarray(y), minlength=num_classes).tolist())
        assert len(x) == len(y)
        return fit_logistic(x, y, num_classes, weight_decay, max_iter)

    monkeypatch.setattr(fewshot_mod, "fit_logistic", recording_fit)
    seeds = (0, 1)
    res = few_shot(tx, ty, noise[2], noise[3], C, shots=(3, 1), seeds=seeds, weight_decay=1e-2,
                   max_iter=10)
    # shots run in increasing n, one fit per seed
    assert calls == [[1] * C] * len(seeds) + [[3, 3, 3, 3, 2]] * len(seeds), calls
    assert [sum(c) for c in calls] == [1 * C] * 2 + [3 * C - 1] * 2
    assert res["shots"]["1"]["short_classes"] == {}
    assert res["shots"]["3"]["short_classes"] == {"4": 2}


def test_bad_inputs_raise_one_line_errors(separated):
    tx, ty, vx, vy = separated
    with pytest.raises(DataError, match=r"labels in \[0, 3\)"):
        linear_probe(tx, ty, vx, vy, 3)
    with pytest.raises(DataError, match="same D"):
        knn_classify(tx, ty, vx[:, :4], vy, C)
    with pytest.raises(ConfigError, match="k >= 1"):
        knn_classify(tx, ty, vx, vy, C, k=0)
    with pytest.raises(ConfigError, match="shot counts"):
        few_shot(tx, ty, vx, vy, C, shots=(0,))
