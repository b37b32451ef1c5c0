"""Synthetic AVA v2.2 (spatio-temporal action detection): ``--layout ava``.

Each video is one rendered clip of the synthetic world (:func:`render_clip`) at 30 fps, written
as if cut from a movie at 900 s: keyframe ``timestamp`` (written ``0902``) sits at
``time_s = timestamp - 900``. The sounding actors are the *persons*; each visible person carries
several simultaneous AVA actions derived from the world's ground truth, so they are learnable:

- a pose class from its synthetic action (:data:`POSE_OF_ACTION`: one AVA id per action);
- ``talk to`` (79) when one of its sound events falls within +-:data:`TALK_WINDOW_S` of the
  keyframe (an audio-visual label: the event is a flash and a sound at once);
- ``listen to (a person)`` (74) when another visible person talks at that keyframe;
- ``watch (a person)`` (80) when another person is visible.

Silent distractors are the detector's false positives in the person proposals. The layout (see
``shared/DATASETS.md`` and the README the writer leaves) is exactly the real one::

    annotations/ava_{train,val}_v2.2.csv                    8-column GT rows (+ 2-column empty keyframes)
    annotations/ava_action_list_v2.2.pbtxt                  80 classes, label { name label_id label_type }
    annotations/ava_action_list_v2.2_for_activitynet_2019.pbtxt   60 evaluated classes, item { name id }
    annotations/ava_{train,val}_excluded_timestamps_v2.2.csv
    annotations/ava_{train,val}_predicted_boxes.csv         proposals: empty action, score last
    videos_15min/<video_id>.mp4                             H.264 + AAC, 30 fps
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from avssl.data.synthetic.layouts import (LAYOUTS, Job, _check, _finish, _run, _write_text,
                                          _ytids)
from avssl.data.synthetic.motion import ACTIONS
from avssl.data.synthetic.world import WorldConfig, render_clip
from avssl.errors import ConfigError

AVA_FPS = 30.0
AVA_CUT_S = 900
FIRST_KEYFRAME_S = 2  # timestamp 902: leaves a clip's half-length of video before it
TAIL_S = 1  # video beyond the last keyframe's second (+1 s: keyframes sit at whole seconds)

# The 80 AVA v2.2 classes (ava_action_list_v2.2.pbtxt): (label_id, name, label_type).
_MOVE, _OBJ, _PERSON = "PERSON_MOVEMENT", "OBJECT_MANIPULATION", "PERSON_INTERACTION"
AVA_CLASSES: list[tuple[int, str, str]] = [(i + 1, n, t) for i, (n, t) in enumerate([
    ("bend/bow (at the waist)", _MOVE), ("crawl", _MOVE), ("crouch/kneel", _MOVE),
    ("dance", _MOVE), ("fall down", _MOVE), ("get up", _MOVE), ("jump/leap", _MOVE),
    ("lie/sleep", _MOVE), ("martial art", _MOVE), ("run/jog", _MOVE), ("sit", _MOVE),
    ("stand", _MOVE), ("swim", _MOVE), ("walk", _MOVE),
    ("answer phone", _OBJ), ("brush teeth", _OBJ), ("carry/hold (an object)", _OBJ),
    ("catch (an object)", _OBJ), ("chop", _OBJ), ("climb (e.g., a mountain)", _OBJ),
    ("clink glass", _OBJ), ("close (e.g., a door, a box)", _OBJ), ("cook", _OBJ), ("cut", _OBJ),
    ("dig", _OBJ), ("dress/put on clothing", _OBJ), ("drink", _OBJ),
    ("drive (e.g., a car, a truck)", _OBJ), ("eat", _OBJ), ("enter", _OBJ), ("exit", _OBJ),
    ("extract", _OBJ), ("fishing", _OBJ), ("hit (an object)", _OBJ), ("kick (an object)", _OBJ),
    ("lift/pick up", _OBJ), ("listen (e.g., to music)", _OBJ),
    ("open (e.g., a window, a car door)", _OBJ), ("paint", _OBJ), ("play board game", _OBJ),
    ("play musical instrument", _OBJ), ("play with pets", _OBJ), ("point to (an object)", _OBJ),
    ("press", _OBJ), ("pull (an object)", _OBJ), ("push (an object)", _OBJ), ("put down", _OBJ),
    ("read", _OBJ), ("ride (e.g., a bike, a car, a horse)", _OBJ), ("row boat", _OBJ),
    ("sail boat", _OBJ), ("shoot", _OBJ), ("shovel", _OBJ), ("smoke", _OBJ), ("stir", _OBJ),
    ("take a photo", _OBJ), ("text on/look at a cellphone", _OBJ), ("throw", _OBJ),
    ("touch (an object)", _OBJ), ("turn (e.g., a screwdriver)", _OBJ),
    ("watch (e.g., TV)", _OBJ), ("work on a computer", _OBJ), ("write", _OBJ),
    ("fight/hit (a person)", _PERSON), ("give/serve (an object) to (a person)", _PERSON),
    ("grab (a person)", _PERSON), ("hand clap", _PERSON), ("hand shake", _PERSON),
    ("hand wave", _PERSON), ("hug (a person)", _PERSON), ("kick (a person)", _PERSON),
    ("kiss (a person)", _PERSON), ("lift (a person)", _PERSON),
    ("listen to (a person)", _PERSON), ("play with kids", _PERSON),
    ("push (another person)", _PERSON), ("sing to (e.g., self, a person, a group)", _PERSON),
    ("take (an object) from (a person)", _PERSON),
    ("talk to (e.g., self, a person, a group)", _PERSON), ("watch (a person)", _PERSON),
])]
AVA_NAMES: dict[int, str] = {i: n for i, n, _ in AVA_CLASSES}
# The 60 classes of the ActivityNet 2019 challenge (..._for_activitynet_2019.pbtxt): the 80
# minus the 20 with too few val examples.
_NOT_EVALUATED = {2, 16, 18, 19, 21, 23, 25, 31, 32, 33, 35, 39, 40, 42, 44, 50, 53, 55, 71, 75}
AVA_EVAL_IDS: list[int] = [i for i, _, _ in AVA_CLASSES if i not in _NOT_EVALUATED]
assert len(AVA_CLASSES) == 80 and len(AVA_EVAL_IDS) == 60

# Pose class of each synthetic action (same order as ACTIONS), chosen by motion; all 14 are
# evaluated classes, so every person's pose counts in the mAP.
POSE_OF_ACTION: list[int] = [
    4,   # orbit_cw -> dance
    9,   # orbit_ccw -> martial art
    14,  # slide_left_to_right -> walk
    10,  # slide_right_to_left -> run/jog
    20,  # slide_up -> climb (e.g., a mountain)
    5,   # slide_down -> fall down
    6,   # grow -> get up
    3,   # shrink -> crouch/kneel
    7,   # bounce -> jump/leap
    13,  # zigzag -> swim
    12,  # flash -> stand (it stays put and blinks)
    1,   # wobble -> bend/bow (at the waist)
    11,  # approach_then_retreat -> sit
    8,   # retreat_then_approach -> lie/sleep
]
TALK_ID, LISTEN_ID, WATCH_ID = 79, 74, 80
TALK_WINDOW_S = 0.1  # +-0.5 s would hold an event for ~96% of persons (events are frequent):
# +-0.1 s makes ``talk to`` about 40% positive, a label worth learning
assert len(POSE_OF_ACTION) == len(ACTIONS) == len(set(POSE_OF_ACTION))
assert set(POSE_OF_ACTION) | {TALK_ID, LISTEN_ID, WATCH_ID} <= set(AVA_EVAL_IDS)

PROPOSAL_THRESHOLD = 0.8  # the usual person-detector cut; junk proposals score below it


def keyframe_labels(boxes: np.ndarray, visible: np.ndarray, actor_actions: np.ndarray,
                    events: list[dict[str, Any]], time_s: float, fps: float
                    ) -> list[dict[str, Any]]:
    """Persons visible at ``time_s`` and their AVA action ids (see the module docstring).

    boxes (T, A, 4) normalised, visible (T, A) bool, actor_actions (A,), events with
    ``time_s`` / ``actor`` (seconds from the first frame). Returns
    ``[{"person_id": a, "box": [x1, y1, x2, y2], "actions": [ids]}]`` in actor order.
    """
    k = min(int(round(time_s * fps)), len(boxes) - 1)
    present = [a for a in range(boxes.shape[1]) if bool(visible[k, a])]
    talking = {e["actor"] for e in events if abs(e["time_s"] - time_s) <= TALK_WINDOW_S + 1e-9}
    persons = []
    for a in present:
        actions = [POSE_OF_ACTION[int(actor_actions[a])]]
        others = [b for b in present if b != a]
        if a in talking:
            actions.append(TALK_ID)
        if any(b in talking for b in others):
            actions.append(LISTEN_ID)
        if others:
            actions.append(WATCH_ID)
        persons.append({"person_id": a, "box": [round(float(v), 3) for v in boxes[k, a]],
                        "actions": sorted(actions)})
    return persons


def _empty_clip(seed: int, index: int, cfg: WorldConfig) -> dict[str, Any]:
    """A clip with nobody in it (background, shake, pixel and audio noise only)."""
    from avssl.data.synthetic import world as W

    n = int(round(cfg.duration_s * cfg.fps))
    plan = np.random.default_rng([seed, index])
    noise_rng = np.random.default_rng([seed, index, 1])
    bg = W._background(plan, cfg)
    shake = W._shake(noise_rng, n, cfg.jitter)
    pix = noise_rng.standard_normal((n, cfg.size, cfg.size), dtype=np.float32) * cfg.noise
    video = W._draw(bg, shake, pix, [], slice(0, n), np.arange(n, dtype=np.float64), cfg)
    s = int(round(cfg.duration_s * cfg.sample_rate))
    audio = noise_rng.standard_normal((1, s), dtype=np.float32) * cfg.audio_noise
    return {"video": video, "audio": audio, "boxes": np.zeros((n, 0, 4), np.float32),
            "visible": np.zeros((n, 0), bool), "actor_actions": np.zeros(0, np.int64),
            "distractor_boxes": np.zeros((n, 0, 4), np.float32), "events": []}


def _write_ava_video(args: tuple[Job, str, WorldConfig]) -> dict[str, Any]:
    """Render, encode and annotate one video (runs in a worker process)."""
    from avssl.data.decoding import write_av

    job, root, cfg = args
    k = job.info["num_keyframes"]
    clip_cfg = replace(cfg, fps=AVA_FPS, duration_s=float(FIRST_KEYFRAME_S + k + TAIL_S))
    s = (_empty_clip(job.seed, job.index, clip_cfg) if job.info["empty"]
         else render_clip(job.seed, job.index, cfg=clip_cfg, label=job.label))
    path = os.path.join(root, job.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_av(path, s["video"], AVA_FPS, s["audio"], clip_cfg.sample_rate)
    keyframes = []
    for t in range(k):
        time_s = float(FIRST_KEYFRAME_S + t)
        f = min(int(round(time_s * AVA_FPS)), len(s["video"]) - 1)
        keyframes.append({
            "timestamp": AVA_CUT_S + FIRST_KEYFRAME_S + t, "time_s": time_s,
            "persons": keyframe_labels(s["boxes"], s["visible"], s["actor_actions"],
                                       s["events"], time_s, AVA_FPS),
            "distractors": [[round(float(v), 3) for v in b] for b in s["distractor_boxes"][f]],
        })
    return {"path": job.path, "video_id": job.info["video_id"], "split": job.info["split"],
            "seed": job.seed, "index": job.index, "label": job.label,
            "action": None if job.info["empty"] else ACTIONS[job.label],
            "actor_actions": [int(a) for a in s["actor_actions"]], "fps": AVA_FPS,
            "has_audio": True, "num_frames": int(len(s["video"])),
            "duration_s": clip_cfg.duration_s, "empty": job.info["empty"],
            "events": [{"time_s": e["time_s"], "actor": e["actor"], "kind": e["kind"]}
                       for e in s["events"]],
            "keyframes": keyframes}


def _jitter(box: list[float], rng: np.random.Generator, sigma: float) -> list[float]:
    """The box with every side moved by N(0, sigma * its size), kept inside [0, 1]."""
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
    d = rng.normal(0.0, sigma, size=4) * np.array([w, h, w, h])
    nx1, ny1, nx2, ny2 = np.clip(np.array(box) + d, 0.0, 1.0)
    if nx2 - nx1 < 0.02 or ny2 - ny1 < 0.02:  # degenerate after clipping: keep the original
        return [round(float(v), 3) for v in box]
    return [round(float(v), 3) for v in (nx1, ny1, nx2, ny2)]


def _proposals(clip: dict[str, Any], kf: dict[str, Any], seed: int) -> list[tuple[list, float]]:
    """Person-detector output at a keyframe: (box, score). Every person jittered (0.85-1.0),
    every distractor as a false positive (0.8-0.9, above the usual 0.8 cut) and 1-2 junk boxes
    below 0.8. A function of (seed, video index, timestamp) only."""
    rng = np.random.default_rng([seed, clip["index"], kf["timestamp"], 31])
    out = [(_jitter(p["box"], rng, 0.05), float(rng.uniform(0.85, 1.0))) for p in kf["persons"]]
    out += [(_jitter(b, rng, 0.05), float(rng.uniform(0.8, 0.9))) for b in kf["distractors"]]
    for _ in range(int(rng.integers(1, 3))):
        x1, y1 = rng.uniform(0.0, 0.7, size=2)
        w, h = rng.uniform(0.1, 0.3, size=2)
        box = [round(float(v), 3) for v in (x1, y1, min(1.0, x1 + w), min(1.0, y1 + h))]
        out.append((box, float(rng.uniform(0.05, 0.79))))
    return out


def _box_text(box: list[float]) -> str:
    return ",".join(f"{v:.3f}" for v in box)


def labelmap_text(kind: str) -> str:
    """``"full"``: the 80-class ``label { name label_id label_type }`` file; ``"activitynet"``:
    the 60-class ``item { name id }`` file."""
    if kind == "full":
        return "".join(f'label {{\n  name: "{n}"\n  label_id: {i}\n  label_type: {t}\n}}\n'
                       for i, n, t in AVA_CLASSES)
    if kind == "activitynet":
        return "".join(f'item {{\n  name: "{AVA_NAMES[i]}"\n  id: {i}\n}}\n' for i in AVA_EVAL_IDS)
    raise ValueError(f"labelmap kind must be 'full' or 'activitynet', got {kind!r}")


@LAYOUTS.register("ava")
def write_ava(out: Path, *, clips_per_class: int = 4, seed: int = 0,
              cfg: WorldConfig = WorldConfig(), workers: int = 1,
              keyframes_per_video: int = 3) -> Path:
    """AVA v2.2 files under ``out`` (module docstring): ``clips_per_class`` videos per synthetic
    action (the action of the clip's main actor; a quarter of them, by (class + clip) % 4 == 3,
    are val, the rest train) with ``keyframes_per_video`` keyframes each (timestamps 0902..),
    plus one video per split with nobody in it (one keyframe written as a 2-column row)."""
    _check(clips_per_class)
    if keyframes_per_video < 1:
        raise ConfigError(f"keyframes_per_video must be >= 1, got {keyframes_per_video}")
    n_act = len(ACTIONS)
    n = clips_per_class * n_act
    ids = _ytids(np.random.default_rng([seed, 902]), n + 2)
    jobs = []
    for j in range(clips_per_class):
        for ci in range(n_act):
            split = "val" if (ci + j) % 4 == 3 else "train"
            vid = ids[j * n_act + ci]
            jobs.append(Job(f"videos_15min/{vid}.mp4", seed, ci + n_act * j, ci, AVA_FPS, True,
                            {"video_id": vid, "split": split, "empty": False,
                             "num_keyframes": keyframes_per_video}))
    for k, split in enumerate(("train", "val")):
        vid = ids[n + k]
        jobs.append(Job(f"videos_15min/{vid}.mp4", seed, n + k, 0, AVA_FPS, True,
                        {"video_id": vid, "split": split, "empty": True, "num_keyframes": 1}))
    clips = _run(jobs, out, cfg, workers, "ava", write=_write_ava_video, unit="video")

    ann = out / "annotations"
    _write_text(ann / "ava_action_list_v2.2.pbtxt", labelmap_text("full").splitlines())
    _write_text(ann / "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
                labelmap_text("activitynet").splitlines())
    exclusions: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "val"):
        mine = [c for c in clips if c["split"] == split]
        people = [c for c in mine if not c["empty"]]
        # a few excluded keyframes: one in every fifth video (still annotated, as the official
        # evaluator expects to meet and skip them)
        rng = np.random.default_rng([seed, 77, len(split)])
        excl = sorted((c["video_id"], c["keyframes"][int(rng.integers(len(c["keyframes"])))]
                       ["timestamp"]) for c in people[2::5])
        exclusions[split] = excl
        gt, props = [], []
        for c in mine:
            for kf in c["keyframes"]:
                ts = f"{kf['timestamp']:04d}"
                if not kf["persons"]:
                    gt.append(f"{c['video_id']},{ts}")
                for p in kf["persons"]:
                    gt += [f"{c['video_id']},{ts},{_box_text(p['box'])},{a},{p['person_id']}"
                           for a in p["actions"]]
                props += [f"{c['video_id']},{ts},{_box_text(b)},,{s:.6f}"
                          for b, s in _proposals(c, kf, seed)]
        _write_text(ann / f"ava_{split}_v2.2.csv", gt)
        _write_text(ann / f"ava_{split}_predicted_boxes.csv", props)
        _write_text(ann / f"ava_{split}_excluded_timestamps_v2.2.csv",
                    [f"{v},{t:04d}" for v, t in excl])
    return _finish(out, "ava", seed, replace(cfg, fps=AVA_FPS), clips_per_class,
                   [AVA_NAMES[i] for i in AVA_EVAL_IDS],
                   clips, f"""
AVA v2.2 layout: annotations/ (GT CSVs, both label maps, excluded timestamps, person proposals)
and videos_15min/<video_id>.mp4 (H.264 + AAC, 30 fps, {cfg.size}x{cfg.size}), each as if cut from
a movie at 900 s: keyframe timestamp s (written 0902) is at s - 900 seconds in the file. A video
is one synthetic clip; its sounding actors are the persons (person_id = actor index). Actions per
visible person: the pose class of its synthetic action (pose_of_action in this JSON, by ACTIONS
index), talk to (79) when one of its sound events is within +-{TALK_WINDOW_S} s of the keyframe,
listen to (74) when another visible person talks, watch (a person) (80) when another person is
visible. clips_per_class videos per synthetic action; (class + clip) % 4 == 3 go to val. Each
split has one extra video with nobody in it: its keyframe is a 2-column row. Proposals
(predicted_boxes): every person jittered with score 0.85-1.0, every silent distractor as a false
positive with 0.8-0.9, and 1-2 junk boxes below 0.8. One keyframe in every fifth video is listed
in the excluded timestamps (and still annotated).""",
                   class_meaning=("the k-th of the 60 evaluated AVA classes (\"classes\"); a clip's "
                                  "label is its synthetic action ACTIONS[label]"),
                   keyframes_per_video=keyframes_per_video, pose_of_action=POSE_OF_ACTION,
                   class_ids=AVA_EVAL_IDS,
                   exclusions={k: [list(x) for x in v] for k, v in exclusions.items()})
