from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from avssl.checkpoints import (file_sha256, load_checkpoint, resolve, save_checkpoint,
                               update_latest)
from avssl.errors import AvsslError, DataError


def _modules():
    torch.manual_seed(0)
    return {"video": nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), "head": nn.Linear(3, 2)}


def test_save_load_round_trip(tmp_path):
    mods = _modules()
    ck = save_checkpoint(tmp_path / "run" / "step_000002", mods, config={"lr": 0.1}, step=2,
                         specs={"video": {"encoder": "x", "kwargs": {"a": 1}}})
    loaded = load_checkpoint(ck)
    assert loaded.meta["step"] == 2 and loaded.config == {"lr": 0.1}
    assert loaded.meta["components"]["video"] == {"encoder": "x", "kwargs": {"a": 1}}
    fresh = _modules()["video"]
    torch.nn.init.zeros_(fresh[0].weight)
    fresh.load_state_dict(loaded.component_state("video"))
    for a, b in zip(fresh.state_dict().values(), mods["video"].state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(AvsslError, match="no component 'audio'"):
        loaded.component_state("audio")
    # no temporary folders are left behind
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["step_000002"]


def test_failed_write_leaves_no_checkpoint(tmp_path):
    def boom(_):
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path / "step_1", _modules(), config={}, step=1, write_state=boom)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(AvsslError, match="does not exist"):
        load_checkpoint(tmp_path / "step_1")


def test_resaving_a_step_keeps_the_old_checkpoint_until_the_new_one_is_in(tmp_path, monkeypatch):
    """Re-saving step N swaps the new folder in before deleting the old one: if the swap fails,
    the old checkpoint is back in place (deleting it first left no checkpoint at all)."""
    import avssl.checkpoints as ckmod

    path = tmp_path / "step_1"
    save_checkpoint(path, _modules(), config={"v": "old"}, step=1)
    real = os.replace

    def failing_replace(src, dst):
        if os.path.basename(str(src)).startswith(".tmp-step_1"):
            raise OSError("killed during the rename")
        return real(src, dst)

    monkeypatch.setattr(ckmod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(path, _modules(), config={"v": "new"}, step=1)
    assert load_checkpoint(path).config == {"v": "old"}
    monkeypatch.setattr(ckmod.os, "replace", real)
    save_checkpoint(path, _modules(), config={"v": "new"}, step=1)
    assert load_checkpoint(path).config == {"v": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["step_1"]  # nothing hidden left behind


def test_latest_link_and_resolution(tmp_path):
    a = save_checkpoint(tmp_path / "step_1", _modules(), config={}, step=1)
    b = save_checkpoint(tmp_path / "step_2", _modules(), config={}, step=2)
    update_latest(tmp_path, a)
    update_latest(tmp_path, b)
    assert os.readlink(tmp_path / "latest") == "step_2"  # relative: the run folder can move
    assert resolve(tmp_path / "latest") == b.resolve() == resolve(tmp_path)
    assert load_checkpoint(tmp_path / "latest").meta["step"] == 2
    assert file_sha256(tmp_path / "latest") == file_sha256(b / "model.safetensors")


def test_latest_is_a_pointer_file_where_symlinks_cannot_be_made(tmp_path, monkeypatch):
    """exFAT, some SMB mounts: os.symlink fails, and every checkpoint save used to crash after
    writing its step folder."""
    import avssl.checkpoints as ckmod

    def no_symlinks(*a, **k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(ckmod.os, "symlink", no_symlinks)
    run = tmp_path / "pretrain_sync"
    a = save_checkpoint(run / "r" / "step_1", _modules(), config={}, step=1)
    b = save_checkpoint(run / "r" / "step_2", _modules(), config={}, step=2)
    update_latest(run, a)
    update_latest(run, b)
    assert (run / "latest").read_text() == "r/step_2\n" and not (run / "latest").is_symlink()
    assert resolve(run / "latest") == b.resolve() == resolve(run)
    assert load_checkpoint(run / "latest").meta["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["latest", "r"]  # no temporary left
    (run / "latest").write_text("not\na pointer\n")
    with pytest.raises(AvsslError, match="neither a checkpoint folder nor a link or pointer"):
        resolve(run / "latest")


def test_a_copied_latest_folder_is_kept_aside_and_resume_finds_the_run(tmp_path):
    """`cp -rL runs copy` turns the latest link into a folder: resume took the recipe folder
    for the run folder (writing step folders beside the runs, skipping the changed-settings
    check), and the next save crashed with IsADirectoryError."""
    import shutil

    from avssl.pretraining import run_location

    run = tmp_path / "pretrain_sync" / "r"
    ck = save_checkpoint(run / "step_0000002", _modules(), config={"run": {"name": "r"}}, step=2)
    shutil.copytree(ck, tmp_path / "pretrain_sync" / "latest")  # what cp -rL leaves
    run_dir, resume_from, step = run_location(str(tmp_path), "pretrain_sync", None, True)
    assert (run_dir, resume_from, step) == (run, ck, 2)
    ck3 = save_checkpoint(run / "step_0000003", _modules(), config={"run": {"name": "r"}}, step=3)
    update_latest(tmp_path / "pretrain_sync", ck3)
    assert os.readlink(tmp_path / "pretrain_sync" / "latest") == "r/step_0000003"
    kept = tmp_path / "pretrain_sync" / "latest.copy-2"
    assert load_checkpoint(kept).meta["step"] == 2  # the copy is not lost
    shutil.rmtree(run)
    (tmp_path / "pretrain_sync" / "latest").unlink()
    shutil.copytree(kept, tmp_path / "pretrain_sync" / "latest")
    with pytest.raises(AvsslError, match="is a folder, not a link .* --run.name"):
        run_location(str(tmp_path), "pretrain_sync", None, True)


def test_a_run_folder_resolves_to_its_newest_complete_step(tmp_path):
    """runs/<recipe>/<run> holds step folders but no `latest` (that link is one level up): it
    used to be refused as 'not an avssl checkpoint'."""
    run = tmp_path / "pretrain_sync" / "r1"
    save_checkpoint(run / "step_0000009", _modules(), config={}, step=9)
    newest = save_checkpoint(run / "step_0000010", _modules(), config={}, step=10)
    (run / "step_0000011").mkdir()  # an unfinished folder without weights is not picked
    other = save_checkpoint(tmp_path / "pretrain_sync" / "r2" / "step_0000001", _modules(),
                            config={}, step=1)
    update_latest(tmp_path / "pretrain_sync", other)  # the newest run is another one
    assert resolve(run) == newest.resolve()
    assert load_checkpoint(run).meta["step"] == 10
    assert resolve(tmp_path / "pretrain_sync") == other.resolve()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(AvsslError, match="not an avssl checkpoint"):
        load_checkpoint(tmp_path / "junk")
    ck = save_checkpoint(tmp_path / "c", _modules(), config={}, step=0)
    meta = json.loads((ck / "meta.json").read_text())
    meta["format"] = 99
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(AvsslError, match="format 99"):
        load_checkpoint(ck)


@pytest.mark.parametrize("name,damage,expected", [
    ("model.safetensors", lambda b: b[:len(b) // 2], "complete safetensors file"),
    ("model.safetensors", lambda b: b"", "complete safetensors file"),
    ("meta.json", lambda b: b"{bad", "JSON object"),
    ("meta.json", lambda b: b"[1, 2]", "JSON object, got list"),
    ("config.json", lambda b: b"\xff\xfe{", "JSON object"),
])
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, name, damage,
                                                                expected):
    ck = save_checkpoint(tmp_path / "step_1", _modules(), config={"lr": 0.1}, step=1)
    f = ck / name
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(DataError) as err:
        load_checkpoint(ck)
    msg = str(err.value)
    assert msg.startswith(f"{f} is damaged") and expected in msg and "\n" not in msg


def test_run_checkpoint_splits_the_prepared_models_full_state_by_prefix(tmp_path):
    """Recipes name components by prefix of the prepared model's full state dict (what FSDP
    needs: accelerate gathers it on every process); the split must equal the submodules."""
    from accelerate import Accelerator

    from avssl.checkpoints import save_run_checkpoint

    mods = _modules()
    model = nn.ModuleDict(mods)
    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(model)
    ck = save_run_checkpoint(accelerator, tmp_path / "run", 3,
                             {"video": (prepared, "video."),
                              "rest": (prepared, "", ("video.",))},
                             config={}, specs={})
    loaded = load_checkpoint(ck)
    for name, ref in (("video", mods["video"].state_dict()),
                      ("rest", {f"head.{k}": v for k, v in mods["head"].state_dict().items()})):
        state = loaded.component_state(name)
        assert state.keys() == ref.keys()
        assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert (ck / "state").is_dir() and (tmp_path / "latest").resolve() == ck.resolve()
    with pytest.raises(ValueError, match="no weights under 'audio.'"):
        save_run_checkpoint(accelerator, tmp_path / "run", 4, {"audio": (prepared, "audio.")},
                            config={}, specs={})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["step_0000003"]


def test_run_checkpoint_of_a_model_accelerate_compiled_keeps_plain_keys(tmp_path):
    """accelerate launch --dynamo_backend wraps the prepared model in torch.compile, whose
    state dict keys start with "_orig_mod.": the components must still split by prefix."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from avssl.checkpoints import save_run_checkpoint

    AcceleratorState._reset_state(True)  # an earlier test's Accelerator fixed the settings
    try:
        mods = _modules()
        accelerator = Accelerator(cpu=True, dynamo_backend="eager")
        prepared = accelerator.prepare(nn.ModuleDict(mods))
        assert next(iter(accelerator.get_state_dict(prepared))).startswith("_orig_mod.")
        ck = save_run_checkpoint(accelerator, tmp_path / "run", 1,
                                 {"video": (prepared, "video.")}, config={}, specs={})
        state = load_checkpoint(ck).component_state("video")
        assert state.keys() == mods["video"].state_dict().keys()
    finally:
        AcceleratorState._reset_state(True)  # later tests build their own


def _encoder_checkpoint(tmp_path, damage=None, kwargs=None):
    from avssl.encoders import build_encoder

    enc = build_encoder("audio_resnet18_tiny")
    state = dict(enc.state_dict())
    if damage:
        damage(state)
    ck = save_checkpoint(tmp_path / "step_1", {"audio": state}, config={}, step=1,
                         specs={"audio": {"encoder": "audio_resnet18_tiny",
                                          "kwargs": {} if kwargs is None else kwargs}})
    return ck, enc


def _first_float(state):
    return next(k for k, v in state.items() if v.is_floating_point())


@pytest.mark.parametrize("damage,kwargs,expected", [
    (lambda s: s.update(junk=torch.zeros(1)), None, "Unexpected key"),
    (lambda s: s.pop(_first_float(s)), None, "Missing key"),
    (lambda s: s.update({_first_float(s): torch.zeros(1)}), None, "size mismatch"),
    (lambda s: s.update({_first_float(s): s[_first_float(s)].to(torch.int8)}), None,
     "are torch.int8, expected floating point"),
    (None, [1, 2], "kwargs must be a JSON object, got list"),
    # the encoder's own complaint about a value, with the file to blame
    (None, {"pretrained_path": 5}, "meta.json: components.audio: pretrained_path 5 is not a"),
])
def test_a_checkpoint_that_does_not_fit_its_encoder_is_a_one_line_error(tmp_path, damage,
                                                                         kwargs, expected):
    from avssl.bench.model import load_model
    from avssl.checkpoints import load_encoder

    ck, enc = _encoder_checkpoint(tmp_path, damage, kwargs)
    for load in (lambda: load_encoder(ck, "audio"), lambda: load_model(ck)):
        with pytest.raises(DataError) as err:
            load()
        msg = str(err.value)
        assert expected in msg and "\n" not in msg and str(ck) in msg


def test_a_fitting_encoder_checkpoint_loads_exactly(tmp_path):
    from avssl.checkpoints import load_encoder

    ck, enc = _encoder_checkpoint(tmp_path)
    loaded = load_encoder(ck, "audio")
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in loaded.state_dict().items())
