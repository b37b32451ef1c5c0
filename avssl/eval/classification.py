"""Classification metrics: top-k, per-class and mean-class accuracy, AP / mAP (all in percent).

Ties never help a model: the true class is within the top k only if fewer than k *other*
classes score at least as high as it, so constant scores give top-1 = 0; in average precision a
group of tied scores is ranked negatives first.

Files (``python -m avssl.eval classification --predictions P.csv [--labels L.csv]``)::

    labels.csv       id,label                 label = a class name or an integer class index
    predictions.csv  id,<class_0>,<class_1>,... one score column per class, named by the class
                                              (higher = more likely); gives top1, top5,
                                              mean_class_acc, per_class
                 or  id,prediction            one predicted label per id (name or index, written
                                              like the labels): top1, mean_class_acc, per_class

``ids`` pair the two files (any order; every id exactly once in each). ``labels.csv`` may be
left out when ``predictions.csv`` has a ``label`` column. With score columns, labels are class
names when every label is one of the column names, else integer indices into the columns.
Output keys: ``top1``, ``top5`` (scores only), ``mean_class_acc``, ``per_class`` (class ->
percent, classes that have samples), ``num_samples``. A class name given twice (array API)
is keyed ``"name (index)"`` after its first use, so every class keeps its own entry.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

import numpy as np

from avssl.errors import ConfigError, DataError
from avssl.eval import EVALUATORS


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on a GPU
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _scores(scores: Any, name: str = "scores", ndim: int = 2) -> np.ndarray:
    s = _numpy(scores).astype(np.float64)
    if s.ndim != ndim or s.size == 0:
        want = "(N, C)" if ndim == 2 else "(N,)"
        raise ConfigError(f"{name}: expected a non-empty {ndim}-D array {want}, got shape "
                          f"{tuple(s.shape)}")
    if not np.isfinite(s).all():
        raise ConfigError(f"{name}: expected finite values, got NaN or inf in shape "
                          f"{tuple(s.shape)}")
    return s


def _labels(labels: Any, n: int, num_classes: int | None, name: str = "labels") -> np.ndarray:
    y = _numpy(labels)
    if y.shape != (n,):
        raise ConfigError(f"{name}: expected shape ({n},) to match the scores, got "
                          f"{tuple(y.shape)}")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise ConfigError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        raise ConfigError(f"{name}: expected class indices in [0, {num_classes}), got values "
                          f"in [{y.min()}, {y.max()}]")
    return y


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) < num_classes:
        raise ConfigError(f"class_names: expected at least {num_classes} names, got "
                          f"{len(names)}")
    # a repeated name gets its index, as in avssl.eval.ava: keyed by name, two classes merged
    # into one per_class entry and mean_class_acc averaged over fewer classes
    unique: dict[str, None] = {}
    for c, name in enumerate(names):
        unique[name if name not in unique else f"{name} ({c})"] = None
    if len(unique) != len(names):
        raise ConfigError(f"class_names: expected distinct names; {len(names) - len(unique)} "
                          f"still clash with the index appended to repeated ones")
    return list(unique)


def _ahead(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) number of classes other than the true one scoring >= the true class's score."""
    true = scores[np.arange(len(y)), y]
    return (scores >= true[:, None]).sum(axis=1) - 1


def topk_accuracy(scores: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top<k>": percent}`` for ``scores`` (N, C) and integer ``labels`` (N,).

    A sample is correct at k iff fewer than k other classes score >= its true class (ties count
    against); k > C is clamped to C (so it is 100).
    """
    s = _scores(scores)
    y = _labels(labels, len(s), s.shape[1])
    ahead = _ahead(s, y)
    out = {}
    for k in ks:
        if int(k) < 1:
            raise ConfigError(f"expected k >= 1 for top-k accuracy, got {k}")
        out[f"top{int(k)}"] = float(100.0 * np.mean(ahead < min(int(k), s.shape[1])))
    return out


def _per_class(correct: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, float]:
    return {names[c]: float(100.0 * correct[y == c].mean()) for c in np.unique(y)}


def per_class_accuracy(pred: Any, labels: Any,
                       class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy (percent) of each class present in ``labels`` (N,) given predictions ``pred``
    (N,), both integer indices; keys are ``class_names[c]`` or ``str(c)``."""
    raw = _numpy(labels)
    if raw.ndim != 1 or raw.size == 0:
        raise ConfigError(f"labels: expected a non-empty 1-D array (N,), got shape "
                          f"{tuple(raw.shape)}")
    y = _labels(raw, len(raw), None)
    p = _labels(pred, len(y), None, name="pred")
    return _per_class(p == y, y, _names(class_names, int(max(y.max(), p.max())) + 1))


def mean_class_acc(pred: Any, labels: Any) -> float:
    """Mean over the classes present in ``labels`` of their accuracy (percent)."""
    return float(np.mean(list(per_class_accuracy(pred, labels).values())))


def classification_metrics(scores: Any, labels: Any,
                           class_names: Sequence[str] | None = None) -> dict:
    """``top1``, ``top5``, ``mean_class_acc``, ``per_class`` (percent) and ``num_samples`` for
    ``scores`` (N, C) and ``labels`` (N,); per-class accuracy uses the tie-aware top-1."""
    s = _scores(scores)
    y = _labels(labels, len(s), s.shape[1])
    correct = _ahead(s, y) < 1
    per_class = _per_class(correct, y, _names(class_names, s.shape[1]))
    return {**topk_accuracy(s, y, ks=(1, 5)),
            "mean_class_acc": float(np.mean(list(per_class.values()))),
            "per_class": per_class, "num_samples": int(len(y))}


def average_precision(scores: Any, targets: Any) -> float:
    """All-point average precision (percent) of ``scores`` (N,) for binary ``targets`` (N,).

    ``AP = sum_n (R_n - R_(n-1)) P_n`` over the ranking by descending score, i.e. the mean of
    the precision at each positive; tied scores are ranked negatives first (the worst order).
    Raises ConfigError when ``targets`` has no positive.
    """
    s = _scores(scores, ndim=1)
    t = _numpy(targets)
    if t.shape != s.shape or not np.isin(t, (0, 1)).all():
        raise ConfigError(f"targets: expected 0/1 values of shape {tuple(s.shape)}, got shape "
                          f"{tuple(t.shape)}")
    t = t.astype(np.int64)
    if not t.any():
        raise ConfigError("average precision needs at least one positive target")
    order = np.lexsort((t, -s))  # by descending score, then negatives (0) first within a tie
    hits = t[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(100.0 * precision[hits == 1].mean())


def mean_average_precision(scores: Any, targets: Any,
                           class_names: Sequence[str] | None = None) -> dict:
    """Multi-label mAP: ``scores`` (N, C), ``targets`` (N, C) in {0, 1}.

    Returns ``mAP`` (percent, mean over classes with at least one positive), ``per_class``
    (class -> AP percent), ``num_classes`` (classes averaged) and ``num_skipped`` (classes
    without a positive, left out).
    """
    s = _scores(scores)
    t = _numpy(targets)
    if t.shape != s.shape:
        raise ConfigError(f"targets: expected shape {tuple(s.shape)} like the scores, got "
                          f"{tuple(t.shape)}")
    names = _names(class_names, s.shape[1])
    per_class = {names[c]: average_precision(s[:, c], t[:, c])
                 for c in range(s.shape[1]) if np.any(t[:, c] == 1)}
    if not per_class:
        raise ConfigError("mAP needs at least one class with a positive target; every column "
                          "of targets is 0")
    return {"mAP": float(np.mean(list(per_class.values()))), "per_class": per_class,
            "num_classes": len(per_class), "num_skipped": int(s.shape[1] - len(per_class))}


# ------------------------------------------------------------------------------------- files
def _read_csv(path: str | os.PathLike, what: str, required: Sequence[str]):
    from avssl.csvfiles import read_text_csv

    if not os.path.isfile(path):
        raise DataError(f"{what} file {path} not found")
    df = read_text_csv(path, f"a header with {', '.join(required)}", what=f"{what} file")
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing or df.empty:
        raise DataError(f"{what} file {path}: expected a header with {', '.join(required)} and "
                        f"at least one row, got columns {list(df.columns)} and {len(df)} rows")
    for col in ("id", "label", "prediction"):  # a blank would be scored as a class named ""
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str).str.strip()
            blank = np.flatnonzero((df[col] == "").to_numpy())
            if len(blank):
                row = int(blank[0])
                who = "a row" if col == "id" else f"id {df['id'].iloc[row]}"
                raise DataError(f"{what} file {path}: {who} (line {row + 2}) has no {col}; "
                                f"expected {', '.join(required)} on every line")
    dup = df["id"][df["id"].duplicated()].unique()
    if len(dup):
        raise DataError(f"{what} file {path}: {len(dup)} ids appear more than once "
                        f"(first: {', '.join(dup[:3])})")
    return df


def _first(ids, n: int = 3) -> str:
    ids = list(ids)
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "")


def evaluate_classification_files(predictions: str | os.PathLike,
                                  labels: str | os.PathLike | None = None) -> dict:
    """Metrics for a predictions CSV against a labels CSV (formats in the module docstring)."""
    pred = _read_csv(predictions, "predictions", ["id"])
    if labels is not None:
        lab = _read_csv(labels, "labels", ["id", "label"])
    elif "label" in pred.columns:
        lab = pred[["id", "label"]]
    else:
        raise DataError(f"no labels for {predictions}: pass --labels L.csv (header id,label) or "
                        f"add a label column to the predictions")
    pred = pred.drop(columns=["label"], errors="ignore").set_index("id")
    missing = [i for i in lab["id"] if i not in pred.index]
    extra = sorted(set(pred.index) - set(lab["id"]))
    if missing or extra:
        parts = ([f"{len(missing)} labelled ids have no prediction (first: {_first(missing)})"]
                 if missing else []) + \
                ([f"{len(extra)} predicted ids have no label (first: {_first(extra)})"]
                 if extra else [])
        raise DataError(f"{predictions} and its labels must list the same ids: "
                        + "; ".join(parts))
    pred = pred.loc[list(lab["id"])]
    y_text = [str(v).strip() for v in lab["label"]]

    if "prediction" in pred.columns:
        if len(pred.columns) != 1:
            raise DataError(f"{predictions}: expected either id,prediction or id,<one score "
                            f"column per class>, got columns {['id', *pred.columns]}")
        names = sorted(set(y_text))
        index = {c: i for i, c in enumerate(names)}
        y = np.array([index[v] for v in y_text])
        p_text = [p.strip() for p in pred["prediction"]]
        if not set(p_text) & set(y_text) and _all_ints(p_text) != _all_ints(y_text):
            # indices against names (or back) would silently score 0 for every sample
            raise DataError(f"{predictions}: no prediction is written like a label (predictions "
                            f"{_first(dict.fromkeys(p_text))}; labels "
                            f"{_first(dict.fromkeys(y_text))}); write both as class names or "
                            f"both as integer indices")
        correct = np.array(p_text) == np.array(y_text)
        per_class = _per_class(correct, y, names)
        return {"top1": float(100.0 * correct.mean()),
                "mean_class_acc": float(np.mean(list(per_class.values()))),
                "per_class": per_class, "num_samples": int(len(y))}

    names = list(pred.columns)
    if not names:
        raise DataError(f"{predictions}: expected score columns after id (one per class) or a "
                        f"prediction column")
    try:
        scores = pred.to_numpy(dtype=np.float64)
    except ValueError:
        bad = [c for c in names if not _numeric(pred[c])]
        raise DataError(f"{predictions}: score columns must be numbers; column(s) "
                        f"{_first(bad)} are not") from None
    if not np.isfinite(scores).all():
        raise DataError(f"{predictions}: scores must be finite numbers (found NaN or inf)")
    index = {c: i for i, c in enumerate(names)}
    if all(v in index for v in y_text):
        y = np.array([index[v] for v in y_text])
    elif all(v.lstrip("-").isdigit() and 0 <= int(v) < len(names) for v in y_text):
        y = np.array([int(v) for v in y_text])
    else:
        unknown = [v for v in y_text if v not in index]
        raise DataError(f"labels must be class names from the predictions header "
                        f"({_first(names)}) or indices 0..{len(names) - 1}; unknown: "
                        f"{_first(dict.fromkeys(unknown))}")
    return classification_metrics(scores, y, class_names=names)


def _all_ints(values) -> bool:
    return all(v.lstrip("-").isdigit() for v in values)


def _numeric(col) -> bool:
    try:
        col.astype(float)
        return True
    except ValueError:
        return False


def _run(args: argparse.Namespace) -> dict:
    return evaluate_classification_files(args.predictions, args.labels)


@EVALUATORS.register("classification")
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Subcommand ``classification``: top-1/top-5, per-class and mean-class accuracy."""
    p = subparsers.add_parser(
        "classification", help="top-1/top-5 and per-class accuracy of a predictions CSV",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, metavar="P.csv",
                   help="id,<score per class>... or id,prediction")
    p.add_argument("--labels", metavar="L.csv",
                   help="id,label (optional when the predictions have a label column)")
    p.set_defaults(run=_run)
    return p
