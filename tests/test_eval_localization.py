"""Temporal localization evaluator: hand cases, a brute-force reference, both file formats, CLI."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from avssl.errors import ConfigError, DataError
from avssl.eval.localization import (ACTIVITYNET_TIOU, average_precision_detection,
                                     evaluate_localization, evaluate_localization_files,
                                     parse_tiou, temporal_iou)


def seg(video, start, end, label=None, score=None) -> dict:
    d = {"video": video, "start": float(start), "end": float(end)}
    if label is not None:
        d["label"] = label
    if score is not None:
        d["score"] = float(score)
    return d


def official_json(preds: list[dict]) -> dict:
    """The official prediction JSON of ``preds`` (video order = first appearance)."""
    results: dict = {}
    for p in preds:
        results.setdefault(p["video"], []).append(
            {"label": p["label"], "score": p["score"], "segment": [p["start"], p["end"]]})
    return {"version": "VERSION 1.3", "results": results, "external_data": {}}


def ap(gt, preds, thr=0.5, mode="activitynet", ambiguous=None) -> float:
    return float(average_precision_detection(gt, preds, [thr], mode=mode,
                                             ambiguous=ambiguous)[0])


# ------------------------------------------------------------------------------ hand cases
def test_temporal_iou_hand_values():
    got = temporal_iou([0.0, 10.0], [[5, 15], [20, 30], [0, 10], [2, 4], [10, 12]])
    np.testing.assert_allclose(got, [5 / 15, 0.0, 1.0, 0.2, 0.0])


def test_perfect_predictions_score_one_in_both_modes():
    gt = [seg("a", 0, 10, "x"), seg("a", 20, 30, "x"), seg("b", 3, 9, "y")]
    preds = [{**g, "score": s} for g, s in zip(gt, (0.3, 0.2, 0.9))]
    for mode in ("activitynet", "thumos-matlab"):
        out = evaluate_localization({"segments": gt, "classes": ["x", "y"]},
                                    official_json(preds), tiou=(0.3, 0.7, 0.95), mode=mode)
        assert out["mAP"] == [1.0, 1.0, 1.0] and out["average_mAP"] == 1.0
        assert out["per_class"] == {"x": [1.0] * 3, "y": [1.0] * 3}
        assert out["num_predictions"] == 3 and out["num_ground_truth"] == 3


def test_duplicate_prediction_is_a_false_positive():
    gt = [seg("a", 0, 10), seg("a", 20, 30)]
    preds = [seg("a", 0, 10, score=0.9), seg("a", 0, 10, score=0.8), seg("a", 20, 30, score=0.7)]
    # ranks: TP (P=1, R=.5), FP, TP (P=2/3, R=1) -> all-point AP = .5*1 + .5*2/3
    assert ap(gt, preds) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    # 11-point: recall points 0..0.5 see precision 1, 0.6..1 see 2/3
    assert ap(gt, preds, mode="thumos-matlab") == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_matlab_mode_uses_matlabs_recall_grid():
    """The kit's prap() takes recall points 0:0.1:1, whose 4th is 3*0.1 = 0.30000000000000004 in
    MATLAB: a class with 10 ground truths and a precision drop right after recall 3/10 does not
    get that precision at the point 0.3 (k / 10 would give it)."""
    gt = [seg("a", 10 * i, 10 * i + 5) for i in range(10)]
    preds = [seg("a", 10 * i, 10 * i + 5, score=0.9 - 0.1 * i) for i in range(3)]
    preds += [seg("a", 200, 205, score=0.6), seg("a", 30, 35, score=0.5)]
    # recall .1 .2 .3 .3 .4 with precision 1 1 1 3/4 4/5: points 0..0.2 see 1, 0.3(+eps) and
    # 0.4 see 4/5, 0.5..1 see 0
    assert ap(gt, preds, mode="thumos-matlab") == pytest.approx((3 + 2 * 0.8) / 11, abs=1e-12)


def test_threshold_is_inclusive_in_activitynet_and_strict_in_matlab_mode():
    gt = [seg("a", 0, 10)]
    at = [seg("a", 0, 5, score=1)]  # tIoU exactly 0.5
    under = [seg("a", 0, 4.99, score=1)]  # tIoU 0.499
    assert ap(gt, at) == 1.0
    assert ap(gt, under) == 0.0
    assert ap(gt, at, mode="thumos-matlab") == 0.0
    assert ap(gt, at, thr=0.49, mode="thumos-matlab") == 1.0


def test_class_without_predictions_scores_zero_and_pulls_the_mean_down():
    gt = {"segments": [seg("a", 0, 10, "x"), seg("b", 0, 10, "y")], "classes": ["x", "y", "z"]}
    out = evaluate_localization(gt, official_json([seg("a", 0, 10, "x", 1.0)]), tiou=[0.5])
    assert out["per_class"] == {"x": [1.0], "y": [0.0]}  # z has no ground truth: not averaged
    assert out["mAP"] == [0.5] and out["average_mAP"] == 0.5


def test_prediction_on_a_video_without_ground_truth_of_its_class_is_a_false_positive():
    gt = {"segments": [seg("a", 0, 10, "x"), seg("b", 0, 10, "y")], "videos": ["a", "b"]}
    preds = [seg("b", 0, 10, "x", 0.9), seg("a", 0, 10, "x", 0.5), seg("c", 0, 10, "y", 0.8),
             seg("b", 0, 10, "y", 0.4)]
    out = evaluate_localization(gt, official_json(preds), tiou=[0.5])
    assert out["per_class"] == {"x": [0.5], "y": [0.5]}  # FP ranked first, then the TP
    assert out["num_predictions_outside_subset"] == 1  # video c, kept as a false positive


def test_unknown_label_warns_once_and_is_left_out():
    gt = {"segments": [seg("a", 0, 10, "x"), seg("a", 20, 30, "x")]}
    good = [seg("a", 0, 10, "x", 0.5), seg("a", 40, 50, "x", 0.4)]
    bad = [seg("a", 20, 30, "nope", 0.9), seg("b", 1, 2, "nope", 0.1), seg("a", 0, 1, "??", 1)]
    with pytest.warns(UserWarning, match=r"'nope' \(2\).*'\?\?' \(1\)") as rec:
        out = evaluate_localization(gt, official_json(bad + good), tiou=[0.5])
    assert len(rec) == 1
    clean = evaluate_localization(gt, official_json(good), tiou=[0.5])
    assert out["mAP"] == clean["mAP"] == [0.5]
    assert out["ignored_labels"] == {"nope": 2, "??": 1} and clean["ignored_labels"] == {}
    assert out["num_predictions"] == 2


def test_matching_prefers_the_highest_tiou_unmatched_ground_truth():
    # p1 overlaps g1 (tIoU 0.6) and g2 (1.0): it must take g2, leaving g1 for p2 (tIoU 0.8)
    gt = [seg("a", 0, 10), seg("a", 2, 12)]
    preds = [seg("a", 2, 12, score=0.9), seg("a", 0, 8, score=0.8)]
    assert ap(gt, preds) == 1.0


def test_matlab_mode_matches_by_ground_truth_not_by_score():
    # the kit gives each ground truth its best-overlapping free detection, whatever the score
    gt = [seg("a", 0, 10)]
    preds = [seg("a", 0, 6, score=0.9), seg("a", 0, 10, score=0.8)]
    assert ap(gt, preds) == 1.0  # score-greedy: the first one matches at tIoU 0.6
    assert ap(gt, preds, mode="thumos-matlab") == pytest.approx(0.5)  # FP first, then TP


def test_matlab_mode_removes_false_positives_on_ambiguous_segments():
    gt = [seg("a", 0, 10)]
    preds = [seg("a", 40, 45, score=0.9), seg("a", 0, 10, score=0.5)]
    amb = [seg("a", 44, 60), seg("b", 0, 100)]
    assert ap(gt, preds, ambiguous=amb) == 0.5  # activitynet mode ignores Ambiguous
    assert ap(gt, preds, mode="thumos-matlab") == pytest.approx(0.5)
    assert ap(gt, preds, mode="thumos-matlab", ambiguous=amb) == 1.0
    touching = [seg("a", 45, 50)]  # shares only an end point: no overlap, stays a FP
    assert ap(gt, preds, mode="thumos-matlab", ambiguous=touching) == pytest.approx(0.5)


def test_bad_inputs_raise_one_line_errors():
    gt = {"segments": [seg("a", 0, 10, "x")]}
    with pytest.raises(DataError, match="results"):
        evaluate_localization(gt, {"version": "1"})
    reversed_seg = {"results": {"a": [{"label": "x", "score": 1, "segment": [5, 1]}]}}
    with pytest.raises(DataError, match="ends before it starts"):
        evaluate_localization(gt, reversed_seg)
    with pytest.raises(DataError, match="no action segment"):
        evaluate_localization({"segments": []}, {"results": {}})
    with pytest.raises(ConfigError, match="mode"):
        evaluate_localization(gt, {"results": {}}, mode="voc")
    with pytest.raises(ConfigError, match="tiou"):
        evaluate_localization(gt, {"results": {}}, tiou=[1.5])


def test_a_segment_must_be_a_pair_of_finite_numbers(tmp_path):
    # a string "12" iterated as "1", "2" and was scored as [1, 2]
    gt = {"segments": [seg("a", 1, 2, "x")]}
    for bad in ("12", [1], [1, 2, 3], [1, float("nan")], [0, float("inf")], [True, 2], None):
        pred = {"results": {"a": [{"label": "x", "score": 1, "segment": bad}]}}
        with pytest.raises(DataError, match=r"\[start, end\], two finite numbers") as err:
            evaluate_localization(gt, pred)
        assert "\n" not in str(err.value) and "results['a'][0]" in str(err.value)
    database = {"a": {"subset": "validation", "duration": 9.0,
                      "annotations": [{"segment": "12", "label": "x"}]}}
    (tmp_path / "gt.json").write_text(json.dumps({"database": database}))
    (tmp_path / "pred.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(DataError, match=r"'a'.*\[start, end\], two finite numbers"):
        evaluate_localization_files(tmp_path / "gt.json", tmp_path / "pred.json")


def test_parse_tiou():
    # ranges give np.linspace's floats, the official tools' (0.39999999999999997, not 0.4)
    assert parse_tiou("0.3:0.7:0.1") == list(np.linspace(0.3, 0.7, 5))
    assert parse_tiou("0.5:0.95:0.05") == list(np.linspace(0.5, 0.95, 10))
    assert parse_tiou("0.3:0.7:0.3") == [0.3, 0.6]  # the step does not reach stop
    assert parse_tiou("0.5,0.75,0.95") == [0.5, 0.75, 0.95]
    assert parse_tiou("0.5") == [0.5]
    for bad in ("0.7:0.3:0.1", "0.3:0.7:0", "a,b", "0.3:2:0.5"):
        with pytest.raises(ConfigError):
            parse_tiou(bad)


def test_default_thresholds_are_the_official_floats(tmp_path):
    # tIoU 2/5 on paper computes to 0.39999999999999997, np.linspace(0.3, 0.7, 5)[1], and 2/4 of
    # [0, 5] to 0.4: both hit at "0.4" in the official Python tools; the MATLAB kit, given 0.4
    # as typed, wants overlap > 0.4, so neither does there
    d = tmp_path / "thumos"
    d.mkdir()
    (d / "BaseballPitch_test.txt").write_text("video_test_0000001  0.0 0.3\n")
    (d / "Billiards_test.txt").write_text("video_test_0000002  0 5\n")
    pred = tmp_path / "pred.json"
    preds = [seg("video_test_0000001", 0.1, 0.5, "BaseballPitch", 1.0),
             seg("video_test_0000002", 0, 2, "Billiards", 1.0)]
    pred.write_text(json.dumps(official_json(preds)))
    python = evaluate_localization_files(d, pred)
    assert python["per_class"] == {"BaseballPitch": [1.0, 1.0, 0.0, 0.0, 0.0],
                                   "Billiards": [1.0, 1.0, 0.0, 0.0, 0.0]}
    assert python["tiou"] == [0.3, 0.4, 0.5, 0.6, 0.7]  # labels stay readable
    matlab = evaluate_localization_files(d, pred, mode="thumos-matlab")
    assert matlab["mAP"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    # ActivityNet: tIoU 1.8 / 2.0 computes to np.linspace(0.5, 0.95, 10)[8] = 0.8999999999999999
    assert ACTIVITYNET_TIOU == tuple(np.linspace(0.5, 0.95, 10))
    out = evaluate_localization({"segments": [seg("v", 0.0, 1.9, "a")]},
                                official_json([seg("v", 0.1, 2.0, "a", 1.0)]),
                                tiou=ACTIVITYNET_TIOU)
    assert out["mAP"] == [1.0] * 9 + [0.0] and out["tiou"][8] == 0.9


# ------------------------------------------------------------------- brute-force reference
def _iou(a, b) -> float:
    inter = max(0.0, min(a["end"], b["end"]) - max(a["start"], b["start"]))
    return inter / ((a["end"] - a["start"]) + (b["end"] - b["start"]) - inter)


def brute_ap(gt: list[dict], preds: list[dict], thr: float) -> float:
    """Score-greedy matching; ties in score and in tIoU go to the later-listed item."""
    ranked = sorted(range(len(preds)), key=lambda i: (-preds[i]["score"], -i))
    used = set()
    hits = []
    for i in ranked:
        best = None
        for j, g in enumerate(gt):
            if g["video"] != preds[i]["video"] or j in used or _iou(preds[i], g) < thr:
                continue
            if best is None or _iou(preds[i], g) >= _iou(preds[i], gt[best]):
                best = j
        if best is not None:
            used.add(best)
        hits.append(best is not None)
    precisions = [sum(hits[:k + 1]) / (k + 1) for k in range(len(hits))]
    # all-point interpolation: each recall step weighs 1/npos times the best later precision
    return sum(max(precisions[k:]) for k in range(len(hits)) if hits[k]) / len(gt)


def _random_case(rng: random.Random):
    videos = ["v0", "v1", "v2"]
    grid = [i * 0.5 for i in range(21)]  # coarse grid: overlapping GTs and tIoU ties
    gt, preds = [], []
    for label in ("x", "y"):
        for _ in range(rng.randint(1, 5)):
            s = rng.choice(grid[:-2])
            gt.append(seg(rng.choice(videos[:2]), s, s + rng.choice([1.0, 2.0, 3.0]), label))
    for _ in range(rng.randint(0, 14)):
        s = rng.choice(grid[:-2])
        preds.append(seg(rng.choice(videos), s, s + rng.choice([1.0, 1.5, 2.0, 3.0]),
                         rng.choice("xy"), rng.choice([0.1, 0.5, 0.5, 0.9])))  # score ties
    if rng.random() < 0.5:  # exact duplicates of ground truth
        preds += [{**g, "score": 0.5} for g in rng.sample(gt, min(2, len(gt)))]
    return gt, preds


def test_matches_brute_force_reference_on_random_cases_with_ties():
    rng = random.Random(0)
    tiou = [0.1, 0.3, 0.5, 0.7, 0.95]
    for _ in range(150):
        gt, preds = _random_case(rng)
        out = evaluate_localization({"segments": gt}, official_json(preds), tiou=tiou)
        for label, aps in out["per_class"].items():
            g = [s for s in gt if s["label"] == label]
            p = [s for s in preds if s["label"] == label]
            # official_json regroups by video: compare in the order the evaluator sees
            p = sorted(p, key=lambda s: [q["video"] for q in preds].index(s["video"]))
            ref = [brute_ap(g, p, t) for t in tiou]
            np.testing.assert_allclose(aps, ref, atol=1e-9, err_msg=f"{g} {p}")
        classes = sorted({s["label"] for s in gt})
        np.testing.assert_allclose(out["mAP"], np.mean([out["per_class"][c] for c in classes], 0),
                                   atol=1e-12)


# --------------------------------------------------------------------------------- files
GT_SEGMENTS = [("video_test_0000004", 1.5, 6.2, "BaseballPitch"),
               ("video_test_0000004", 10.0, 14.4, "BaseballPitch"),
               ("video_test_0000007", 3.0, 9.5, "BaseballPitch"),
               ("video_test_0000007", 20.0, 31.0, "Billiards"),
               ("video_test_0000009", 0.5, 2.5, "Billiards")]


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("loc")
    thumos = d / "thumos"
    thumos.mkdir()
    for label in ("BaseballPitch", "Billiards"):
        lines = [f"{v}  {s} {e}" for v, s, e, lab in GT_SEGMENTS if lab == label]
        (thumos / f"{label}_test.txt").write_text("\r\n".join(lines) + "\r\n")
    (thumos / "Ambiguous_test.txt").write_text("video_test_0000007  40.0 44.0\n")
    (thumos / "Billiards_val.txt").write_text("video_validation_0000001  1.0 2.0\n")
    database = {v: {"subset": "validation", "duration": 60.0, "url": "", "annotations": []}
                for v, *_ in GT_SEGMENTS}
    for v, s, e, lab in GT_SEGMENTS:
        database[v]["annotations"].append({"segment": [s, e], "label": lab})
    database["train_only"] = {"subset": "training", "duration": 30.0, "url": "",
                              "annotations": [{"segment": [1.0, 5.0], "label": "Billiards"}]}
    anet = d / "anet.json"
    anet.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [],
                                "database": database}))
    rng = random.Random(1)
    preds = []
    for v, s, e, lab in GT_SEGMENTS:
        for _ in range(3):
            ds, de = rng.uniform(-2, 2), rng.uniform(-2, 2)
            preds.append(seg(v, max(0.0, s + ds), e + de + 2.5, lab, rng.random()))
    preds.append(seg("video_test_0000007", 40.5, 43.0, "Billiards", 0.99))  # on Ambiguous
    preds.append(seg("train_only", 1.0, 5.0, "Billiards", 0.95))  # outside the subset
    (d / "pred.json").write_text(json.dumps(official_json(preds)))
    by_id = official_json([{**p, "label": {"BaseballPitch": 7, "Billiards": 12}[p["label"]]}
                           for p in preds])
    (d / "pred_ids.json").write_text(json.dumps(by_id))
    return {"dir": d, "thumos": thumos, "anet": anet, "pred": d / "pred.json",
            "pred_ids": d / "pred_ids.json", "preds": preds}


def test_thumos_folder_and_activitynet_json_give_the_same_numbers(files):
    th = evaluate_localization_files(files["thumos"], files["pred"])
    an = evaluate_localization_files(files["anet"], files["pred"], tiou=th["tiou"])
    assert th["tiou"] == [0.3, 0.4, 0.5, 0.6, 0.7]  # THUMOS default
    assert th == an
    assert set(th["per_class"]) == {"BaseballPitch", "Billiards"}
    assert 0.0 < th["average_mAP"] < 1.0 and th["num_predictions_outside_subset"] == 1
    gt = {"segments": [seg(v, s, e, lab) for v, s, e, lab in GT_SEGMENTS]}
    assert th["mAP"] == evaluate_localization(gt, json.loads(files["pred"].read_text()),
                                              tiou=th["tiou"])["mAP"]
    default_anet = evaluate_localization_files(files["anet"], files["pred"])
    assert len(default_anet["tiou"]) == 10 and default_anet["tiou"][0] == 0.5


def test_thumos_ucf101_class_ids_work_as_labels_and_matlab_mode_uses_ambiguous(files):
    by_name = evaluate_localization_files(files["thumos"], files["pred"], mode="thumos-matlab")
    by_id = evaluate_localization_files(files["thumos"], files["pred_ids"], mode="thumos-matlab")
    assert by_name == by_id and by_name["ignored_labels"] == {}
    # the Billiards FP on the Ambiguous segment is removed only when Ambiguous is read
    gt = {"segments": [seg(v, s, e, lab) for v, s, e, lab in GT_SEGMENTS]}
    no_amb = evaluate_localization(gt, json.loads(files["pred"].read_text()),
                                   tiou=by_name["tiou"], mode="thumos-matlab")
    assert by_name["per_class"]["BaseballPitch"] == no_amb["per_class"]["BaseballPitch"]
    assert all(a >= b for a, b in zip(by_name["per_class"]["Billiards"],
                                       no_amb["per_class"]["Billiards"]))
    assert by_name["per_class"]["Billiards"] != no_amb["per_class"]["Billiards"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "avssl.eval", "localization", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_sorted_json_and_one_line_errors(files, capsys):
    from avssl.eval.__main__ import main

    ok = _cli("--ground-truth", files["anet"], "--predictions", files["pred"], "--tiou",
              "0.5,0.75", "--subset", "validation")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert {"tiou", "mAP", "average_mAP", "per_class", "mode", "ignored_labels"} <= set(out)
    assert out == evaluate_localization_files(files["anet"], files["pred"], tiou=[0.5, 0.75])
    assert ok.stdout.strip() == json.dumps(out, indent=2, sort_keys=True)
    # the rest in-process (a subprocess costs seconds of imports)
    assert main(["localization", "--ground-truth", str(files["thumos"]), "--predictions",
                 str(files["pred"]), "--mode", "thumos-matlab", "--tiou", "0.3:0.7:0.2"]) == 0
    matlab = json.loads(capsys.readouterr().out)
    assert matlab["mode"] == "thumos-matlab" and matlab["tiou"] == [0.3, 0.5, 0.7]
    assert main(["localization", "--ground-truth", str(files["dir"] / "missing.json"),
                 "--predictions", str(files["pred"])]) == 2
    bad = capsys.readouterr()
    assert bad.out == "" and bad.err.startswith("error: ") and bad.err.count("\n") == 1
    assert "missing.json" in bad.err
