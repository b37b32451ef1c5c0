"""The benchmark harness end to end on tiny synthetic data: classification protocols, the
feature cache, checkpoints vs random init, av-sync / av-retrieval, leaderboard rows, helpful
errors, and one vs two processes."""
from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.bench import features as F
from avssl.bench.run import BenchArgs, run_bench
from avssl.bench.tasks import TASKS
from avssl.checkpoints import save_checkpoint
from avssl.data.synthetic import WorldConfig, write_layout
from avssl.encoders import build_encoder
from avssl.errors import ConfigError, DataError, DecodeError, UnknownNameError
from avssl.leaderboard import read_task
from avssl.towers import AVTowers

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(fps=4.0, size=32, crop=32, num_workers=0, batch_size=8)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A pretrain_sync-style checkpoint of the default towers with non-default input settings."""
    torch.manual_seed(5)
    kw = {"time_strides": {"conv1": 1, "maxpool": 1}}
    towers = AVTowers(build_encoder("i3d_r18_tiny", **kw), build_encoder("audio_resnet18_tiny"),
                      16, 4)
    path = tmp_path_factory.mktemp("run") / "step_0000001"
    config = {"data": {"fps": 4.0, "size": 32, "crop": 32, "clip_s": 1.0, "n_mels": 64},
              "model": {"proj_dim": 16, "temporal_bins": 4}}
    save_checkpoint(path, {"video": towers.video, "audio": towers.audio,
                           "video_proj": towers.video_proj, "audio_proj": towers.audio_proj},
                    config=config, step=1,
                    specs={"video": {"encoder": "i3d_r18_tiny", "kwargs": kw},
                           "audio": {"encoder": "audio_resnet18_tiny", "kwargs": {}}},
                    extra_meta={"recipe": "pretrain_sync", "config_hash": "ab12"})
    return path


def bench(tmp_path, **kw) -> dict:
    opts = {**SMALL, "views": "1x1", "leaderboard": str(tmp_path / "lb"), **kw}
    return run_bench(BenchArgs(**opts))


def test_linear_probe_appends_a_complete_row(tmp_path, ucf):
    out = bench(tmp_path, task="synthetic", data_root=str(ucf), views="2x1")
    rows = read_task(tmp_path / "lb" / "synthetic.csv")
    assert len(rows) == 1
    row = rows[0]
    assert (row.task, row.protocol, row.split, row.metric) == ("synthetic", "linear", "1", "top1")
    assert row.encoder == "i3d_r18_tiny" and row.recipe == "random-init" and row.modality == "video"
    assert row.checkpoint == "" and row.checkpoint_sha256 == ""
    assert row.value == pytest.approx(out["value"]) and 0 <= row.value <= 100
    assert row.videos_used == row.videos_expected == 56 and row.views == "2x1"
    assert row.params_m > 0 and row.gmacs_per_clip > 0 and len(row.data_manifest_hash) == 64
    assert "top5" in row.secondary and "weight_decay" in row.secondary


def test_ucf101_linear_probe_holds_out_whole_groups(tmp_path, ucf, monkeypatch):
    """UCF101's clips of one group share a source video; the synthetic task's do not."""
    from avssl.bench.protocols import linear

    seen = []
    real = linear.stratified_split
    monkeypatch.setattr(linear, "stratified_split",
                        lambda y, f, seed, groups=None: seen.append(groups) or real(y, f, seed,
                                                                                    groups))
    bench(tmp_path, task="ucf101", data_root=str(ucf), leaderboard="")
    bench(tmp_path, task="synthetic", data_root=str(ucf), leaderboard="")
    train = TASKS.get("ucf101").load(str(ucf), "1", True, mode="eval")
    want = [int(v.split("_g")[1][:2]) for v in train.video_ids]
    assert seen[0].tolist() == want and len(set(want)) > 1
    assert seen[1] is None


def test_features_are_cached_and_reused(tmp_path, ucf, monkeypatch, cache):
    first = bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="knn")
    files = sorted((cache / "features" / "synthetic").glob("*.npz"))
    assert len(files) == 2  # train and test

    def boom(*a, **k):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(F, "clip_features", boom)
    again = bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="fewshot")
    assert again["metrics"]["num_samples"] == first["metrics"]["num_samples"]
    with pytest.raises(AssertionError, match="recomputed"):  # another view count: new features
        bench(tmp_path, task="synthetic", data_root=str(ucf), views="3x1")


def test_checkpoint_changes_features_and_provenance(tmp_path, ucf, checkpoint, cache):
    bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="knn", fps=None, size=None,
          crop=None)
    first = {p.name for p in (cache / "features" / "synthetic").glob("*.npz")}
    bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="knn",
          checkpoint=str(checkpoint), fps=None, size=None, crop=None)
    rows = read_task(tmp_path / "lb" / "synthetic.csv")
    assert [r.recipe for r in rows] == ["random-init", "pretrain_sync"]
    assert len(rows[1].checkpoint_sha256) == 64 and rows[1].config_hash == "ab12"
    # the checkpoint's input settings (32 px, 4 fps) were used: fewer MACs than 56 px / 8 fps
    assert rows[1].gmacs_per_clip < rows[0].gmacs_per_clip
    new = {p.name for p in (cache / "features" / "synthetic").glob("*.npz")} - first
    assert len(new) == 2  # the checkpoint's own train and test features


@pytest.mark.parametrize("protocol,metric", [("retrieval", "R@1"), ("fewshot", "top1")])
def test_other_protocols(tmp_path, ucf, cache, protocol, metric):
    shots = {"shots": (1, 2)} if protocol == "fewshot" else {}  # other protocols refuse it
    out = bench(tmp_path, task="synthetic", data_root=str(ucf), protocol=protocol, **shots)
    assert out["metric"] == metric and 0 <= out["value"] <= 100
    if protocol == "fewshot":
        assert set(out["metrics"]["shots"]) == {"1", "2"}
        # the row says which n each number is for (a 1-shot and a 5-shot row are not one
        # configuration): the per-seed runs are flat lists, which the row schema takes
        shots = out["row"].secondary["shots"]
        assert set(shots) == {"1", "2"} and len(shots["2"]["runs"]) == 5
        # --seed moves the five few-shot draws too (the row records it)
        from avssl.bench.protocols import fewshot

        drawn = []
        real = fewshot.sample_few_shot
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fewshot, "sample_few_shot",
                       lambda y, c, n, seed: drawn.append(seed) or real(y, c, n, seed))
            bench(tmp_path, task="synthetic", data_root=str(ucf), protocol=protocol,
                  shots=(2,), seed=3, leaderboard="")
        assert drawn == [3, 4, 5, 6, 7]
    else:
        # recompute class-match retrieval by hand from the cached features: test clips query
        # train clips by cosine, a hit at k when fewer than k other-class items are at least as
        # close as the best same-class one
        from avssl.bench.tasks import TASKS

        feats = {len(x): x for x in (np.load(p)["x"].astype(np.float64) for p in
                                     (cache / "features" / "synthetic").glob("*.npz"))}
        train, test = feats[42], feats[14]
        load = TASKS.get("synthetic").load
        train_y = np.asarray(load(str(ucf), "1", True, mode="eval").labels)
        test_y = np.asarray(load(str(ucf), "1", False, mode="eval").labels)
        q = test / np.linalg.norm(test, axis=1, keepdims=True)
        g = train / np.linalg.norm(train, axis=1, keepdims=True)
        sims = q @ g.T
        same = test_y[:, None] == train_y[None, :]
        best = np.where(same, sims, -np.inf).max(axis=1, keepdims=True)
        ahead = ((sims >= best) & ~same).sum(axis=1)
        for k in (1, 5, 10):
            assert out["metrics"][f"R@{k}"] == pytest.approx(100 * np.mean(ahead < k)), k
        assert out["metrics"]["num_queries"] == 14


def test_finetune_trains_and_tests_multi_view(tmp_path, ucf, monkeypatch):
    import avssl.eval.classification as C
    from avssl.bench.protocols import finetune as FT

    nets, initial, datasets, scored, fns = [], [], [], [], []

    class Recorded(FT.Classifier):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            nets.append(self)
            initial.append({n: p.detach().clone() for n, p in self.named_parameters()})

    real_map, real_metrics = F.map_items, C.classification_metrics

    def map_items(dataset, fn, **kw):
        datasets.append(dataset)
        fns.append(fn)
        return real_map(dataset, fn, **kw)

    def metrics(scores, *a, **k):
        scored.append(np.array(scores))
        return real_metrics(scores, *a, **k)

    monkeypatch.setattr(FT, "Classifier", Recorded)
    monkeypatch.setattr(F, "map_items", map_items)
    monkeypatch.setattr(C, "classification_metrics", metrics)
    out = bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="finetune", epochs=1,
                views="2x3")
    assert out["metrics"]["steps"] == 42 // 8 and out["metrics"]["num_samples"] == 14
    assert out["metrics"]["lr_last_step"] == pytest.approx(_cosine_end(out["metrics"]))
    assert out["row"].views == "2x3" and out["row"].encoder == "i3d_r18_tiny"
    # the encoder was finetuned, not only the head
    (net,), (before,), (test_ds,), (scores,), (fn,) = nets, initial, datasets, scored, fns
    after = dict(net.named_parameters())
    tower = [n for n in before if n.startswith("towers.")]
    changed = [n for n in tower if not torch.equal(before[n], after[n].detach())]
    assert len(changed) > len(tower) // 2, f"{len(changed)}/{len(tower)} encoder tensors trained"
    assert not torch.equal(before["head.weight"], after["head.weight"].detach())
    # test scores = softmax of every view (2 clips x 3 crops), averaged per video; item
    # i of the eval dataset is clip i % 2 of video i // 2 (computed here one view at a time)
    net.eval()
    probs = []
    with torch.no_grad():
        for i in range(len(test_ds)):
            item = test_ds[i]
            assert item["index"] == i and item["video"].shape[0] == 3  # (crops, C, T, H, W)
            probs.append([net({"video": crop[None]}).softmax(-1)[0].numpy()
                          for crop in item["video"]])
    views = np.asarray(probs).reshape(14, 2 * 3, -1)  # (videos, clip x crop, classes)
    np.testing.assert_allclose(scores, views.mean(axis=1), atol=1e-5)
    # the clips really disagree, so scoring one clip would not pass
    assert np.abs(views - views.mean(axis=1, keepdims=True)).max() > 1e-3
    # the 3 crops of these square 32-px frames are the same pixels: the crop average is
    # checked on the test batch function with crops that differ
    torch.manual_seed(0)
    crops = torch.randn(2, *test_ds[0]["video"].shape)  # (B, crops, C, T, H, W)
    with torch.no_grad():
        each = torch.stack([net({"video": crops[:, k]}).softmax(-1) for k in range(3)], 1)
    torch.testing.assert_close(fn({"video": crops}), each.mean(1), atol=1e-5, rtol=1e-5)
    assert (each - each.mean(1, keepdim=True)).abs().max() > 1e-3


def test_finetune_skips_a_non_finite_step_without_touching_weights_or_statistics(tmp_path, ucf,
                                                                                 monkeypatch):
    """One training batch with NaN logits: the update is skipped and counted, and neither the
    weights nor the BatchNorm running statistics (updated by that forward pass) turn NaN, so the
    test scores stay finite."""
    from avssl.bench.protocols import finetune as FT

    nets, calls = [], []

    class Poisoned(FT.Classifier):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            nets.append(self)

        def forward(self, batch):
            out = super().forward(batch)
            if self.training:
                calls.append(len(calls))
                if len(calls) == 2:  # the second training step
                    return out * float("nan")
            return out

    monkeypatch.setattr(FT, "Classifier", Poisoned)
    out = bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="finetune", epochs=1)
    assert out["metrics"]["steps"] == 5 and out["metrics"]["skipped_steps"] == 1
    (net,) = nets
    assert all(torch.isfinite(p).all() for p in net.parameters())
    stats = [b for n, b in net.named_buffers() if "running" in n]
    assert stats and all(torch.isfinite(b).all() for b in stats)
    assert np.isfinite(out["metrics"]["top1"])


def _cosine_end(m: dict) -> float:
    """The learning rate of finetune's last optimizer step under warm-up + cosine."""
    import math

    s, w = m["steps"], m["warmup_steps"]
    return m["lr"] * 0.5 * (1 + math.cos(math.pi * (s - 1 - w) / (s - w)))


def test_finetune_schedule_on_two_processes_is_the_one_of_each_processes_steps(tmp_path, ucf,
                                                                               cache):
    """accelerate steps a prepared scheduler once per process on every optimizer step: the
    cosine used to reach 0 halfway through a 2-process finetune and train at lr 0 after."""
    args = ["-m", "avssl.bench", "--task", "synthetic", "--data-root", str(ucf), "--fps", "4",
            "--size", "32", "--crop", "32", "--num-workers", "0", "--batch-size", "4",
            "--protocol", "finetune", "--epochs", "1", "--json",
            "--leaderboard", str(tmp_path / "lb")]
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--main_process_port", str(_free_port()), *args], capture_output=True, text=True,
        timeout=600, cwd=tmp_path, env={**os.environ, "AVSSL_CACHE": str(cache),
                                        "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][0])["metrics"]
    assert m["steps"] == 42 // 4 // 2 and m["lr_last_step"] > 0
    assert m["lr_last_step"] == pytest.approx(_cosine_end(m))


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_finetune_under_fsdp2_tests_an_unsharded_copy(tmp_path, ucf, cache, precision):
    """Under FSDP2 (forced on for CPU processes by tests/fsdp_on_cpu.py) with the residual
    blocks as their own FSDP units every forward is a collective, and map_items splits the 28
    test views into 7 batches of 4: 4 forwards on one process, 3 on the other. The trained
    classifier's forwards met the other process's gather of scores and the run died. With
    accelerate's default flags (cpu_ram_efficient_loading on) its reload of rank 0's weights
    failed on the encoder's BatchNorm statistics before training; with bf16, FSDP2's bf16
    BatchNorm weights beside fp32 running statistics stopped the first forward."""
    args = ["-m", "avssl.bench", "--task", "synthetic", "--data-root", str(ucf), "--encoder",
            "i3d_r18_tiny", "--fps", "4", "--size", "32", "--crop", "32", "--num-workers",
            "0", "--batch-size", "4", "--protocol", "finetune", "--epochs", "1", "--json",
            "--leaderboard", str(tmp_path / "lb")]
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
         "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--mixed_precision", precision,
         "--fsdp_transformer_layer_cls_to_wrap", "BasicBlock", "--num_processes", "2",
         "--main_process_port", str(_free_port()), str(ROOT / "tests" / "fsdp_on_cpu.py"), *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "AVSSL_CACHE": str(cache), "OMP_NUM_THREADS": "1",
             "ACCELERATE_USE_CPU": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][0])["metrics"]
    assert m["num_samples"] == 14 and m["steps"] == 42 // 4 // 2
    assert math.isfinite(m["top1"]) and m["skipped_steps"] == 0
    assert ("BatchNorm layers sharded as their own fp32 units" in proc.stdout) == (
        precision == "bf16")


def _cached(cache: Path, task: str, name: str) -> np.ndarray:
    """The one cached array ``name`` of ``task`` (float64)."""
    files = list((cache / "features" / task).glob("*.npz"))
    assert len(files) == 1, files
    return np.load(files[0])[name].astype(np.float64)


def _paired_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1-based rank of gallery row i for query row i by cosine (ties count against)."""
    s = queries @ gallery.T
    return 1 + ((s >= np.diag(s)[:, None]).sum(axis=1) - 1)


def test_av_sync_and_retrieval(tmp_path, folder, checkpoint, cache):
    sync = bench(tmp_path, task="av-sync", data_root=str(folder), checkpoint=str(checkpoint),
                 fps=None, size=None, crop=None)
    m = sync["metrics"]
    assert sync["metric"] == "acc_hard" and 0 <= m["acc_hard"] <= 100
    assert m["num_hard"] == m["num_easy"] == m["num_offset"] == 24  # 28 clips, 4 without sound
    assert m["grid"] == pytest.approx(np.linspace(-2, 2, 21).tolist())  # DATASETS.md: 21 classes
    # recomputed by hand from the cached unit embeddings (N, 1 + 21 grid offsets + hard, D):
    # the in-sync pair is grid offset 0 (column 10), the hard negative the last column
    emb = _cached(cache, "av-sync", "emb")
    assert emb.shape[:2] == (24, 23)
    scores = np.einsum("nd,nkd->nk", emb[:, 0], emb[:, 1:])
    grid, hard = scores[:, :21], scores[:, 21]
    assert m["acc_hard"] == pytest.approx(100 * np.mean(grid[:, 10] > hard))
    others = np.delete(grid, 10, axis=1).max(axis=1)
    assert m["offset_acc"] == pytest.approx(100 * np.mean(grid[:, 10] > others))
    near, far = grid[:, 9:12].max(axis=1), np.delete(grid, [9, 10, 11], axis=1).max(axis=1)
    assert m["offset_acc_1"] == pytest.approx(100 * np.mean(near > far))
    # the scores go through the projection heads, so the row counts them with the encoders
    from avssl.bench.model import load_model

    towers = load_model(checkpoint).towers
    assert sync["row"].params_m == pytest.approx(
        sum(p.numel() for p in towers.parameters()) / 1e6, abs=1e-4)
    ret = bench(tmp_path, task="av-retrieval", data_root=str(folder), checkpoint=str(checkpoint),
                fps=None, size=None, crop=None)
    assert ret["metric"] == "v2a_R@1" and 1 <= ret["metrics"]["a2v_median_rank"] <= 24
    assert ret["videos_used"] == ret["videos_expected"] == 24
    # paired retrieval recomputed by hand: clip i's video and its in-sync audio are the pair
    emb = _cached(cache, "av-retrieval", "emb")
    video, audio = emb[:, 0], emb[:, 1]
    for d, ranks in (("v2a", _paired_ranks(video, audio)), ("a2v", _paired_ranks(audio, video))):
        for k in (1, 5, 10):
            assert ret["metrics"][f"{d}_R@{k}"] == pytest.approx(100 * np.mean(ranks <= k))
        assert ret["metrics"][f"{d}_median_rank"] == pytest.approx(np.median(ranks))
        assert ret["metrics"][f"{d}_mean_rank"] == pytest.approx(ranks.mean())
    with pytest.warns(UserWarning):  # IVF-PQ shrinks its lists and codes for 24 vectors
        approx = bench(tmp_path, task="av-retrieval", index="ivfpq", data_root=str(folder),
                       checkpoint=str(checkpoint), fps=None, size=None, crop=None)
    assert approx["row"].protocol == approx["protocol"] == "retrieval-ivfpq"
    # the same pairs through an IVF-PQ index built directly on the cached embeddings
    from avssl.retrieval import true_ranks

    with pytest.warns(UserWarning):
        ranks = true_ranks(video.astype(np.float32), audio.astype(np.float32), kind="ivfpq")
    for k in (1, 5, 10):
        assert approx["metrics"][f"v2a_R@{k}"] == pytest.approx(100 * np.mean(ranks <= k))
    assert approx["metrics"]["v2a_num_queries"] == 24
    # the printed table names the protocol as the row does
    from avssl.bench.__main__ import _table

    assert "| av-retrieval | retrieval-ivfpq | test |" in _table(approx, None)


def test_av_sync_hard_negatives_are_shifted_at_least_two_seconds(folder, ucf, checkpoint):
    """DATASETS.md's protocol: the hard negative is the same video's audio shifted by >= ~2 s
    (here 2-3 s, either sign) and the offset grid has 21 classes over +-2 s; every candidate is
    cut from the video's own sound, and videos too short for that are refused with the need."""
    from avssl.bench.model import load_model
    from avssl.bench.tasks.av import load_av

    spec = load_model(checkpoint).spec
    ds = load_av(folder, "test", spec=spec)
    assert len(ds) == 24 and ds.grid == pytest.approx(np.linspace(-2, 2, 21))
    hard = np.array([h for _, _, h in ds.items])
    assert np.all((np.abs(hard) >= 2.0) & (np.abs(hard) <= 3.0)), hard
    assert (hard > 0).any() and (hard < 0).any()
    for _, start, h in ds.items:  # every candidate window lies inside the 7-s file
        assert start + min(-2.0, h) >= -1e-6 and start + max(2.0, h) + spec.clip_s <= 7.0 + 1e-6
    item = ds[0]
    assert item["offsets"][-1] == pytest.approx(ds.items[0][2])
    assert not torch.equal(item["mels"][10], item["mels"][-1])  # the shift moved the sound
    with pytest.raises(DataError, match=r"need about 6\.0 s each"):
        load_av(ucf, "test", spec=spec)  # 2-s clips


def test_av_windows_do_not_depend_on_the_other_videos_listed(tmp_path, folder, checkpoint):
    """Each video's window and hard shift are drawn from its own id, not from its place in the
    list. --skip-bad's up-front probe drops silent videos before AVClips sees them, while
    without it AVClips skips them itself: seeded by place, one tree gave two sets of numbers."""
    from avssl.bench.model import load_model
    from avssl.bench.tasks.av import AVClips, load_av

    spec = load_model(checkpoint).spec
    plain, probed = load_av(folder, "test", spec=spec), load_av(folder, "test", spec=spec,
                                                                 skip_bad=True)
    assert len(plain.records) == 28 and len(probed.records) == 24  # 4 silent, probed away

    def windows(ds):
        return {r.path: (start, hard) for r, start, hard in ds.items}

    assert windows(plain) == windows(probed) and len(plain) == len(probed) == 24
    kept = probed.records[1::3]  # fewer videos, other places: the same windows
    some = AVClips(kept, clip_s=spec.clip_s, fps=spec.fps, size=spec.size,
                   sample_rate=spec.sample_rate, video_transform=None, audio_transform=None)
    assert windows(some) == {r.path: windows(plain)[r.path] for r in kept}
    assert len(set(windows(plain).values())) > 1  # a draw per video, not one for all
    opts = dict(task="av-sync", data_root=str(folder), checkpoint=str(checkpoint), fps=None,
                size=None, crop=None, leaderboard="")
    a, b = bench(tmp_path, **opts), bench(tmp_path, **opts, skip_bad=True, cache=False)
    assert a["metrics"] == b["metrics"]
    assert (a["videos_used"], a["videos_expected"]) == (b["videos_used"], b["videos_expected"])


def test_av_sync_of_one_video_has_no_easy_negative_and_counts_skipped_files(tmp_path, folder,
                                                                           checkpoint):
    """With one video the "easy negative" was the clip's own in-sync audio (a tie, so 0 %); and
    files --skip-bad left out were missing from the videos expected."""
    from avssl.data.decoding import probe

    one = tmp_path / "one"
    one.mkdir()
    sounding = next(p for p in sorted(folder.rglob("*.mp4")) if probe(p).has_audio)
    os.symlink(sounding, one / sounding.name)
    (one / "broken.mp4").write_bytes(b"not a video")
    out = bench(tmp_path, task="av-sync", data_root=str(one), checkpoint=str(checkpoint),
                fps=None, size=None, crop=None, skip_bad=True, leaderboard="")
    m = out["metrics"]
    assert "acc_easy" not in m and m["num_hard"] == 1
    assert (out["videos_used"], out["videos_expected"]) == (1, 2)


def test_row_records_the_step_folder_latest_pointed_to(tmp_path, folder, checkpoint,
                                                        monkeypatch):
    """``runs/<recipe>/latest`` moves with the next save: the row keeps the folder loaded."""
    from avssl.checkpoints import update_latest

    run = tmp_path / "runs" / "pretrain_sync"
    run.mkdir(parents=True)
    (run / checkpoint.name).symlink_to(checkpoint, target_is_directory=True)
    update_latest(run, run / checkpoint.name)
    monkeypatch.chdir(tmp_path)
    out = bench(tmp_path, task="av-sync", data_root=str(folder),
                checkpoint="runs/pretrain_sync/latest", fps=None, size=None, crop=None)
    assert out["row"].checkpoint == checkpoint.resolve().as_posix()  # outside the cwd: absolute
    inside = tmp_path / "runs" / "pretrain_sync" / "run1" / "step_0000002"
    import shutil

    shutil.copytree(checkpoint, inside)
    update_latest(run, inside)
    again = bench(tmp_path, task="av-sync", data_root=str(folder),
                  checkpoint="runs/pretrain_sync/latest", fps=None, size=None, crop=None)
    assert again["row"].checkpoint == "runs/pretrain_sync/run1/step_0000002"  # relative
    assert again["value"] == out["value"]


def test_av_tasks_need_two_towers(tmp_path, folder):
    with pytest.raises(ConfigError, match="projection heads"):
        bench(tmp_path, task="av-sync", data_root=str(folder), encoder="i3d_r18_tiny")


def test_helpful_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean: ucf101"):
        bench(tmp_path, task="ucf10")
    with pytest.raises(DataError, match=r"--layout hmdb51 --out DIR.*--data-root"):
        bench(tmp_path, task="hmdb51", data_root=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="did you mean: linear"):
        bench(tmp_path, task="synthetic", protocol="linaer", data_root=str(tmp_path))
    with pytest.raises(UnknownNameError, match="did you mean: r3d18"):
        bench(tmp_path, task="synthetic", encoder="r3d19", data_root=str(tmp_path))
    with pytest.raises(ConfigError, match="CLIPSxCROPS"):
        bench(tmp_path, task="synthetic", views="10x2", data_root=str(tmp_path))


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    proc = subprocess.run([sys.executable, "-m", "avssl.bench", "--task", "ucf10"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: unknown task 'ucf10' (did you mean: ucf101")
    # the rest in process: the same main() the command runs, without an interpreter start-up
    from avssl.bench.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["--task", "ucf101"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "python -m avssl.data.synthetic --layout ucf101 --out DIR" in err
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    from avssl.bench.tasks import TASKS

    for name in TASKS.names():
        assert f"\n{name} " in "\n" + listing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_numbers_of_one(tmp_path, ucf, cache):
    """Feature extraction sharded over 2 gloo processes: identical metrics, one row."""
    args = ["-m", "avssl.bench", "--task", "synthetic", "--data-root", str(ucf), "--views", "2x1",
            "--fps", "4", "--size", "32", "--crop", "32", "--num-workers", "0",
            "--batch-size", "5", "--no-cache", "--json", "--protocol", "linear"]
    env = {**os.environ, "AVSSL_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    outs = []
    for n, launch in ((1, [sys.executable]),
                      (2, [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                           "--num_processes", "2", "--main_process_port", str(_free_port())])):
        proc = subprocess.run([*launch, *args, "--leaderboard", str(tmp_path / f"lb{n}")],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path,
                              env={**env, "ACCELERATE_USE_CPU": "true"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert len(line) == 1, proc.stdout  # only the main process prints
        outs.append(json.loads(line[0]))
        assert len(read_task(tmp_path / f"lb{n}" / "synthetic.csv")) == 1
    assert outs[0]["metrics"] == outs[1]["metrics"]


def test_map_items_keeps_order_and_batches():
    data = [{"x": torch.tensor([float(i)])} for i in range(11)]
    seen = []

    def fn(batch):
        seen.append(len(batch["x"]))
        return batch["x"] * 2

    out = F.map_items(data, fn, batch_size=4)
    np.testing.assert_array_equal(out[:, 0], np.arange(11) * 2.0)
    assert seen == [4, 4, 3]


@pytest.mark.parametrize("precision,dtype", [("no", None), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_map_items_autocasts_to_the_precision_picked(monkeypatch, precision, dtype):
    """accelerate launch --mixed_precision fp16 was logged and keyed as fp16 but ran fp32."""
    import dataclasses

    from avssl.speed import pick

    settings = dataclasses.replace(pick("cpu"), mixed_precision=precision)
    monkeypatch.setattr(F, "speed", lambda num_workers=0: settings)
    seen = []

    def fn(batch):
        on = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return batch["x"]

    F.map_items([{"x": torch.zeros(1)}] * 3, fn, batch_size=2)
    assert seen == [dtype, dtype]


class _MeanEncoder(torch.nn.Module):
    """Features (B, 2): each input's mean and mean + 1000 (a second feature column)."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([m, m + 1000], dim=1)


class _ConstantClips(torch.utils.data.Dataset):
    """Eval-mode items of 3 videos x 2 clips; every view is a constant tensor: video ``v``,
    clip ``c``, crop ``k`` holds 100 v + 10 c + k**2 (3 crops), its audio 7 v + c."""

    num_clips = 2

    def __len__(self):
        return 3 * self.num_clips

    def __getitem__(self, i):
        v, c = divmod(i, self.num_clips)
        video = torch.stack([torch.full((3, 2, 4, 4), 100.0 * v + 10 * c + k ** 2)
                             for k in range(3)])  # (crops, C, T, H, W)
        return {"video": video, "audio": torch.full((1, 8, 6), 7.0 * v + c)}


def test_clip_features_average_crops_then_clips():
    """Per video: the mean over its 3 crops (k**2: 0, 1, 4 -> 5/3) and then its 2 clips
    (10 c: 0, 10 -> 5), i.e. 100 v + 5 + 5/3; audio (one view per clip): 7 v + 0.5."""

    class Model:
        def encoder_for(self, m):
            return _MeanEncoder()

    # batch size 4 splits video 1's clips across batches
    video = F.clip_features(Model(), _ConstantClips(), "video", batch_size=4, num_workers=0,
                            desc="t")
    expect = np.array([[100.0 * v + 5 + 5 / 3] for v in range(3)])
    np.testing.assert_allclose(video, np.hstack([expect, expect + 1000]), rtol=1e-6)
    av = F.clip_features(Model(), _ConstantClips(), "av", batch_size=4, num_workers=0, desc="t")
    sound = np.array([[7.0 * v + 0.5] for v in range(3)])
    np.testing.assert_allclose(av, np.hstack([expect, expect + 1000, sound, sound + 1000]),
                               rtol=1e-6)
    # encode: crops averaged per sample (not mixed across the batch); 5-D input passes through
    x = torch.stack([_ConstantClips()[i]["video"] for i in (0, 3)])  # video 0 clip 0, 1 clip 1
    np.testing.assert_allclose(F.encode(_MeanEncoder(), x, "cpu")[:, 0].numpy(),
                               [5 / 3, 110 + 5 / 3], rtol=1e-6)
    np.testing.assert_allclose(F.encode(_MeanEncoder(), x[:, 2], "cpu")[:, 0].numpy(),
                               [4.0, 114.0])


def test_saved_predictions_give_the_same_numbers_through_the_evaluators(tmp_path, ucf, folder,
                                                                       checkpoint):
    from avssl.eval.classification import evaluate_classification_files
    from avssl.eval.retrieval import evaluate_retrieval_files
    from avssl.eval.sync import evaluate_sync_file

    cls = bench(tmp_path, task="synthetic", data_root=str(ucf), save_predictions=str(tmp_path / "c"))
    files = evaluate_classification_files(tmp_path / "c" / "predictions.csv",
                                          tmp_path / "c" / "labels.csv")
    for k in ("top1", "top5", "mean_class_acc", "num_samples"):
        assert files[k] == pytest.approx(cls["metrics"][k], abs=1e-9), k
    common = dict(data_root=str(folder), checkpoint=str(checkpoint), fps=None, size=None,
                  crop=None)
    sync = bench(tmp_path, task="av-sync", save_predictions=str(tmp_path / "s"), **common)
    files = evaluate_sync_file(tmp_path / "s" / "scores.csv")
    for k in ("acc_hard", "acc_easy", "offset_acc", "offset_acc_1"):
        assert files[k] == pytest.approx(sync["metrics"][k], abs=1e-9), k
    import pandas as pd

    rows = pd.read_csv(tmp_path / "s" / "scores.csv")
    hard = rows[rows.candidate == "hard"].offset_s.to_numpy(float)
    assert len(hard) == 24 and np.all((np.abs(hard) >= 2.0) & (np.abs(hard) <= 3.0)), hard
    ret = bench(tmp_path, task="av-retrieval", save_predictions=str(tmp_path / "r"), **common)
    files = evaluate_retrieval_files(tmp_path / "r" / "queries.npy", tmp_path / "r" / "gallery.npy")
    assert files["R@1"] == pytest.approx(ret["metrics"]["v2a_R@1"])
    assert files["median_rank"] == ret["metrics"]["v2a_median_rank"]


def test_thumos14_localization_end_to_end(tmp_path, thumos):
    from avssl.eval.localization import evaluate_localization_files

    out = bench(tmp_path, task="thumos14", data_root=str(thumos), epochs=2,
                save_predictions=str(tmp_path / "p"))
    m = out["metrics"]
    assert out["metric"] == "average_mAP" and 0 <= m["average_mAP"] <= 100
    assert [k for k in m if k.startswith("mAP@")] == [f"mAP@{t}" for t in (0.3, 0.4, 0.5, 0.6, 0.7)]
    assert out["videos_used"] == out["videos_expected"] == 4
    # the official-format predictions it wrote give the same numbers through the evaluator
    files = evaluate_localization_files(thumos / "annotations" / "test",
                                        tmp_path / "p" / "predictions.json")
    assert 100 * files["average_mAP"] == pytest.approx(m["average_mAP"], abs=1e-9)
    row = read_task(tmp_path / "lb" / "thumos14.csv")[0]
    assert row.protocol == "actionformer" and row.split == "test"


def test_thumos14_skip_bad_leaves_an_undecodable_video_out(tmp_path, thumos):
    """--skip-bad reached the classification tasks but not localization: a truncated test video
    crashed the bench (a raw DecodeError from probing its length) with or without the flag."""
    import shutil

    root = tmp_path / "th"
    shutil.copytree(thumos, root)
    bad = root / "videos" / "video_test_0000001.mp4"
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(DataError, match=rf"cannot decode .*{bad.name}.*--skip-bad"):
        bench(tmp_path, task="thumos14", data_root=str(root), epochs=1, leaderboard="")
    out = bench(tmp_path, task="thumos14", data_root=str(root), epochs=1, leaderboard="",
                skip_bad=True)
    assert (out["videos_used"], out["videos_expected"]) == (3, 4)


def test_localization_trains_its_head_with_the_given_lr(tmp_path, thumos, monkeypatch):
    """--lr reached finetune, ava and music but not the localization head (always 1e-3)."""
    import avssl.bench.localization.train as L

    seen, real = [], L.train_localizer
    monkeypatch.setattr(L, "train_localizer", lambda *a, **k: seen.append(k["lr"]) or real(*a, **k))
    bench(tmp_path, task="thumos14", data_root=str(thumos), epochs=1, lr=3e-4, leaderboard="")
    assert seen == [3e-4]


def test_activitynet_localization_with_audio_visual_features(tmp_path, tmp_path_factory):
    from avssl.eval.localization import evaluate_localization_files

    root = tmp_path_factory.mktemp("anet")
    write_layout("activitynet", root, clips_per_class=1, seed=6, cfg=WorldConfig(size=32),
                 workers=2, min_duration_s=8, max_duration_s=10)
    out = bench(tmp_path, task="activitynet", data_root=str(root), epochs=2, modality="av",
                stride_s=1.0, save_predictions=str(tmp_path / "p"))
    m = out["metrics"]
    assert m["stride_s"] == 1.0 and len([k for k in m if k.startswith("mAP@")]) == 10
    files = evaluate_localization_files(root / "activity_net.v1-3.min.json",
                                        tmp_path / "p" / "predictions.json")
    assert 100 * files["average_mAP"] == pytest.approx(m["average_mAP"], abs=1e-9)
    row = read_task(tmp_path / "lb" / "activitynet.csv")[0]
    assert row.modality == "av" and row.encoder == "i3d_r18_tiny+audio_resnet18_tiny"


def test_audio_features_decode_no_video(tmp_path, ucf, monkeypatch):
    """Audio-only benchmarks (vggsound, --modality audio) used to decode and crop every view's
    frames and throw them away; the numbers are those of items that decode video too."""
    from avssl.data import decoding

    probe = bench(tmp_path, task="synthetic", data_root=str(ucf), encoder="audio_resnet18_tiny",
                  modality="audio", cache=False, leaderboard="")

    def no_video(*a, **k):
        raise AssertionError("decode_video called for audio features")

    monkeypatch.setattr(decoding, "decode_video", no_video)
    again = bench(tmp_path, task="synthetic", data_root=str(ucf), encoder="audio_resnet18_tiny",
                  modality="audio", cache=False, leaderboard="")
    assert again["metrics"] == probe["metrics"]
    with pytest.raises(AssertionError, match="decode_video called"):  # video still decodes
        bench(tmp_path, task="synthetic", data_root=str(ucf), cache=False, leaderboard="")


# ------------------------------------------------------------------ failures stay one line
class _Failing(torch.utils.data.Dataset):
    """Items 0-2 load; item 3 raises ``error`` (in a DataLoader worker when num_workers > 0)."""

    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i == 3:
            raise self.error
        return {"x": torch.tensor([float(i)])}


@pytest.mark.parametrize("error,cls,message", [
    (ConfigError("crop 100x100 is larger than the 32x32 frames"), ConfigError,
     "crop 100x100 is larger than the 32x32 frames"),
    (DataError("ucf101: cannot decode a.avi (truncated); pass skip_bad=True"), DataError,
     "ucf101: cannot decode a.avi (truncated); pass skip_bad=True"),
    (UnknownNameError("unknown class 'x'"), UnknownNameError, "unknown class 'x'"),
    # DecodeError(path, reason) cannot be rebuilt from one string: torch gives a RuntimeError
    (DecodeError("a.avi", "moov atom not found"), DataError, "cannot decode a.avi: moov atom"),
])
def test_worker_errors_keep_their_one_line_message(error, cls, message):
    with pytest.raises(cls) as err:
        F.map_items(_Failing(error), lambda b: b["x"], batch_size=2, num_workers=2)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert "Caught" not in str(err.value)


def test_worker_error_leaves_other_exceptions_alone():
    with pytest.raises(ValueError, match="Caught ValueError in DataLoader worker"):
        F.map_items(_Failing(ValueError("a bug")), lambda b: b["x"], batch_size=2,
                    num_workers=2)
    assert F.worker_error(ConfigError("plain")) is None


def test_cli_turns_a_wrapped_worker_error_into_one_line(monkeypatch, capsys):
    """Loaders outside map_items (finetune's training loader) reach the CLI as torch's wrapper."""
    from torch._utils import ExceptionWrapper

    from avssl.bench import __main__ as cli
    from avssl.bench import run

    try:
        raise DataError("ucf101: cannot decode a.avi (truncated)")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    monkeypatch.setattr(run, "run_bench", lambda *a, **k: wrapped.reraise())
    assert cli.main(["--task", "synthetic"]) == 2
    assert capsys.readouterr().err == "error: ucf101: cannot decode a.avi (truncated)\n"


def test_cli_truncated_video_in_workers_is_one_line_naming_skip_bad(tmp_path, ucf, cache):
    import shutil

    root = tmp_path / "ucf"
    shutil.copytree(ucf, root)
    bad = sorted((root / "UCF-101").rglob("*.avi"))[0]
    bad.write_bytes(bad.read_bytes()[:2000])
    proc = subprocess.run(
        [sys.executable, "-m", "avssl.bench", "--task", "synthetic", "--data-root", str(root),
         "--views", "1x1", "--fps", "4", "--size", "32", "--crop", "32", "--protocol", "knn",
         "--num-workers", "2", "--leaderboard", ""],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "AVSSL_CACHE": str(cache)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Caught" not in last and f"cannot decode {bad}" in last
    assert "--skip-bad" in last


@pytest.mark.parametrize("opts,message", [
    ({"fps": 0.0}, "--fps must be > 0, got 0.0"),
    ({"fps": float("nan")}, "--fps must be > 0"),
    ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    ({"num_workers": -1}, "--num-workers must be >= 0"),
    ({"crop": 0}, "--crop must be >= 1 pixel"),
    ({"crop": 80}, "crop 80 is larger than the short side 32 the frames are resized to (from "
                   "--size 32 and --crop 80); pass --size >= --crop"),
    ({"seed": -1}, "--seed must be >= 0, got -1"),
    ({"epochs": 0}, "--epochs must be >= 1 (leave it out for the default), got 0"),
    ({"lr": float("nan")}, "--lr must be a finite number > 0, got nan"),
    ({"lr": -1.0}, "--lr must be a finite number > 0"),
    # these two were refused only by the protocol, after minutes of feature extraction
    ({"protocol": "knn", "k": 0}, "--k must be >= 1 neighbours, got 0"),
    ({"protocol": "fewshot", "shots": (5, 0)}, "--shots must be example counts >= 1, got 5 0"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, monkeypatch, opts, message):
    monkeypatch.setattr(F, "clip_features", _no_compute)
    with pytest.raises(ConfigError, match=re.escape(message)):
        bench(tmp_path, task="synthetic", data_root=str(tmp_path), **opts)


def test_an_unreadable_feature_cache_file_is_extracted_again(tmp_path, monkeypatch, capsys):
    """A cache file cut short (disk full, a crash) failed every later run with BadZipFile."""
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path))
    cache = F.FeatureCache("synthetic")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put("k1", x=x)
    assert np.array_equal(cache.get("k1")["x"], x)
    data = cache.path("k1").read_bytes()
    cache.path("k1").write_bytes(data[: len(data) // 2])
    assert cache.get("k1") is None  # a miss: the caller extracts and puts again
    assert "is unreadable" in capsys.readouterr().err
    cache.put("k1", x=x)
    assert np.array_equal(cache.get("k1")["x"], x)


def _no_compute(*a, **k):
    raise AssertionError("features computed before the arguments were checked")


@pytest.mark.parametrize("task,opts,message", [
    ("av-sync", {"views": "10x3"}, "--views has no effect on task av-sync"),
    ("av-retrieval", {"views": "2x1"}, "--views has no effect on task av-retrieval"),
    ("thumos14", {"views": "10x3"}, "--views has no effect on task thumos14: it scores sliding"),
    ("av-sync", {"modality": "audio"}, "--modality has no effect on task av-sync"),
    ("av-retrieval", {"modality": "video"}, "--modality has no effect on task av-retrieval"),
    ("synthetic", {"index": "ivfpq"}, "--index ivfpq applies to the retrieval protocol only"),
    # linear is the default protocol: `--k 200` without `--protocol knn` used to be dropped
    ("synthetic", {"k": 200}, "--k applies to the knn protocol only; task synthetic runs "
                              "protocol linear: pass --protocol knn"),
    ("ucf101", {"protocol": "knn", "shots": (1, 10)}, "--shots applies to the fewshot protocol"),
    ("hmdb51", {"protocol": "fewshot", "epochs": 5}, "--epochs applies to the finetune protocol"),
    ("kinetics", {"protocol": "retrieval", "lr": 0.1}, "--lr applies to the finetune protocol"),
    ("ucf101", {"stride_s": 0.5}, "--stride-s applies to localization tasks only"),
    ("synthetic", {"separation": {"mask": "ratio"}}, "--separation applies to separation tasks"),
    ("synthetic", {"protocol": "retrieval", "save_predictions": "p"},
     "--save-predictions has no file format for class retrieval"),  # it wrote nothing, silently
])
def test_flags_a_task_ignores_are_refused(tmp_path, task, opts, message):
    """Else the row would record views / modality that had no effect on the number."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        bench(tmp_path, task=task, data_root=str(tmp_path), **opts)
    assert not (tmp_path / "lb").exists()


def test_model_flags_are_never_dropped(checkpoint):
    from avssl.bench.model import resolve_model

    with pytest.raises(ConfigError, match="--encoder-kwargs configures a random-init"):
        resolve_model(str(checkpoint), encoder_kwargs={"stem": "conv"})
    with pytest.raises(ConfigError, match="--encoder-kwargs needs --encoder NAME"):
        resolve_model(None, None, "audio_resnet18_tiny", encoder_kwargs={"width": 8})
    with pytest.raises(ConfigError, match="must be a JSON object"):
        resolve_model(None, "i3d_r18_tiny", encoder_kwargs=[1])
    with pytest.raises(ConfigError, match=r"--audio-encoder c3d_tiny is a video encoder; pass an "
                                          r"audio encoder \(.*audio_resnet18_tiny"):
        resolve_model(None, "i3d_r18_tiny", "c3d_tiny")
    with pytest.raises(ConfigError, match="are both audio encoders"):
        resolve_model(None, "audio_resnet18_tiny", "audio_vit_tiny")
    with pytest.raises(ConfigError, match="takes no argument.*stme.*it takes:.*stem"):
        resolve_model(None, "vit_video_tiny", encoder_kwargs={"stme": "conv"})
    model = resolve_model(None, "audio_resnet18_tiny")
    assert (model.video_name, model.audio_name) == (None, "audio_resnet18_tiny")


def test_leaderboard_target_is_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "clip_features", _no_compute)
    lb = tmp_path / "lb"
    lb.mkdir()
    (lb / "synthetic.csv").write_text("task,value\nx,1\n")
    with pytest.raises(DataError, match="synthetic.csv has a different header"):
        bench(tmp_path, task="synthetic", data_root=str(tmp_path))
    assert (lb / "synthetic.csv").read_text() == "task,value\nx,1\n"  # the user's file is kept
    (tmp_path / "somefile").write_text("notes\n")
    with pytest.raises(ConfigError, match="--leaderboard .*somefile is a file; expected a folder"):
        bench(tmp_path, task="synthetic", data_root=str(tmp_path),
              leaderboard=str(tmp_path / "somefile"))
    with pytest.raises(ConfigError, match="cannot be created: .*somefile is not a writable"):
        bench(tmp_path, task="synthetic", data_root=str(tmp_path),
              leaderboard=str(tmp_path / "somefile" / "lb"))
    assert (tmp_path / "somefile").read_text() == "notes\n"


def test_cli_prints_results_before_a_failing_append(tmp_path, ucf, monkeypatch, capsys):
    """An append that fails after the compute (here: a header changed during the run) still
    leaves the table and the metrics on screen."""
    from avssl.bench import __main__ as cli
    from avssl.bench import run

    def broken(*a, **k):
        raise DataError("lb/synthetic.csv has a different header than a leaderboard CSV")

    monkeypatch.setattr(run, "_append", broken)
    rc = cli.main(["--task", "synthetic", "--data-root", str(ucf), "--views", "1x1", "--fps", "4",
                   "--size", "32", "--crop", "32", "--num-workers", "0", "--protocol", "knn",
                   "--json", "--leaderboard", str(tmp_path / "lb")])
    out = capsys.readouterr()
    assert rc == 2 and out.err.endswith("error: lb/synthetic.csv has a different header than a "
                                        "leaderboard CSV\n")
    assert "| synthetic | knn | 1 | 56/56 |" in out.out
    assert json.loads(out.out.strip().splitlines()[-1])["metric"] == "top1"
    assert "appended a row" not in out.out


def test_random_init_feature_keys_tell_encoders_apart():
    """Two random-init encoders under the same seed used to share a cache key, so the second
    run reported the first one's cached features under its own name."""
    from avssl.bench.model import random_model

    i3d = random_model("i3d_r18_tiny", "audio_resnet18_tiny")
    c3d = random_model("c3d_tiny", "audio_resnet18_tiny")
    keys = [F.FeatureCache.key(model=m.identity(), modality="audio") for m in (i3d, c3d)]
    # even the audio tower differs: it is drawn after the video tower from one seeded stream
    assert not torch.equal(next(i3d.audio.parameters()), next(c3d.audio.parameters()))
    assert keys[0] != keys[1]
    assert i3d.identity() == random_model("i3d_r18_tiny", "audio_resnet18_tiny").identity()


def test_temporal_bins_follow_each_encoders_declared_time_axis():
    """AVTowers bins the time axis an encoder declares (feature_layout), not one guessed from the
    map's rank: ViViT-FE bins its temporal transformer's tokens (so that transformer trains),
    (B, T, C) baselines bin T, and encoders without a time series are a one-line error when the
    towers are built (so the bench's random-init baseline falls back to bins=0; raised at the
    first forward, it crashed the bench for c3d, two_stream, early/late-fc fusion and MViT)."""
    from avssl.bench.model import DEFAULT_PROJ, random_model
    from avssl.encoders import list_encoders
    from avssl.errors import AvsslError

    torch.manual_seed(0)
    audio = build_encoder("audio_resnet18_tiny")
    mel = torch.randn(2, 1, 64, 96)
    binned, refused = [], []
    for name in [n for n in list_encoders("video") if n.endswith("_tiny")]:
        video = build_encoder(name)
        clip = torch.randn(2, *video.example_input_shape)
        try:
            towers = AVTowers(video, audio, 8, temporal_bins=2)
        except AvsslError as e:
            assert "--model.temporal_bins=0" in str(e) and "\n" not in str(e)
            refused.append(name)
            baseline = random_model(name, "audio_resnet18_tiny")
            assert baseline.towers.bins == 0
            assert baseline.towers.embed_video(clip).shape == (2, DEFAULT_PROJ["proj_dim"])
            continue
        out = towers(clip, mel, mel)
        binned.append(name)
        out["video"].sum().backward()
        idle = [n for n, p in video.named_parameters() if p.requires_grad and p.grad is None]
        assert idle == [], (name, idle)
        # reversing time changes the binned embedding: the bins really are along time
        assert not torch.allclose(towers.embed_video(clip), towers.embed_video(clip.flip(2)))
    assert {"vivit_fe_tiny", "i3d_r18_tiny", "lrcn_tiny", "late_fusion_pool_tiny",
            "single_frame_tiny", "convgru_tiny"} <= set(binned)
    assert {"early_fusion_tiny", "two_stream_tiny", "c3d_tiny", "late_fusion_fc_tiny"} <= set(refused)


def test_three_crop_views_cover_the_whole_frame_as_in_slowfast():
    """SlowFast's multi-view test resizes the short side to the crop size before the three
    crops; with the one-crop short side (--size 64 for crop 56) the views dropped 4 rows at the
    top and bottom of every frame."""
    from avssl.bench.model import InputSpec
    from avssl.data import transforms as T

    spec = InputSpec(size=64, crop=56)
    video = torch.randint(0, 256, (4, 3, 64, 96), dtype=torch.uint8)  # (T, C, H, W), 2:3
    views = spec.video_transform(3)(video)  # (3, C, T, crop, crop)
    small = T.resize_short_side(video, 56)  # (T, C, 56, 84): the crops' rows span all 56
    expect = T.to_encoder_layout(T.normalize(T.three_crop(small, 56)))
    torch.testing.assert_close(views, expect)
    one = spec.video_transform(1)(video)  # one view keeps the SlowFast 1-crop test: 64 -> 56
    torch.testing.assert_close(one, T.to_encoder_layout(T.normalize(
        T.center_crop(T.resize_short_side(video, 64), 56))))


def test_data_errors_suggest_data_root_only_for_missing_data():
    """'then pass --data-root DIR' follows a loader's 'write a stand-in with ... --out DIR'; an
    error about the data's content (e.g. av-sync's clips too short) already had its root."""
    from avssl.bench.run import _load
    from avssl.bench.tasks import TASKS

    task = TASKS.get("av-sync")

    def missing(root):
        raise DataError(f"expected videos under {root}; write a synthetic stand-in with "
                        f"`python -m avssl.data.synthetic --layout folder --out DIR`")

    def too_short(root):
        raise DataError("no listed video is long enough for these offsets (need about 4.0 s each)")

    with pytest.raises(DataError, match=r"--out DIR`, then pass --data-root DIR\. Data: "):
        _load(task, missing, "/nowhere")
    with pytest.raises(DataError) as err:
        _load(task, too_short, "clips.csv")
    assert str(err.value).startswith("task av-sync: no listed video is long enough")
    assert "--data-root" not in str(err.value) and "Data: " in str(err.value)


# ------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_features_match_the_cpu_ones(tmp_path, ucf, checkpoint):
    """The bench on a GPU (bf16 autocast, pinned memory, non-blocking copies, 2 workers) gives
    the features the CPU gives in fp32, clip for clip, up to bf16 rounding, and its log says
    what it ran with. Each run caches its train and test features in its own folder."""
    features = {}
    for device in ("cuda", "cpu"):
        env = {**os.environ, "AVSSL_CACHE": str(tmp_path / device), "OMP_NUM_THREADS": "1",
               **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}
        proc = subprocess.run(
            [sys.executable, "-m", "avssl.bench", "--task", "synthetic", "--data-root", str(ucf),
             "--checkpoint", str(checkpoint), "--protocol", "knn", "--views", "2x1",
             "--num-workers", "2", "--batch-size", "8", "--leaderboard", ""],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        precision = "bf16" if device == "cuda" else "fp32"
        assert f"speed settings on {device}: precision {precision}" in proc.stderr, (
            proc.stderr[-2000:])
        files = (tmp_path / device / "features" / "synthetic").glob("*.npz")
        arrays = [np.load(f)["x"].astype(np.float64) for f in files]
        features[device] = {len(x): x for x in arrays}  # 42 train videos, 14 test videos
        assert sorted(features[device]) == [14, 42], [x.shape for x in arrays]
    for rows, cpu in features["cpu"].items():
        gpu = torch.from_numpy(features["cuda"][rows])
        cos = torch.nn.functional.cosine_similarity(gpu, torch.from_numpy(cpu), dim=1)
        assert cos.min() > 0.99, (rows, cos.min())
