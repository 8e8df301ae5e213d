"""Dataset layouts users actually have (issue 16, section 3): ICBHI data one level down
(official download, Kaggle mirror), no folder-dataset guess for annotated or split
trees, the built-in official split list, the 921-line split-file variant, and two
project files in one folder."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.data.icbhi import BUILTIN_SPLIT, builtin_split_path, read_split_file
from rsctool.data.manifest import read_manifest
from rsctool.data.splits import split_counts
from rsctool.errors import DataError
from rsctool.project import Project
from rsctool.testing import write_folder_dataset, write_icbhi_dataset, write_noise_wav

runner = CliRunner()

A = "101_1b1_Al_sc_Meditron"
B = "102_1b1_Ar_sc_Meditron"
C = "103_2b2_Ar_mc_LittC2SE"
ROWS = [(0.1, 1.0, 0, 0), (1.0, 2.5, 1, 0), (2.5, 3.0, 0, 1), (3.0, 4.2, 1, 1)]
FAST = ("--no-plots", "--no-fbank-stats", "--val-fraction", "0")
#: folder datasets of 4 files a class: this random split gives each split one file a class
FOLDER_SPLIT = ("--split", "random:0.5:0.25")


def files(*classes: str, n: int = 4) -> list[str]:
    return [f"{c}/{c}{i}.wav" for c in classes for i in range(n)]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def flat(text: str) -> str:
    """Output with line wrapping undone (rich wraps long lines)."""
    return " ".join(text.split())


def dataset(project: Path, name: str) -> dict:
    return Project.load(project).get("datasets", name)


# ------------------------------------------------------------ ICBHI files one level down

def test_official_download_root_is_read_as_icbhi(tmp_path):
    # the official archive: ROOT/ICBHI_final_database/ + the challenge txt files in ROOT
    root = tmp_path / "download"
    write_icbhi_dataset(root / "ICBHI_final_database", {A: ROWS, B: ROWS, C: ROWS},
                        splits={A: "test", B: "train", C: "train"}, metadata_in_parent=True,
                        diagnosis="101\tURTI\n102\tHealthy\n103\tAsthma\n")
    proj = tmp_path / "rsctool.toml"
    r = invoke("--project", proj, "analyze", root, *FAST)
    assert r.exit_code == 0, r.output
    assert "ICBHI_final_database (found in" in flat(r.output)
    rec = dataset(proj, "icbhi")
    assert rec is not None, Project.load(proj).data
    assert rec["format"] == "icbhi" and rec["cycles"] == 12
    assert rec["root"].endswith("download/ICBHI_final_database")
    assert rec["found_from"].endswith("download")
    assert rec["split_file"].endswith("download/ICBHI_challenge_train_test.txt")
    report = json.loads((tmp_path / rec["report"]).read_text())
    assert report["found_from"] == str(root.resolve())
    cycles = read_manifest(tmp_path / rec["manifest"])
    assert {c.recording: c.split for c in cycles} == {A: "test", B: "train", C: "train"}
    assert {c.diagnosis for c in cycles} == {"URTI", "Healthy", "Asthma"}
    # the same command again finds the same folder and is a no-op
    r = invoke("--project", proj, "analyze", root, *FAST)
    assert r.exit_code == 0 and "unchanged" in r.output, r.output


def kaggle_layout(root: Path, names: dict[str, str]) -> Path:
    """ROOT/Respiratory_Sound_Database/{audio_and_txt_files/, patient_diagnosis.csv,
    demographic_info.txt}: the Kaggle mirror, which has no split file."""
    base = root / "Respiratory_Sound_Database"
    write_icbhi_dataset(base / "audio_and_txt_files", dict.fromkeys(names, ROWS))
    pids = sorted({n.split("_")[0] for n in names})
    (base / "patient_diagnosis.csv").write_text(
        "ID,CLASS\n" + "".join(f"{p},COPD\n" for p in pids), encoding="utf-8")
    (base / "demographic_info.txt").write_text(
        "".join(f"{p} 70 F 25.0 NA NA\n" for p in pids), encoding="utf-8")
    return base / "audio_and_txt_files"


def test_kaggle_layout_uses_the_builtin_official_split(tmp_path):
    official = read_split_file(builtin_split_path())
    names = dict(list(official.items())[:6])
    root = tmp_path / "kaggle"
    data = kaggle_layout(root, names)
    proj = tmp_path / "rsctool.toml"
    # strict: the built-in list names 914 recordings that this copy lacks
    r = invoke("--project", proj, "analyze", root, *FAST)
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert "built into rsctool" in out and "--split-file" in out, out
    r = invoke("--project", proj, "analyze", root, *FAST, "--lenient")
    assert r.exit_code == 0, r.output
    assert "official ICBHI 2017 split list built into rsctool" in flat(r.output)
    rec = dataset(proj, "icbhi")
    assert rec["root"].endswith("audio_and_txt_files") and rec["format"] == "icbhi"
    assert rec["split_file"] == f"builtin:{BUILTIN_SPLIT}"
    report = json.loads((tmp_path / rec["report"]).read_text())
    assert report["split"]["split_source"] == "builtin"
    cycles = read_manifest(tmp_path / rec["manifest"])
    assert {c.recording: c.split for c in cycles} == names
    # the Kaggle side files beside audio_and_txt_files are read
    assert {c.diagnosis for c in cycles} == {"COPD"} and {c.age for c in cycles} == {70.0}
    assert Path(cycles[0].audio).parent == data.resolve()


def test_split_file_option_overrides_the_folder_split(tmp_path):
    db = write_icbhi_dataset(tmp_path / "db", {A: ROWS, B: ROWS, C: ROWS},
                             splits={A: "test", B: "train", C: "train"})
    mine = tmp_path / "my_split.txt"
    mine.write_text(f"{A} train\n{B} test\n{C} train\n", encoding="utf-8")
    proj = tmp_path / "rsctool.toml"
    r = invoke("--project", proj, "analyze", db, *FAST, "--split-file", mine)
    assert r.exit_code == 0, r.output
    rec = dataset(proj, "db")
    assert rec["split_file"] == "my_split.txt"
    cycles = read_manifest(tmp_path / rec["manifest"])
    assert {c.recording: c.split for c in cycles} == {A: "train", B: "test", C: "train"}
    # --split-file only makes sense for the official ICBHI split
    r = invoke("--project", proj, "analyze", db, *FAST, "--split-file", mine,
               "--split", "patients:0.6")
    assert r.exit_code == 2 and "--split-file" in r.output, r.output
    r = invoke("--project", proj, "analyze", db, *FAST, "--split-file", tmp_path / "nope.txt")
    assert r.exit_code == 2 and "nope.txt" in r.output, r.output


def test_921_line_split_file_variant_is_accepted(tmp_path):
    # the official file names 226_1b1_Pl_sc_Meditron for the LittC2SE recording; a widely
    # copied variant adds the corrected name too (same side): a known alias, not an error
    real = "226_1b1_Pl_sc_LittC2SE"
    splits = (f"{A}\ttest\r\n{B}\ttrain\r\n226_1b1_Pl_sc_Meditron\ttrain\r\n"
              f"{real}\ttrain\r\n")
    db = write_icbhi_dataset(tmp_path / "db", {A: ROWS, B: ROWS, real: ROWS}, splits=splits)
    proj = tmp_path / "rsctool.toml"
    r = invoke("--project", proj, "analyze", db, *FAST)  # strict by default
    assert r.exit_code == 0, r.output
    assert ("line 3: 226_1b1_Pl_sc_Meditron is a known alias of 226_1b1_Pl_sc_LittC2SE"
            in flat(r.output)), r.output
    rec = dataset(proj, "db")
    assert rec["problems"] == 0 and rec["split_aliases"] == 1
    report = json.loads((tmp_path / rec["report"]).read_text())
    assert report["split"]["split_aliases"] == [
        {"name": "226_1b1_Pl_sc_Meditron", "recording": real, "split": "train", "line": 3}]


# ------------------------------------------------------------ no folder guess

def _sprsound(root: Path) -> Path:
    for split, stems in (("train2022", ("65_0_1", "65_0_2")), ("test2022", ("70_1_1",))):
        for stem in stems:
            write_noise_wav(root / f"{split}_wav" / f"{stem}.wav", 0.5, 8000)
            (root / f"{split}_json").mkdir(parents=True, exist_ok=True)
            (root / f"{split}_json" / f"{stem}.json").write_text(
                '{"record_annotation": "Normal", "event_annotation": []}', encoding="utf-8")
    return root


def test_json_annotations_not_named_like_sprsound_are_refused_naming_the_format(tmp_path):
    # JSON next to audio, but "65_0_1" is no <patient>_<age>_<gender>_<location>_<rec> name
    root = _sprsound(tmp_path / "SPRSound")
    r = invoke("--project", tmp_path / "p.toml", "analyze", root, *FAST)
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert out.startswith("error: ") and "--format sprsound reads those" in out, out
    assert "--format folder is for <class>/**/*.wav" in out, out
    assert "train2022_json/" in out
    assert not (tmp_path / "p.toml").exists()


def test_split_named_subfolders_are_not_guessed_as_classes(tmp_path):
    root = write_folder_dataset(tmp_path / "d", files("train_set", "test_set", "val"))
    r = invoke("--project", tmp_path / "p.toml", "analyze", root, *FAST)
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert "named like splits (test_set, train_set, val)" in out, out
    assert "--format folder" in out
    # an explicit --format folder is the user's word for it
    r = invoke("--project", tmp_path / "p.toml", "analyze", root, *FAST, "--format", "folder",
               *FOLDER_SPLIT)
    assert r.exit_code == 0, r.output


def test_txt_annotations_next_to_audio_are_not_guessed_as_a_folder_dataset(tmp_path):
    root = write_folder_dataset(tmp_path / "d", ["normal/a.wav", "crackle/b.wav"])
    for rel in ("normal/a.txt", "crackle/b.txt"):
        (root / rel).write_text("0.1\t0.4\t0\t0\n", encoding="utf-8")
    r = invoke("--project", tmp_path / "p.toml", "analyze", root, *FAST)
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert ".txt annotation files next to same-name audio" in out and "--format icbhi" in out


def test_single_class_folder_dataset_is_refused(tmp_path):
    root = write_folder_dataset(tmp_path / "d", ["crackle/a.wav", "crackle/b.wav",
                                                 "crackle/c.wav"])
    for extra in ((), ("--format", "folder")):
        r = invoke("--project", tmp_path / "p.toml", "analyze", root, *FAST, *extra)
        assert r.exit_code == 2, (extra, r.output)
        assert "class" in r.output and "<class>/**/*.wav" in flat(r.output), r.output
    assert not (tmp_path / "p.toml").exists()


def test_icbhi_download_read_as_folder_is_refused_naming_icbhi(tmp_path):
    root = tmp_path / "download"
    write_icbhi_dataset(root / "ICBHI_final_database", {A: ROWS, B: ROWS},
                        splits={A: "test", B: "train"}, metadata_in_parent=True)
    r = invoke("--project", tmp_path / "p.toml", "analyze", root, *FAST, "--format", "folder")
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert "only one class (ICBHI_final_database)" in out and "--format icbhi" in out, out


# ------------------------------------------------------------ two project files

def test_two_project_files_in_one_folder_keep_their_manifests_apart(tmp_path):
    from rsctool.datasets import load_dataset_cycles

    one = write_folder_dataset(tmp_path / "one", files("x", "y"))
    two = write_folder_dataset(tmp_path / "two", files("p", "q", "r"), seed=5)
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    for proj, data in ((a, one), (b, two)):
        r = invoke("--project", proj, "analyze", data, "--name", "d", *FAST, *FOLDER_SPLIT)
        assert r.exit_code == 0, r.output
    pa, pb = Project.load(a), Project.load(b)
    assert pa.state_dir() == tmp_path / ".rsctool-a"
    assert pb.state_dir() == tmp_path / ".rsctool-b"
    assert Project.load(tmp_path / "rsctool.toml").state_dir() == tmp_path / ".rsctool"
    ra, rb = pa.get("datasets", "d"), pb.get("datasets", "d")
    assert ra["manifest"] != rb["manifest"]
    assert {c.label for c in load_dataset_cycles(pa, ra)} == {"x", "y"}
    assert {c.label for c in load_dataset_cycles(pb, rb)} == {"p", "q", "r"}


def test_changed_manifest_names_the_command_that_fixes_it(tmp_path):
    from rsctool.datasets import load_dataset_cycles

    data = write_folder_dataset(tmp_path / "one", files("x", "y"))
    proj = tmp_path / "a.toml"
    r = invoke("--project", proj, "analyze", data, "--name", "d", *FAST, *FOLDER_SPLIT)
    assert r.exit_code == 0, r.output
    project = Project.load(proj)
    rec = project.get("datasets", "d")
    manifest = project.abs(rec["manifest"])
    manifest.write_text(manifest.read_text()[::-1], encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_dataset_cycles(project, rec)
    message = str(info.value)
    assert "manifest changed" in message
    assert f"rsctool --project {proj} analyze {data.resolve()} --name d --force" in message
    # status says so too (it used to show nothing wrong)
    r = invoke("--project", proj, "status")
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert "warning: dataset 'd': manifest changed since analyze recorded it" in out, out
    assert "--name d --force" in out


# ------------------------------------------------------------ real ICBHI metadata

def test_builtin_split_list_is_the_official_file(icbhi_meta):
    official = read_split_file(icbhi_meta / "ICBHI_challenge_train_test.txt")
    builtin = read_split_file(builtin_split_path())
    assert builtin == official and len(builtin) == 920
    assert Counter(builtin.values()) == {"train": 539, "test": 381}


@pytest.fixture(scope="module")
def real_download(icbhi_meta, tmp_path_factory) -> Path:
    """The official download layout: ROOT/ICBHI_final_database/ + challenge files."""
    from rsctool.testing import synthesize_icbhi_audio

    root = tmp_path_factory.mktemp("real") / "download"
    synthesize_icbhi_audio(icbhi_meta, root)
    return root


TRAIN = {"normal": 2063, "crackle": 1215, "wheeze": 501, "both": 363}
TEST = {"normal": 1579, "crackle": 649, "wheeze": 385, "both": 143}


def _analyze(data: Path, project: Path, **kw):
    from rsctool.analyze import AnalyzeOptions, run

    return run(Project.load(project), AnalyzeOptions(data_dir=data, val_fraction=0.0,
                                                     plots=False, fbank_stats=False, **kw))


def test_real_download_root_and_kaggle_layout(real_download, icbhi_meta, tmp_path):
    res = _analyze(real_download, tmp_path / "official.toml")
    assert res.report["format"] == "icbhi" and res.report["cycles"] == 6898
    assert res.report["split"]["split_source"] == "folder"
    counts = split_counts(read_manifest(res.manifest))
    assert counts == {"train": TRAIN, "test": TEST}
    # Kaggle: no split file, its own side-file names, two levels down
    kaggle = tmp_path / "archive" / "Respiratory_Sound_Database"
    shutil.copytree(real_download / "ICBHI_final_database", kaggle / "audio_and_txt_files")
    for name in ("patient_diagnosis.csv", "demographic_info.txt"):
        shutil.copyfile(icbhi_meta / "kaggle_extras" / name, kaggle / name)
    res = _analyze(tmp_path / "archive", tmp_path / "kaggle.toml")
    assert res.report["split"]["split_source"] == "builtin"
    assert res.report["split"]["split_file"] == f"builtin:{BUILTIN_SPLIT}"
    cycles = read_manifest(res.manifest)
    assert split_counts(cycles) == {"train": TRAIN, "test": TEST}
    assert {c.diagnosis for c in cycles if c.patient == "226"} == {"Pneumonia"}
    # the 921-line variant, strict
    res = _analyze(tmp_path / "archive", tmp_path / "opera.toml",
                   split_file=icbhi_meta / "alt_splits" / "opera_ICBHI_challenge_train_test.txt")
    assert res.report["problem_count"] == 0 and res.report["cycles"] == 6898
    assert [a["name"] for a in res.report["split"]["split_aliases"]] == [
        "226_1b1_Pl_sc_Meditron"]


def test_kaggle_archive_three_levels_down_reads_side_files_up_to_the_given_folder(tmp_path):
    # the Kaggle archive nests the folder twice and keeps demographic_info.txt at its top
    root = tmp_path / "archive"
    inner = root / "Respiratory_Sound_Database" / "Respiratory_Sound_Database"
    write_icbhi_dataset(inner / "audio_and_txt_files", {A: ROWS, B: ROWS})
    (inner / "patient_diagnosis.csv").write_text("ID,CLASS\n101,URTI\n102,Healthy\n")
    (root / "demographic_info.txt").write_text("101 3 F NA 19 99\n102 0.75 F NA 9.8 73\n")
    split = tmp_path / "split.txt"
    split.write_text(f"{A}\ttest\n{B}\ttrain\n")
    proj = tmp_path / "rsctool.toml"
    r = invoke("--project", proj, "analyze", root, *FAST, "--split-file", split)
    assert r.exit_code == 0, r.output
    rec = dataset(proj, "icbhi")
    cycles = read_manifest(tmp_path / rec["manifest"])
    assert {c.patient: (c.age, c.diagnosis) for c in cycles} == {
        "101": (3.0, "URTI"), "102": (0.75, "Healthy")}
    assert rec["found_from"] == "archive"


@pytest.mark.parametrize("where", ["twice", "too-deep"])
def test_icbhi_folders_analyze_cannot_choose_between_are_refused(tmp_path, where):
    root = tmp_path / "root"
    if where == "twice":
        folders = [root / "copy1", root / "copy2"]
    else:
        folders = [root / "a" / "b" / "c" / "d"]
    for folder in folders:
        write_icbhi_dataset(folder, {A: ROWS, B: ROWS}, splits={A: "test", B: "train"})
    r = invoke("--project", tmp_path / "p.toml", "analyze", root, *FAST)
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert "ICBHI recordings in" in out and "run analyze on the folder you mean" in out, out
    assert folders[0].relative_to(root).as_posix() + "/" in out
