"""Source separation: BSS-eval SDR / SIR / SAR in dB, the Sound of Pixels way (MUSIC).

Per sample, ``mir_eval.separation.bss_eval_sources(references, estimates,
compute_permutation=False)`` (estimate k is scored against reference k: the separator was asked
for source k); a sample's SDR, SIR and SAR are the means over its sources, and the reported
values are the means over samples. A sample is skipped (and counted in ``num_skipped``, named in
``skipped``) when any reference or estimate, or its mixture, is near-silent (sum |x| <= 1e-5):
BSS-eval is undefined there. With mixtures, ``SDR_mix`` is BSS-eval's SDR of the mixture given as
the estimate of every source (what doing nothing scores) and ``NSDR = SDR - SDR_mix`` per sample,
then averaged.

Files (``python -m avssl.eval separation --references REF_DIR --estimates EST_DIR
[--mixtures MIX_DIR]``): ``REF_DIR/<sample>/<source>.wav`` and ``EST_DIR/<sample>/<source>.wav``
pair up by name (the same samples, each with the same sources, of equal lengths);
``MIX_DIR/<sample>.wav``. Multi-channel files are averaged to mono. Output keys: ``SDR``, ``SIR``,
``SAR`` (and ``SDR_mix``, ``NSDR``), ``num_samples`` (evaluated), ``num_skipped``, ``skipped``,
``per_sample`` ({sample: {"SDR", "SIR", "SAR", ["SDR_mix", "NSDR"], "SDR_sources": [per
source, in source-name order]}}); means are ``null`` when every sample was skipped.
"""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from avssl.errors import ConfigError, DataError
from avssl.eval import EVALUATORS

SILENCE = 1e-5  # sum |x| at or below this: near-silent (the Sound of Pixels threshold)
_AUDIO_EXT = ".wav"


def _bss_eval(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(SDR, SIR, SAR) (n_src,) each, from mir_eval without permutation search."""
    from mir_eval.separation import bss_eval_sources  # imported on use: it pulls in scipy

    with warnings.catch_warnings():  # "deprecated in 0.8, removed in 0.9": avssl pins < 0.9
        warnings.filterwarnings("ignore", message=r"mir_eval\.separation",
                                category=FutureWarning)
        sdr, sir, sar, _ = bss_eval_sources(ref, est, compute_permutation=False)
    return sdr, sir, sar


def _as_sources(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise DataError(f"separation: {what} must be (n_src, S) or (S,) with S > 0, got shape "
                        f"{a.shape}")
    if not np.isfinite(a).all():  # mir_eval would return NaN metrics without complaint
        bad = np.argwhere(~np.isfinite(a))[0]
        raise DataError(f"separation: {what} must hold finite samples, got {a[tuple(bad)]} at "
                        f"source {bad[0]}, sample {bad[1]}")
    return a


def _silent(x: np.ndarray) -> bool:
    return bool((np.abs(x).sum(axis=-1) <= SILENCE).any())


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate_separation(references: Sequence[np.ndarray], estimates: Sequence[np.ndarray], *,
                        mixtures: Sequence[np.ndarray] | None = None,
                        names: Sequence[str] | None = None) -> dict[str, Any]:
    """BSS-eval of each sample (see the module docstring for the rules and the output keys).

    references[i], estimates[i]: (n_src, S) float (a (S,) array is one source); mixtures[i]: (S,)
    (or (1, S)). Sample i is named ``names[i]`` (default ``str(i)``). DataError when counts,
    source counts or lengths disagree.
    """
    n = len(references)
    if len(estimates) != n:
        raise DataError(f"separation: {n} reference samples but {len(estimates)} estimates")
    if mixtures is not None and len(mixtures) != n:
        raise DataError(f"separation: {n} reference samples but {len(mixtures)} mixtures")
    names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n or len(set(names)) != n:
        raise ConfigError(f"separation: need {n} distinct sample names, got {len(names)} "
                          f"({len(set(names))} distinct)")
    per_sample: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for i, name in enumerate(names):
        ref = _as_sources(references[i], f"references[{name}]")
        est = _as_sources(estimates[i], f"estimates[{name}]")
        if ref.shape != est.shape:
            raise DataError(f"separation: sample {name!r}: references {ref.shape} and estimates "
                            f"{est.shape} differ (need the same sources and length)")
        mix = None
        if mixtures is not None:
            mix = _as_sources(mixtures[i], f"mixtures[{name}]")
            if mix.shape != (1, ref.shape[1]):
                raise DataError(f"separation: sample {name!r}: mixture of shape "
                                f"{tuple(np.shape(mixtures[i]))}, expected ({ref.shape[1]},)")
        if _silent(ref) or _silent(est) or (mix is not None and _silent(mix)):
            skipped.append(name)
            continue
        sdr, sir, sar = _bss_eval(ref, est)
        row: dict[str, Any] = {"SDR": float(sdr.mean()), "SIR": float(sir.mean()),
                               "SAR": float(sar.mean()), "SDR_sources": sdr.tolist()}
        if mix is not None:
            sdr_mix = _bss_eval(ref, np.repeat(mix, ref.shape[0], axis=0))[0]
            row["SDR_mix"] = float(sdr_mix.mean())
            row["NSDR"] = row["SDR"] - row["SDR_mix"]
        per_sample[name] = row
    keys = ("SDR", "SIR", "SAR") + (("SDR_mix", "NSDR") if mixtures is not None else ())
    out: dict[str, Any] = {k: _mean([r[k] for r in per_sample.values()]) for k in keys}
    out.update(num_samples=len(per_sample), num_skipped=len(skipped), skipped=skipped,
               per_sample=per_sample)
    return out


# ---------------------------------------------------------------- files


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples (S,) float64 mono, sample rate) of a wav file; channels are averaged.

    Uses ``soundfile`` when installed, else ``scipy.io.wavfile`` (integer PCM scaled to [-1, 1)).
    """
    try:
        import soundfile
    except ImportError:  # pragma: no cover - soundfile is present where avssl is installed
        soundfile = None
    try:
        if soundfile is not None:
            data, sr = soundfile.read(os.fspath(path), dtype="float64", always_2d=True)
            return data.mean(axis=1), int(sr)
        from scipy.io import wavfile

        sr, data = wavfile.read(os.fspath(path))
        if data.dtype == np.uint8:  # 8-bit WAV is offset binary: 128 is silence
            data = (data.astype(np.float64) - 128.0) / 128.0
        elif np.issubdtype(data.dtype, np.integer):
            data = data / float(-np.iinfo(data.dtype).min)
        data = np.asarray(data, dtype=np.float64)
        return (data.mean(axis=1) if data.ndim == 2 else data), int(sr)
    except Exception as e:  # noqa: BLE001 - every reader error means "not a readable wav"
        raise DataError(f"separation: cannot read {path} as a wav file "
                        f"({type(e).__name__}: {' '.join(str(e).split())})") from None


def _samples(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"separation: {what} folder {folder} does not exist; expected "
                        f"{what.upper()}_DIR/<sample>/<source>.wav")
    found = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()}
    if not found:
        raise DataError(f"separation: {what} folder {folder} has no sample folders; expected "
                        f"{what.upper()}_DIR/<sample>/<source>.wav")
    return found


def _sources(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() == _AUDIO_EXT}


def _unmatched(a: set[str], b: set[str], what_a: str, what_b: str, kind: str) -> str | None:
    only_a, only_b = sorted(a - b), sorted(b - a)
    if not only_a and not only_b:
        return None
    parts = [f"{len(x)} {kind} only in {w} ({', '.join(x[:3])}{', ...' if len(x) > 3 else ''})"
             for x, w in ((only_a, what_a), (only_b, what_b)) if x]
    return "; ".join(parts)


def _stack(paths: dict[str, Path], sample: str, what: str) -> tuple[np.ndarray, int]:
    """(n_src, S) of a sample's sources in name order, and their sample rate."""
    arrays, rates = [], set()
    for p in paths.values():
        x, sr = read_wav(p)
        arrays.append(x)
        rates.add(sr)
    lengths = {len(x) for x in arrays}
    if len(lengths) > 1 or len(rates) > 1:
        raise DataError(f"separation: the {what} sources of sample {sample!r} differ in length "
                        f"{sorted(lengths)} or sample rate {sorted(rates)}; all wav files of a "
                        f"sample must match")
    return np.stack(arrays), rates.pop()


def read_separation_dirs(references: str | os.PathLike, estimates: str | os.PathLike,
                         mixtures: str | os.PathLike | None = None
                         ) -> tuple[list[str], list[np.ndarray], list[np.ndarray],
                                    list[np.ndarray] | None]:
    """``(names, refs, ests, mixes)`` paired by name: sample folders sorted, sources sorted by file
    name; refs[i] and ests[i] (n_src, S) float64, mixes[i] (S,) or ``mixes`` None. DataError
    naming the unmatched samples or sources, or the files whose lengths or rates disagree."""
    ref_dir, est_dir = Path(references), Path(estimates)
    refs_s, ests_s = _samples(ref_dir, "references"), _samples(est_dir, "estimates")
    why = _unmatched(set(refs_s), set(ests_s), str(ref_dir), str(est_dir), "samples")
    if why:
        raise DataError(f"separation: reference and estimate samples do not pair up: {why}")
    mix_files: dict[str, Path] = {}
    if mixtures is not None:
        mix_dir = Path(mixtures)
        if not mix_dir.is_dir():
            raise DataError(f"separation: mixtures folder {mix_dir} does not exist; expected "
                            f"MIX_DIR/<sample>.wav")
        mix_files = {p.stem: p for p in sorted(mix_dir.iterdir())
                     if p.is_file() and p.suffix.lower() == _AUDIO_EXT}
        why = _unmatched(set(refs_s), set(mix_files), str(ref_dir), str(mix_dir), "samples")
        if why:
            raise DataError(f"separation: reference samples and mixtures do not pair up: {why}")
    names, refs, ests, mixes = [], [], [], []
    for name in sorted(refs_s):
        rs, es = _sources(refs_s[name]), _sources(ests_s[name])
        if not rs:
            raise DataError(f"separation: {refs_s[name]} holds no <source>.wav file")
        why = _unmatched(set(rs), set(es), str(refs_s[name]), str(ests_s[name]), "sources")
        if why:
            raise DataError(f"separation: sample {name!r}: sources do not pair up: {why}")
        ref, sr = _stack(rs, name, "reference")
        est, sr_e = _stack({k: es[k] for k in rs}, name, "estimated")
        if est.shape != ref.shape or sr_e != sr:
            raise DataError(f"separation: sample {name!r}: estimates have {est.shape[1]} samples "
                            f"at {sr_e} Hz, references {ref.shape[1]} at {sr} Hz; they must "
                            f"match")
        if mixtures is not None:
            mix, sr_m = read_wav(mix_files[name])
            if len(mix) != ref.shape[1] or sr_m != sr:
                raise DataError(f"separation: mixture {mix_files[name]} has {len(mix)} samples at "
                                f"{sr_m} Hz, the references {ref.shape[1]} at {sr} Hz")
            mixes.append(mix)
        names.append(name)
        refs.append(ref)
        ests.append(est)
    return names, refs, ests, (mixes if mixtures is not None else None)


def evaluate_separation_dirs(references: str | os.PathLike, estimates: str | os.PathLike,
                             mixtures: str | os.PathLike | None = None) -> dict[str, Any]:
    """:func:`evaluate_separation` of the wav folders (see :func:`read_separation_dirs`)."""
    names, refs, ests, mixes = read_separation_dirs(references, estimates, mixtures)
    return evaluate_separation(refs, ests, mixtures=mixes, names=names)


def _run(args: argparse.Namespace) -> dict:
    return evaluate_separation_dirs(args.references, args.estimates, args.mixtures)


@EVALUATORS.register("separation")
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Subcommand ``separation``: BSS-eval SDR / SIR / SAR (dB) of separated sources."""
    p = subparsers.add_parser(
        "separation", help="source separation SDR / SIR / SAR in dB (mir_eval BSS-eval)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--references", required=True, metavar="REF_DIR",
                   help="REF_DIR/<sample>/<source>.wav: the true sources")
    p.add_argument("--estimates", required=True, metavar="EST_DIR",
                   help="EST_DIR/<sample>/<source>.wav: the separated sources")
    p.add_argument("--mixtures", metavar="MIX_DIR",
                   help="MIX_DIR/<sample>.wav: the mixtures (adds SDR_mix and NSDR)")
    p.set_defaults(run=_run)
    return p
