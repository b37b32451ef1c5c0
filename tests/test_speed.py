"""avssl.speed: the measured rules pick the settings per device, accelerate's flag wins, and
channels-last / compile keep results and checkpoints unchanged."""
from __future__ import annotations

import os

import pytest
import torch

from avssl.errors import ConfigError
import avssl.speed as speed_module
from avssl.speed import _threads, apply_threads, pick, prepare_module


@pytest.fixture(autouse=True)
def no_launch_env(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)


def test_cpu_keeps_fp32_eager_and_says_why():
    s = pick("cpu", num_workers=2)
    assert (s.mixed_precision, s.channels_last, s.compile, s.pin_memory) == ("no", False, False,
                                                                           False)
    assert s.persistent_workers and not pick("cpu", num_workers=0).persistent_workers
    line = s.describe()
    assert line.startswith("speed settings on cpu: precision fp32 (bf16 autocast measured")
    assert "pinned memory off (no GPU)" in line and "persistent workers on (2 worker(s))" in line


def test_the_bench_log_says_only_finetune_keeps_its_workers():
    """Feature extraction reads each item once; a log claiming persistent workers misleads."""
    from avssl.bench.features import speed
    line = speed(2).describe()
    assert "persistent workers on (2 worker(s), finetune training only" in line
    assert "persistent workers off (no workers)" in speed(0).describe()


def test_bf16_gpu_gets_bf16_and_pinned_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    s = pick("cuda")
    assert s.mixed_precision == "bf16" and s.pin_memory and "1.45x" in s.describe()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick("cuda").mixed_precision == "no"



def test_gpu_with_only_emulated_bf16_keeps_fp32(monkeypatch):
    """torch's is_bf16_supported() says yes on a V100 / T4 (emulated); only native counts."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    s = pick("cuda")
    assert s.mixed_precision == "no" and "no native bf16" in s.describe()


def test_accelerate_flag_and_explicit_choice_win(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert pick("cpu").mixed_precision == "bf16"
    assert "from accelerate launch" in pick("cpu").describe()
    # accelerate launch writes "no" when nothing was asked: the rule still applies
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert pick("cuda").mixed_precision == "bf16"
    assert pick("cuda", mixed_precision="no").mixed_precision == "no"
    s = pick("cpu", channels_last="on", compile="on")
    assert s.channels_last and s.compile and "channels-last on (asked for)" in s.describe()


def test_bad_choices_are_one_line_errors():
    with pytest.raises(ConfigError, match="mixed_precision must be one of auto, no, bf16, fp16"):
        pick("cpu", mixed_precision="fp8")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        pick("cpu", mixed_precision="fp16")
    with pytest.raises(ConfigError, match="channels_last must be auto, on or off"):
        pick("cpu", channels_last="yes")


def test_accelerate_launch_fp8_is_refused_not_ignored(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="--mixed_precision fp8 is not supported"):
        pick("cpu")
    assert pick("cpu", mixed_precision="no").mixed_precision == "no"  # an explicit choice wins


def test_accelerate_launch_dynamo_backend_is_logged_and_not_compiled_twice(monkeypatch):
    """accelerate launch --dynamo_backend X compiles the model in Accelerator.prepare."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # what launch writes by default
    assert not pick("cpu").compile
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    s = pick("cpu", compile="off")
    assert s.compile and "torch.compile on (accelerate launch --dynamo_backend inductor)" in \
        s.describe()
    net = torch.nn.Linear(2, 2)
    monkeypatch.setattr(net, "compile", lambda *a, **k: pytest.fail("compiled a second time"))
    assert prepare_module(net, s) is net


def test_threads_replace_only_accelerate_launchs_default_of_one(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    launched = {"ACCELERATE_DYNAMO_BACKEND": "NO", "OMP_NUM_THREADS": "1"}
    why: dict = {}
    assert _threads(0, why, launched) == 4 and "not accelerate launch's default" in why["threads"]
    # several processes on this machine share its cores
    assert _threads(0, {}, {**launched, "LOCAL_WORLD_SIZE": "2"}) == 2
    # left alone: a user's OMP_NUM_THREADS, a plain `python` run, one process per core
    default = torch.get_num_threads()
    for env in ({**launched, "OMP_NUM_THREADS": "3"}, {"OMP_NUM_THREADS": "1"}, {},
                {**launched, "LOCAL_WORLD_SIZE": "4"}):
        why = {}
        assert _threads(0, why, env) == default, env
        assert "accelerate" not in why["threads"]
    why = {}
    assert _threads(3, why, launched) == 3 and why["threads"] == "asked for"
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        _threads(-1, {}, {})


def test_apply_threads_sets_torch_and_the_log_says_so():
    before = torch.get_num_threads()
    try:
        s = pick("cpu", threads=1)
        assert "1 CPU thread(s) (asked for)" in s.describe()
        torch.set_num_threads(2)
        apply_threads(s)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_channels_last_and_compile_keep_outputs_and_checkpoint_keys():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1),
                              torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.randn(2, 3, 4, 8, 8)
    ref = net(x).detach()
    keys = list(net.state_dict())
    prepare_module(net, pick("cpu", channels_last="on"))
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not net[0].weight.is_contiguous()
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)
    prepare_module(net, pick("cpu", compile="on"))  # lazy: nothing compiles until a forward
    assert list(net.state_dict()) == keys


def test_the_log_cites_no_cpu_measurement_as_evidence_for_another_device(monkeypatch):
    """On MPS the line said "bf16 autocast measured no faster on mps" and "pinned memory off (no
    GPU)", and on CUDA it gave the CPU compile timing as the reason: none of it was measured
    there."""
    mps = pick("mps").describe()
    assert "measured no faster" not in mps and "(no GPU)" not in mps
    assert "precision fp32 (unmeasured on mps)" in mps
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = pick("cuda").describe()
    assert "channels-last off (unmeasured on cuda)" in cuda
    assert "torch.compile off (unmeasured on cuda;" in cuda
    cpu = pick("cpu").describe()
    assert "channels-last off (measured slower on CPU)" in cpu
    assert "pinned memory off (no GPU)" in cpu


@pytest.mark.parametrize("cores,workers,local,want", [
    (2, 0, 1, 2), (2, 1, 1, 1), (2, 2, 1, 1), (16, 2, 1, 1), (16, 0, 1, 16), (16, 0, 2, 8),
    (16, 0, 3, 5), (1, 0, 1, 1), (2, 0, 4, 1)])
def test_decoder_threads_rule(monkeypatch, cores, workers, local, want):
    """1 per decoder in each worker; without workers this process's share of the cores."""
    monkeypatch.setattr(speed_module, "_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
    s = pick("cpu", num_workers=workers)
    assert s.decoder_threads == want
    why = ("per worker: more measured within 3% of its clips/s for 2-14% more CPU a clip on 2 "
           "cores" if workers else f"{cores} core(s) / {local} process(es), no workers: 2 "
           "measured up to 6% more clips/s than 1 on 2 cores")
    assert s.describe().endswith(f"; {want} decoder thread(s) ({why})"), s.describe()


def test_a_forced_decoder_thread_count_wins(monkeypatch):
    monkeypatch.setattr(speed_module, "_cores", lambda: 2)
    s = pick("cpu", num_workers=2, decoder_threads=3)
    assert s.decoder_threads == 3 and "3 decoder thread(s) (asked for)" in s.describe()
    with pytest.raises(ConfigError, match="decoder_threads must be >= 0"):
        pick("cpu", decoder_threads=-1)
    from avssl.pretraining import RunConfig
    with pytest.raises(ConfigError, match="--run.decoder_threads must be >= 0"):
        RunConfig(decoder_threads=-1)


class _ThreadsSeen(torch.utils.data.Dataset):
    """Each item: the decoder-thread setting of the process that reads it (module level, so a
    spawned worker can unpickle it)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        from avssl.data import decoding
        return -1 if decoding.decoder_threads() is None else decoding.decoder_threads()


@pytest.mark.parametrize("context", [None, "fork", "spawn"])
def test_the_decoder_threads_reach_the_loader_that_decodes(context):
    """Without workers apply_threads sets this process; with workers worker_init carries the value
    into each one, also into a spawned worker that inherits nothing from this process."""
    from avssl.data import decoding
    from avssl.speed import worker_init
    try:
        s = pick("cpu", num_workers=0 if context is None else 1, decoder_threads=3)
        apply_threads(s)
        assert decoding.decoder_threads() == 3
        if context is not None:
            decoding.set_decoder_threads(None)  # what a spawned worker starts from
            loader = torch.utils.data.DataLoader(_ThreadsSeen(), num_workers=1,
                                                 multiprocessing_context=context,
                                                 worker_init_fn=worker_init(s))
        else:
            loader = torch.utils.data.DataLoader(_ThreadsSeen())
        assert [int(x) for x in loader] == [3, 3]
    finally:
        decoding.set_decoder_threads(None)


def test_the_recipe_loader_hands_its_workers_the_decoder_threads():
    from avssl.data import decoding
    from avssl.pretraining import PairDataConfig, pair_loader
    try:
        s = pick("cpu", num_workers=1, decoder_threads=3)
        decoding.set_decoder_threads(None)
        d = PairDataConfig(num_workers=1, batch_size=1)
        assert [int(x) for x in pair_loader(_ThreadsSeen(), d, 0, train=False, speed=s)] == [3, 3]
    finally:
        decoding.set_decoder_threads(None)
