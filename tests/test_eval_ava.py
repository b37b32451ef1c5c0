"""AVA frame-mAP evaluator: hand cases, the official quirks, a brute-force reference, the CLI."""
from __future__ import annotations

import heapq
import json
import math
import random

import pytest

from avssl.data.datasets.ava import AVARow
from avssl.errors import DataError
from avssl.eval.__main__ import main
from avssl.eval.ava import evaluate_ava

IDS, NAMES = [1, 2, 5, 7], ["bend", "crouch", "run", "stand"]


def write_labelmap(path, ids=IDS, names=NAMES, style="item"):
    key = "id" if style == "item" else "label_id"
    extra = "" if style == "item" else "  label_type: PERSON_MOVEMENT\n"
    path.write_text("".join(f'{style} {{\n  name: "{n}"\n  {key}: {i}\n{extra}}}\n'
                            for i, n in zip(ids, names)))
    return path


def write_csv(path, rows):
    path.write_text("".join(",".join(str(x) for x in r) + "\n" for r in rows))
    return path


def run(tmp_path, gt, det, exclusions=None, **kw):
    lm = write_labelmap(tmp_path / "map.pbtxt")
    exc = write_csv(tmp_path / "exc.csv", exclusions) if exclusions is not None else None
    return evaluate_ava(write_csv(tmp_path / "gt.csv", gt), write_csv(tmp_path / "det.csv", det),
                        str(lm), exc, **kw)


# ------------------------------------------------------------------ brute-force reference
def reference(gt_rows, det_rows, ids, excluded=(), capacity=50, thr=0.5):
    """The official get_ava_performance.py pipeline in plain loops, on rows of strings.

    Conventions it shares with the implementation under test are the official ones: a min-heap
    of (score, action, y1, x1, y2, x2) with a strict '>' for replacement; stable sorts where
    numpy's argsort order of ties is unspecified (reversed stable ascending sort).
    """
    def key(r):
        return f"{r[0]},{int(r[1]):04d}"

    excluded = {f"{v},{int(t):04d}" for v, t in excluded}

    def read(rows, cap):
        entries, all_keys = {}, set()
        for r in rows:
            all_keys.add(key(r))
            if len(r) == 2 or int(r[6]) not in ids:
                continue
            score = float(r[7]) if len(r) == 8 else 1.0
            item = (score, int(r[6]), float(r[3]), float(r[2]), float(r[5]), float(r[4]))
            heap = entries.setdefault(key(r), [])
            if cap < 1 or len(heap) < cap:
                heapq.heappush(heap, item)
            elif score > heap[0][0]:
                heapq.heapreplace(heap, item)
        return {k: sorted(h, key=lambda t: -t[0]) for k, h in entries.items()}, all_keys

    def box_iou(a, b):
        ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ih * iw
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    gt, listed = read(gt_rows, 0)
    dets, _ = read(det_rows, capacity)
    num_gt = {c: 0 for c in ids}
    for k, items in gt.items():
        if k not in excluded:
            for it in items:
                num_gt[it[1]] += 1
    scores = {c: [] for c in ids}
    tps = {c: [] for c in ids}
    for k, items in dets.items():
        if k in excluded or k not in listed:
            continue
        gts = [] if k in excluded else gt.get(k, [])
        for c in ids:
            d = [it for it in items if it[1] == c and it[2] < it[4] and it[3] < it[5]]
            g = [it[2:] for it in gts if it[1] == c]
            taken = [False] * len(g)
            for it in d:
                tp = False
                if g:
                    ious = [box_iou(it[2:], gb) for gb in g]
                    best = max(range(len(g)), key=lambda j: (ious[j], -j))
                    if ious[best] >= thr and not taken[best]:
                        taken[best] = tp = True
                scores[c].append(it[0])
                tps[c].append(tp)
    aps = {}
    for c in ids:
        if num_gt[c] == 0:
            aps[c] = math.nan
            continue
        order = sorted(range(len(scores[c])), key=lambda i: scores[c][i])[::-1]
        prec, rec, ntp = [], [], 0
        for n, i in enumerate(order, 1):
            ntp += tps[c][i]
            prec.append(ntp / n)
            rec.append(ntp / num_gt[c])
        prec, rec = [0.0] + prec + [0.0], [0.0] + rec + [1.0]
        for i in range(len(prec) - 2, -1, -1):
            prec[i] = max(prec[i], prec[i + 1])
        aps[c] = sum((rec[i] - rec[i - 1]) * prec[i] for i in range(1, len(rec))
                     if rec[i] != rec[i - 1])
    valid = [a for a in aps.values() if not math.isnan(a)]
    return sum(valid) / len(valid), aps


def random_case(rng: random.Random):
    def box():
        x1, y1 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
        return [round(x1, 4), round(y1, 4), round(x1 + rng.uniform(0.05, 0.3), 4),
                round(y1 + rng.uniform(0.05, 0.3), 4)]

    def jitter(b):
        s = rng.choice([0.0, 0.02, 0.06, 0.12])
        return [round(v + rng.uniform(-s, s), 4) for v in b]

    coarse = rng.random() < 0.3  # coarse scores make ties, in the heap and across keyframes
    def score():
        return round(rng.random(), 1) if coarse else round(rng.random(), 6)

    gt, det = [], []
    keys = [(f"v{v}", 902 + t) for v in range(rng.randint(1, 3)) for t in range(rng.randint(1, 3))]
    gt_cols = rng.choice([7, 8])
    for vid, ts in keys:
        persons = [box() for _ in range(rng.randint(0, 3))]
        if not persons:
            gt.append([vid, f"{ts:04d}"])
        for pid, b in enumerate(persons):
            for a in rng.sample(IDS + [9], rng.randint(1, 2)):
                gt.append([vid, f"{ts:04d}", *b, a] + ([pid] if gt_cols == 8 else []))
            for _ in range(rng.randint(0, 4)):
                det.append([vid, f"{ts:04d}", *jitter(b), rng.choice(IDS + [9]), score()])
        many = rng.random() < 0.15
        for _ in range(rng.randint(45, 60) if many else rng.randint(0, 3)):
            b = jitter(rng.choice(persons)) if persons and rng.random() < 0.5 else box()
            if rng.random() < 0.05:
                b = [b[2], b[1], b[0], b[3]]  # inverted box: dropped by the evaluator
            det.append([vid, f"{ts:04d}", *b, rng.choice(IDS), score()])
    for _ in range(rng.randint(0, 3)):  # keyframes absent from the ground truth
        det.append(["ghost", "0902", *box(), rng.choice(IDS), score()])
    rng.shuffle(det)
    excluded = [k for k in keys if rng.random() < 0.15]
    if not any(len(r) > 2 and r[6] in IDS and (r[0], int(r[1])) not in excluded for r in gt):
        gt.append(["v0", "0950", 0.1, 0.1, 0.3, 0.3, IDS[0]] + ([0] if gt_cols == 8 else []))
    return gt, det, excluded


def test_matches_brute_force_reference_on_random_cases(tmp_path):
    rng = random.Random(0)
    over_capacity = with_null = 0
    for case in range(200):
        gt, det, excluded = random_case(rng)
        got = run(tmp_path, gt, det, [list(k) for k in excluded])
        want_map, want = reference(gt, det, IDS, excluded)
        assert got["mAP"] == pytest.approx(want_map, abs=1e-9), case
        for c, name in zip(IDS, NAMES):
            if math.isnan(want[c]):
                assert got["per_class"][name] is None, case
            else:
                assert got["per_class"][name] == pytest.approx(want[c], abs=1e-9), (case, name)
        over_capacity += got["num_detections_over_capacity"] > 0
        with_null += None in got["per_class"].values()
    assert over_capacity >= 10 and with_null >= 10  # the quirks were exercised


# ------------------------------------------------------------------------------- hand cases
def test_perfect_detections_score_one(tmp_path):
    gt = [["a", "0902", 0.1, 0.1, 0.4, 0.5, 1, 0], ["a", "0902", 0.1, 0.1, 0.4, 0.5, 5, 0],
          ["a", "0902", 0.5, 0.2, 0.9, 0.9, 1, 1], ["b", "0903", 0.0, 0.0, 1.0, 1.0, 7, 0]]
    det = [[*r[:7], s] for r, s in zip(gt, (0.9, 0.3, 0.2, 0.6))]
    out = run(tmp_path, gt, det)
    assert out["mAP"] == 1.0
    assert out["per_class"] == {"bend": 1.0, "crouch": None, "run": 1.0, "stand": 1.0}
    assert out["num_classes_with_groundtruth"] == 3 and out["num_ground_truth"] == 4


@pytest.mark.parametrize("x2, hit", [(0.245, False), (0.25, True), (0.255, True)])
def test_iou_threshold_is_inclusive_at_one_half(tmp_path, x2, hit):
    gt = [["a", "0902", 0.0, 0.0, 0.5, 1.0, 1, 0]]  # area 0.5; the detection is inside it
    out = run(tmp_path, gt, [["a", "0902", 0.0, 0.0, x2, 1.0, 1, 0.9]])  # IoU = x2 / 0.5
    assert out["mAP"] == (1.0 if hit else 0.0)


def test_duplicate_detection_is_a_false_positive(tmp_path):
    gt = [["a", "0902", 0.1, 0.1, 0.5, 0.5, 1, 0], ["a", "0903", 0.1, 0.1, 0.5, 0.5, 1, 0]]
    det = [["a", "0902", 0.1, 0.1, 0.5, 0.5, 1, 0.9], ["a", "0902", 0.1, 0.1, 0.5, 0.5, 1, 0.8],
           ["a", "0903", 0.1, 0.1, 0.5, 0.5, 1, 0.7]]
    assert run(tmp_path, gt, det)["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)


def test_detection_takes_its_best_box_even_when_already_taken(tmp_path):
    # Official (VOC) rule: a detection whose highest-IoU box is taken is a false positive even
    # if another box of its class would match it at IoU >= 0.5.
    gt = [["a", "0902", 0.0, 0.0, 0.4, 0.4, 1, 0], ["a", "0902", 0.05, 0.0, 0.45, 0.4, 1, 1]]
    det = [["a", "0902", 0.0, 0.0, 0.4, 0.4, 1, 0.9], ["a", "0902", 0.01, 0.0, 0.41, 0.4, 1, 0.8]]
    assert run(tmp_path, gt, det)["mAP"] == 0.5  # TP, then FP: P = 1, 1/2 at R = 1/2


@pytest.mark.parametrize("pid_a, pid_b, want", [(0, 5, 1.0), (5, 0, 0.5), (None, None, 0.5)])
def test_equal_iou_ties_go_to_the_official_ground_truth_order(tmp_path, pid_a, pid_b, want):
    # The official reader sorts ground truth by its 8th column read as a score (the person id),
    # highest first; 7-column rows all score 1.0 and keep heap order (smallest box tuple first).
    a, b = [0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5]
    gt = [["v", "0902", *b, 1] + ([pid_b] if pid_b is not None else []),
          ["v", "0902", *a, 1] + ([pid_a] if pid_a is not None else [])]
    det = [["v", "0902", 0.125, 0.0, 0.625, 0.5, 1, 0.9],  # IoU 0.6 with both boxes
           ["v", "0902", *a, 1, 0.8]]  # only matches box a
    assert run(tmp_path, gt, det)["mAP"] == want  # 1.0 when the first detection took box b


CAP_GT = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0], ["a", "0903", 0.1, 0.1, 0.3, 0.3, 1, 0],
          ["a", "0902", 0.6, 0.6, 0.9, 0.9, 2, 1]]
HIT_0903 = ["a", "0903", 0.1, 0.1, 0.3, 0.3, 1, 0.9]


def fillers(n, score=None):
    """``n`` class-2 detections on keyframe 0902, scores 0.5..0.99 (or all ``score``)."""
    return [["a", "0902", 0.6, 0.6, 0.9, 0.9, 2, score if score is not None else 0.5 + i / 100]
            for i in range(n)]


def test_only_the_50_highest_scored_detections_per_keyframe_count(tmp_path):
    low_hit = ["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.1]  # correct, but the 51st by score
    out = run(tmp_path, CAP_GT, [low_hit] + fillers(50) + [HIT_0903])
    assert out["per_class"]["bend"] == 0.5 and out["num_detections_over_capacity"] == 1
    assert run(tmp_path, CAP_GT, [low_hit] + fillers(49) + [HIT_0903])["per_class"]["bend"] == 1
    uncapped = run(tmp_path, CAP_GT, [low_hit] + fillers(50) + [HIT_0903], capacity=0)
    assert uncapped["per_class"]["bend"] == 1.0 and uncapped["num_detections_over_capacity"] == 0


def test_capacity_ties_follow_the_official_heap(tmp_path):
    hit = ["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5]
    # an equal score never replaces the heap minimum: file order decides who stays
    assert run(tmp_path, CAP_GT, [hit] + fillers(50, 0.5) + [HIT_0903])["per_class"]["bend"] == 1
    assert run(tmp_path, CAP_GT, fillers(50, 0.5) + [hit, HIT_0903])["per_class"]["bend"] == 0.5
    # a higher score evicts the smallest (score, action_id, box) tuple: action 1 before action 2
    evict = ["a", "0902", 0.0, 0.0, 0.05, 0.05, 5, 0.9]
    out = run(tmp_path, CAP_GT, [hit] + fillers(49, 0.5) + [evict, HIT_0903])
    assert out["per_class"]["bend"] == 0.5


def test_keyframes_absent_from_ground_truth_are_ignored(tmp_path):
    gt = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0], ["b", "0902"]]
    hit = ["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5]
    ghost = [["zz", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.9], ["a", "0999", 0.1, 0.1, 0.3, 0.3, 1, 1]]
    out = run(tmp_path, gt, [hit] + ghost)
    assert out["mAP"] == 1.0 and out["num_detections_outside_groundtruth"] == 2
    # a keyframe the ground truth lists without boxes (2-column row) does count: false positive
    assert run(tmp_path, gt, [hit, ["b", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.9]])["mAP"] == 0.5


def test_excluded_keyframes_are_dropped_from_both_files(tmp_path):
    gt = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0], ["a", "0903", 0.1, 0.1, 0.3, 0.3, 1, 0]]
    det = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5], ["a", "0903", 0.6, 0.6, 0.9, 0.9, 1, 0.9]]
    assert run(tmp_path, gt, det)["mAP"] == 0.25  # FP then TP over 2 boxes
    out = run(tmp_path, gt, det, exclusions=[["a", "0903"]])
    assert out["mAP"] == 1.0 and out["num_keyframes"] == 1
    assert out["num_detections_excluded"] == 1 and out["num_ground_truth"] == 1
    as_set = evaluate_ava(tmp_path / "gt.csv", tmp_path / "det.csv", str(tmp_path / "map.pbtxt"),
                          {("a", 903)})
    assert as_set["mAP"] == 1.0


def test_labels_outside_the_label_map_are_dropped(tmp_path):
    gt = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0], ["a", "0902", 0.5, 0.5, 0.9, 0.9, 42, 1]]
    det = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5], ["a", "0902", 0.5, 0.5, 0.9, 0.9, 42, 1]]
    out = run(tmp_path, gt, det)
    assert out["mAP"] == 1.0 and out["num_ground_truth"] == 1 and out["num_detections"] == 1


def test_seven_eight_and_two_column_ground_truth_agree(tmp_path):
    det = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5], ["a", "0903", 0.2, 0.2, 0.6, 0.6, 1, 0.7],
           ["c", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.9]]
    gt8 = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 3], ["a", "0903", 0.2, 0.2, 0.6, 0.6, 1, 0],
           ["c", "0902"]]
    gt7 = [r[:7] if len(r) == 8 else r for r in gt8]
    a, b = run(tmp_path, gt8, det), run(tmp_path, gt7, det)
    assert a["mAP"] == b["mAP"] == pytest.approx(2 / 3)  # FP, TP, TP over 2 boxes
    assert a["num_keyframes"] == 3
    rows = [AVARow("a", 902, (0.1, 0.1, 0.3, 0.3), 1, 3), AVARow("a", 903, (0.2, 0.2, 0.6, 0.6), 1)]
    det_rows = [AVARow(r[0], int(r[1]), tuple(r[2:6]), r[6], None, r[7]) for r in det]
    assert evaluate_ava(rows, det_rows, (IDS, NAMES))["mAP"] == pytest.approx(1.0)


def test_both_label_map_styles_give_the_same_result(tmp_path):
    gt = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 7, 0], ["a", "0902", 0.4, 0.4, 0.6, 0.6, 2, 1]]
    det = [["a", "0902", 0.1, 0.1, 0.3, 0.3, 7, 0.5], ["a", "0902", 0.4, 0.4, 0.6, 0.6, 7, 0.9]]
    write_csv(tmp_path / "gt.csv", gt), write_csv(tmp_path / "det.csv", det)
    outs = [evaluate_ava(tmp_path / "gt.csv", tmp_path / "det.csv",
                         write_labelmap(tmp_path / f"{style}.pbtxt", style=style))
            for style in ("item", "label")]
    assert outs[0] == outs[1]
    assert outs[0]["per_class"] == {"bend": None, "crouch": 0.0, "run": None, "stand": 0.5}


def test_malformed_files_raise_data_error_with_file_and_line(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0]])
    det = write_csv(tmp_path / "det.csv", [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5],
                                          ["a", "0902", 0.1, "x", 0.3, 0.3, 1, 0.5]])
    lm = write_labelmap(tmp_path / "map.pbtxt")
    with pytest.raises(DataError, match=r"det\.csv:2: expected video_id,timestamp"):
        evaluate_ava(gt, det, lm)
    write_csv(det, [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5]])
    with pytest.raises(DataError, match="no box with an action id of the label map"):
        evaluate_ava(gt, det, write_labelmap(tmp_path / "other.pbtxt", [3], ["x"]))


def test_cli_prints_json_and_reports_errors(tmp_path, capsys):
    gt = write_csv(tmp_path / "gt.csv", [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0],
                                         ["a", "0903", 0.1, 0.1, 0.3, 0.3, 5, 0]])
    det = write_csv(tmp_path / "det.csv", [["a", "0902", 0.1, 0.1, 0.3, 0.3, 1, 0.5]])
    exc = write_csv(tmp_path / "exc.csv", [["a", "0903"]])
    lm = write_labelmap(tmp_path / "map.pbtxt")
    args = ["ava", "--groundtruth", str(gt), "--detections", str(det), "--labelmap", str(lm)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mAP"] == 0.5 and out["per_class"]["run"] == 0.0
    assert out["per_class"]["crouch"] is None
    assert main(args + ["--exclusions", str(exc)]) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == 1.0
    write_csv(det, [["a", "0902", 0.1, 0.1, 0.3]])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "det.csv:1:" in err and len(err.strip().splitlines()) == 1
