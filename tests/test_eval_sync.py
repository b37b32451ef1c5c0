"""avssl.eval.sync: sync / offset accuracy vs brute force, rows and file CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from avssl.errors import ConfigError, DataError
from avssl.eval.sync import evaluate_sync_file, sync_metrics, sync_metrics_from_arrays

GRID = [-1.0, -0.5, 0.0, 0.5, 1.0]


def brute_sync(sync, hard, easy, grid_scores, grid, true_offsets) -> dict:
    out = {}
    for name, neg in (("hard", hard), ("easy", easy)):
        wins = used = 0
        for i in range(len(sync)):
            negs = [v for v in neg[i] if not np.isnan(v)]
            if np.isnan(sync[i]) or not negs:
                continue
            used += 1
            wins += all(sync[i] > v for v in negs)
        if used:
            out[f"acc_{name}"], out[f"num_{name}"] = 100.0 * wins / used, used
    exact = near = 0
    for i, row in enumerate(grid_scores):
        t = grid.index(true_offsets[i])
        exact += all(row[t] > row[j] for j in range(len(grid)) if j != t)
        close = [row[j] for j in range(len(grid)) if abs(j - t) <= 1]
        far = [row[j] for j in range(len(grid)) if abs(j - t) > 1]
        near += all(max(close) > v for v in far)
    n = len(grid_scores)
    out.update(offset_acc=100.0 * exact / n, offset_acc_1=100.0 * near / n, num_offset=n,
               grid=list(grid))
    return out


@pytest.fixture(scope="module")
def scores():
    """Integer scores (many ties), some missing negatives, true offsets on the grid."""
    rng = np.random.default_rng(0)
    n = 40
    sync = rng.integers(0, 4, n).astype(float)
    hard = rng.integers(0, 4, (n, 2)).astype(float)
    hard[:5, 1] = np.nan  # clips 0-4 have one hard negative
    hard[5:8] = np.nan  # clips 5-7 have none
    easy = rng.integers(0, 4, (n, 3)).astype(float)
    sync[8] = np.nan  # clip 8 has no sync row
    grid = rng.integers(0, 4, (n, len(GRID))).astype(float)
    true = rng.choice(GRID, n)
    return dict(sync=sync, hard=hard, easy=easy, grid=grid, true=true)


def test_arrays_match_brute_force(scores):
    s = scores
    got = sync_metrics_from_arrays(s["sync"], s["hard"], s["easy"], s["grid"], GRID, s["true"])
    ref = brute_sync(s["sync"], s["hard"], s["easy"], s["grid"], GRID, list(s["true"]))
    assert got == {k: pytest.approx(v) for k, v in ref.items()}
    assert got["num_hard"] == 40 - 3 - 1 and got["num_easy"] == 39


def test_grid_order_and_tensors_do_not_matter(scores):
    s = scores
    perm = np.array([3, 0, 4, 2, 1])
    shuffled = sync_metrics_from_arrays(torch.tensor(s["sync"]), None, None,
                                        torch.tensor(s["grid"][:, perm]),
                                        np.array(GRID)[perm], torch.tensor(s["true"]))
    ref = sync_metrics_from_arrays(s["sync"], None, None, s["grid"], GRID, s["true"])
    assert shuffled == ref and shuffled["grid"] == GRID and "acc_hard" not in ref


def test_constant_scores_are_never_correct():
    n = 10
    m = sync_metrics_from_arrays(np.zeros(n), np.zeros(n), np.zeros((n, 2)),
                                 np.zeros((n, len(GRID))), GRID)
    assert m["acc_hard"] == m["acc_easy"] == m["offset_acc"] == m["offset_acc_1"] == 0.0


def test_true_offset_must_be_on_the_grid():
    with pytest.raises(ConfigError, match="not on the grid"):
        sync_metrics_from_arrays(np.zeros(2), grid_scores=np.zeros((2, 5)), grid_offsets=GRID,
                                 true_offsets=[0.0, 0.25])


def _rows(s) -> list[dict]:
    rows = []
    for i in range(len(s["sync"])):
        c = f"clip{i:02d}"
        if not np.isnan(s["sync"][i]):
            rows.append(dict(clip_id=c, candidate="sync", offset_s=0.0, score=s["sync"][i]))
        for v in s["hard"][i][~np.isnan(s["hard"][i])]:
            rows.append(dict(clip_id=c, candidate="hard", offset_s=0.7, score=v))
        for v in s["easy"][i]:
            rows.append(dict(clip_id=c, candidate="easy", offset_s="", score=v))
        for o, v in reversed(list(zip(GRID, s["grid"][i]))):
            rows.append(dict(clip_id=c, candidate="grid", offset_s=o, score=v,
                             true_offset_s=s["true"][i]))
    return rows


def test_rows_equal_arrays(scores):
    s = scores
    ref = sync_metrics_from_arrays(s["sync"], s["hard"], s["easy"], s["grid"], GRID, s["true"])
    assert sync_metrics(_rows(s)) == {**ref, "num_clips": 40}


def test_blocks_only_for_present_candidates():
    rows = [dict(clip_id="a", candidate="sync", offset_s=0, score=2.0),
            dict(clip_id="a", candidate="hard", offset_s=0.5, score=1.0),
            dict(clip_id="b", candidate="sync", offset_s=0, score=1.0),
            dict(clip_id="b", candidate="hard", offset_s=-0.5, score=1.0)]
    assert sync_metrics(rows) == {"acc_hard": 50.0, "num_hard": 2, "num_clips": 2}


def test_true_offset_on_any_row_of_the_clip_counts():
    # the clip's true offset 0.5 written on its sync row only, its grid rows left blank: the
    # best grid point 0.5 is the right one (it used to be scored against offset 0, silently)
    rows = [dict(clip_id="a", candidate="sync", offset_s=0.5, score=0.9, true_offset_s=0.5)]
    rows += [dict(clip_id="a", candidate="grid", offset_s=o, score=v, true_offset_s="")
             for o, v in ((-0.5, 0.1), (0.0, 0.2), (0.5, 0.9))]
    out = sync_metrics(rows)
    assert out["offset_acc"] == 100.0 and out["offset_acc_1"] == 100.0
    rows[1]["true_offset_s"] = 0.0  # a grid row that disagrees with the sync row
    with pytest.raises(DataError, match="conflicting true_offset_s"):
        sync_metrics(rows)


@pytest.mark.parametrize("rows, match", [
    ([dict(clip_id="a", candidate="shifted", offset_s=0, score=1.0)], "unknown candidate"),
    ([dict(clip_id="a", candidate="grid", offset_s=0.0, score=1.0),
      dict(clip_id="b", candidate="grid", offset_s=0.5, score=1.0)], "same grid"),
    ([dict(clip_id="a", candidate="grid", offset_s=0.5, score=1.0)], "not on its grid"),
    ([dict(clip_id="a", candidate="sync", offset_s=0, score="high")], "finite number"),
    ([dict(clip_id="a", candidate="sync", offset_s=0, score=1.0)] * 2, "more than one sync"),
])
def test_bad_rows(rows, match):
    with pytest.raises(DataError, match=match):
        sync_metrics(rows)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "avssl.eval", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _main(capsys, *args):
    """The same command in process (the error path needs no second interpreter start-up)."""
    from types import SimpleNamespace

    from avssl.eval.__main__ import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def test_cli_json_equals_function_and_errors_are_one_line(scores, tmp_path, capsys):
    import pandas as pd

    path = tmp_path / "scores.csv"
    pd.DataFrame(_rows(scores)).to_csv(path, index=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("clip_id,candidate,offset_s,score\na,grid,0.0,1\nb,grid,0.5,1\n")
    ok = _cli("sync", "--scores", path)
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result == evaluate_sync_file(path) and result == sync_metrics(_rows(scores))
    err = _main(capsys, "sync", "--scores", bad)
    assert err.returncode == 2 and "Traceback" not in err.stderr
    assert err.stderr.startswith("error: ") and err.stderr.count("\n") == 1
    assert "same grid" in err.stderr and "bad.csv" in err.stderr
    # a trailing comma on every row: pandas would shift the columns under an implicit index
    commas = tmp_path / "commas.csv"
    commas.write_text("clip_id,candidate,offset_s,score\na,sync,0,0.9,\na,hard,1,0.5,\n")
    with pytest.raises(DataError, match=r"commas\.csv: not a readable CSV.*clip_id,candidate"):
        evaluate_sync_file(commas)
