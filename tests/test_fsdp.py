"""The recipes' shared code under accelerate's FSDP2, on two CPU processes (gloo; FSDP forced on
by tests/fsdp_on_cpu.py, since accelerate 1.15 leaves CPU processes on DDP)."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.video = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.video(x))


def _fsdp_accelerator(rank: int, port: int, **fsdp_env: str):
    """Process ``rank`` of 2 on CPU with accelerate's FSDP2 forced on; ``fsdp_env``: more FSDP_*
    settings."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from fsdp_on_cpu import force_fsdp

    AcceleratorState._reset_state(True)  # a state left from an earlier Accelerator is one process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      ACCELERATE_USE_CPU="1", ACCELERATE_USE_FSDP="true", FSDP_VERSION="2",
                      FSDP_CPU_RAM_EFFICIENT_LOADING="false", **fsdp_env)
    force_fsdp()
    return Accelerator(cpu=True)


def _worker(rank: int, port: int, out: Path) -> None:
    from safetensors.torch import load_file

    from avssl.checkpoints import save_run_checkpoint
    from avssl.pretraining import all_finite

    acc = _fsdp_accelerator(rank, port, FSDP_STATE_DICT_TYPE="SHARDED_STATE_DICT")
    torch.manual_seed(0)
    model = _Net()
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    x = torch.randn(8, 4) * (1 + 3 * rank)  # each process's BatchNorm sees other statistics
    loss = model(x).square().mean()
    acc.backward(loss)
    norm = acc.clip_grad_norm_(model.parameters(), 1.0)  # a DTensor under FSDP2
    finite = all_finite(acc, loss, norm)
    opt.step()
    ck = save_run_checkpoint(acc, out / "run", 1, {"video": (model, "video.")},
                             config={}, specs={}, latest_root=out)
    saved = load_file(str(ck / "model.safetensors"))
    with torch.no_grad():  # resume: the state must bring back the statistics that were saved
        for b in model.buffers():
            b.fill_(-1)
    acc.load_state(str(ck / "state"))
    bn = model.video[1]
    same = all(torch.equal(getattr(bn, k), saved[f"video.1.{k}"])
               for k in ("running_mean", "running_var"))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "distributed": str(acc.distributed_type), "finite": finite, "same_buffers": same,
        "shapes": {k: list(v.shape) for k, v in saved.items()}}))


def test_fsdp2_step_check_and_sharded_resume_keep_the_saved_statistics(tmp_path):
    """Under FSDP2 the clipped gradient norm is a DTensor, which all_finite's all-reduce refused
    (NotImplementedError); and each process's BatchNorm statistics follow its own batches (FSDP
    does not broadcast buffers as DDP does), so a sharded save wrote process 1's statistics
    into the state while the weights file held process 0's: a resumed run went on from other
    statistics than the checkpoint's."""
    torch.multiprocessing.start_processes(_worker, args=(_free_port(), tmp_path), nprocs=2,
                                          start_method="spawn")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["distributed"].endswith("FSDP") and got["finite"] and got["same_buffers"], got
        assert got["shapes"]["video.0.weight"] == [6, 4]  # full tensors, not the shards


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 4))  # its own, in no smaller unit

    def forward_features(self, x):  # what AVTowers' time bins call instead of forward
        return x @ self.weight.T

    def forward(self, x):
        return self.forward_features(x).mean(1)


class _Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.video, self.proj = _Tower(), nn.Linear(16, 2)

    def forward(self, x):
        return self.proj(self.video.forward_features(x))


def _forward_features_worker(rank: int, port: int, out: Path) -> None:
    from torch.distributed.fsdp import FSDPModule

    from avssl.pretraining import fsdp_forward_methods

    acc = _fsdp_accelerator(rank, port, FSDP_AUTO_WRAP_POLICY="SIZE_BASED_WRAP",
                            FSDP_MIN_NUM_PARAMS="50")
    torch.manual_seed(0)
    model = _Towers()
    model, _ = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fsdp_forward_methods(model)
    y = model(torch.randn(3, 4))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "tower_is_unit": isinstance(model.video, FSDPModule), "shape": list(y.shape)}))


def test_fsdp2_encoder_units_gather_their_weights_for_forward_features(tmp_path):
    """A wrap policy that makes an encoder its own FSDP2 unit hooks its forward only; AVTowers'
    time bins call forward_features, which ran on the weight shards ("got mixed torch.Tensor
    and DTensor"). fsdp_forward_methods registers it with FSDP."""
    torch.multiprocessing.start_processes(_forward_features_worker,
                                          args=(_free_port(), tmp_path), nprocs=2,
                                          start_method="spawn")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"tower_is_unit": True, "shape": [3, 2]}, got
