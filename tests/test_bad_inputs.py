"""Bad-input corpus (issue 7): every case is exit 2, one line naming the file, no traceback,
and the project file byte-identical.

The cases are generated in `tmp_path` from a small valid ICBHI-layout dataset or project,
then the stages that read that input run through the CLI (`CliRunner`, in process).
Data problems are caught by `analyze` (later stages read its manifest); project-file
problems by every stage. Bad audio given to `predict` is covered in test_predict.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.testing import write_icbhi_dataset

runner = CliRunner()

A = "101_1b1_Al_sc_Meditron"
B = "102_1b1_Ar_sc_Meditron"
C = "103_2b2_Ar_mc_LittC2SE"
ROWS = [(0.1, 1.0, 0, 0), (1.0, 2.5, 1, 0), (2.5, 3.0, 0, 1)]
SPLIT = "ICBHI_challenge_train_test.txt"
DEMO = "ICBHI_Challenge_demographic_information.txt"
#: A hand-written project file: a comment proves it was not rewritten.
PROJECT_TEXT = "# my notes\nschema = 1\n\n[defaults]\nseed = 3\n"

ANALYZE = ["analyze", "--no-plots", "--no-fbank-stats", "--val-fraction", "0", "--name", "d"]


def _invoke(project: Path, *args: str | Path):
    return runner.invoke(app, ["--device", "cpu", "--project", str(project),
                               *map(str, args)])


def _check_exit_2(result, project: Path, before: bytes | None, where: str) -> str:
    """The common contract; returns the error line."""
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(where, lines[0]), (where, lines[0])
    if before is None:
        assert not project.exists()
    else:
        assert project.read_bytes() == before
    return lines[0]


# --------------------------------------------------------------------- data (analyze)


def _dataset(root: Path, recordings=None, splits=None, **kw) -> Path:
    recordings = recordings or {A: ROWS, B: ROWS[:2], C: ROWS[1:]}
    if splits is None:
        splits = {name: "test" if i == 0 else "train" for i, name in enumerate(recordings)}
    return write_icbhi_dataset(root, recordings, splits=splits, **kw)


def _lines(*extra: str) -> str:
    """A's good rows with `extra` lines appended (so the bad one is line 4+)."""
    good = "".join(f"{s}\t{e}\t{c}\t{w}\n" for s, e, c, w in ROWS)
    return good + "".join(line + "\n" for line in extra)


def _rewrite_wav(path: Path, fn: Callable[[np.ndarray], np.ndarray], subtype="PCM_16"):
    x, sr = sf.read(path, dtype="float32")
    sf.write(path, fn(x), sr, subtype=subtype)


def _with_sample(value: float):
    def fn(x):
        x = x.copy()
        x[100] = value
        return x
    return fn


def _annotation(text: str | bytes):
    def make(root: Path) -> None:
        _dataset(root, {A: ROWS, B: ROWS[:2], C: ROWS[1:]})
        path = root / f"{A}.txt"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", newline="")
    return make


def _audio(kind: str):
    def make(root: Path) -> None:
        _dataset(root)
        wav = root / f"{A}.wav"
        if kind == "empty":
            wav.write_bytes(b"")
        elif kind == "truncated":
            wav.write_bytes(wav.read_bytes()[:30])
        elif kind == "not_audio":
            wav.write_bytes(b"<html><body>this is not audio</body></html>\n" * 40)
        elif kind == "zero_frames":
            sf.write(wav, np.zeros(0, dtype=np.float32), 4000)
        elif kind == "nan":
            _rewrite_wav(wav, _with_sample(np.nan), "FLOAT")
        elif kind == "inf":
            _rewrite_wav(wav, _with_sample(np.inf), "FLOAT")
        elif kind == "silent":
            _rewrite_wav(wav, np.zeros_like)
        else:  # pragma: no cover
            raise AssertionError(kind)
    return make


def _split(text: str):
    def make(root: Path) -> None:
        _dataset(root, splits=text)
    return make


def _missing(which: str):
    def make(root: Path) -> None:
        _dataset(root)
        (root / f"{C}{which}").unlink()
    return make


def _demographics(text: str):
    def make(root: Path) -> None:
        _dataset(root, demographics=text)
    return make


A_TXT, A_WAV = re.escape(f"{A}.txt"), re.escape(f"{A}.wav")

#: (case id, make(root), regex the error line must match)
DATA_CASES = [
    ("empty-wav", _audio("empty"), A_WAV),
    ("zero-frame-wav", _audio("zero_frames"), A_WAV + ".*empty"),
    ("truncated-wav-header", _audio("truncated"), A_WAV),
    ("non-audio-bytes", _audio("not_audio"), A_WAV + ".*unreadable"),
    ("nan-samples", _audio("nan"), A_WAV + ".*NaN"),
    ("inf-samples", _audio("inf"), A_WAV + ".*(NaN|infinite)"),
    ("silent-audio", _audio("silent"), A_WAV + ".*silent"),
    ("zero-length-cycle", _annotation(_lines("3.0\t3.0\t0\t0")), A_TXT + ":4: .*not after"),
    ("negative-cycle", _annotation(_lines("3.0\t2.9\t0\t0")), A_TXT + ":4: .*not after"),
    ("negative-start", _annotation(_lines("-0.5\t3.2\t0\t0")), A_TXT + ":4: .*negative"),
    ("cycle-starts-past-audio", _annotation(_lines("50\t60\t0\t0")), A_TXT + ":4: "),
    ("non-numeric-time", _annotation(_lines("3.0\tabc\t0\t0")), A_TXT + ":4: .*not a number"),
    ("nan-time", _annotation(_lines("nan\t3.2\t0\t0")), A_TXT + ":4: .*finite"),
    ("too-few-columns", _annotation(_lines("3.0\t3.2\t0")), A_TXT + ":4: .*4 columns"),
    ("too-many-columns", _annotation(_lines("3.0\t3.2\t0\t0\t1")), A_TXT + ":4: .*4 columns"),
    ("label-2", _annotation(_lines("3.0\t3.2\t2\t0")), A_TXT + ":4: .*0 or 1"),
    ("label-negative", _annotation(_lines("3.0\t3.2\t0\t-1")), A_TXT + ":4: .*0 or 1"),
    ("label-word", _annotation(_lines("3.0\t3.2\tyes\t0")), A_TXT + ":4: .*0 or 1"),
    ("empty-annotation", _annotation(""), A_TXT + ": .*empty"),
    ("binary-annotation", _annotation(b"0.1\t1.0\t0\t0\n\xff\xfe\x00\x81"), A_TXT + ":2: "),
    ("duplicate-recording-in-split", _split(
        f"{A}\ttest\n{B}\ttrain\n{C}\ttrain\n{A}\ttrain\n"), re.escape(SPLIT) + ":4: "),
    ("split-misses-a-recording", _split(f"{A}\ttest\n{B}\ttrain\n"),
     re.escape(f"{C}.txt") + ": .*not named in the split"),
    ("split-names-unknown-recording", _split(
        f"{A}\ttest\n{B}\ttrain\n{C}\ttrain\n999_1b1_Al_sc_Meditron\ttrain\n"),
     re.escape(SPLIT) + ":4: .*no such recording"),
    ("split-bad-value", _split(f"{A}\ttest\n{B}\tvalidation\n{C}\ttrain\n"),
     re.escape(SPLIT) + ":2: "),
    ("split-wrong-columns", _split(f"{A}\ttest\n{B}\n{C}\ttrain\n"), re.escape(SPLIT) + ":2: "),
    ("audio-without-annotation", _missing(".txt"), re.escape(f"{C}.wav") + ": "),
    ("annotation-without-audio", _missing(".wav"), re.escape(f"{C}.txt") + ": "),
    ("duplicate-patient-demographics", _demographics(
        "101 3 F NA 19 99\n101 4 M NA 20 100\n"), re.escape(DEMO) + ":2: .*twice"),
    ("negative-age", _demographics("101 -3 F NA 19 99\n"), re.escape(DEMO) + ":1: "),
    ("unknown-sex", _demographics("101 3 X NA 19 99\n"), re.escape(DEMO) + ":1: "),
]


@pytest.mark.parametrize(("make", "where"), [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
@pytest.mark.parametrize("existing_project", [True, False], ids=["project", "no-project"])
def test_bad_data_exit_2_one_line_naming_the_file(tmp_path, make, where, existing_project):
    root = tmp_path / "db"
    make(root)
    project = tmp_path / "rsctool.toml"
    before = None
    if existing_project:
        project.write_text(PROJECT_TEXT)
        before = project.read_bytes()
    result = _invoke(project, *ANALYZE, root)
    _check_exit_2(result, project, before, where)
    assert not (tmp_path / ".rsctool" / "manifests").exists() or not any(
        (tmp_path / ".rsctool" / "manifests").iterdir())


def test_cycle_past_the_audio_is_clamped_kept_and_counted(tmp_path):
    """As the ICBHI AST papers' public code does (all 6,898 cycles kept): a cycle that
    ends past its recording is clamped to the recording's end, not refused; analyze
    counts it. One that starts past the end has no audio and is still refused."""
    root = tmp_path / "db"
    _annotation(_lines("3.0\t60\t0\t0"))(root)
    project = tmp_path / "rsctool.toml"
    result = _invoke(project, *ANALYZE, "--json", root)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cycles_clamped"]["count"] == 1
    assert report["cycles_clamped"]["cycles"] == [f"{A}_003"]
    assert report["cycles_clamped"]["max_past_s"] > 50
    assert report["problem_count"] == 0
    from rsctool.data.manifest import read_manifest
    from rsctool.project import Project

    rec = Project.load(project).get("datasets", "d")
    cyc = {c.id: c for c in read_manifest(Project.load(project).abs(rec["manifest"]))}
    kept = cyc[f"{A}_003"]
    assert kept.start == 3.0 and kept.end < 60
    assert kept.end == pytest.approx(sf.info(str(root / f"{A}.wav")).duration)
    assert "clamped to its end and kept" in result.stderr


def test_the_base_dataset_is_good(tmp_path):
    """The corpus differs from a dataset that analyses cleanly by one defect each."""
    root = _dataset(tmp_path / "db")
    project = tmp_path / "rsctool.toml"
    result = _invoke(project, *ANALYZE, root)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("stem", "field", "value"), [
    ("104_1b1_Xy_sc_Meditron", "site", "Xy"),
    ("104_1b1_Al_zz_Meditron", "mode", "zz"),
    ("104_1b1_Al_sc_Meditorn", "device", "Meditorn"),  # a typo, not a fifth device
])
def test_unknown_site_mode_or_device_codes_are_refused(tmp_path, stem, field, value):
    root = _dataset(tmp_path / "db", {A: ROWS, B: ROWS[:2], stem: ROWS[1:]})
    project = tmp_path / "rsctool.toml"
    result = _invoke(project, *ANALYZE, root)
    line = _check_exit_2(result, project, None, re.escape(f"{stem}.txt"))
    assert f"unknown {field} {value!r}" in line and "--allow-unknown-codes" in line, line
    # --lenient skips that recording only
    result = _invoke(project, *ANALYZE, root, "--lenient")
    assert result.exit_code == 0, result.output


def test_allow_unknown_codes_keeps_them_as_named(tmp_path):
    """Another stethoscope (a dataset recorded like ICBHI): kept as named with the
    option, and the metadata models map values unseen in training to "unknown"."""
    odd = "104_1b1_Xy_zz_PhoneMic3"
    root = _dataset(tmp_path / "db", {A: ROWS, B: ROWS[:2], odd: ROWS[1:]})
    project = tmp_path / "rsctool.toml"
    result = _invoke(project, *ANALYZE, root, "--allow-unknown-codes", "--json")
    assert result.exit_code == 0, result.output
    from rsctool.data.manifest import read_manifest
    from rsctool.project import Project

    p = Project.load(project)
    cycles = read_manifest(p.abs(p.get("datasets", "d")["manifest"]))
    mine = [c for c in cycles if c.recording == odd]
    assert mine and {(c.device, c.site, c.mode) for c in mine} == {("PhoneMic3", "Xy", "zz")}


def test_recording_names_that_do_not_parse_are_not_recordings(tmp_path):
    """A ``.wav``/``.txt`` pair not named <patient>_<index>_<site>_<mode>_<device> is not
    read as a recording (README.txt and friends live beside the data)."""
    root = _dataset(tmp_path / "db")
    (root / "notes.txt").write_text("0.1\t1.0\t0\t0\n")
    (root / "101_Al_Meditron.wav").write_bytes(b"junk")
    result = _invoke(tmp_path / "rsctool.toml", *ANALYZE, root)
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not stop root (or non-POSIX systems)")
@pytest.mark.parametrize("victim", [f"{A}.txt", f"{A}.wav", SPLIT])
def test_unreadable_file_permissions(tmp_path, victim):
    root = _dataset(tmp_path / "db")
    (root / victim).chmod(0)
    try:
        project = tmp_path / "rsctool.toml"
        project.write_text(PROJECT_TEXT)
        _check_exit_2(_invoke(project, *ANALYZE, root), project, project.read_bytes(),
                      re.escape(victim))
    finally:
        (root / victim).chmod(0o644)


@pytest.mark.parametrize("victim", [f"{A}.txt", SPLIT, f"{A}.wav"])
def test_unreadable_file_simulated(tmp_path, monkeypatch, victim):
    """Same as above where permissions cannot be taken away (root in CI containers):
    every open of the victim fails with EACCES."""
    import builtins

    root = _dataset(tmp_path / "db")
    target = os.fspath((root / victim).resolve())
    denied = PermissionError(13, "Permission denied")

    real_open, real_read_bytes = builtins.open, Path.read_bytes

    def fake_open(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == target:
            raise denied
        return real_open(file, *a, **kw)

    def fake_read_bytes(self):
        if os.path.abspath(os.fspath(self)) == target:
            raise denied
        return real_read_bytes(self)

    real_info = sf.info

    def fake_info(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == target:
            raise sf.LibsndfileError(1, prefix=f"Error opening {file!r}: ") \
                if hasattr(sf, "LibsndfileError") else RuntimeError("Permission denied")
        return real_info(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(Path, "read_bytes", fake_read_bytes)
    monkeypatch.setattr(sf, "info", fake_info)
    project = tmp_path / "rsctool.toml"
    project.write_text(PROJECT_TEXT)
    before = project.read_bytes()
    _check_exit_2(_invoke(project, *ANALYZE, root), project, before, re.escape(victim))


# --------------------------------------------------------------- project file (all stages)


@pytest.fixture(scope="module")
def base_project(tmp_path_factory) -> Path:
    """An analysed dataset plus a run and an export record (their files are never made:
    every stage must stop on the project file or the missing path first)."""
    from rsctool.project import Project

    root = tmp_path_factory.mktemp("badproj")
    data = _dataset(root / "data")
    project = root / "rsctool.toml"
    result = _invoke(project, *ANALYZE, data)
    assert result.exit_code == 0, result.output
    p = Project.load(project)
    p.set_record("runs", "r1", {
        "model": "cnn", "status": "done", "dataset": "d", "dir": ".rsctool/runs/r1",
        "last": ".rsctool/runs/r1/last.safetensors", "best": ".rsctool/runs/r1/best.safetensors",
        "task": "multiclass", "classes": ["normal", "crackle", "wheeze", "both"]})
    p.set_record("exports", "r1", {"run": "r1", "checkpoint": "best", "status": "done",
                                   "onnx": ".rsctool/runs/r1/model.onnx"})
    return root


def _stage_args(stage: str, root: Path) -> list[str]:
    wav = str(root / "data" / f"{A}.wav")
    return {
        "analyze": [*ANALYZE, str(root / "data"), "--force"],
        "synth": ["synth", "--backend", "diffwave", "--classes", "crackle", "--n", "1"],
        "train": ["train", "--model", "cnn", "--size", "tiny", "--epochs", "1",
                  "--run", "r2", "--dataset", "d"],
        "eval": ["eval", "--run", "r1"],
        "export": ["export", "--run", "r1"],
        "predict": ["predict", wav, "--run", "r1", "--backend", "torch"],
        "predict-onnx": ["predict", wav, "--run", "r1", "--backend", "onnx"],
        "status": ["status", "--run", "r1"],
        # the existing records' stages (recorded folders)
        "train-r1": ["train", "--model", "cnn", "--size", "tiny", "--epochs", "1",
                     "--run", "r1", "--dataset", "d", "--force"],
        "synth-s1": ["synth", "--backend", "diffwave", "--classes", "crackle", "--n", "1",
                     "--name", "s1", "--vocoder-size", "tiny", "--vocoder-steps", "1"],
    }[stage]


def _broken_copy_exits_2(base_project: Path, tmp_path: Path, make, stage: str,
                         where: str) -> None:
    """A copy of `base_project` broken by `make`: `stage` exits 2 with one line matching
    `where` and leaves the project file byte-identical."""
    import shutil

    root = tmp_path / "p"
    shutil.copytree(base_project, root, symlinks=True)
    make(root)
    project = root / "rsctool.toml"
    before = project.read_bytes()
    _check_exit_2(_invoke(project, *_stage_args(stage, root)), project, before, where)


ALL_STAGES = ["analyze", "synth", "train", "eval", "export", "predict", "predict-onnx",
              "status"]


def _edit(old: str, new: str):
    def make(root: Path) -> None:
        path = root / "rsctool.toml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return make


def _append(extra: str | bytes):
    def make(root: Path) -> None:
        path = root / "rsctool.toml"
        path.write_bytes(path.read_bytes() + (extra if isinstance(extra, bytes)
                                              else extra.encode()))
    return make


TOML = re.escape("rsctool.toml")
#: (case id, make(root), regex of the error line)
PROJECT_CASES = [
    ("invalid-toml", _append("\n[runs.x\nfoo = 1\n"), TOML + ": invalid TOML at line \\d+"),
    ("duplicate-key", _append("\n[runs.r1]\nmodel = 'x'\n"), TOML + ": invalid TOML at line"),
    ("not-utf8", _append(b"\n# \xff\xfe\n"), TOML + ": invalid TOML at line \\d+: not UTF-8"),
    ("newer-schema", _edit("schema = 1", "schema = 99"), TOML + ": schema 99 is newer"),
    ("older-schema", _edit("schema = 1", "schema = 0"), TOML + ": schema 0 is not a schema"),
    ("schema-not-int", _edit("schema = 1", "schema = 'one'"), TOML + ": `schema` must be"),
    ("no-schema", _edit("schema = 1", "title = 'x'"), TOML + ": no `schema` key"),
    ("section-not-table", _edit("schema = 1", "schema = 1\nsynthetic = 3"),
     TOML + ": `synthetic` must be a table"),
    ("record-not-table", _edit("[datasets.d]", "[datasets]\nx = 1\n[datasets.d]"),
     TOML + ": `datasets.x` must be a table"),
    ("crafted-record-name", _append('\n[synthetic."../../escape"]\nstatus = "done"\n'),
     TOML + ": invalid synthetic name '../../escape'"),
]

#: Recorded output folders pointing out of the project folder (a hand-edited or foreign
#: project file): the stages that would write there refuse, naming the record.
DIR_CASES = [
    ("run-dir-outside", _edit('dir = ".rsctool/runs/r1"', 'dir = "../../outside"'),
     ["eval", "train-r1"], TOML + ": runs.r1.dir = '../../outside' lies outside"),
    ("run-dir-absolute", _edit('dir = ".rsctool/runs/r1"', 'dir = "/tmp"'),
     ["eval", "train-r1"], TOML + ": runs.r1.dir = '/tmp' lies outside"),
    ("synthetic-dir-outside",
     _append('\n[synthetic.s1]\nbackend = "diffwave"\nstatus = "running"\ndir = "/tmp"\n'),
     ["synth-s1"], TOML + ": synthetic.s1.dir = '/tmp' lies outside"),
]


@pytest.mark.parametrize(("make", "stage", "where"),
                         [(c[1], s, c[3]) for c in DIR_CASES for s in c[2]],
                         ids=[f"{c[0]}-{s}" for c in DIR_CASES for s in c[2]])
def test_recorded_folders_outside_the_project_are_refused(base_project, tmp_path, make,
                                                          stage, where):
    _broken_copy_exits_2(base_project, tmp_path, make, stage, where)


def test_synth_force_never_empties_a_foreign_folder(base_project, tmp_path):
    import shutil

    root = tmp_path / "p"
    shutil.copytree(base_project, root, symlinks=True)
    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    project = root / "rsctool.toml"
    before = project.read_bytes()
    result = _invoke(project, "synth", "--backend", "diffwave", "--classes", "crackle", "--n",
                     "1", "--out", str(mine), "--force", "--vocoder-size", "tiny",
                     "--vocoder-steps", "1")
    _check_exit_2(result, project, before, "--force would delete .*my-data")
    assert (mine / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(("make", "where"), [c[1:] for c in PROJECT_CASES],
                         ids=[c[0] for c in PROJECT_CASES])
@pytest.mark.parametrize("stage", ALL_STAGES)
def test_bad_project_file_exit_2_on_every_stage(base_project, tmp_path, stage, make, where):
    _broken_copy_exits_2(base_project, tmp_path, make, stage, where)


def _remove(rel: str):
    def make(root: Path) -> None:
        import shutil

        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)  # the fixture's run files were never made
    return make


#: (case id, make(root), stages, regex of the error line)
STALE_CASES = [
    ("manifest-gone", _remove(".rsctool/manifests/d.jsonl"), ["train", "synth"],
     re.escape("d.jsonl") + ": manifest recorded in the project is missing"),
    ("run-dir-gone", _remove(".rsctool/runs"), ["eval", "export", "predict"],
     "run 'r1' has no best checkpoint .*" + re.escape("best.safetensors")),
    ("onnx-gone", _remove(".rsctool/runs"), ["predict-onnx"],
     "export of run 'r1' is missing .*" + re.escape("model.onnx")),
    ("dataset-folder-gone", _remove("data"), ["analyze"], "data: dataset folder not found"),
]


@pytest.mark.parametrize(("make", "stage", "where"),
                         [(c[1], s, c[3]) for c in STALE_CASES for s in c[2]],
                         ids=[f"{c[0]}-{s}" for c in STALE_CASES for s in c[2]])
def test_paths_that_no_longer_exist(base_project, tmp_path, make, stage, where):
    _broken_copy_exits_2(base_project, tmp_path, make, stage, where)


# ------------------------------------------------------------ annotation parser property

_good_row = st.tuples(
    st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-3, max_value=100, allow_nan=False, allow_infinity=False),
    st.integers(0, 1), st.integers(0, 1))
_junk_line = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                            blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e"
                                            "\x85\u2028\u2029"), max_size=30)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_good_row, min_size=1, max_size=8),
       junk=st.lists(st.tuples(st.integers(0, 8), _junk_line), max_size=4),
       sep=st.sampled_from(["\t", " ", "  \t"]), eol=st.sampled_from(["\n", "\r\n"]))
def test_annotation_parser_property(tmp_path_factory, rows, junk, sep, eol):
    """Good lines come back exactly (repr round-trip of the floats), in order; any other
    line is either a good row itself or reported at its own line number, never a crash."""
    from rsctool.data.icbhi import read_annotation
    from rsctool.data.splits import Problem
    from rsctool.errors import DataError

    lines = [sep.join([repr(s), repr(s + d), str(c), str(w)]) for s, d, c, w in rows]
    expected = [(s, s + d, c, w) for s, d, c, w in rows]
    junk_at: list[int] = []
    for pos, text in sorted(junk, key=lambda j: j[0], reverse=True):
        lines.insert(min(pos, len(lines)), text)
    path = tmp_path_factory.mktemp("ann") / f"{A}.txt"
    path.write_text(eol.join(lines) + eol, encoding="utf-8", newline="")
    problems: list[Problem] = []
    got = read_annotation(path, strict=False, problems=problems)
    # every problem names this file and a line holding a non-blank, non-good line
    for p in problems:
        assert p.line is not None and 1 <= p.line <= len(lines), p
        assert lines[p.line - 1].strip()
        junk_at.append(p.line)
    # the good rows are all there, in order (junk lines that happen to parse may interleave)
    it = iter(got)
    assert all(any(g == e for g in it) for e in expected), (got, expected)
    assert len(got) + len(problems) == sum(1 for ln in lines if ln.split())
    if problems:
        with pytest.raises(DataError, match=re.escape(f"{path.name}:{min(junk_at)}:")):
            read_annotation(path)


# ------------------------------------------------------------------- disk full (ENOSPC)


def _enospc(*_a, **_kw):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_a_manifest_keeps_the_previous_file(tmp_path, monkeypatch):
    from rsctool import utils
    from rsctool.data.manifest import Cycle, read_manifest, write_manifest

    path = tmp_path / "m.jsonl"
    good = [Cycle(id=f"c{i}", audio="a.wav", start=0.0, end=1.0, label="normal",
                  split="train") for i in range(3)]
    write_manifest(path, good)
    before = path.read_bytes()
    monkeypatch.setattr(utils.os, "fsync", _enospc)
    with pytest.raises(OSError, match="No space"):
        write_manifest(path, good[:1])
    assert path.read_bytes() == before and len(read_manifest(path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temp file left


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_file(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    from rsctool.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model=model, state={"step": 1})
    before = path.read_bytes()
    real = safetensors.torch.save_file

    def half_then_full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:     # a torn write, then the disk is full
            fh.truncate(10)
        _enospc()

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_full)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, model=model, state={"step": 2})
    assert path.read_bytes() == before
    assert load_checkpoint(path).state["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_disk_full_while_writing_the_project_file_is_exit_2_and_keeps_it(tmp_path,
                                                                         monkeypatch):
    from rsctool import utils

    root = _dataset(tmp_path / "db")
    project = tmp_path / "rsctool.toml"
    project.write_text(PROJECT_TEXT)
    before = project.read_bytes()
    real_replace = utils.os.replace

    def full_for_project(src, dst):
        if os.fspath(dst) == os.fspath(project):
            _enospc()
        return real_replace(src, dst)

    monkeypatch.setattr(utils.os, "replace", full_for_project)
    _check_exit_2(_invoke(project, *ANALYZE, root), project, before,
                  TOML + ": cannot write project file: No space left")


# ------------------------------------------------------------------------ security


def test_no_eval_or_exec_anywhere_in_the_package():
    """Config values (TOML, --set KEY=VALUE, ONNX metadata) are parsed, never evaluated."""
    import ast

    import rsctool

    offenders = []
    for path in Path(rsctool.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else (
                    fn.attr if isinstance(fn, ast.Attribute) else None)
                if name in ("eval", "exec", "compile") and isinstance(fn, ast.Name):
                    offenders.append(f"{path.name}:{node.lineno}: {name}()")
                if isinstance(fn, ast.Attribute) and name in ("loads", "load") and \
                        isinstance(fn.value, ast.Name) and fn.value.id in ("pickle", "dill"):
                    offenders.append(f"{path.name}:{node.lineno}: pickle.{name}()")
    assert offenders == []


# ------------------------------------------------------------- kill and re-run (slow)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_sigkill_during_analyze_never_records_partial_output(tmp_path, delay):
    """Killed at some point, `analyze` has either recorded nothing or a complete manifest
    whose hash matches the record; the re-run finishes with the reference manifest."""
    import signal
    import subprocess
    import sys
    import time

    from rsctool.data.demo import make_demo_dataset
    from rsctool.data.manifest import file_sha256
    from rsctool.project import Project

    data = tmp_path / "data"
    make_demo_dataset(data, patients=8, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def analyze(root: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "rsctool", "--quiet", "--project", str(root / "rsctool.toml"),
             *ANALYZE, str(data)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    ref = analyze(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    victim_root = tmp_path / "victim"
    victim = analyze(victim_root)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    project = victim_root / "rsctool.toml"
    if project.exists():
        p = Project.load(project)          # valid TOML either way
        rec = p.get("datasets", "d")
        if rec is not None and rec.get("status") == "done":
            assert file_sha256(p.abs(rec["manifest"])) == rec["sha256"]
    again = analyze(victim_root)
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()
    a = Project.load(tmp_path / "ref" / "rsctool.toml")
    b = Project.load(project)
    assert b.get("datasets", "d")["status"] == "done"
    assert b.abs(b.get("datasets", "d")["manifest"]).read_bytes() == \
        a.abs(a.get("datasets", "d")["manifest"]).read_bytes()
