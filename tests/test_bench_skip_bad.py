"""--skip-bad for files that pass the up-front probe (which decodes their start and end) but fail
in the middle (DESIGN.md, failure behaviour): the bench leaves such a video out, reports videos
used vs expected, and scores the rest exactly as if the video had not been listed; without the
flag it stops with a one-line error naming the file. Failures are injected into the decoder (a
real file that breaks only in the middle is hard to make portably); the one vs two processes
test injects them in a small launcher script."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.bench import features as F
from avssl.bench.run import BenchArgs, run_bench
from avssl.data import decoding
from avssl.data.synthetic import WorldConfig, write_layout
from avssl.errors import ConfigError, DataError, DecodeError
from avssl.leaderboard import read_task

SMALL = dict(fps=4.0, size=32, crop=32, num_workers=0, batch_size=8, views="1x1")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def break_midway(monkeypatch, path: Path) -> list[str]:
    """Make decoding ``path`` fail after its first 0.2 s (the probe reads the start and the end
    through other functions, so the file still passes it). Returns the list of failed calls."""
    calls, real = [], decoding.decode_video

    def decode_video(p, start, end, *a, **k):
        if Path(p) == path and end > 0.2:
            calls.append(str(p))
            raise DecodeError(str(p), "corrupt packet at 0.6 s")
        return real(p, start, end, *a, **k)

    monkeypatch.setattr(decoding, "decode_video", decode_video)
    return calls


def assert_same(a, b) -> None:
    """Equal metrics up to float rounding: the other items are decoded in different batches
    (one item fewer), and a convolution's result can depend on its batch in the last bits."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6, nan_ok=True)
    else:
        assert a == b


def listed(root: Path, name: str) -> list[Path]:
    """The videos of a split file of the UCF101 tree, in its order."""
    lines = (root / "ucfTrainTestlist" / name).read_text().splitlines()
    return [root / "UCF-101" / ln.split()[0] for ln in lines if ln.strip()]


def bench(tmp_path, **kw) -> dict:
    return run_bench(BenchArgs(**{**SMALL, "leaderboard": str(tmp_path / "lb"), **kw}))


@pytest.mark.parametrize("protocol,part", [("knn", "test"), ("linear", "train"),
                                           ("finetune", "test")])
def test_classification_leaves_a_video_that_fails_midway_out(tmp_path, ucf, monkeypatch,
                                                              protocol, part):
    """Without --skip-bad the run stops naming the file; with it the video is left out of the
    training or test features (finetune: of the test clips) and the metrics are those of a
    tree without that file."""
    bad = listed(ucf, f"{part}list01.txt")[0]
    calls = break_midway(monkeypatch, bad)
    opts = dict(task="synthetic", protocol=protocol)
    if protocol == "finetune":
        opts["epochs"] = 1
    with pytest.raises(DataError, match=rf"cannot decode {bad}.*--skip-bad"):
        bench(tmp_path, **opts, data_root=str(ucf), leaderboard="")
    out = bench(tmp_path, **opts, data_root=str(ucf), skip_bad=True)
    assert calls, "the injected failure was never reached"
    assert (out["videos_used"], out["videos_expected"]) == (55, 56)
    row = read_task(tmp_path / "lb" / "synthetic.csv")[0]
    assert (row.videos_used, row.videos_expected) == (55, 56)

    # the same numbers as a tree where the file is simply not there
    monkeypatch.undo()
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache2"))
    gone = tmp_path / "gone"
    shutil.copytree(ucf, gone)
    (gone / bad.relative_to(ucf)).unlink()
    ref = bench(tmp_path, **opts, data_root=str(gone), leaderboard="")
    assert (ref["videos_used"], ref["videos_expected"]) == (55, 56)
    assert_same(out["metrics"], ref["metrics"])



def test_finetune_stops_on_a_training_video_it_cannot_decode(tmp_path, ucf, monkeypatch):
    """Finetuning is evaluation (DESIGN.md): a training video that fails to decode stops the run
    naming it (another video took its place unsaid, and the row counted it as used); with
    --skip-bad an unreadable one is probed out up front and counted."""
    bad = listed(ucf, "trainlist01.txt")[7]
    break_midway(monkeypatch, bad)
    opts = dict(task="synthetic", protocol="finetune", epochs=1, leaderboard="")
    with pytest.raises(DataError, match=rf"failed to decode \(last: {re.escape(str(bad))} "):
        bench(tmp_path, **opts, data_root=str(ucf))
    monkeypatch.undo()
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache2"))
    broken = tmp_path / "broken"
    shutil.copytree(ucf, broken)
    truncated = broken / bad.relative_to(ucf)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    out = bench(tmp_path, **opts, data_root=str(broken), skip_bad=True)
    assert (out["videos_used"], out["videos_expected"]) == (55, 56)


def test_a_run_with_a_failed_video_is_not_cached(tmp_path, ucf, monkeypatch, cache):
    """Features with a hole are not remembered: the next run decodes the file again (and, if it
    is repaired, uses it), instead of replaying the failure, which a run without --skip-bad
    would then not even report."""
    bad = listed(ucf, "testlist01.txt")[1]
    calls = break_midway(monkeypatch, bad)
    opts = dict(task="synthetic", data_root=str(ucf), protocol="knn")
    bench(tmp_path, **opts, skip_bad=True, leaderboard="")
    first = len(calls)
    monkeypatch.undo()
    monkeypatch.setenv("AVSSL_CACHE", str(cache))
    out = bench(tmp_path, **opts, leaderboard="")  # repaired: every video is used
    assert first == 1 and out["videos_used"] == out["videos_expected"] == 56



@pytest.mark.parametrize("skip_bad", [False, True])
def test_an_encoder_nan_is_not_taken_for_a_file_that_failed(tmp_path, ucf, monkeypatch, skip_bad):
    """A NaN feature (a broken checkpoint, an fp16 overflow) is no decoding failure: the linear
    protocols' "not finite (check the checkpoint)" stops the run, with or without --skip-bad,
    instead of the video being left out without a word."""
    real, calls = F.encode, []

    def encode(encoder, x, device):
        y = real(encoder, x, device)
        calls.append(len(y))
        if len(calls) == 1:
            y[0] = float("nan")
        return y

    monkeypatch.setattr(F, "encode", encode)
    with pytest.raises(DataError, match="not finite"):
        bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="knn", skip_bad=skip_bad,
              leaderboard="")


@pytest.mark.parametrize("task", ["finetune", "av-sync"])
def test_non_finite_outputs_are_not_taken_for_failed_files(tmp_path, ucf, folder, monkeypatch,
                                                           task):
    """The same for finetune's test scores and av-sync's embeddings: a NaN row with no decoding
    failure keeps its video (finetune's metrics refuse it; av-sync scores it as it is)."""
    real = F.map_items

    def map_items(*a, **k):
        out = real(*a, **k)
        out[0] = float("nan")
        return out

    monkeypatch.setattr(F, "map_items", map_items)
    if task == "finetune":
        with pytest.raises(ConfigError, match="expected finite values"):
            bench(tmp_path, task="synthetic", data_root=str(ucf), protocol="finetune", epochs=1,
                  skip_bad=True, leaderboard="")
        return
    out = bench(tmp_path, task="av-sync", data_root=str(folder), encoder="i3d_r18_tiny",
                audio_encoder="audio_resnet18_tiny", fps=None, size=None, crop=None,
                skip_bad=True, leaderboard="")
    assert out["videos_used"] == out["videos_expected"]


def test_av_sync_leaves_a_video_that_fails_midway_out(tmp_path, folder, monkeypatch):
    from avssl.data.decoding import probe

    sounding = [p for p in sorted(folder.rglob("*.mp4")) if probe(p).has_audio]
    bad = sounding[3]
    break_midway(monkeypatch, bad)
    opts = dict(task="av-sync", data_root=str(folder), encoder="i3d_r18_tiny",
                audio_encoder="audio_resnet18_tiny", fps=None, size=None, crop=None)
    with pytest.raises(DataError, match=rf"cannot decode {bad}.*--skip-bad"):
        bench(tmp_path, **opts, leaderboard="")
    preds = tmp_path / "preds"
    out = bench(tmp_path, **opts, skip_bad=True, leaderboard="", save_predictions=str(preds))
    n = len(sounding)
    assert (out["videos_used"], out["videos_expected"]) == (n - 1, n)
    assert out["metrics"]["num_hard"] == n - 1
    ids = {line.split(",")[0] for line in (preds / "scores.csv").read_text().splitlines()[1:]}
    assert len(ids) == n - 1 and bad.stem not in ids

    # the numbers of a tree without the file (the easy negatives are drawn among the videos
    # used, so they differ from a run that kept it)
    monkeypatch.undo()
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache2"))
    gone = tmp_path / "gone"
    shutil.copytree(folder, gone)
    (gone / bad.relative_to(folder)).unlink()
    ref = bench(tmp_path, **{**opts, "data_root": str(gone)}, skip_bad=True, leaderboard="")
    assert ref["videos_used"] == n - 1
    assert_same(out["metrics"], ref["metrics"])


# ------------------------------------------------------------------------------- map_items
class Flaky(torch.utils.data.Dataset):
    """Item i: {"x": [i]}; the items in ``bad`` raise like a file that fails to decode."""

    def __init__(self, n: int, bad: set[int]):
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            try:
                raise DecodeError(f"/v/{i}.mp4", "moov atom not found")
            except DecodeError as err:  # how datasets wrap it
                raise DataError(f"cannot decode /v/{i}.mp4; pass --skip-bad") from err
        return {"x": torch.tensor([float(i)])}


@pytest.mark.parametrize("workers", [0, 2])
def test_map_items_turns_failed_items_into_nan_rows_and_names_them(workers):
    failed: list = []
    out = F.map_items(Flaky(11, {2, 4, 5, 6, 7}), lambda b: b["x"] * 2, batch_size=4,
                      num_workers=workers, failed=failed)
    ok = np.isfinite(out[:, 0])
    np.testing.assert_array_equal(np.flatnonzero(~ok), [2, 4, 5, 6, 7])  # one whole batch
    np.testing.assert_array_equal(out[ok, 0], 2.0 * np.flatnonzero(ok))
    assert failed == [(i, f"/v/{i}.mp4 (moov atom not found)") for i in (2, 4, 5, 6, 7)]
    with pytest.raises(DataError, match="pass --skip-bad"):  # not asked to skip: stop
        F.map_items(Flaky(11, {5}), lambda b: b["x"], batch_size=4, num_workers=workers)


def test_map_items_with_every_item_failing_says_so():
    with pytest.raises(DataError, match=r"none of the 3 items could be decoded \(first: "
                                        r"/v/0\.mp4 \(moov atom not found\)\)"):
        F.map_items(Flaky(3, {0, 1, 2}), lambda b: b["x"], batch_size=2, failed=[])



def test_map_items_warning_names_every_file_once(caplog):
    """Three clips per file (--views 3x1) fail one by one: the warning names each file once,
    the second one too (it named the first three items: file 0, three times)."""
    class Clips(Flaky):
        def __getitem__(self, i):
            if i // 3 in self.bad:
                try:
                    raise DecodeError(f"/v/{i // 3}.mp4", f"corrupt packet in clip {i % 3}")
                except DecodeError as err:
                    raise DataError(f"cannot decode /v/{i // 3}.mp4") from err
            return {"x": torch.tensor([float(i)])}

    failed: list = []
    with caplog.at_level("WARNING", logger=F.__name__):
        F.map_items(Clips(12, {1, 2}), lambda b: b["x"], batch_size=4, failed=failed)
    assert [i for i, _ in failed] == [3, 4, 5, 6, 7, 8]
    assert caplog.messages == ["features: skipping 6 item(s) that failed to decode (--skip-bad), "
                               "of 2 file(s) left out: /v/1.mp4 (corrupt packet in clip 0); "
                               "/v/2.mp4 (corrupt packet in clip 0)"]


def test_map_items_does_not_swallow_bugs():
    """Only decoding failures are skipped; any other error is a bug and propagates."""
    class Buggy(Flaky):
        def __getitem__(self, i):
            raise KeyError("video")

    with pytest.raises(KeyError):
        F.map_items(Buggy(3, set()), lambda b: b["x"], batch_size=2, failed=[])


LAUNCHER = """
import sys
from pathlib import Path
from avssl.data import decoding
from avssl.errors import DecodeError
bad, real = Path(sys.argv.pop(1)), decoding.decode_video
def decode_video(p, start, end, *a, **k):
    if Path(p) == bad and end > 0.2:
        raise DecodeError(str(p), "corrupt packet at 0.6 s")
    return real(p, start, end, *a, **k)
decoding.decode_video = decode_video
from avssl.bench.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_leave_out_the_same_video_as_one(tmp_path, ucf, cache):
    """The failed item falls in process 1's shard: every process drops it, the numbers match."""
    script = tmp_path / "launch_broken.py"
    script.write_text(LAUNCHER)
    # batch 5 over 2 processes: test item 5 (block 1) is process 1's
    bad = listed(ucf, "testlist01.txt")[5]
    args = [str(script), str(bad), "--task", "synthetic", "--data-root", str(ucf), "--views",
            "1x1", "--fps", "4", "--size", "32", "--crop", "32", "--num-workers", "0",
            "--batch-size", "5", "--no-cache", "--json", "--protocol", "knn", "--skip-bad"]
    env = {**os.environ, "AVSSL_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}
    outs = []
    for n, launch in ((1, [sys.executable]),
                      (2, [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                           "--num_processes", "2", "--main_process_port", str(_free_port())])):
        proc = subprocess.run([*launch, *args, "--leaderboard", ""], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr.count("skipping 1 item(s) that failed to decode") == 1, proc.stderr
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        outs.append(json.loads(line[0]))
    assert outs[0]["videos_used"] == outs[1]["videos_used"] == 55
    assert outs[0]["metrics"] == outs[1]["metrics"]


@pytest.mark.parametrize("name", ["video_validation_0000001", "video_test_0000001"])
def test_localization_leaves_a_video_that_fails_midway_out(tmp_path, thumos, monkeypatch, name):
    """The video's windows, and its ground truth, are left out (the head trains without it or
    the mAP is scored without it): the numbers of a tree without the file."""
    bad = thumos / "videos" / f"{name}.mp4"
    calls = break_midway(monkeypatch, bad)
    opts = dict(task="thumos14", epochs=2, leaderboard="", fps=None, size=None, crop=None)
    with pytest.raises(DataError, match=rf"cannot decode {bad}.*--skip-bad"):
        bench(tmp_path, **opts, data_root=str(thumos))
    out = bench(tmp_path, **opts, data_root=str(thumos), skip_bad=True)
    assert calls and (out["videos_used"], out["videos_expected"]) == (3, 4)
    monkeypatch.undo()
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache2"))
    gone = tmp_path / "gone"
    shutil.copytree(thumos, gone)
    (gone / bad.relative_to(thumos)).unlink()
    ref = bench(tmp_path, **opts, data_root=str(gone))
    assert (ref["videos_used"], ref["videos_expected"]) == (3, 4)
    assert_same(out["metrics"], ref["metrics"])


@pytest.fixture(scope="module")
def ava(tmp_path_factory) -> Path:
    """A tiny AVA tree with two keyframes per video."""
    return write_layout("ava", tmp_path_factory.mktemp("ava") / "ava", clips_per_class=1, seed=4,
                        cfg=WorldConfig(size=32), keyframes_per_video=2)


def _keyframe_times(root: Path, part: str) -> dict[str, list[float]]:
    """video id -> the times of its keyframes in the bench's split (val: the proposals')."""
    from avssl.bench.tasks.ava import PROPOSAL_THRESHOLD, _load

    kw = (dict(boxes="proposals", score_threshold=PROPOSAL_THRESHOLD) if part == "val"
          else dict(boxes="groundtruth"))
    out: dict[str, list[float]] = {}
    for kf in _load(str(root), part, **kw).keyframes:
        out.setdefault(kf.video_id, []).append(kf.time_s)
    return {v: sorted(t) for v, t in sorted(out.items())}


@pytest.mark.parametrize("part", ["train", "val"])
def test_ava_leaves_a_video_whose_second_keyframe_fails_out(tmp_path, ava, monkeypatch, part):
    """The first keyframe decodes, the second fails: the whole video goes (its other keyframe,
    its boxes in the saved ground truth), and the numbers are those of a tree without it."""
    vid, times = next((v, t) for v, t in _keyframe_times(ava, part).items() if len(t) == 2)
    bad = ava / "videos_15min" / f"{vid}.mp4"
    calls, real = [], decoding.decode_video

    def decode_video(p, start, end, *a, **k):
        if Path(p) == bad and start > times[0]:
            calls.append(start)
            raise DecodeError(str(p), "corrupt packet")
        return real(p, start, end, *a, **k)

    monkeypatch.setattr(decoding, "decode_video", decode_video)
    opts = dict(task="ava", crop=32, epochs=3, num_workers=0, batch_size=8, leaderboard="")
    with pytest.raises(DataError, match=rf"cannot decode {bad}.*--skip-bad"):
        run_bench(BenchArgs(**opts, data_root=str(ava)))
    calls.clear()
    out = run_bench(BenchArgs(**opts, data_root=str(ava), skip_bad=True,
                              save_predictions=str(tmp_path / "p1")))
    assert len(calls) == 1
    monkeypatch.undo()
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache2"))
    gone = tmp_path / "gone"
    shutil.copytree(ava, gone)
    (gone / "videos_15min" / bad.name).unlink()
    ref = run_bench(BenchArgs(**opts, data_root=str(gone), save_predictions=str(tmp_path / "p2")))
    assert (out["videos_used"], out["videos_expected"]) == (ref["videos_used"],
                                                            ref["videos_expected"])
    assert out["videos_used"] == out["videos_expected"] - 1
    gt = [(tmp_path / d / "groundtruth.csv").read_text() for d in ("p1", "p2")]
    assert gt[0] == gt[1] and vid not in gt[0]
    det = [[ln.rsplit(",", 1) for ln in (tmp_path / d / "detections.csv").read_text().split()]
           for d in ("p1", "p2")]
    assert [d[0] for d in det[0]] == [d[0] for d in det[1]]  # same boxes and classes
    assert_same([float(d[1]) for d in det[0]], [float(d[1]) for d in det[1]])
    assert_same(out["metrics"], ref["metrics"])


@pytest.mark.parametrize("part", ["train", "test"])
def test_music_leaves_a_video_whose_later_windows_fail_out(tmp_path, music3, monkeypatch, part):
    """A training video's windows after 3 s (or the test video's window) fail: all the video's
    windows and its test mixtures go, and the numbers are those of a tree without the file."""
    from avssl.data.datasets.music import music as load_music

    rec = next(r for r in load_music(str(music3), part, seed=0).records if r.has_audio)
    bad = Path(rec.path)
    calls, real = [], decoding.decode_video

    def decode_video(p, start, end, *a, **k):
        if Path(p) == bad and (part == "test" or start > 3.0):
            calls.append(start)
            raise DecodeError(str(p), "corrupt packet")
        return real(p, start, end, *a, **k)

    monkeypatch.setattr(decoding, "decode_video", decode_video)

    def args(root, **kw):
        a = BenchArgs(task="music", data_root=str(root), leaderboard=None, fps=4.0, size=32,
                      crop=32, num_workers=0, batch_size=4, epochs=1, **kw)
        a.separation = {"depth": 4, "width": 4, "channels": 4}
        return a

    with pytest.raises(DataError, match=rf"cannot decode {bad}.*--skip-bad"):
        run_bench(args(music3))
    calls.clear()
    out = run_bench(args(music3, skip_bad=True))
    assert calls
    monkeypatch.undo()
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache2"))
    gone = tmp_path / "gone"
    shutil.copytree(music3, gone)
    (gone / bad.relative_to(music3)).unlink()
    ref = run_bench(args(gone))
    assert (out["videos_used"], out["videos_expected"]) == (ref["videos_used"],
                                                            ref["videos_expected"]) == (5, 6)
    assert_same(out["metrics"], ref["metrics"])
