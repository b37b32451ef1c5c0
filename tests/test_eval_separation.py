"""Separation evaluator (issue 10): BSS-eval via mir_eval, silence skipping, SDR_mix / NSDR, wav
folders and the ``python -m avssl.eval separation`` CLI."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from avssl.errors import DataError
from avssl.eval.__main__ import main
from avssl.eval.separation import evaluate_separation, read_separation_dirs

SR = 8000  # short, low-rate signals keep BSS-eval fast


def two_sources(seed: int, seconds: float = 1.0) -> np.ndarray:
    """(2, S): a vibrato tone with harmonics and a train of low noisy clicks; different spectra,
    both never silent; each divided by N = 2 as in mix-and-separate."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(500, 900)
    phase = 2 * np.pi * f0 * t + 3 * np.sin(2 * np.pi * 5 * t)
    a = sum(np.sin(k * phase) / k for k in (1, 2, 3)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    env = np.exp(-np.mod(t, rng.uniform(0.15, 0.25)) / 0.04)
    lp = np.convolve(rng.standard_normal(len(t)), np.ones(16) / 4, mode="same")  # low-passed
    b = env * (np.sin(2 * np.pi * rng.uniform(90, 160) * t) + 0.3 * lp)
    return np.stack([a / np.abs(a).max(), b / np.abs(b).max()]) / 2


def direct(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, ...]:
    from mir_eval.separation import bss_eval_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return bss_eval_sources(ref, est, compute_permutation=False)[:3]


def test_equals_mir_eval_called_directly():
    rng = np.random.default_rng(0)
    refs = [two_sources(s) for s in range(2)]
    # estimates with crosstalk (SIR), noise (SAR) and a gain error, different per sample
    ests = [r + 0.2 * (i + 1) * r[::-1] + 0.02 * rng.standard_normal(r.shape)
            for i, r in enumerate(refs)]
    ests[1] = ests[1] * np.array([[0.5], [1.5]])
    got = evaluate_separation(refs, ests, names=["a", "b"])
    assert got["num_samples"] == 2 and got["num_skipped"] == 0 and "SDR_mix" not in got
    want = {name: direct(r, e) for name, r, e in zip("ab", refs, ests)}
    for name, (sdr, sir, sar) in want.items():
        row = got["per_sample"][name]
        assert row["SDR"] == pytest.approx(sdr.mean(), abs=1e-9)
        assert row["SIR"] == pytest.approx(sir.mean(), abs=1e-9)
        assert row["SAR"] == pytest.approx(sar.mean(), abs=1e-9)
        assert row["SDR_sources"] == pytest.approx(sdr.tolist(), abs=1e-9)
    for k, i in (("SDR", 0), ("SIR", 1), ("SAR", 2)):
        assert got[k] == pytest.approx(np.mean([w[i].mean() for w in want.values()]), abs=1e-9)
    # no permutation search: swapping the estimates makes the score collapse
    swapped = evaluate_separation([refs[0]], [ests[0][::-1]])
    assert swapped["SDR"] < got["per_sample"]["a"]["SDR"] - 10


def oracle(ref: np.ndarray, kind: str) -> np.ndarray:
    """Estimates from the ideal binary (source > 0.5 mixture) or ratio mask on the mixture STFT,
    reconstructed with the mixture phase."""
    win = torch.hann_window(256, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(ref), 256, 64, window=win, return_complex=True)
    mix = spec.sum(0)
    mag = spec.abs()
    if kind == "binary":
        mask = (mag > 0.5 * mix.abs()).double()
    else:
        mask = mag / mag.sum(0).clamp_min(1e-12)
    est = torch.istft(mask * mix, 256, 64, window=win, length=ref.shape[1])
    return est.numpy()


@pytest.mark.parametrize("kind", ["binary", "ratio"])
def test_oracle_masks_score_far_above_the_mixture(kind):
    ref = two_sources(1 if kind == "binary" else 2)
    mix = ref.sum(0)
    got = evaluate_separation([ref], [oracle(ref, kind)], mixtures=[mix])
    assert got["SDR"] > 10.0
    # the mixture of two equal-level sources is worth about 0 dB; oracle masks gain > 10 dB
    assert -3.0 < got["SDR_mix"] < 3.0
    assert got["NSDR"] == pytest.approx(got["SDR"] - got["SDR_mix"], abs=1e-9)
    assert got["NSDR"] > 10.0
    # SDR_mix is BSS-eval of the mixture given as every source's estimate
    assert got["SDR_mix"] == pytest.approx(direct(ref, np.stack([mix, mix]))[0].mean(), abs=1e-9)


def test_near_silent_samples_are_skipped_and_counted():
    refs = [two_sources(s) for s in range(4)]
    ests = [r + 0.3 * r[::-1] for r in refs]
    refs[1] = refs[1].copy()
    refs[1][0] = 0.0  # a silent reference source
    ests[2] = ests[2].copy()
    ests[2][1] = 1e-5 / ests[2].shape[1] / 2  # sum |x| = 5e-6 <= 1e-5: near-silent
    ests[3] = ests[3].copy()
    ests[3][1] = 2e-5 / ests[3].shape[1]  # sum |x| = 2e-5: quiet but evaluated
    got = evaluate_separation(refs, ests, names=["ok", "silent_ref", "silent_est", "quiet"])
    assert got["num_skipped"] == 2 and got["skipped"] == ["silent_ref", "silent_est"]
    assert got["num_samples"] == 2 and set(got["per_sample"]) == {"ok", "quiet"}
    alone = evaluate_separation([refs[0]], [ests[0]])
    assert got["per_sample"]["ok"]["SDR"] == pytest.approx(alone["SDR"], abs=1e-9)
    assert got["SDR"] == pytest.approx(np.mean([got["per_sample"][k]["SDR"]
                                                for k in ("ok", "quiet")]), abs=1e-12)
    # a silent mixture skips its sample too; nothing left -> null means, not an error
    none = evaluate_separation([refs[0]], [ests[0]], mixtures=[np.zeros(refs[0].shape[1])])
    assert none["num_skipped"] == 1 and none["SDR"] is None and none["NSDR"] is None


def test_shape_mismatches_are_data_errors():
    r = two_sources(0)
    with pytest.raises(DataError, match="differ"):
        evaluate_separation([r], [r[:, :-1]])
    with pytest.raises(DataError, match="estimates"):
        evaluate_separation([r, r], [r])
    with pytest.raises(DataError, match="mixture"):
        evaluate_separation([r], [r], mixtures=[r.sum(0)[:-5]])


def test_non_finite_audio_is_a_data_error_not_nan_metrics():
    r = two_sources(0)
    e = r.copy()
    e[1, 7] = np.nan
    with pytest.raises(DataError, match=r"estimates\[0\] must hold finite samples.*source 1, "
                                        r"sample 7"):
        evaluate_separation([r], [e])


def test_cli_json_is_strict_when_a_metric_is_infinite(tmp_path, capsys):
    """One source has no interference: mir_eval's SIR is +inf, printed as null (strict JSON)."""
    r = two_sources(1)[:1]
    e = r + 0.1 * np.random.default_rng(0).normal(size=r.shape)
    write_dirs(tmp_path, [r], [e], ["solo"], sources=("guitar",))
    assert main(["separation", "--references", str(tmp_path / "references"),
                 "--estimates", str(tmp_path / "estimates")]) == 0
    got = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))
    assert got["SIR"] is None and got["per_sample"]["solo"]["SIR"] is None
    assert np.isfinite(got["SDR"]) and got["SDR"] > 0


def write_dirs(root: Path, refs: list[np.ndarray], ests: list[np.ndarray],
               names: list[str], sources: tuple[str, str] = ("guitar", "violin")) -> Path:
    for name, r, e in zip(names, refs, ests):
        for k, src in enumerate(sources):
            for sub, x in (("references", r), ("estimates", e)):
                (root / sub / name).mkdir(parents=True, exist_ok=True)
                soundfile.write(root / sub / name / f"{src}.wav", x[k], SR, subtype="DOUBLE")
        (root / "mixtures").mkdir(exist_ok=True)
        soundfile.write(root / "mixtures" / f"{name}.wav", r.sum(0), SR, subtype="DOUBLE")
    return root


def test_cli_prints_json_of_the_paired_folders(tmp_path, capsys):
    names = ["clip_b", "clip_a"]
    refs = [two_sources(s) for s in (3, 4)]
    ests = [oracle(refs[0], "ratio"), np.zeros_like(refs[1])]  # clip_a: silent, skipped
    write_dirs(tmp_path, refs, ests, names)
    d = {k: str(tmp_path / k) for k in ("references", "estimates", "mixtures")}
    assert main(["separation", "--references", d["references"], "--estimates", d["estimates"],
                 "--mixtures", d["mixtures"]]) == 0
    got = json.loads(capsys.readouterr().out)
    want = evaluate_separation(refs[:1], ests[:1], mixtures=[refs[0].sum(0)])
    assert got["num_samples"] == 1 and got["num_skipped"] == 1 and got["skipped"] == ["clip_a"]
    for k in ("SDR", "SIR", "SAR", "SDR_mix", "NSDR"):
        assert got[k] == pytest.approx(want[k], abs=1e-6)
        assert got["per_sample"]["clip_b"][k] == pytest.approx(got[k], abs=1e-12)
    # samples sort by folder name, sources by file name (guitar before violin)
    n, r2, e2, m2 = read_separation_dirs(d["references"], d["estimates"], d["mixtures"])
    assert n == ["clip_a", "clip_b"] and np.array_equal(r2[1], refs[0])
    assert np.array_equal(m2[1], refs[0].sum(0)) and np.array_equal(e2[0], ests[1])
    # without mixtures: no SDR_mix / NSDR keys
    assert main(["separation", "--references", d["references"], "--estimates",
                 d["estimates"]]) == 0
    assert "NSDR" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("break_it,message", [
    (lambda root: (root / "estimates" / "s0" / "violin.wav").rename(
        root / "estimates" / "s0" / "viola.wav"), "sources do not pair up"),
    (lambda root: (root / "estimates" / "s1").rename(root / "estimates" / "s9"),
     "samples do not pair up"),
    (lambda root: soundfile.write(root / "estimates" / "s0" / "guitar.wav",
                                  np.zeros(SR - 10), SR), "length"),
    (lambda root: (root / "mixtures" / "s1.wav").unlink(), "mixtures do not pair up"),
    (lambda root: (root / "references" / "s0" / "guitar.wav").write_bytes(b"not a wav"),
     "cannot read"),
])
def test_unmatched_or_mismatched_files_are_one_line_errors(tmp_path, capsys, break_it, message):
    refs = [two_sources(s) for s in (5, 6)]
    write_dirs(tmp_path, refs, refs, ["s0", "s1"])
    break_it(tmp_path)
    with pytest.raises(DataError, match=message):
        read_separation_dirs(tmp_path / "references", tmp_path / "estimates",
                             tmp_path / "mixtures")
    assert main(["separation", "--references", str(tmp_path / "references"), "--estimates",
                 str(tmp_path / "estimates"), "--mixtures", str(tmp_path / "mixtures")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
def test_wav_reader_without_soundfile_scales_pcm_like_soundfile(tmp_path, monkeypatch, dtype):
    """The scipy fallback (no soundfile) reads integer PCM as soundfile does; 8-bit WAV is
    unsigned with silence at 128 (dividing by iinfo(uint8).min = 0 gave +-inf)."""
    import sys

    from scipy.io import wavfile

    from avssl.eval.separation import read_wav

    info = np.iinfo(dtype)
    pcm = np.array([info.min, (int(info.min) + int(info.max) + 1) // 2, info.max, info.max // 3],
                   dtype=dtype)
    path = tmp_path / "x.wav"
    wavfile.write(path, SR, pcm)
    expected, sr = read_wav(path)  # soundfile
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    got, sr2 = read_wav(path)
    assert sr == sr2 == SR
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[0] == -1.0 and got[1] == 0.0
