"""The benchmark scripts' --quick modes run and print a table plus a JSON line that makes sense.

Scripts that fork measurement children (training, attention) run in a fresh interpreter, whose
parent process has run no torch op (a forked OpenMP pool would hang); the others run in-process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _run(script: str, *args: str, timeout: int = 120) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.lstrip().startswith("|"), proc.stdout[:500]  # the markdown table
    return _json_line(proc.stdout)


def _main(script: str, argv: list[str], capsys) -> dict:
    sys.path.insert(0, str(BENCH))
    try:
        mod = __import__(script)
        assert mod.main(argv) == 0
    finally:
        sys.path.remove(str(BENCH))
    return _json_line(capsys.readouterr().out)


def test_training_quick_rows_and_reference():
    # tiny clips, one timed step, no warm-up: bf16 on CPUs without native bf16 (AMD EPYC here)
    # is 10-30x slower than fp32, and r3d18 at 3x8x32x32 then takes 18 s a step
    out = _run("bench_training.py", "--quick", "--names", "r3d18,torchvision.r3d_18,vivit_fe_tiny,mbt_tiny",
               "--variants", "fp32,bf16,channels_last", "--steps", "1", "--warmup", "0",
               "--video-input", "3x4x16x16")
    rows = {(r["name"], r["variant"]): r for r in out["results"]}
    assert len(rows) == 12
    for key in [("r3d18", "fp32"), ("r3d18", "bf16"), ("r3d18", "channels_last"),
                ("vivit_fe_tiny", "bf16"), ("mbt_tiny", "fp32")]:
        r = rows[key]
        assert r["clips_per_s"] > 0 and r["gflop_per_step"] > 0 and r["peak_mem_mb"] >= 0, r
    assert "skipped" in rows["vivit_fe_tiny", "channels_last"]
    assert rows["r3d18", "fp32"]["params_m"] == pytest.approx(33.166, abs=0.01)
    assert set(out["ours_over_reference"]) == {"r3d18/fp32", "r3d18/bf16", "r3d18/channels_last"}


def test_training_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(BENCH / "bench_training.py"), "--variants", "fp16"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "expected a comma-separated subset" in proc.stderr


@pytest.mark.slow
def test_training_compile_reports_compile_time():  # inductor on CPU: 1-2 min per model
    out = _run("bench_training.py", "--quick", "--names", "vivit_fe_tiny", "--variants",
               "fp32,compile", timeout=600)
    row = next(r for r in out["results"] if r["variant"] == "compile")
    assert row["clips_per_s"] > 0 and row["compile_s"] > 0


def test_attention_sdpa_matches_naive_and_uses_less_memory():
    out = _run("bench_attention.py", "--quick", "--tokens", "64,392")
    assert out["agree"] and out["max_abs_diff"] < 1e-4
    rows = {(r["impl"], r["tokens"]): r for r in out["results"]}
    assert all(r["step_ms"] > 0 for r in rows.values())
    # the naive path holds (heads, N, N) scores and softmax for backward: 2 x 12 x 392^2 x 4 B
    assert rows["naive", 392]["peak_mem_mb"] > rows["sdpa", 392]["peak_mem_mb"]


def test_retrieval_exact_methods_agree(capsys):
    out = _main("bench_retrieval", ["--quick", "--gallery", "5000", "--queries", "200"], capsys)
    rows = {r["method"]: r for r in out["results"]}
    assert rows["faiss_flat"]["recall_at_10"] == 1.0
    assert rows["torch_topk"]["recall_at_10"] == 1.0
    assert 0.0 < rows["faiss_ivfpq"]["recall_at_10"] <= 1.0
    assert all(r["queries_per_s"] > 0 for r in rows.values())
    assert rows["torch_topk"]["on"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_retrieval_on_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        _main("bench_retrieval", ["--quick", "--device", "cuda"], capsys)
    assert e.value.code == 2 and "torch sees no GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_retrieval_torch_topk_on_the_gpu_matches_exact(capsys):
    out = _main("bench_retrieval", ["--quick", "--gallery", "5000", "--queries", "200",
                                    "--device", "cuda"], capsys)
    rows = {r["method"]: r for r in out["results"]}
    assert rows["torch_topk"]["on"] == "cuda" and rows["torch_topk"]["recall_at_10"] == 1.0


def test_bench_cached_run_is_faster(capsys, monkeypatch):
    monkeypatch.setenv("AVSSL_CACHE", "unused")  # the script sets its own; restored afterwards
    out = _main("bench_bench", ["--quick"], capsys)
    first, cached = out["runs"]
    assert out["cached_feature_files"] == 2 and out["same_metric"]
    assert cached["wall_s"] < first["wall_s"]


@pytest.mark.slow
def test_decoding_1080p_quick(capsys):  # writing and decoding 1080p video: minutes on 2 cores
    out = _main("bench_decoding", ["--quick", "--source", "1080p", "--workers", "1",
                                   "--backends", "pyav", "--batches", "2"], capsys)
    assert out["clip"] == "16x224x224"
    assert all(r["clips_per_s"] > 0 for r in out["results"])


def test_decoding_rejects_bad_workers(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_decoding

        with pytest.raises(SystemExit) as e:
            bench_decoding.main(["--workers", "-1"])
        assert e.value.code == 2
    finally:
        sys.path.remove(str(BENCH))
    assert "--workers must all be >= 0" in capsys.readouterr().err


def test_a_child_killed_by_a_signal_becomes_an_error_row():
    """The OOM killer's SIGKILL sends no row back: the parent used to wait for it forever."""
    import os
    import signal

    sys.path.insert(0, str(BENCH))
    try:
        from common import in_child
    finally:
        sys.path.remove(str(BENCH))
    row = in_child(lambda: os.kill(os.getpid(), signal.SIGKILL), label={"name": "x"})
    assert row["name"] == "x" and "exit code -9" in row["error"]
    assert in_child(lambda: {"ok": 1}, label={"name": "y"}) == {"ok": 1}  # fn makes its row


def test_an_exception_on_the_in_process_cuda_path_becomes_an_error_row():
    sys.path.insert(0, str(BENCH))
    try:
        from common import in_process
    finally:
        sys.path.remove(str(BENCH))

    def oom():
        raise RuntimeError("CUDA out of memory")

    assert in_process(oom, label={"impl": "naive"}) == {
        "impl": "naive", "error": "RuntimeError: CUDA out of memory"}


def test_decoding_a_folder_of_mixed_frame_rates(tmp_path, capsys):
    """A --data folder mixing frame rates (UCF101 has 25 and 29.97 fps) is resampled to one rate
    so clips batch (the clip length came from the first video alone, and batching crashed); with
    no decord run the ratio to decord is null, not NaN, which JSON has no literal for."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_decoding

        for sub, fps in (("a", 25), ("b", 30)):
            (tmp_path / sub).mkdir()
            bench_decoding.make_videos(tmp_path / sub, n=2, seconds=1.5, fps=fps, h=64, w=80)
    finally:
        sys.path.remove(str(BENCH))
    out = _main("bench_decoding", ["--data", str(tmp_path), "--quick", "--backends", "pyav",
                                   "--workers", "1", "--batches", "1", "--size", "32"], capsys)
    assert out["videos"] == 4 and out["clip"] == "16x32x32"
    assert out["date"].startswith("20") and out["command"].startswith("main(['--data'")
    assert all(r["clips_per_s"] > 0 for r in out["results"])
    assert out["full_over_raw_decord"] == {"pyav/1": None} and out["target_met"] is None


@pytest.mark.parametrize("script,args,message", [
    ("bench_retrieval.py", ["--quick", "--dim", "0"], "argument --dim: expected an integer >= 1"),
    ("bench_encoders.py", ["--input", "abc"], "argument --input: expected a shape like"),
    ("bench_attention.py", ["--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
    ("bench_training.py", ["--names", "bogus_model"], "error: unknown encoder 'bogus_model'"),
])
def test_bad_arguments_are_one_line_errors(script, args, message):
    """0 used to fall back to the default (--gallery 0 started a full 100k run), and bad shapes
    or names ended in a traceback."""
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("cuda", [False, True])
def test_training_table_rows_have_the_header_cells(cuda):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_training
    finally:
        sys.path.remove(str(BENCH))
    full = {"name": "m", "variant": "fp32", "input": "3x4x16x16", "batch": 2, "clips_per_s": 1.0,
            "step_ms": 1.0, "cpu_ms_per_step": 1.0, "peak_mem_mb": 1.0, "tflops": 0.1, "mfu": 0.1}
    rows = [full, {"name": "m", "variant": "channels_last", "skipped": "transformer"},
            {"name": "m", "variant": "bf16", "error": "OutOfMemoryError"}]
    lines = bench_training.format_table(rows, cuda=cuda).splitlines()
    assert len({line.count("|") for line in lines}) == 1, lines


def test_decoding_full_mode_does_not_probe_the_files_again(tmp_path, monkeypatch):
    """The records lacked start_s, so ClipDataset probed every file once per worker (25-50 ms,
    a third to half of a 320x240 clip's decode): inside the timed batches for a --data folder of
    more videos than the warm-up reads, charged to "full" and not to "raw"."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_decoding
    finally:
        sys.path.remove(str(BENCH))
    from avssl.data import decoding

    paths = bench_decoding.make_videos(tmp_path, n=1, seconds=1.0, h=48, w=64)
    records = bench_decoding.records_of(paths, [decoding.probe(p) for p in paths])

    def no_probe(*args, **kwargs):
        raise AssertionError("probed inside the measured loop")

    monkeypatch.setattr(decoding, "probe", no_probe)
    for mode in ("raw", "full"):
        ds = bench_decoding.build(mode, "pyav", 1, records, 16 / 25, 25.0, size=32).dataset
        assert ds[0] is not None


def test_decoding_measures_decoder_threads_in_the_decoding_process(tmp_path, capsys):
    """--decoder-threads sets the thread count in the process that decodes: this one with 0
    workers, each worker with 1 (by its worker_init_fn), and is back to the default after."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_decoding

        bench_decoding.make_videos(tmp_path, n=1, seconds=1.0, h=48, w=64)
    finally:
        sys.path.remove(str(BENCH))
    from avssl.data import decoding

    out = _main("bench_decoding", ["--data", str(tmp_path), "--quick", "--backends", "pyav",
                                   "--workers", "0", "1", "--batches", "1", "--size", "32",
                                   "--decoder-threads", "1", "0", "--modes", "raw"], capsys)
    rows = {(r["workers"], r["decoder_threads"], r["mode"]) for r in out["results"]}
    assert rows == {(w, t, "raw") for w in (0, 1) for t in (1, 0)}
    assert set(out["full_over_raw_decord"]) == {"pyav/0/t1", "pyav/0/t0", "pyav/1/t1", "pyav/1/t0"}
    assert decoding.decoder_threads() is None
    loader = bench_decoding.build("raw", "pyav", 1, [], 1.0, 25.0, threads=2)
    assert decoding.decoder_threads() == 2  # set here for workers=0 ...
    decoding.set_decoder_threads(None)
    loader.worker_init_fn(0)  # ... and in each worker
    assert decoding.decoder_threads() == 2
    decoding.set_decoder_threads(None)


def _session(tmp_path, *steps: str, budget: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",  # this python as python3
           "HOME": str(tmp_path), "DEVICE": "cpu", "QUICK": "1", "OUT": str(tmp_path / "out"),
           "BUDGET_S": budget, "PYTHONPATH": ""}
    return subprocess.run(["bash", str(BENCH / "gpu_session.sh"), *steps], capture_output=True,
                          text=True, timeout=120, env=env)


def test_gpu_session_starts_only_steps_that_fit_and_names_the_rest(tmp_path):
    """The device budget is 15 minutes a task: a step whose limit does not fit in BUDGET_S is
    not started, and the last line is the command for the steps left, in their order."""
    proc = _session(tmp_path, "attention", "compile", budget="60")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(ln.startswith("attention: rc 0 in ") for ln in lines), proc.stdout
    assert "compile: not started (needs up to 150 s" in proc.stdout
    assert lines[-1] == "left: compile; next: BUDGET_S=... bash benchmarks/gpu_session.sh compile"
    session = (tmp_path / "out" / "session.txt").read_text()
    assert "cudnn tf32" in session and "attention: rc 0" in session
    assert (tmp_path / "out" / "attention.log").read_text().strip().endswith("}")  # JSON line


@pytest.mark.parametrize("args,budget,message", [
    (["mfu", "traning"], "60", "unknown step 'traning'; steps: mfu gpu_tests training"),
    ([], "6min", "BUDGET_S must be whole seconds, got '6min'"),
])
def test_gpu_session_refuses_bad_steps_and_budgets_before_any_work(tmp_path, args, budget,
                                                                   message):
    proc = _session(tmp_path, *args, budget=budget)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "out").exists()
