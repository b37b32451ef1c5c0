"""avssl.eval.classification: top-k, per-class accuracy, AP / mAP vs brute force; file CLI."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from avssl.errors import ConfigError, DataError
from avssl.eval.classification import (average_precision, classification_metrics,
                                       evaluate_classification_files, mean_average_precision,
                                       mean_class_acc, per_class_accuracy, topk_accuracy)


def brute_topk(scores, labels, k) -> float:
    hits = 0
    for row, y in zip(scores, labels):
        others_at_least = sum(1 for c in range(len(row)) if c != y and row[c] >= row[y])
        hits += others_at_least < min(k, len(row))
    return 100.0 * hits / len(labels)


def brute_ap(scores, targets) -> float:
    """Worst AP over every ranking consistent with descending scores (ties in any order)."""
    worst = np.inf
    for perm in itertools.permutations(range(len(scores))):
        if any(scores[a] < scores[b] for a, b in zip(perm, perm[1:])):
            continue
        recall_prev, ap, tp = 0.0, 0.0, 0
        for n, i in enumerate(perm, start=1):
            tp += targets[i]
            recall = tp / sum(targets)
            ap += (recall - recall_prev) * tp / n
            recall_prev = recall
        worst = min(worst, ap)
    return 100.0 * worst


def test_topk_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(10):
        scores = rng.integers(0, 4, size=(30, 7)).astype(np.float32)  # many ties
        labels = rng.integers(0, 7, size=30)
        got = topk_accuracy(scores, labels, ks=(1, 3, 5, 20))
        for k in (1, 3, 5, 20):
            assert got[f"top{k}"] == pytest.approx(brute_topk(scores, labels, k))
    assert got["top20"] == 100.0  # k > C is clamped to C


def test_constant_scores_score_zero():
    scores, labels = np.zeros((12, 10)), np.arange(12) % 10
    m = classification_metrics(scores, labels)
    assert m["top1"] == 0.0 and m["top5"] == 0.0 and m["mean_class_acc"] == 0.0


def test_per_class_and_mean_class_accuracy():
    rng = np.random.default_rng(1)
    labels, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    names = ["a", "b", "c", "d", "e"]  # "e" has no sample: left out
    got = per_class_accuracy(pred, labels, class_names=names)
    ref = {names[c]: 100.0 * np.mean(pred[labels == c] == c) for c in range(4)}
    assert got.keys() == ref.keys() and all(got[k] == pytest.approx(v) for k, v in ref.items())
    assert mean_class_acc(pred, labels) == pytest.approx(np.mean(list(ref.values())))
    assert per_class_accuracy(torch.tensor(pred), torch.tensor(labels)) == {
        str(c): pytest.approx(v) for c, v in enumerate(ref.values())}


def test_classification_metrics_per_class_counts_top_ties_as_wrong():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]])
    labels = np.array([0, 1, 2, 1])
    m = classification_metrics(torch.tensor(scores), torch.tensor(labels),
                               class_names=["x", "y", "z"])
    # row 0 ties its true class with class 1 at the top: wrong
    assert m["per_class"] == {"x": 0.0, "y": 50.0, "z": 100.0}
    assert m["top1"] == 50.0 and m["num_samples"] == 4
    assert m["mean_class_acc"] == pytest.approx(50.0)
    assert json.loads(json.dumps(m)) == m


def test_repeated_class_names_keep_one_entry_per_class():
    # keyed by name, the two "b" classes merged and mean_class_acc averaged 2 classes, not 3
    scores = np.eye(3)[[0, 1, 0, 0]]
    labels = np.array([0, 1, 2, 2])
    m = classification_metrics(scores, labels, class_names=["a", "b", "b"])
    assert m["per_class"] == {"a": 100.0, "b": 100.0, "b (2)": 0.0}  # as avssl.eval.ava names
    assert m["mean_class_acc"] == pytest.approx(200 / 3)
    assert m["mean_class_acc"] == classification_metrics(scores, labels)["mean_class_acc"]
    assert len(mean_average_precision(scores, np.eye(3)[labels], ["a", "b", "b"])["per_class"]) == 3
    with pytest.raises(ConfigError, match="distinct"):
        classification_metrics(scores, labels, class_names=["b (2)", "b", "b"])


def test_average_precision_matches_worst_tie_order():
    rng = np.random.default_rng(2)
    for _ in range(25):
        n = int(rng.integers(2, 7))
        scores = rng.integers(0, 3, n).astype(float)
        targets = rng.integers(0, 2, n)
        if targets.sum() == 0:
            targets[0] = 1
        assert average_precision(scores, targets) == pytest.approx(brute_ap(scores, targets))
    assert average_precision([3.0, 2.0, 1.0], [1, 1, 0]) == pytest.approx(100.0)
    assert average_precision([1.0, 1.0], [1, 0]) == pytest.approx(50.0)
    with pytest.raises(ConfigError, match="positive"):
        average_precision([1.0, 2.0], [0, 0])


def test_mean_average_precision_skips_classes_without_positives():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(6, 4)).astype(float)
    targets = rng.integers(0, 2, size=(6, 4))
    targets[:, 2] = 0
    targets[0, [0, 1, 3]] = 1
    m = mean_average_precision(scores, targets, class_names=["a", "b", "c", "d"])
    ref = {n: brute_ap(scores[:, c], targets[:, c]) for c, n in enumerate("abcd") if n != "c"}
    assert m["num_skipped"] == 1 and m["num_classes"] == 3 and set(m["per_class"]) == set(ref)
    assert m["mAP"] == pytest.approx(np.mean(list(ref.values())))


@pytest.mark.parametrize("scores, labels, match", [
    (np.zeros((3, 4)), [0, 1, 4], r"\[0, 4\)"),
    (np.zeros((3, 4)), [0, 1], r"\(3,\)"),
    (np.full((2, 2), np.nan), [0, 1], "finite"),
    (np.zeros(3), [0, 1, 2], r"\(N, C\)"),
])
def test_bad_inputs(scores, labels, match):
    with pytest.raises(ConfigError, match=match):
        classification_metrics(scores, labels)


# ------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.default_rng(4)
    names = ["Archery", "Biking", "Cello", "Diving", "Eating", "Fencing"]
    n = 20
    scores = rng.integers(0, 5, size=(n, len(names))).astype(float) / 4
    labels = rng.integers(0, len(names), n)
    ids = [f"v_{i:03d}" for i in range(n)]
    d = tmp_path_factory.mktemp("cls")
    order = rng.permutation(n)  # the files list ids in different orders
    with open(d / "pred.csv", "w") as f:
        f.write("id," + ",".join(names) + "\n")
        for i in order:
            f.write(ids[i] + "," + ",".join(f"{s:g}" for s in scores[i]) + "\n")
    with open(d / "labels.csv", "w") as f:
        f.write("id,label\n" + "".join(f"{ids[i]},{names[labels[i]]}\n" for i in range(n)))
    with open(d / "labels_idx.csv", "w") as f:
        f.write("id,label\n" + "".join(f"{ids[i]},{labels[i]}\n" for i in range(n)))
    with open(d / "labels_missing.csv", "w") as f:
        f.write("id,label\n" + "".join(f"{ids[i]},{names[labels[i]]}\n" for i in range(n))
                + "v_999,Biking\n")
    pred_label = rng.integers(0, len(names), n)
    with open(d / "pred_label.csv", "w") as f:
        f.write("id,prediction\n" + "".join(f"{ids[i]},{names[pred_label[i]]}\n" for i in order))
    return dict(dir=d, names=names, scores=scores, labels=labels, pred_label=pred_label)


def test_score_file_equals_array_metrics(files):
    d = files["dir"]
    ref = classification_metrics(files["scores"], files["labels"], class_names=files["names"])
    assert evaluate_classification_files(d / "pred.csv", d / "labels.csv") == ref
    assert evaluate_classification_files(d / "pred.csv", d / "labels_idx.csv") == ref


def test_prediction_file_gives_top1_only(files):
    d = files["dir"]
    m = evaluate_classification_files(d / "pred_label.csv", d / "labels.csv")
    correct = files["pred_label"] == files["labels"]
    assert "top5" not in m and m["top1"] == pytest.approx(100.0 * correct.mean())
    names, y = files["names"], files["labels"]
    assert m["per_class"] == {names[c]: pytest.approx(100.0 * correct[y == c].mean())
                              for c in np.unique(y)}


@pytest.mark.parametrize("labels,preds,alike", [
    ("id,label\nx,0\ny,1\n", "id,prediction\nx,cat\ny,dog\n", "id,prediction\nx,7\ny,7\n"),
    ("id,label\nx,cat\ny,dog\n", "id,prediction\nx,0\ny,1\n", "id,prediction\nx,ox\ny,ox\n"),
])
def test_predictions_written_unlike_the_labels_are_refused(tmp_path, labels, preds, alike):
    """Predicted class names against integer labels (or back) used to score top-1 = 0."""
    (tmp_path / "l.csv").write_text(labels)
    (tmp_path / "p.csv").write_text(preds)
    with pytest.raises(DataError, match="no prediction is written like a label"):
        evaluate_classification_files(tmp_path / "p.csv", tmp_path / "l.csv")
    # wrong predictions written like the labels still score (0 here), never an error
    (tmp_path / "p.csv").write_text(alike)
    assert evaluate_classification_files(tmp_path / "p.csv", tmp_path / "l.csv")["top1"] == 0.0


def test_missing_id_is_a_one_line_data_error(files):
    d = files["dir"]
    with pytest.raises(DataError, match="1 labelled ids have no prediction.*v_999") as e:
        evaluate_classification_files(d / "pred.csv", d / "labels_missing.csv")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="--labels"):
        evaluate_classification_files(d / "pred.csv")
    # every row one field longer than the header: an error, not scores read as ids
    rows = (d / "pred.csv").read_text().splitlines()
    (d / "pred_commas.csv").write_text("\n".join(rows[:1] + [r + "," for r in rows[1:]]) + "\n")
    with pytest.raises(DataError, match=r"predictions file .*pred_commas\.csv: not a readable"):
        evaluate_classification_files(d / "pred_commas.csv", d / "labels.csv")


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


def test_cli_prints_json_and_one_line_errors(files, capsys):
    d = files["dir"]
    ok = _cli("classification", "--predictions", d / "pred.csv", "--labels", d / "labels.csv")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == evaluate_classification_files(d / "pred.csv",
                                                                  d / "labels.csv")
    bad = _main(capsys, "classification", "--predictions", d / "pred.csv", "--labels",
                d / "labels_missing.csv")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "v_999" in bad.stderr and bad.stdout == ""


def test_help_lists_every_evaluator(capsys):
    from avssl.eval import EVALUATORS
    from avssl.eval.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    lines = [ln.strip() for ln in out.splitlines()]
    for name in ("classification", "retrieval", "sync"):
        assert name in EVALUATORS
        i = next(i for i, ln in enumerate(lines) if ln.split()[:1] == [name])
        # the description follows the name on its line, or alone on the next line
        desc = lines[i][len(name):].strip() or lines[i + 1]
        assert desc and desc.split()[0] not in EVALUATORS


@pytest.mark.parametrize("labels,preds,match", [
    ("id,label\nx,b\ny\nz,c\n", "id,prediction\nx,b\ny,c\nz,c\n",
     r"labels file .*: id y \(line 3\) has no label"),
    ("id,label\nx,b\ny, \n", "id,prediction\nx,b\ny,b\n", r"id y \(line 3\) has no label"),
    ("id,label\nx,b\n,c\n", "id,prediction\nx,b\n,c\n", r"a row \(line 3\) has no id"),
    ("id,label\nx,b\ny,c\n", "id,prediction\nx,b\ny,\n",
     r"predictions file .*: id y \(line 3\) has no prediction"),
    # pandas renamed the second "b" to "b.1", scored as a class of its own
    ("id,label\nx,b\ny,c\n", "id,b,b,c\nx,0.9,0.1,0\ny,0,0,1\n",
     r"predictions file .*p\.csv: the header names 'b' twice; expected a header with id"),
])
def test_blank_ids_labels_and_predictions_are_refused(tmp_path, labels, preds, match):
    """A blank label used to be scored as a class named "" (its own per-class entry)."""
    (tmp_path / "l.csv").write_text(labels)
    (tmp_path / "p.csv").write_text(preds)
    with pytest.raises(DataError, match=match):
        evaluate_classification_files(tmp_path / "p.csv", tmp_path / "l.csv")
