"""The pretraining recipes: a few steps each, resume exactness, 1 vs 2 processes, non-finite
guard, and (slow) the default sync run learning synchronisation."""
from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avssl.checkpoints import load_checkpoint, load_encoder
from avssl.errors import AvsslError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data.synthetic_videos=14", "--data.synthetic_duration_s=2.5", "--data.val_videos=0",
        "--data.size=32", "--data.crop=32", "--data.batch_size=4", "--data.num_workers=0",
        "--run.log_every=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One synthetic cache for the module (12 usable clips: every 7th has no audio stream)."""
    return tmp_path_factory.mktemp("avssl_cache")


def run(recipe: str, out: Path, cache: Path, *args: str, launch: list[str] | None = None,
        check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AVSSL_CACHE": str(cache), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [*(launch or [sys.executable]), str(ROOT / "recipes" / recipe), *TINY,
           f"--run.out={out}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(float(r["step"])): float(r["loss"]) for r in csv.DictReader(f)}


def assert_same_losses(one: dict[int, float], two: dict[int, float]) -> None:
    """Steps 1-3 logged by both runs, with the same loss (1e-5: gloo's reductions sum in
    another order than one process's batch)."""
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("recipe,extra", [
    ("pretrain_sync.py", []),
    ("pretrain_mbt.py", ["--loss.recon_weight=1.0"]),
])
def test_recipe_runs_and_leaves_a_loadable_checkpoint(tmp_path, cache, recipe, extra):
    proc = run(recipe, tmp_path, cache, "--optim.steps=3", "--run.save_every=2", "--run.name=r",
               *extra)
    # the log says which speed settings the run picked for this CPU, and why
    assert "speed settings on cpu: precision fp32 (bf16 autocast measured no faster" in proc.stdout
    assert "CPU thread(s) (" in proc.stdout and "decoder thread(s) (" in proc.stdout
    name = recipe.removesuffix(".py")
    run_dir = tmp_path / name / "r"
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_0000002", "step_0000003"]
    assert os.readlink(tmp_path / name / "latest").endswith("step_0000003")
    assert sorted(losses(run_dir)) == [1, 2, 3]
    assert all(math.isfinite(v) for v in losses(run_dir).values())  # logged every step
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["optim"]["steps"] == 3 and cfg["data"]["crop"] == 32
    ckpt = load_checkpoint(tmp_path / name / "latest")
    assert ckpt.meta["step"] == 3 and ckpt.meta["recipe"] == name
    video = load_encoder(tmp_path / name / "latest", "video").eval()
    audio = load_encoder(tmp_path / name / "latest", "audio").eval()
    with torch.no_grad():
        assert video(torch.randn(2, 3, 8, 32, 32)).shape == (2, video.embed_dim)
        assert audio(torch.randn(2, 1, 64, 101)).shape == (2, audio.embed_dim)
    # the encoders carry the trained weights of the file, every tensor of them
    saved = weights(run_dir / "step_0000003")
    for prefix, enc in (("video.", video), ("audio.", audio)):
        state = enc.state_dict()
        assert {prefix + k for k in state} == {k for k in saved if k.startswith(prefix)}
        assert all(torch.equal(v, saved[prefix + k]) for k, v in state.items())


def test_help_lists_options_with_defaults():
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "pretrain_sync.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for key in ("--data.path", "--model.video=str  [\"i3d_r18_tiny\"]", "--loss.hard_start_step",
                "--optim.lr", "--run.resume", "--run.on_nonfinite"):
        assert key in proc.stdout


def test_unknown_option_is_one_line_error(tmp_path, cache):
    proc = run("pretrain_sync.py", tmp_path, cache, "--optim.lrr=1", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unknown config key 'optim.lrr' (did you mean: optim.lr")
    assert "Traceback" not in proc.stderr


def test_run_folders_are_never_overwritten_and_resume_continues_the_named_run(tmp_path, cache):
    """A new run refuses a folder holding a run; --run.resume --run.name continues that run (not
    the latest), refuses changed settings, keeps config.json, and a finished run is left as is."""
    common = ["--optim.steps=2", "--optim.warmup_steps=1"]
    run("pretrain_sync.py", tmp_path, cache, *common, "--run.name=r")
    run("pretrain_sync.py", tmp_path, cache, *common, "--run.name=other", "--run.stop_after=1")
    r = tmp_path / "pretrain_sync" / "r"
    assert os.readlink(tmp_path / "pretrain_sync" / "latest") == "other/step_0000001"
    before = {p: p.read_bytes() for p in r.rglob("*") if p.is_file()}

    again = run("pretrain_sync.py", tmp_path, cache, *common, "--run.name=r", check=False)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert f"{r} already holds a run (step_0000002); pass --run.resume" in again.stderr
    changed = run("pretrain_sync.py", tmp_path, cache, *common, "--run.name=r", "--run.resume",
                  "--optim.lr=0.01", check=False)
    assert changed.returncode != 0
    assert "was started with optim.lr=0.001 but this command sets optim.lr=0.01" in changed.stderr
    assert f"--config {r / 'config.json'} --run.name r --run.resume" in changed.stderr
    done = run("pretrain_sync.py", tmp_path, cache, *common, "--run.name=r", "--run.resume",
               "--run.log_every=5")  # a setting a resumed run may change
    assert f"{r} is already at step 2" in done.stdout and "nothing to do" in done.stdout
    assert {p: p.read_bytes() for p in r.rglob("*") if p.is_file()} == before  # nothing written

    # the named run, not latest: "other" continues from its step 1 and keeps its config.json
    cfg = (tmp_path / "pretrain_sync" / "other" / "config.json").read_text()
    run("pretrain_sync.py", tmp_path, cache, *common, "--run.name=other", "--run.resume")
    assert sorted(losses(tmp_path / "pretrain_sync" / "other")) == [1, 2]
    assert (tmp_path / "pretrain_sync" / "other" / "config.json").read_text() == cfg


def test_a_run_named_by_the_clock_resumes_from_its_config_json(tmp_path, cache):
    """Without --run.name the folder is named by the clock and config.json records that name,
    so `--config <run>/config.json --run.resume` continues this run even when `latest` points
    at another one (config.json said name null, and resume took whatever `latest` was)."""
    common = ["--optim.steps=2", "--optim.warmup_steps=1", "--run.stop_after=1"]
    run("pretrain_sync.py", tmp_path, cache, *common)
    (clocked,) = [p for p in (tmp_path / "pretrain_sync").iterdir() if p.name != "latest"]
    cfg = json.loads((clocked / "config.json").read_text())
    assert cfg["run"]["name"] == clocked.name
    run("pretrain_sync.py", tmp_path, cache, *common, "--run.name=later")
    run("pretrain_sync.py", tmp_path, cache, "--config", str(clocked / "config.json"),
        "--run.resume", "--run.stop_after=0")
    assert sorted(losses(clocked)) == [1, 2]
    assert sorted(losses(tmp_path / "pretrain_sync" / "later")) == [1]


@pytest.mark.parametrize("flag,message", [
    ("--data.batch_size=0", "--data.batch_size must be >= 1, got 0"),
    ("--optim.steps=-5", "--optim.steps must be >= 1, got -5"),
    ("--optim.grad_accum=0", "--optim.grad_accum must be >= 1"),
    ("--run.save_every=0", "--run.save_every must be >= 1"),
    ("--data.fps=0", "--data.fps must be > 0"),
    ("--data.crop=100", "--data.crop=100 must be <= --data.size=32"),
    ("--run.name=sweep/lr3", "--run.name must be one plain folder name"),
    ("--run.seed=-1", "--run.seed must be >= 0"),
    ("--run.seed=4294967296", "--run.seed must be < 2**32"),
    ("--model.temporal_bins=-1", "--model.temporal_bins >= 0"),
    ("--model.proj_dim=0", "--model.proj_dim must be >= 1"),
    ("--loss.margin=0", "--loss.temperature and --loss.margin must be > 0"),
    ("--data.synthetic_seed=-5", "--data.synthetic_seed must be >= 0"),
    ("--model.audio=i3d_r18_tiny", "--model.audio=i3d_r18_tiny is a video encoder"),
])
def test_out_of_range_settings_are_one_line_errors_before_anything_runs(tmp_path, flag, message):
    """In process (the recipe's main); the command line's rendering of these errors is the next
    test's (a subprocess each cost 6 s of start-up)."""
    from avssl.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _recipe("pretrain_sync").main([*TINY, f"--run.out={tmp_path}", flag])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "pretrain_sync").exists()


def test_a_warmup_as_long_as_the_run_is_pointed_out(caplog):
    """The learning rate then never reaches --optim.lr nor decays: legal, but said."""
    import logging

    from avssl.pretraining import OptimConfig

    with caplog.at_level(logging.WARNING):
        OptimConfig(steps=240, warmup_steps=30)
        assert caplog.text == ""
        OptimConfig(steps=20, warmup_steps=30)
    assert "--optim.warmup_steps=30 >= --optim.steps=20: the learning rate never" in caplog.text


def test_a_bad_setting_on_the_command_line_is_one_line_on_stderr(tmp_path, cache):
    proc = run("pretrain_sync.py", tmp_path, cache, "--data.crop=100", check=False)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and err.startswith("error: ") and "\n" not in err, err
    assert "--data.crop=100 must be <= --data.size=32" in err
    assert "Traceback" not in proc.stderr and not (tmp_path / "pretrain_sync").exists()



@pytest.mark.parametrize("recipe", ["pretrain_sync.py", "pretrain_mbt.py"])
def test_a_run_folder_that_cannot_be_written_is_one_line_on_stderr(tmp_path, cache, recipe):
    """--run.out under a file (or read-only): the recipe's mkdir raised a traceback."""
    (tmp_path / "file").write_text("")
    proc = run(recipe, tmp_path / "file" / "runs", cache, "--run.name=r", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot write the run folder {tmp_path}/file/runs/{recipe[:-3]}/r (Not a "
        f"directory: {tmp_path}/file); pass a writable --run.out")


def test_the_write_check_leaves_no_folders_behind(tmp_path, monkeypatch):
    """run_location checks a new run folder without making it: a run refused later (e.g.
    processes that do not share the folder, or did not join one group and each checked at
    once) leaves nothing; a folder without write permission is refused by name."""
    from avssl import pretraining
    from avssl.pretraining import run_location

    run_dir, _, _ = run_location(str(tmp_path / "a" / "b"), "pretrain_sync", "r", False)
    assert run_dir == tmp_path / "a" / "b" / "pretrain_sync" / "r"
    assert list(tmp_path.iterdir()) == []
    # root ignores permission bits, so the read-only case is os.access saying no
    monkeypatch.setattr(pretraining.os, "access", lambda path, mode: False)
    with pytest.raises(AvsslError, match=rf"\(not writable: {tmp_path}\); pass a writable"):
        run_location(str(tmp_path / "a"), "pretrain_sync", "r", False)


@pytest.mark.parametrize("name", ["latest", "a/b", "..", ".hidden", "x\\y", ""])
def test_run_names_that_would_leave_their_folder_are_refused(name):
    """'latest' wrote into the checkpoint the link points at; 'a/b' got its own 'latest' one
    level down, so --run.resume continued an older run."""
    from avssl.pretraining import RunConfig

    with pytest.raises(ConfigError, match="--run.name must be one plain folder name"):
        RunConfig(name=name)
    assert RunConfig(name="lr3e-4_bs32").name == "lr3e-4_bs32"


@pytest.mark.parametrize("saved,now", [(1, 2), (2, 1)])
def test_resuming_on_another_number_of_processes_is_refused(tmp_path, saved, now):
    """--data.batch_size is per process: a run saved by one process continued on two with twice
    its global batch (and the second process without a saved RNG state), silently."""
    from avssl.errors import AvsslError
    from avssl.pretraining import check_same_processes

    ckpt = tmp_path / "pretrain_sync" / "r" / "step_0000002"
    (ckpt / "state").mkdir(parents=True)
    for rank in range(saved):  # accelerate's save_state: one RNG state per process
        (ckpt / "state" / f"random_states_{rank}.pkl").write_bytes(b"")
    with pytest.raises(AvsslError, match=rf"saved by {saved} process\(es\) but this launch has "
                                         rf"{now}; .* resume with {saved} process\(es\)"):
        check_same_processes(ckpt, now)
    check_same_processes(ckpt, saved)


def test_hard_negatives_are_shifted_by_at_least_one_frame():
    """min_shift_s 0 made the in-sync audio its own hard negative (acc_hard was noise)."""
    from avssl.pretraining import PairDataConfig

    with pytest.raises(ConfigError, match=r"min_shift_s must be at least one frame \(1 / "
                                          r"--data.fps = 0.125 s\), got 0.0"):
        PairDataConfig(min_shift_s=0.0, max_shift_s=0.0)
    with pytest.raises(ConfigError, match="at least one frame"):
        PairDataConfig(min_shift_s=0.03, fps=25.0)
    assert PairDataConfig(min_shift_s=0.04, fps=25.0).min_shift_s == 0.04


def test_resume_is_exact(tmp_path, cache):
    """5 steps straight == 2 steps, stop, 3 resumed steps: same losses, bitwise weights.

    12 clips / batch 4 = 3 steps per epoch, so the stop at step 2 falls mid-epoch and the
    resumed part crosses an epoch boundary. Two DataLoader workers, as in real runs."""
    common = ["--optim.steps=5", "--run.save_every=100", "--data.num_workers=2",
              "--optim.warmup_steps=2"]
    run("pretrain_sync.py", tmp_path / "a", cache, *common, "--run.name=straight")
    run("pretrain_sync.py", tmp_path / "b", cache, *common, "--run.name=split",
        "--run.stop_after=2")
    split = tmp_path / "b" / "pretrain_sync" / "split"
    assert sorted(p.name for p in split.glob("step_*")) == ["step_0000002"]
    run("pretrain_sync.py", tmp_path / "b", cache, *common, "--run.resume")
    straight = tmp_path / "a" / "pretrain_sync" / "straight"
    assert losses(straight) == losses(split) and sorted(losses(split)) == [1, 2, 3, 4, 5]
    a, b = weights(straight / "step_0000005"), weights(split / "step_0000005")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GLOO_COMMON = ["--optim.steps=3", "--run.save_every=100", "--model.video=vit_video_tiny",
               "--model.video_kwargs={}", "--model.audio=audio_vit_tiny", "--run.name=r"]


@pytest.fixture(scope="module")
def one_process_losses(tmp_path_factory, cache):
    """Losses of one process with batch 4 (LayerNorm encoders, no BatchNorm)."""
    out = tmp_path_factory.mktemp("one")
    run("pretrain_sync.py", out, cache, *GLOO_COMMON)
    return losses(out / "pretrain_sync" / "r")


def test_two_processes_match_one(tmp_path, cache, one_process_losses):
    """gloo, 2 x batch 2 == 1 x batch 4 (same global batch; LayerNorm encoders, no BatchNorm)."""
    # accelerate's own launcher, as the README documents: its --cpu multi-process launch needs
    # mpirun, but --multi_gpu with ACCELERATE_USE_CPU gives its MULTI_CPU (gloo) setup
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--main_process_port", str(_free_port())]
    run("pretrain_sync.py", tmp_path / "two", cache, *GLOO_COMMON, "--data.batch_size=2",
        launch=launch, env={"ACCELERATE_USE_CPU": "true"})
    assert_same_losses(one_process_losses, losses(tmp_path / "two" / "pretrain_sync" / "r"))


def test_fsdp2_on_two_processes_matches_one_and_resumes(tmp_path, cache, one_process_losses):
    """accelerate's FSDP2 (sharded state, forced on for CPU processes by tests/fsdp_on_cpu.py):
    the losses of one process with the same global batch, across a stop and --run.resume, and
    checkpoints of whole towers. The step clipped the parameter list taken before prepare,
    which FSDP2 replaces (accelerate refused to compare it with the sharded ones)."""
    # the README's flags: accelerate's defaults otherwise (cpu_ram_efficient_loading on)
    fsdp = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version",
            "2", "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--num_processes", "2"]
    env, runner = {"ACCELERATE_USE_CPU": "true"}, str(ROOT / "tests" / "fsdp_on_cpu.py")
    for extra in (["--run.stop_after=2"], ["--run.resume"]):
        launch = [*fsdp, "--main_process_port", str(_free_port()), runner]
        run("pretrain_sync.py", tmp_path, cache, *GLOO_COMMON, "--data.batch_size=2", *extra,
            launch=launch, env=env)
    two = losses(tmp_path / "pretrain_sync" / "r")
    assert sorted(two) == [1, 2, 3]
    for step in one_process_losses:
        assert two[step] == pytest.approx(one_process_losses[step], abs=1e-5)
    for part in ("video", "audio"):  # strict loading: every tensor whole
        load_encoder(tmp_path / "pretrain_sync" / "latest", part)


def test_fsdp2_trains_the_binary_head_as_one_process(tmp_path, cache):
    """--loss.kind=binary under FSDP: its classifier head was a second model, which accelerate's
    FSDP cannot prepare beside the towers with one optimizer, so the run was refused. FSDP2 now
    shards the head as a unit inside the towers: two processes with batch 2 give the losses of
    one with batch 4 across a stop and a resume from a sharded checkpoint, which holds the whole
    head as a one-process run saves it. FSDP1 is refused with what to launch instead."""
    binary = [*GLOO_COMMON, "--loss.kind=binary"]
    run("pretrain_sync.py", tmp_path / "one", cache, *binary)
    fsdp = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version",
            "2", "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--num_processes", "2"]
    env, runner = {"ACCELERATE_USE_CPU": "true"}, str(ROOT / "tests" / "fsdp_on_cpu.py")
    for extra in (["--run.stop_after=2"], ["--run.resume"]):
        launch = [*fsdp, "--main_process_port", str(_free_port()), runner]
        proc = run("pretrain_sync.py", tmp_path / "two", cache, *binary, "--data.batch_size=2",
                   *extra, launch=launch, env=env)
        assert "FSDP: SyncObjective sharded as its own fp32 unit of the model" in proc.stdout
    one, two = (tmp_path / n / "pretrain_sync" / "r" for n in ("one", "two"))
    assert_same_losses(losses(one), losses(two))
    a, b = weights(one / "step_0000003"), weights(two / "step_0000003")
    assert a.keys() == b.keys() and any(k.startswith("objective.head.") for k in a), sorted(a)
    for k in a:
        assert a[k].shape == b[k].shape and b[k].dtype == torch.float32, k
        assert torch.allclose(a[k], b[k], atol=1e-4), (k, (a[k] - b[k]).abs().max())


def test_a_head_outside_the_model_is_refused_under_fsdp1():
    """FSDP1 cannot take the binary head in as a unit called outside the model's forward
    (and accelerate's FSDP1 does not run on CPU processes, so this asks the function alone)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from avssl.launch import fsdp_adopt_head
    from avssl.objectives.sync import SyncObjective

    model, head = torch.nn.Linear(2, 2), SyncObjective("binary", embed_dim=4)
    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP,
                            state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1)))
    with pytest.raises(ConfigError, match=r"SyncObjective has trainable parameters outside the "
                                          r"model .* need FSDP2: launch with --fsdp_version 2"):
        fsdp_adopt_head(fsdp1, model, head, "sync_head")
    plain = SimpleNamespace(distributed_type=DistributedType.NO, state=SimpleNamespace())
    assert fsdp_adopt_head(plain, model, head, "sync_head") is False
    assert not hasattr(model, "sync_head")  # left where it was: prepared on its own


def test_fsdp2_accumulates_gradients_as_one_process(tmp_path, cache):
    """--optim.grad_accum=2 under FSDP2: accelerate's accumulate switched gradient sync off on
    every module it was given, the unprepared objective too, and FSDP2's no_sync stopped the
    first micro-batch ("'SyncObjective' object has no attribute 'set_requires_gradient_sync'").
    Two processes with batch 2 give the losses of one with batch 4 (LayerNorm towers)."""
    accum = [*GLOO_COMMON, "--optim.grad_accum=2"]
    run("pretrain_sync.py", tmp_path / "one", cache, *accum)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version",
              "2", "--num_processes", "2", "--main_process_port", str(_free_port()),
              str(ROOT / "tests" / "fsdp_on_cpu.py")]
    run("pretrain_sync.py", tmp_path / "two", cache, *accum, "--data.batch_size=2",
        launch=launch, env={"ACCELERATE_USE_CPU": "true"})
    assert_same_losses(*(losses(tmp_path / n / "pretrain_sync" / "r") for n in ("one", "two")))


@pytest.mark.parametrize("recipe,unit", [
    ("pretrain_mbt.py", "Block"),  # bottleneck tokens: a parameter at the model's root
    ("pretrain_sync.py", "BasicBlock"),  # BatchNorm's running statistics
])
def test_fsdp2_with_accelerates_default_loading_trains_the_default_models(tmp_path, cache,
                                                                         recipe, unit):
    """`accelerate launch --use_fsdp` turns cpu_ram_efficient_loading on, and FSDP2's prepare
    then reloaded rank 0's weights through code for 🤗 Transformers models, which failed on both
    recipes' default models; the recipes switch it off and say so. With activation checkpointing
    on too, which the README says trains both."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version",
              "2", "--fsdp_activation_checkpointing", "true",
              "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_transformer_layer_cls_to_wrap", unit, "--num_processes", "2",
              "--main_process_port", str(_free_port()), str(ROOT / "tests" / "fsdp_on_cpu.py")]
    proc = run(recipe, tmp_path, cache, "--optim.steps=2", "--run.save_every=100",
               "--run.name=r", launch=launch, env={"ACCELERATE_USE_CPU": "true"})
    assert "FSDP: cpu_ram_efficient_loading off" in proc.stdout
    steps = losses(tmp_path / recipe.removesuffix(".py") / "r")
    assert sorted(steps) == [1, 2] and all(math.isfinite(v) for v in steps.values())
    # the README's caveat: a checkpointed block's forward runs again in the backward pass, so
    # its BatchNorm statistics take two updates a step (the stem's, outside the blocks, one)
    tracked = {k: int(t) for k, t in weights(tmp_path / recipe.removesuffix(".py") / "latest")
               .items() if k.endswith("num_batches_tracked")}
    assert (len(tracked) > 0) == (recipe == "pretrain_sync.py")  # MBT's ViTs: no BatchNorm
    assert all(n == (4 if ".layer" in k else 2) for k, n in tracked.items()), tracked


@pytest.mark.parametrize("kind", ["infonce", "binary"])
def test_fsdp2_in_bf16_trains_batchnorm_towers_in_fp32_units(tmp_path, cache, monkeypatch, kind):
    """pretrain_sync's default towers under the README's FSDP2 launch with bf16: FSDP2 cast
    BatchNorm's weights to bf16 beside its fp32 running statistics and the first forward
    stopped (on GPUs too: "Expected running_mean to have type BFloat16"). Each BatchNorm is now
    its own fp32 unit: the run trains across a stop and a resume from a sharded checkpoint, its
    BatchNorm weights and statistics move (so the optimizer holds the sharded BatchNorm
    parameters), and the checkpoint is whole and fp32. The binary loss's head, an fp32 unit
    inside the towers, trains beside them in bf16 too."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version",
              "2", "--mixed_precision", "bf16", "--fsdp_auto_wrap_policy",
              "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap", "BasicBlock",
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--num_processes", "2",
              "--main_process_port", str(_free_port()), str(ROOT / "tests" / "fsdp_on_cpu.py")]
    log, run_dir = _stop_and_resume("pretrain_sync.py", tmp_path, cache,
                                    "--optim.warmup_steps=1", f"--loss.kind={kind}",
                                    launch=launch)
    assert "mixed precision bf16" in log, log[-2000:]
    assert log.count("BatchNorm layers sharded as their own fp32 units") == 2
    assert log.count("SyncObjective sharded as its own fp32 unit") == (2 if kind == "binary"
                                                                       else 0)
    steps = losses(run_dir)
    assert sorted(steps) == [1, 2, 3] and all(math.isfinite(v) for v in steps.values())
    _assert_whole_fp32_towers(run_dir.parent / "latest")
    bn = {k: t for k, t in weights(run_dir.parent / "latest").items()
          if ".bn1." in k or ".bn2." in k}
    assert bn and all(torch.isfinite(t.float()).all() for t in bn.values())
    assert any(not torch.equal(t, torch.ones_like(t)) for k, t in bn.items()
               if k.endswith(".weight")), "BatchNorm weights were not trained"
    assert all(int(t) == 3 for k, t in bn.items() if k.endswith("num_batches_tracked"))
    head = {k: t for k, t in weights(run_dir.parent / "latest").items()
            if k.startswith("objective.head.")}
    assert (len(head) == 4 and all(t.dtype == torch.float32 and torch.isfinite(t).all()
                                   for t in head.values())) == (kind == "binary"), sorted(head)


def test_mbt_two_processes_match_one(tmp_path, cache):
    """gloo, 2 x batch 2 == 1 x batch 4 for the MBT recipe too: pair types and masks are drawn
    for the global batch, a mismatched pair takes the previous clip of the global batch, and the
    contrastive term gathers its negatives from every process."""
    common = ["--optim.steps=3", "--run.save_every=100", "--run.name=r",
              "--loss.recon_weight=1.0"]
    run("pretrain_mbt.py", tmp_path / "one", cache, *common)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--main_process_port", str(_free_port())]
    run("pretrain_mbt.py", tmp_path / "two", cache, *common, "--data.batch_size=2",
        launch=launch, env={"ACCELERATE_USE_CPU": "true"})
    assert_same_losses(*(losses(tmp_path / n / "pretrain_mbt" / "r") for n in ("one", "two")))


def test_held_out_metrics_do_not_depend_on_the_process_count(tmp_path, cache):
    """12 held-out clips do not split evenly into batches of 5 on 2 processes: a sharded loader
    would pad with repeated clips. Every process scores all 12 instead, in batches of the global
    batch size, so 2 x batch 5 reports the held-out numbers of 1 x batch 10."""
    args = [*GLOO_COMMON, "--optim.steps=1", "--data.val_videos=14"]
    run("pretrain_sync.py", tmp_path / "one", cache, *args, "--data.batch_size=10")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--main_process_port", str(_free_port())]
    run("pretrain_sync.py", tmp_path / "two", cache, *args, "--data.batch_size=5",
        launch=launch, env={"ACCELERATE_USE_CPU": "true"})
    one, two = (json.loads((tmp_path / n / "pretrain_sync" / "r" / "final_metrics.json")
                           .read_text()) for n in ("one", "two"))
    assert one["val_clips"] == two["val_clips"] == 12, (one, two)
    for key in ("val_acc_hard", "val_acc_easy"):  # easy: among the clips of a global batch
        assert two[key] == pytest.approx(one[key], abs=1e-6), (key, one, two)


def launch_two_machines(cwds: list[Path], cache: Path,
                        *args: str) -> list[subprocess.CompletedProcess]:
    """accelerate's multi-machine launch, as the README documents it, with both "machines" on
    this host: one launcher per machine rank, one gloo process each, meeting at 127.0.0.1. Each
    machine runs in its own folder with ``--run.out=runs``: one folder is a shared filesystem,
    two folders are two machines' own disks."""
    port = str(_free_port())
    env = {**os.environ, "AVSSL_CACHE": str(cache), "ACCELERATE_USE_CPU": "true"}
    procs = []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", port,
               str(ROOT / "recipes" / "pretrain_sync.py"), *TINY, "--run.out=runs", *args]
        procs.append(subprocess.Popen(cmd, env=env, cwd=cwd, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    done = []
    for cmd_proc in procs:
        stdout, stderr = cmd_proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(cmd_proc.args, cmd_proc.returncode, stdout,
                                                stderr))
    return done


def test_two_machines_match_one(tmp_path, cache, one_process_losses):
    """accelerate's multi-machine launch (2 machines x 1 process, batch 2 each) gives the losses
    of one process with batch 4; only the main process writes the run folder."""
    done = launch_two_machines([tmp_path] * 2, cache, *GLOO_COMMON, "--data.batch_size=2")
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 process(es)" in proc.stdout, proc.stdout[-2000:]
    assert "saved " in done[0].stdout and "saved " not in done[1].stdout
    two = losses(tmp_path / "runs" / "pretrain_sync" / "r")
    assert sorted(two) == sorted(one_process_losses) == [1, 2, 3]
    for step in two:
        assert two[step] == pytest.approx(one_process_losses[step], abs=1e-5)
    # every process's RNG state is in the checkpoint, so --run.resume can continue on 2 machines
    state = tmp_path / "runs" / "pretrain_sync" / "r" / "step_0000003" / "state"
    assert {p.name for p in state.glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                   "random_states_1.pkl"}


def test_resume_on_two_machines_is_exact(tmp_path, cache):
    """Two machines: 4 steps straight == 2 steps, stop, 2 resumed steps (each process restores
    its own RNG state and data position from the shared checkpoint): same losses, bitwise
    weights. 12 clips / global batch 4 = 3 steps per epoch: the stop falls mid-epoch."""
    common = [*GLOO_COMMON, "--data.batch_size=2", "--optim.steps=4", "--optim.warmup_steps=1",
              "--data.num_workers=2"]
    straight = tmp_path / "a" / "runs" / "pretrain_sync" / "r"
    split = tmp_path / "b" / "runs" / "pretrain_sync" / "r"
    for cwd, extra in ((tmp_path / "a", []), (tmp_path / "b", ["--run.stop_after=2"]),
                       (tmp_path / "b", ["--run.resume"])):
        if extra == ["--run.resume"]:
            # continued on one process, each process's share of the global batch would double:
            # refused before anything is written
            before = sorted(split.rglob("*"))
            proc = run("pretrain_sync.py", tmp_path / "b" / "runs", cache, *common, *extra,
                       check=False)
            assert "saved by 2 process(es) but this launch has 1" in proc.stderr, proc.stderr
            assert proc.returncode != 0 and sorted(split.rglob("*")) == before
        for proc in launch_two_machines([cwd] * 2, cache, *common, *extra):
            assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(straight) == losses(split) and sorted(losses(split)) == [1, 2, 3, 4]
    a, b = weights(straight / "step_0000004"), weights(split / "step_0000004")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("resume", [False, True])
def test_machines_without_a_shared_run_folder_stop_before_training(tmp_path, cache, resume):
    """Each "machine" with its own disk: every process stops with one clear error, also when only
    machine 0's disk holds the checkpoint to resume (machine 1 used to fail alone while machine
    0 waited for it), and nothing is written."""
    disks = [tmp_path / "disk0", tmp_path / "disk1"]
    args = [*GLOO_COMMON, "--data.batch_size=2"]
    if resume:  # a checkpoint on machine 0's disk only
        run("pretrain_sync.py", disks[0] / "runs", cache, *args, "--run.stop_after=2")
        args.append("--run.resume")
    for d in disks:
        d.mkdir(parents=True, exist_ok=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = launch_two_machines(disks, cache, *args)
    for proc in done:
        assert proc.returncode != 0
        assert "process(es) [1] cannot see" in proc.stderr, proc.stderr[-3000:]
        assert "filesystem they all share" in proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("policy,accum", [("skip", 1), ("stop", 1), ("skip", 2)])
def test_nonfinite_loss_never_reaches_the_optimizer(tmp_path, cache, monkeypatch, capsys, policy,
                                                    accum):
    """With --optim.grad_accum=2 only the step's first micro-batch is poisoned: the step is
    still skipped, and said once (it was said per bad micro-batch, the later ones quoting the
    finite loss of a clean micro-batch)."""
    from accelerate.state import AcceleratorState

    sys.path.insert(0, str(ROOT / "recipes"))
    import pretrain_sync

    real = pretrain_sync.forward_loss
    calls = []

    def poisoned(model, objective, batch, cfg, step):
        calls.append(step)
        if calls.count(1) == 1 and step == 1:  # the second step's first micro-batch: a NaN in
            # one clip's audio makes its loss (and so its gradient) NaN, after the forward pass
            # wrote NaN into BatchNorm running statistics
            batch = {**batch, "audio": batch["audio"].clone()}
            batch["audio"][0, ..., :100] = float("nan")
        return real(model, objective, batch, cfg, step)

    monkeypatch.setattr(pretrain_sync, "forward_loss", poisoned)
    monkeypatch.setenv("AVSSL_CACHE", str(cache))
    args = [*TINY, f"--run.out={tmp_path}", "--optim.steps=3", "--run.save_every=1",
            "--run.name=r", f"--run.on_nonfinite={policy}", f"--optim.grad_accum={accum}"]
    try:
        if policy == "stop":
            with pytest.raises(Exception, match="non-finite loss or gradient at step 1.*stopped"):
                pretrain_sync.main(args)
            assert not (tmp_path / "pretrain_sync" / "r" / "step_0000002").exists()
            return
        pretrain_sync.main(args)
    finally:
        AcceleratorState._reset_state(True)
        sys.path.remove(str(ROOT / "recipes"))
    out = capsys.readouterr().out
    assert out.count("non-finite loss or gradient at step") == 1
    assert "non-finite loss or gradient at step 1 (loss=nan); skipped" in out
    assert calls.count(1) == accum
    run_dir = tmp_path / "pretrain_sync" / "r"
    before, after = weights(run_dir / "step_0000001"), weights(run_dir / "step_0000002")
    # the step was skipped: every parameter and every running statistic is as it was (only the
    # count of batches BatchNorm has seen moved on)
    kept = [k for k in before if not k.endswith("num_batches_tracked")]
    assert sum(k.endswith("running_var") for k in kept) > 5
    assert len(kept) > 20 and all(torch.equal(before[k], after[k]) for k in kept)
    final = weights(run_dir / "step_0000003")
    assert all(torch.isfinite(v).all() for v in final.values())
    assert any(not torch.equal(final[k], after[k]) for k in final)  # training went on
    with open(run_dir / "metrics.csv") as f:
        assert [float(r["skipped"]) for r in csv.DictReader(f)] == [0.0, 1.0, 0.0]


def default_run_metrics(recipe: str, out: Path) -> dict:
    """Run ``recipes/<recipe>.py`` with its defaults into ``out``; -> its final_metrics.json."""
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / f"{recipe}.py"),
                           f"--run.out={out}", "--run.name=default"],
                          capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / recipe / "default" / "final_metrics.json").read_text())


def test_a_video_in_two_rows_is_never_its_own_mismatched_pair():
    """A folder's silent videos are replaced by substitutes, so one video can fill two adjacent
    rows; the later row's "mismatched" audio was its own (shifted by any amount)."""
    from avssl.pretraining import own_audio_as_mismatched

    label = torch.tensor([2, 2, 2, 0, 2])
    batch = {"video_index": torch.tensor([3, 3, 5, 5, 5]),
             "hard_valid": torch.tensor([True, True, False, True, False])}
    # row 1 follows row 0 (video 3): shifted; row 4 follows row 3 (video 5) and has no shift
    # window: in sync; row 0 follows row 4 (the roll wraps) and row 2 follows video 3: kept
    assert own_audio_as_mismatched(label, batch, 0, 1).tolist() == [2, 1, 2, 0, 0]
    assert own_audio_as_mismatched(label, {"hard_valid": batch["hard_valid"]}, 0, 1) is label


def test_mbt_evaluation_scores_every_clip_with_all_three_pairs():
    """Held-out MBT accuracy counts each clip's in-sync, shifted (where the clip has room for a
    shift) and mismatched pair once, instead of one drawn pair type per clip."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    sys.path.insert(0, str(ROOT / "recipes"))
    import pretrain_mbt
    from avssl.objectives.fusion import FusionObjective

    class Always(torch.nn.Module):  # predicts one pair type for every row
        def __init__(self, k):
            super().__init__()
            self.k, self.seen = k, []

        def forward(self, video, logmel, **kw):
            self.seen.append(len(video))
            return {"logits": torch.nn.functional.one_hot(
                torch.full((len(video),), self.k), 3).float()}

    cfg = pretrain_mbt.Config()
    cfg.loss.contrast_weight = 0.0
    valid = torch.tensor([True, False, True, True, False, True])  # 4 of 6 clips can be shifted
    batch = {"video": torch.zeros(6, 3, 2, 8, 8), "audio": torch.randn(6, 1, 1600),
             "audio_shift": torch.randn(6, 1, 1600), "hard_valid": valid}
    try:
        acc = Accelerator(cpu=True)
        results = {}
        for k in (0, 1, 2):
            model = Always(k)
            results[k] = pretrain_mbt.evaluate(model, FusionObjective(), [batch], cfg, acc)
            # the first clip's mismatched pair (the last clip's audio) comes as an extra row
            assert model.seen == [6, 4, 5, 1]
    finally:
        AcceleratorState._reset_state(True)
        sys.path.remove(str(ROOT / "recipes"))
    # 6 in-sync + 4 shifted + 6 mismatched pairs
    assert {r["val_pairs"] for r in results.values()} == {16}
    assert {r["val_clips"] for r in results.values()} == {6}
    assert results[0]["val_acc"] == pytest.approx(6 / 16)
    assert results[1]["val_acc"] == pytest.approx(4 / 16)
    assert results[2]["val_acc"] == pytest.approx(6 / 16)
    # in-sync vs shifted on the 10 rows of those types: "always in sync" is right on 6
    assert results[0]["val_acc_sync"] == pytest.approx(6 / 10)
    assert results[1]["val_acc_sync"] == pytest.approx(4 / 10)


def test_sync_evaluation_leaves_out_a_one_clip_tail_batch():
    """36 held-out clips in batches of 7 end with one clip: it has no easy negative, and the
    objective's refusal used to end a finished run without its final metrics."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    sys.path.insert(0, str(ROOT / "recipes"))
    import pretrain_sync

    class InSync(torch.nn.Module):  # audio embeddings equal the video's; shifted ones differ
        def forward(self, video, mel, mel_shift, hard_valid=None):
            v = torch.nn.functional.one_hot(torch.arange(len(video)), 8).float()
            return {"video": v, "audio": v, "audio_shift": -v}

    cfg = pretrain_sync.Config()
    def batch(n, valid=True):
        return {"video": torch.zeros(n, 3, 2, 8, 8), "audio": torch.randn(n, 1, 1600),
                "audio_shift": torch.randn(n, 1, 1600),
                "hard_valid": torch.full((n,), valid, dtype=bool)}
    try:
        acc = Accelerator(cpu=True)
        objective = pretrain_sync.SyncObjective(cfg.loss.kind, cfg.loss.temperature,
                                                cfg.loss.margin, cfg.loss.hard_weight,
                                                cfg.loss.hard_start_step,
                                                embed_dim=cfg.model.proj_dim)
        out = pretrain_sync.evaluate(InSync(), objective, [batch(7), batch(1)], cfg, acc)
        # no clip had room for a shift: no hard accuracy at all, not 0 %
        no_hard = pretrain_sync.evaluate(InSync(), objective, [batch(5, valid=False)], cfg, acc)
    finally:
        AcceleratorState._reset_state(True)
        sys.path.remove(str(ROOT / "recipes"))
    assert out == {"val_acc_hard": 1.0, "val_acc_easy": 1.0, "val_clips": 7}
    assert no_hard == {"val_acc_easy": 1.0, "val_clips": 5}


@pytest.mark.slow
def test_default_sync_run_learns_synchronisation(tmp_path):
    """The README's default run: hard-negative sync accuracy >= 0.8 on held-out clips."""
    final = default_run_metrics("pretrain_sync", tmp_path)
    assert final["val_acc_hard"] >= 0.8, final


@pytest.mark.slow
def test_default_mbt_run_learns_the_pair_types(tmp_path):
    """The README's default MBT run (6-9 minutes): held-out 3-way pair-type accuracy above
    chance (1/3) by a margin, on 504 pairs (168 clips x in-sync, shifted, mismatched; standard
    error about 0.02). Measured 0.427 on the AMD EPYC (2026-11-29); plain MBT stayed at
    0.23-0.35 (scored with one drawn pair per clip). The bar is chance + 3 standard errors, a learning claim that
    another machine's run-to-run spread (about one standard error) does not trip."""
    final = default_run_metrics("pretrain_mbt", tmp_path)
    se = math.sqrt((1 / 3) * (2 / 3) / final["val_pairs"])
    assert final["val_pairs"] == 504 and final["val_acc"] >= 1 / 3 + 3 * se, final
    assert final["train_acc"] >= 1 / 3 + 3 * se, final


def test_launches_that_start_one_process_or_unjoined_processes_are_called_out():
    """accelerate 1.15's `launch --num_processes 2` without GPUs starts one process (no mpirun):
    a warning naming the launch that works. Processes that find no group (--multi_gpu without
    GPUs) would each train alone: an error. Real multi-process launches and plain runs pass."""
    from avssl.errors import AvsslError
    from avssl.launch import launch_warning

    simple = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu" in launch_warning(1, simple)
    assert "started one process" in launch_warning(1, {**simple, "ACCELERATE_USE_CPU": "False"})
    assert launch_warning(2, {**simple, "WORLD_SIZE": "2"}) is None  # a real group
    assert launch_warning(1, {"ACCELERATE_USE_CPU": "True"}) is None  # --num_processes 1
    assert launch_warning(1, {}) is None  # python recipes/...
    with pytest.raises(AvsslError, match="2 processes were launched but did not join one group"):
        launch_warning(1, {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs --multi_gpu processes do join")
def test_multi_gpu_launch_without_gpus_stops_before_writing(tmp_path, cache):
    proc = run("pretrain_sync.py", tmp_path, cache, "--optim.steps=1", "--run.name=r",
               check=False,
               launch=[sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                       "--num_processes", "2", "--main_process_port", str(_free_port())])
    assert proc.returncode != 0
    assert "error: 2 processes were launched but did not join one group" in proc.stderr
    assert not (tmp_path / "pretrain_sync").exists()


def test_accelerate_cpu_launch_prints_the_warning(tmp_path, cache):
    proc = run("pretrain_sync.py", tmp_path, cache, "--optim.steps=1", "--run.name=r",
               launch=[sys.executable, "-m", "accelerate.commands.launch", "--cpu",
                       "--num_processes", "2"])
    assert "warning: accelerate launch started one process" in proc.stdout
    # accelerate's launcher exported OMP_NUM_THREADS=1; the recipe takes the machine's cores
    cores = len(os.sched_getaffinity(0))
    if cores > 1:
        assert f"{cores} CPU thread(s) (cores / local processes" in proc.stdout


def test_skipped_fp16_step_still_updates_the_loss_scale():
    """Under fp16 the recipes clip (which unscales) and then skip a non-finite step; the scaler
    must still update, or the next step's unscale_ raises and the scale never drops."""
    from types import SimpleNamespace

    from avssl.pretraining import nonfinite_action

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    acc = SimpleNamespace(scaler=scaler, sync_gradients=True, print=lambda *a: None)
    for loss_scale in (float("inf"), 1.0):
        loss = (w * loss_scale).sum()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # what accelerator.clip_grad_norm_ does under fp16
        if not torch.isfinite(w.grad).all():
            nonfinite_action("skip", 0, loss, acc)
        else:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
    assert scaler.get_scale() < 2.0 ** 16  # the overflow halved the scale
    assert torch.equal(w.detach(), torch.full((3,), 0.9))  # only the finite step updated w


def _all_finite_worker(rank: int, port: int, out: Path) -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from avssl.pretraining import all_finite

    AcceleratorState._reset_state(True)  # a state forked from the parent would be one process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      ACCELERATE_USE_CPU="1")
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    answers = []
    for bad_rank in (0, 1, None):  # one process's loss is NaN, then none
        loss = torch.tensor(math.nan if rank == bad_rank else 1.0)
        answers.append(all_finite(acc, loss, None))
    (out / f"rank{rank}.json").write_text(json.dumps(answers))


def test_one_nonfinite_process_makes_every_process_skip_the_step(tmp_path):
    """all_finite asked accelerate for a "min" reduction, which it does as a sum: one process
    with a finite loss outvoted a NaN one, so the process holding the NaN went on as if finite."""
    torch.multiprocessing.start_processes(_all_finite_worker, args=(_free_port(), tmp_path),
                                          nprocs=2, start_method="fork")
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [False, False, True]


def test_gradient_accumulation_steps_log_their_mean_and_drop_partial_steps(tmp_path, cache,
                                                                          monkeypatch):
    """K=2 micro-batches per step over 3 batches an epoch: each step uses exactly 2 (the third
    batch makes no step; it used to be forced into a 1-micro-batch step that shifted the
    epochs), and metrics.csv logs the mean of the step's micro-batch losses and the rate it
    trained with."""
    from accelerate.state import AcceleratorState

    sys.path.insert(0, str(ROOT / "recipes"))
    import pretrain_sync

    seen = []
    real = pretrain_sync.forward_loss

    def recording(*a, **k):
        out = real(*a, **k)
        seen.append(out["loss"].item())
        return out

    monkeypatch.setattr(pretrain_sync, "forward_loss", recording)
    monkeypatch.setenv("AVSSL_CACHE", str(cache))
    try:
        pretrain_sync.main([*TINY, f"--run.out={tmp_path}", "--optim.steps=2",
                            "--optim.grad_accum=2", "--optim.warmup_steps=2",
                            "--run.save_every=100", "--run.name=r"])
    finally:
        AcceleratorState._reset_state(True)
        sys.path.remove(str(ROOT / "recipes"))
    assert len(seen) == 4  # 2 steps x 2 micro-batches; the leftover batches were not used
    with open(tmp_path / "pretrain_sync" / "r" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == pytest.approx(
        [(seen[0] + seen[1]) / 2, (seen[2] + seen[3]) / 2], rel=1e-5)
    assert float(rows[0]["lr"]) == pytest.approx(1e-3 / 2)  # warm-up's first step: lr / 2


def test_resume_is_exact_with_gradient_accumulation(tmp_path, cache):
    """K=2 micro-batches of 4 clips: 3 batches an epoch = 1 step + 1 unused batch. The straight
    run used to make the 3rd batch a short second step and then jump to epoch 2, while a run
    resumed at step 1 went on with epoch 1: different data, different losses and weights."""
    common = ["--optim.steps=3", "--optim.grad_accum=2", "--optim.warmup_steps=2",
              "--run.save_every=100"]
    run("pretrain_sync.py", tmp_path / "a", cache, *common, "--run.name=straight")
    run("pretrain_sync.py", tmp_path / "b", cache, *common, "--run.name=split",
        "--run.stop_after=1")
    run("pretrain_sync.py", tmp_path / "b", cache, *common, "--run.resume")
    straight = tmp_path / "a" / "pretrain_sync" / "straight"
    split = tmp_path / "b" / "pretrain_sync" / "split"
    assert losses(straight) == losses(split) and sorted(losses(split)) == [1, 2, 3]
    a, b = weights(straight / "step_0000003"), weights(split / "step_0000003")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _recipe(name: str):
    """The recipe file ``recipes/<name>.py`` as a module (they are scripts, not a package)."""
    import importlib

    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "recipes"))


def _mbt_recipe():
    return _recipe("pretrain_mbt")


class _MaskSpy(torch.nn.Module):
    """Stands in for the fusion model: records the keyword arguments of each call."""

    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        grid = SimpleNamespace(grid_for=lambda size: (4, 2))  # 8 tokens per stream
        self.video = self.audio = SimpleNamespace(tokenizer=grid)
        self.calls: list[dict] = []

    def forward(self, video, logmel, **kw):
        self.calls.append(kw)
        return {"logits": torch.zeros(len(video), 3)}


def _pair_batch(n: int, valid: bool = True) -> dict:
    a = torch.randn(n, 1, 1600)
    return {"video": torch.zeros(n, 3, 2, 8, 8), "audio": a, "audio_shift": a + 1,
            "hard_valid": torch.full((n,), valid)}


def test_mbt_token_masks_do_not_repeat_the_pair_type_draw():
    """The masks' noise and the pair types' noise are independent streams: at seed 0 both were
    seeded by the step alone, so row 0's first video token was masked exactly when its pair was
    shifted, a label shortcut for the classifier."""
    pretrain_mbt = _mbt_recipe()
    cfg = pretrain_mbt.Config()
    cfg.loss.recon_weight, cfg.loss.contrast_weight = 1.0, 0.0
    spy, masked_by_label = _MaskSpy(), {0: [], 1: []}
    for step in range(300):
        out = pretrain_mbt.forward_loss(spy, lambda o, b: {}, _pair_batch(8), cfg, step)
        label = int(out["pair_label"][0])
        if label in masked_by_label:
            masked_by_label[label].append(bool(spy.calls[-1]["video_mask"][0, 0]))
    rates = {k: sum(v) / len(v) for k, v in masked_by_label.items()}
    assert all(0.3 < r < 0.7 for r in rates.values()), rates  # mask ratio 0.5 either way


def test_mbt_held_out_accuracy_is_measured_without_token_masks():
    """With --loss.recon_weight > 0 training masks half of the tokens; the held-out pair
    accuracies must see whole inputs, as every other ablation's do."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    pretrain_mbt = _mbt_recipe()
    from avssl.objectives.fusion import FusionObjective

    cfg = pretrain_mbt.Config()
    cfg.loss.recon_weight = 1.0
    spy = _MaskSpy()
    try:
        out = pretrain_mbt.evaluate(spy, FusionObjective(recon_weight=1.0, contrast_weight=1.0),
                                    [_pair_batch(4)], cfg, Accelerator(cpu=True))
    finally:
        AcceleratorState._reset_state(True)
    assert out["val_pairs"] == 12 and len(spy.calls) == 4  # + the first clip's mismatched row
    assert all(call == {} for call in spy.calls)


class _PairScorer(torch.nn.Module):
    """Logits a fixed function of (clip, paired audio): a pair scores the same in any batch."""

    def forward(self, video, logmel, **kw):
        v, a = video.flatten(1).mean(1), logmel.flatten(1).mean(1)
        return {"logits": torch.stack([torch.sin(7 * v + 3 * a), torch.cos(5 * v - 2 * a),
                                       torch.sin(11 * a * v)], dim=1)}


def test_mbt_held_out_numbers_do_not_depend_on_the_batch_size():
    """The mismatched audio of a held-out clip is the previous clip's, carried across batches
    (the first clip takes the last one's). A roll within each batch paired each batch's first
    clip with that batch's last: 9 clips gave val_acc 0.32 in one batch, 0.25 in batches of 4
    and 0.29 in batches of 2 (and no mismatched pairs at all in batches of 1)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from avssl.objectives.fusion import FusionObjective

    pretrain_mbt = _mbt_recipe()
    cfg = pretrain_mbt.Config()
    cfg.loss.contrast_weight = 0.0
    g = torch.Generator().manual_seed(0)
    n = 9
    clips = {"video": torch.arange(n).float().view(n, 1, 1, 1, 1).expand(n, 3, 2, 8, 8),
             "audio": torch.randn(n, 1, 1600, generator=g),
             "audio_shift": torch.randn(n, 1, 1600, generator=g),
             "hard_valid": torch.tensor([1, 0, 1, 1, 1, 0, 1, 1, 1]).bool()}
    results = []
    try:
        acc = Accelerator(cpu=True)
        for bs in (9, 4, 2, 1):
            batches = [{k: v[i:i + bs] for k, v in clips.items()} for i in range(0, n, bs)]
            results.append(pretrain_mbt.evaluate(_PairScorer(), FusionObjective(), batches, cfg,
                                                 acc))
    finally:
        AcceleratorState._reset_state(True)
    assert results[0]["val_pairs"] == 9 + 7 + 9
    assert all(r == results[0] for r in results[1:]), results


def test_held_out_mismatched_audio_is_the_previous_clip_across_batches():
    from avssl.pretraining import with_previous_clip

    audio = torch.arange(5.0).view(5, 1, 1)
    valid = torch.tensor([True, False, True, True, True])
    batches = [{"audio": audio[i:i + 2], "hard_valid": valid[i:i + 2], "video_id": ["x"]}
               for i in (0, 2, 4)]
    out = list(with_previous_clip(batches))
    assert len(out) == 4  # 3 batches + the first clip's mismatched row
    rows = torch.cat([b["pair_rows"] for b in out])
    other = torch.cat([b["audio_other"] for b in out]).flatten()
    scored = [(int(a), int(o)) for b in out for a, o, r in
              zip(b["audio"].flatten(), b["audio_other"].flatten(), b["pair_rows"][:, 2]) if r]
    assert sorted(scored) == [(0, 4), (1, 0), (2, 1), (3, 2), (4, 3)]  # all rolled by one
    assert rows[:, 0].sum() == 5 and rows[:5, 1].tolist() == valid.tolist()
    assert out[-1]["pair_rows"].tolist() == [[False, False, True]] and other[-1] == 4
    # one held-out clip has no other clip: no mismatched pair at all
    one = list(with_previous_clip([{"audio": audio[:1], "hard_valid": valid[:1]}]))
    assert len(one) == 1 and one[0]["pair_rows"].tolist() == [[True, True, False]]


def test_mbt_refuses_what_would_silently_train_nothing(tmp_path, cache):
    pretrain_mbt = _mbt_recipe()
    proc = run("pretrain_mbt.py", tmp_path, cache, "--data.batch_size=1", check=False)
    assert proc.returncode != 0
    assert "global batch of >= 2 clips" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match="mask_ratio > 0"):
        pretrain_mbt.LossConfig(recon_weight=1.0, mask_ratio=0.0)
    # one clip cannot have a mismatched pair: rolling the batch gives its own audio back
    cfg = pretrain_mbt.Config()
    with pytest.raises(ConfigError, match="at least 2 clips"):
        pretrain_mbt.make_pairs(_pair_batch(1), cfg, 0, torch.tensor([2]))
    audio, label = pretrain_mbt.make_pairs(_pair_batch(1), cfg, 0, torch.tensor([1]))
    assert label.tolist() == [1]


def test_mbt_pair_types_are_drawn_per_micro_batch_and_per_global_batch():
    """Each micro-batch draws its own pair types, and N processes draw what one process with the
    same global batch draws (each keeping its rows) — they all used to get one vector."""
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import pretrain_mbt
    finally:
        sys.path.remove(str(ROOT / "recipes"))
    cfg = pretrain_mbt.Config()

    def batch(n):
        a = torch.randn(n, 1, 100)
        return {"audio": a, "audio_shift": a + 1, "hard_valid": torch.ones(n, dtype=torch.bool)}

    one = pretrain_mbt.make_pairs(batch(32), cfg, step=5)[1]
    assert not torch.equal(one, pretrain_mbt.make_pairs(batch(32), cfg, step=5, micro=1)[1])
    halves = [pretrain_mbt.draw_pair_types(16, cfg, step=5, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), one)


def _epoch_orders(config, seed: int, epochs: int = 3) -> list[list[int]]:
    """The order a prepared shuffling loader gives in each of ``epochs`` epochs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    try:
        acc = Accelerator(cpu=True, dataloader_config=config)
        set_seed(seed)  # as the recipes do, before the loader is prepared
        loader = acc.prepare(torch.utils.data.DataLoader(list(range(32)), batch_size=32,
                                                         shuffle=True))
        orders = []
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            orders.append([int(i) for b in loader for i in b])
        return orders
    finally:
        AcceleratorState._reset_state(True)


def test_different_run_seeds_never_share_an_epoch_order():
    """accelerate's seedable sampler shuffles epoch e with seed + e, so --run.seed 0's epoch 1
    was --run.seed 1's epoch 0; the recipes space the seeds apart, and seed 0 (every shipped
    run) keeps its order."""
    from accelerate.utils import DataLoaderConfiguration

    from avssl.pretraining import loader_config

    plain = [_epoch_orders(DataLoaderConfiguration(use_seedable_sampler=True), s) for s in (0, 1)]
    assert plain[0][1] == plain[1][0]  # the collision, as accelerate does it
    ours = [_epoch_orders(loader_config(s), s) for s in (0, 1)]
    assert ours[0] == plain[0]
    assert not any(a == b for a in ours[0] for b in ours[1])
    assert all(sorted(o) == list(range(32)) for o in ours[0] + ours[1])


# ------------------------------------------------------------------------------------------- GPU
# Run on the device by `bash benchmarks/gpu_session.sh gpu_tests`; skipped in CI (no GPU).
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _stop_and_resume(recipe: str, out: Path, cache: Path, *args: str,
                     launch: list[str] | None = None) -> tuple[str, Path]:
    """3 steps as 2, a stop and 1 resumed; the two logs and the run folder."""
    logs = []
    for extra in (["--run.stop_after=2"], ["--run.resume"]):
        proc = run(recipe, out, cache, "--optim.steps=3", "--run.save_every=100",
                   "--run.name=r", *args, *extra, launch=launch)
        logs.append(proc.stdout + proc.stderr)
    return "\n".join(logs), out / recipe.removesuffix(".py") / "r"


def _assert_whole_fp32_towers(latest: Path) -> None:
    """The checkpoint holds fp32 tensors (bf16 is autocast, not the weights) that load whole into
    CPU encoders, which then give finite features."""
    saved = weights(latest)
    assert saved and all(t.dtype == torch.float32 for t in saved.values() if t.is_floating_point())
    video, audio = (load_encoder(latest, part).eval() for part in ("video", "audio"))
    with torch.no_grad():
        assert torch.isfinite(video(torch.randn(2, 3, 8, 32, 32))).all()
        assert torch.isfinite(audio(torch.randn(2, 1, 64, 101))).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("recipe", ["pretrain_sync.py", "pretrain_mbt.py"])
def test_one_gpu_trains_in_bf16_and_resumes(tmp_path, cache, recipe):
    """Issue 6 on one GPU: the speed rule picks bf16 autocast there and says so, every step's
    loss is finite across a stop and --run.resume, and the checkpoint is fp32 and CPU-loadable."""
    log, run_dir = _stop_and_resume(recipe, tmp_path, cache, "--data.num_workers=2")
    assert "speed settings on cuda: precision bf16" in log, log[-2000:]
    assert "pinned memory on" in log, log[-2000:]
    steps = losses(run_dir)
    assert sorted(steps) == [1, 2, 3] and all(math.isfinite(v) for v in steps.values())
    _assert_whole_fp32_towers(run_dir.parent / "latest")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("recipe,unit", [("pretrain_sync.py", "BasicBlock"),
                                         ("pretrain_mbt.py", "Block")])
def test_fsdp2_in_bf16_on_one_gpu_resumes_and_saves_whole_towers(tmp_path, cache, recipe, unit):
    """The README's FSDP2 launch on one GPU, with bf16: pretrain_sync's default towers carry
    BatchNorm, sharded as fp32 units (tested on CPU processes above); this checks the GPU's
    mixed-precision BatchNorm kernel with them. Sharded state across a stop and a resume, whole
    fp32 tensors in the checkpoint."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version",
              "2", "--num_processes", "1", "--mixed_precision", "bf16",
              "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_transformer_layer_cls_to_wrap", unit,
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
              "--main_process_port", str(_free_port())]
    log, run_dir = _stop_and_resume(recipe, tmp_path, cache, launch=launch)
    assert "precision bf16" in log, log[-2000:]
    steps = losses(run_dir)
    assert sorted(steps) == [1, 2, 3] and all(math.isfinite(v) for v in steps.values())
    _assert_whole_fp32_towers(run_dir.parent / "latest")
