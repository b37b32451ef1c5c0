"""Learning claims of the benchmark harness (slow: each pretrains the default sync run, the
MBT one the default MBT run)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from avssl.bench.run import BenchArgs, run_bench

ROOT = Path(__file__).resolve().parents[1]


def _default_run(tmp_path_factory, recipe: str) -> Path:
    """Run ``recipes/<recipe>.py`` with its defaults; -> its ``latest`` checkpoint."""
    out = tmp_path_factory.mktemp(recipe)
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / f"{recipe}.py"),
                           f"--run.out={out}", "--run.name=default"],
                          capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / recipe / "latest"


@pytest.fixture(scope="module")
def sync_checkpoint(tmp_path_factory):
    """The README's default pretrain_sync run (about 9 minutes on a 2-core CPU)."""
    return _default_run(tmp_path_factory, "pretrain_sync")


def _bench(task: str, checkpoint=None, **kw) -> dict:
    return run_bench(BenchArgs(task=task, checkpoint=checkpoint and str(checkpoint),
                               leaderboard=None, **kw))


@pytest.mark.slow
def test_sync_pretraining_transfers_to_av_sync(sync_checkpoint):
    """The pretrained towers tell in-sync from shifted audio far above the random towers.

    Task version 3 (hard negatives shifted 2-3 s, 21 offset classes, chance 4.8 % exact and
    14.3 % within +-1 class), measured 2026-11-30 on a 2-core AMD EPYC (AVX-512): random-init
    acc_hard 50.0, acc_easy 51.0, offset 7.3 / 20.8 (exact / +-1 class); pretrain_sync 80.2,
    87.5, 20.8 / 27.1 (a default run with AVX2 kernels forced: 79.2, 91.7, 21.9 / 29.2)."""
    rnd = _bench("av-sync")["metrics"]
    pre = _bench("av-sync", sync_checkpoint)["metrics"]
    assert pre["acc_hard"] >= rnd["acc_hard"] + 20, (rnd, pre)
    assert pre["acc_easy"] >= rnd["acc_easy"] + 20, (rnd, pre)
    # 21 classes: +8 points is 1.7x chance on top of random's score
    assert pre["offset_acc"] >= rnd["offset_acc"] + 8, (rnd, pre)
    # within +-1 class the random towers' score swings around its chance with the 96 clips'
    # draws (10.4 on task version 2, 20.8 on 3), so that bar is set from chance: 1.5x it
    assert pre["offset_acc_1"] >= 1.5 * 100 * 3 / 21 and pre["offset_acc_1"] > rnd["offset_acc_1"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "issue 7: measured 2026-11-29 on task version 2, linear top-1 random-init 15.5 vs "
    "pretrain_sync 10.1 (14.9 and 15.5 with default checkpoints trained on a Xeon and a Zen 4 "
    "EPYC): sync features "
    "(brightness-onset detectors) do not classify the synthetic world's actions better than "
    "random ones, and supervised finetuning of the same encoder reaches only 28.0 < 30.5; see "
    "the issue note"))
def test_sync_features_beat_random_on_synthetic_actions(sync_checkpoint):
    """DESIGN.md's smoke test: linear-probe top-1 of sync features >= random-init + 15 points."""
    rnd = _bench("synthetic")["value"]
    pre = _bench("synthetic", sync_checkpoint)["value"]
    assert pre >= rnd + 15, (rnd, pre)


def _written(tmp_path_factory, layout: str, **kw) -> Path:
    """A synthetic tree of ``layout`` (default world, seed 0, 2 writer processes)."""
    from avssl.data.synthetic import WorldConfig, write_layout

    root = tmp_path_factory.mktemp(layout)
    write_layout(layout, root, seed=0, cfg=WorldConfig(), workers=2, **kw)
    return root


@pytest.fixture(scope="module")
def thumos_tree(tmp_path_factory):
    return _written(tmp_path_factory, "thumos14", clips_per_class=6, min_duration_s=30,
                    max_duration_s=60)


@pytest.mark.slow
def test_sync_features_localize_better_than_random(sync_checkpoint, thumos_tree):
    """Issue 8: on synthetic THUMOS-format data, sync-pretrained features give a higher average
    mAP than random-init features of the same encoder."""
    rnd = _bench("thumos14", data_root=str(thumos_tree))["value"]
    pre = _bench("thumos14", sync_checkpoint, data_root=str(thumos_tree))["value"]
    assert pre > rnd, (rnd, pre)


@pytest.fixture(scope="module")
def ava_tree(tmp_path_factory):
    return _written(tmp_path_factory, "ava", clips_per_class=4)


@pytest.mark.slow
def test_sync_features_detect_actions_better_than_random(sync_checkpoint, ava_tree):
    """Issue 9: on synthetic AVA-format data the RoI head on sync-pretrained features reaches a
    higher frame-mAP than on random-init features, averaged over three head seeds (the margin
    is 1-2 points per seed: see the README's table)."""
    def mean_map(checkpoint):
        return sum(_bench("ava", checkpoint, data_root=str(ava_tree), seed=s)["value"]
                   for s in range(3)) / 3

    rnd, pre = mean_map(None), mean_map(sync_checkpoint)
    assert pre > rnd, (rnd, pre)


@pytest.fixture(scope="module")
def mbt_checkpoint(tmp_path_factory):
    """The README's default pretrain_mbt run (about 6 minutes on a 2-core CPU)."""
    return _default_run(tmp_path_factory, "pretrain_mbt")


# the README's MUSIC settings: 16 clips per class (74 test mixtures), frozen, small U-Net
MUSIC_OPTS = dict(separation={"width": 8, "channels": 8}, epochs=15)


@pytest.fixture(scope="module")
def music16(tmp_path_factory):
    return _written(tmp_path_factory, "music", clips_per_class=16)


@pytest.fixture(scope="module")
def music_results(music16, sync_checkpoint):
    """The music bench on random-init and sync i3d_r18_tiny features (about 10 minutes)."""
    opts = dict(data_root=str(music16), **MUSIC_OPTS)
    return _bench("music", **opts)["metrics"], _bench("music", sync_checkpoint, **opts)["metrics"]


@pytest.mark.slow
def test_separator_raises_sdr_clearly_above_the_mixture(music_results):
    """Issue 10: the mix-and-separate U-Net conditioned on (random-init) frames beats the
    mixture by more than 2 dB (measured NSDR +3.48, task version 3)."""
    rnd, _ = music_results
    assert rnd["num_samples"] >= 60 and rnd["NSDR"] > 2.0, rnd


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "issue 10: at 16 clips per class sync features separate worse than random ones (SDR -0.22 "
    "vs 3.67 on 74 test mixtures): Sound of Pixels conditions on a time-pooled embedding that "
    "must name the instrument, and the 240-step sync tower keeps event timing, not appearance "
    "(instrument probe 7.6% vs 20-27% for random features); finetuning does not rescue it "
    "(5.28 vs 2.84). It holds at 8 clips per class (0.73 vs -0.93). The MBT tower passes: see "
    "test_mbt_pretrained_features_separate_better_than_random."))
def test_sync_features_separate_at_least_as_well_as_random(music_results):
    """Issue 10: a sync-pretrained visual encoder does at least as well as a random one."""
    rnd, pre = music_results
    assert pre["SDR"] >= rnd["SDR"], (rnd, pre)


@pytest.mark.slow
def test_mbt_pretrained_features_separate_better_than_random(music16, mbt_checkpoint):
    """Issue 10, with the MBT recipe's video tower (trained to tell in-sync from shifted and
    mismatched audio, plus a pre-fusion correspondence term that keeps appearance): it
    conditions the separator far better than the same conv-stem ViT at random init (measured
    SDR 9.73 vs 2.55 dB on 74 test mixtures, task version 3)."""
    opts = dict(data_root=str(music16), **MUSIC_OPTS)
    rnd = _bench("music", encoder="vit_video_tiny", encoder_kwargs={"stem": "conv"}, crop=64,
                 **opts)["metrics"]
    pre = _bench("music", mbt_checkpoint, **opts)["metrics"]
    assert pre["num_samples"] == rnd["num_samples"] >= 60, (rnd, pre)
    assert pre["SDR"] >= rnd["SDR"] + 2.0, (rnd, pre)
