"""Tests for rsctool.project: the project file (load, validate, atomic locked writes)."""

from __future__ import annotations

import errno
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsctool import project as project_mod
from rsctool.errors import ProjectError
from rsctool.project import (
    DEFAULT_NAME,
    PROJECT_ENV,
    SCHEMA,
    Project,
    resolve_project_path,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _leftovers(folder: Path) -> list[str]:
    """Files in `folder` other than the project file and its lock (temp files, partials)."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in (DEFAULT_NAME, DEFAULT_NAME + ".lock"))


# ------------------------------------------------------------------ basics, round trip


def test_missing_file_is_an_empty_document_created_by_first_write(tmp_path):
    p = Project.load(tmp_path)
    assert p.path == tmp_path.resolve() / DEFAULT_NAME
    assert p.root == tmp_path.resolve()
    assert p.data == {"schema": SCHEMA}
    assert not p.exists() and p.section("runs") == {} and p.get("runs", "x") is None

    p.set_record("datasets", "icbhi", {"format": "icbhi", "cycles": 6898})
    assert p.exists()
    assert tomllib.loads(p.path.read_text()) == {
        "schema": SCHEMA, "datasets": {"icbhi": {"format": "icbhi", "cycles": 6898}}}


def test_must_exist_names_file_and_next_step(tmp_path):
    with pytest.raises(ProjectError) as err:
        Project.load(tmp_path / "nope.toml", must_exist=True)
    msg = str(err.value)
    assert msg.startswith(str(tmp_path.resolve() / "nope.toml") + ": ")
    assert "project file not found" in msg and "rsctool analyze" in msg


def test_round_trip_nested_values_and_none_stripped(tmp_path):
    p = Project.load(tmp_path)
    record = {
        "model": "tafilm", "synthetic": ["audioldm-1", None, "diffwave-2"], "epoch": 7,
        "lr": 1.5e-4, "pretrained": True, "best": None,
        "metrics": {"score": 0.61, "per_class": {"crackle": 0.5, "wheeze": None}, "empty": {}},
        "history": [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": None}],
        "shape": (1, 128, 1024),
    }
    p.set_record("runs", "tafilm-1", record)
    expected = {
        "model": "tafilm", "synthetic": ["audioldm-1", "diffwave-2"], "epoch": 7,
        "lr": 1.5e-4, "pretrained": True,
        "metrics": {"score": 0.61, "per_class": {"crackle": 0.5}, "empty": {}},
        "history": [{"epoch": 1, "loss": 2.5}, {"epoch": 2}],
        "shape": [1, 128, 1024],
    }
    assert p.get("runs", "tafilm-1") == expected            # in memory after the write
    assert Project.load(p.path).get("runs", "tafilm-1") == expected   # and on disk
    # the caller's dict is not aliased into the document, nor are returned copies
    record["epoch"] = 99
    got = p.get("runs", "tafilm-1")
    got["epoch"] = 100
    assert p.get("runs", "tafilm-1")["epoch"] == 7


def test_merge_update_and_remove(tmp_path):
    p = Project.load(tmp_path)
    p.set_record("runs", "cnn", {"status": "running", "epoch": 1, "last": "a.pt"})
    p.update_record("runs", "cnn", epoch=2, best="b.pt", last=None)   # None deletes a field
    assert p.get("runs", "cnn") == {"status": "running", "epoch": 2, "best": "b.pt"}
    p.set_record("runs", "cnn", {"status": "done"})                  # replace, not merge
    assert Project.load(p.path).get("runs", "cnn") == {"status": "done"}
    p.update_record("runs", "new", status="running")                  # merge creates
    assert p.get("runs", "new") == {"status": "running"}

    p.remove_record("runs", "cnn")
    p.remove_record("runs", "cnn")                                     # idempotent
    assert Project.load(p.path).section("runs") == {"new": {"status": "running"}}
    p.remove_record("runs", "new")
    # an emptied section disappears instead of leaving an empty [runs] header
    assert "runs" not in tomllib.loads(p.path.read_text())


def test_numpy_scalars_become_plain_numbers_and_other_types_are_refused(tmp_path):
    p = Project.load(tmp_path)
    p.set_record("exports", "e", {"parity_max_abs": np.float64(3e-7), "n": np.int64(5),
                                  "ok": np.bool_(True), "f32": np.float32(0.5)})
    text = p.path.read_text()
    assert "np." not in text and "numpy" not in text
    assert Project.load(p.path).get("exports", "e") == {
        "parity_max_abs": 3e-7, "n": 5, "ok": True, "f32": 0.5}
    before = p.path.read_bytes()
    with pytest.raises(TypeError, match=r"exports\.x\.onnx: .*Project\.rel"):
        p.set_record("exports", "x", {"onnx": Path("model.onnx")})
    with pytest.raises(TypeError, match="set"):
        p.set_record("exports", "y", {"classes": {"a", "b"}})
    assert p.path.read_bytes() == before


def test_record_names_and_sections_are_checked(tmp_path):
    p = Project.load(tmp_path)
    for bad in ("", "  ", "..", "a/b", "a\\b", "x\ny"):
        with pytest.raises(ProjectError, match="invalid runs name"):
            p.set_record("runs", bad, {"a": 1})
    with pytest.raises(ValueError, match="unknown project section"):
        p.set_record("run", "x", {})
    with pytest.raises(ValueError, match="unknown project section"):
        p.section("defaults")
    assert not p.exists()
    p.set_record("runs", "tafilm lr=1e-4 (seed 3)", {"a": 1})  # spaces etc. are fine
    assert Project.load(p.path).section("runs") == {"tafilm lr=1e-4 (seed 3)": {"a": 1}}


def test_unique_name_does_not_reserve_but_reserve_name_does(tmp_path):
    p = Project.load(tmp_path)
    assert p.unique_name("runs", "cnn") == "cnn"
    assert p.unique_name("runs", "cnn") == "cnn"          # still free: nothing was reserved
    names = [p.reserve_name("runs", "cnn", {"i": i}) for i in range(3)]
    assert names == ["cnn", "cnn-1", "cnn-2"]
    assert p.unique_name("runs", "cnn") == "cnn-3"
    p.remove_record("runs", "cnn-1")
    assert p.reserve_name("runs", "cnn", {"i": 9}) == "cnn-1"   # first free gap
    # unique_name sees what another Project object (another process) wrote meanwhile
    other = Project.load(p.path)
    other.set_record("runs", "cnn-3", {})
    assert p.unique_name("runs", "cnn") == "cnn-4"


def test_stable_key_order_and_hand_added_tables_survive(tmp_path):
    path = tmp_path / DEFAULT_NAME
    path.write_text(textwrap.dedent("""\
        schema = 1
        title = "my study"
        [defaults]
        seed = 3
        device = "cpu"
        [defaults.train]
        epochs = 5
        [runs.b]
        status = "done"
        [runs.a]
        status = "done"
        [datasets.icbhi]
        format = "icbhi"
        """))
    p = Project.load(path)
    p.set_record("synthetic", "audioldm-1", {"n": 100})
    text = path.read_text()
    doc = tomllib.loads(text)
    # TOML puts top-level scalars before any table; tables keep the stable order
    assert list(doc) == ["schema", "title", "datasets", "synthetic", "runs", "defaults"]
    assert list(doc["runs"]) == ["b", "a"]                  # record order kept, not sorted
    assert doc["defaults"] == {"seed": 3, "device": "cpu", "train": {"epochs": 5}}
    assert doc["title"] == "my study"
    assert text.startswith("schema = 1\n")
    # the layout is deterministic: an identical update does not even rewrite the file
    inode = os.stat(path).st_ino
    p.set_record("synthetic", "audioldm-1", {"n": 100})
    assert os.stat(path).st_ino == inode and path.read_text() == text


def test_empty_file_is_a_new_project(tmp_path):
    (tmp_path / DEFAULT_NAME).write_bytes(b"")
    p = Project.load(tmp_path)
    assert p.data == {"schema": SCHEMA}
    p.set_record("runs", "x", {"a": 1})
    assert Project.load(tmp_path).get("runs", "x") == {"a": 1}


# ----------------------------------------------------------------------- paths


def test_rel_and_abs(tmp_path, monkeypatch):
    p = Project.load(tmp_path / "proj" / DEFAULT_NAME)   # the folder need not exist yet
    root = (tmp_path / "proj").resolve()
    assert p.rel(root / "data" / "a.wav") == "data/a.wav"
    assert p.rel(root) == "."
    outside = tmp_path.resolve() / "elsewhere" / "b.wav"
    assert p.rel(outside) == outside.as_posix()
    assert p.abs("data/a.wav") == root / "data" / "a.wav"
    assert p.abs("../elsewhere/b.wav") == outside          # normalised, not root/../...
    assert p.abs(outside) == outside
    for stored in ("data/a.wav", outside.as_posix()):
        assert p.rel(p.abs(stored)) == stored
    # a relative argument is relative to the current directory, as a user typed it
    (root / "data").mkdir(parents=True)
    monkeypatch.chdir(root / "data")
    assert p.rel("a.wav") == "data/a.wav"
    # a symlink into the project still gives a relative path
    link = tmp_path / "link"
    link.symlink_to(root / "data", target_is_directory=True)
    assert p.rel(link / "a.wav") == "data/a.wav"
    assert p.state_dir() == root / ".rsctool"


def test_resolve_project_path_precedence(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    assert resolve_project_path(None) == cwd.resolve() / DEFAULT_NAME
    monkeypatch.setenv(PROJECT_ENV, "")                     # empty means unset
    assert resolve_project_path(None) == cwd.resolve() / DEFAULT_NAME

    env_dir = tmp_path / "envproj"
    env_dir.mkdir()
    monkeypatch.setenv(PROJECT_ENV, str(env_dir))           # a folder means FOLDER/rsctool.toml
    assert resolve_project_path(None) == env_dir.resolve() / DEFAULT_NAME
    monkeypatch.setenv(PROJECT_ENV, "sub/other.toml")       # relative to the cwd, made absolute
    assert resolve_project_path(None) == cwd.resolve() / "sub" / "other.toml"

    # the command line wins over the environment
    assert resolve_project_path("cli.toml") == cwd.resolve() / "cli.toml"
    assert resolve_project_path(tmp_path / "x" / ".." / "y.toml") == tmp_path.resolve() / "y.toml"
    assert resolve_project_path("newdir/") == cwd.resolve() / "newdir" / DEFAULT_NAME
    assert resolve_project_path(".") == cwd.resolve() / DEFAULT_NAME


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(("content", "line", "fragment"), [
    ("schema = 1\n[runs.a]\nstatus = \n", 3, "Invalid value"),
    ("schema = 1\n\n[runs.a]\nx = 1\nx = 2\n", 5, "overwrite"),
    ("schema = 1\n[runs.a]\nname = 'unterminated", 3, "at end of file"),
    ("schema = 1\n[runs\n", 2, ""),
])
def test_corrupt_toml_names_file_and_line_and_is_never_overwritten(tmp_path, content, line,
                                                                   fragment):
    path = tmp_path / DEFAULT_NAME
    path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(ProjectError) as err:
        Project.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: invalid TOML at line {line}: "), msg
    assert fragment in msg
    assert "\n" not in msg
    # a writer that loaded nothing (or an old good copy) must not clobber the corrupt file
    p = Project(path)
    with pytest.raises(ProjectError, match=f"line {line}"):
        p.set_record("runs", "b", {"x": 1})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_non_utf8_file(tmp_path):
    path = tmp_path / DEFAULT_NAME
    path.write_bytes(b"schema = 1\ntitle = \"\xff\xfe\"\n")
    with pytest.raises(ProjectError, match=r"invalid TOML at line 2: not UTF-8"):
        Project.load(path)


@pytest.mark.parametrize(("content", "fragment"), [
    ("[runs.a]\nx = 1\n", "no `schema` key"),
    ("# by hand\n", "no `schema` key"),
    ('schema = "1"\n', "must be an integer, not a string"),
    ("schema = true\n", "must be an integer, not a boolean"),
    ("schema = 1.0\n", "must be an integer, not a float"),
    (f"schema = {SCHEMA + 1}\n", f"schema {SCHEMA + 1} is newer"),
    ("schema = 0\n", "schema 0 is not a schema this rsctool can read"),
    ("schema = 1\nruns = 3\n", "`runs` must be a table of records ([runs.NAME]), not an integer"),
    ("schema = 1\nruns = [1, 2]\n", "`runs` must be a table of records"),
    ("schema = 1\n[[datasets]]\nx = 1\n", "`datasets` must be a table of records"),
    ("schema = 1\n[runs]\ncnn = 'x'\n", "`runs.cnn` must be a table ([runs.cnn]), not a string"),
])
def test_wrong_schema_or_structure(tmp_path, content, fragment):
    path = tmp_path / DEFAULT_NAME
    path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(ProjectError) as err:
        Project.load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert fragment in str(err.value)
    with pytest.raises(ProjectError):
        Project(path).update(lambda doc: doc.setdefault("runs", {}).update(z={"a": 1}))
    assert path.read_bytes() == before


def test_migrations_run_in_order_and_are_written(tmp_path, monkeypatch):
    path = tmp_path / DEFAULT_NAME
    path.write_text('schema = 1\n[runs.a]\nckpt = "a.pt"\n')
    seen = []

    def one_to_two(doc):
        seen.append(doc["schema"])
        for rec in doc.get("runs", {}).values():
            rec["last"] = rec.pop("ckpt")
        return doc

    monkeypatch.setattr(project_mod, "SCHEMA", 2)
    monkeypatch.setattr(project_mod, "MIGRATIONS", {1: one_to_two})
    p = Project.load(path)
    assert seen == [1] and p.data["schema"] == 2 and p.get("runs", "a") == {"last": "a.pt"}
    assert path.read_text().startswith("schema = 1")        # loading alone does not write
    p.update_record("runs", "a", status="done")
    assert tomllib.loads(path.read_text()) == {
        "schema": 2, "runs": {"a": {"last": "a.pt", "status": "done"}}}


# ------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("victim", ["replace", "fsync"])
def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch, victim):
    p = Project.load(tmp_path)
    p.set_record("datasets", "icbhi", {"cycles": 6898})
    before = p.path.read_bytes()
    data_before = dict(p.data)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, victim, disk_full)
    with pytest.raises(ProjectError, match="cannot write project file: No space left"):
        p.set_record("runs", "cnn", {"status": "running"})
    monkeypatch.undo()

    assert p.path.read_bytes() == before
    assert _leftovers(tmp_path) == []                       # the temp file was removed
    assert p.data == data_before and p.get("runs", "cnn") is None
    p.set_record("runs", "cnn", {"status": "running"})      # and the project still works
    assert Project.load(tmp_path).get("runs", "cnn") == {"status": "running"}


def test_exception_inside_update_writes_nothing(tmp_path):
    p = Project.load(tmp_path)
    p.set_record("runs", "a", {"x": 1})
    before = p.path.read_bytes()

    def half_done(doc):
        doc["runs"]["a"]["x"] = 2
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        p.update(half_done)
    assert p.path.read_bytes() == before and p.get("runs", "a") == {"x": 1}
    assert p.update(lambda doc: len(doc["runs"])) == 1        # update returns fn's result


# --------------------------------------------------------------------- locking


def test_lock_is_reentrant_across_project_objects_in_one_thread(tmp_path):
    a = Project.load(tmp_path)
    b = Project.load(tmp_path)
    with a.lock(timeout=2) as held:
        assert held.is_locked
        a.set_record("runs", "x", {"i": 1})          # update() takes the same lock again
        b.set_record("runs", "y", {"i": 2})          # another object on the same file
    assert set(Project.load(tmp_path).section("runs")) == {"x", "y"}


def test_lock_timeout_is_a_clear_project_error(tmp_path):
    p = Project.load(tmp_path)
    holding, release = threading.Event(), threading.Event()

    def holder():
        with Project.load(tmp_path).lock():
            holding.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert holding.wait(5)
        start = time.monotonic()
        with pytest.raises(ProjectError, match=r"could not lock .* within 0\.2 s"):
            with p.lock(timeout=0.2):
                pass
        assert time.monotonic() - start < 2
    finally:
        release.set()
        t.join(10)
    p.set_record("runs", "x", {"ok": True})          # free again once the holder is done
    assert p.get("runs", "x") == {"ok": True}


_WORKER = """
import sys, time, pathlib
from rsctool.project import Project
path, i = sys.argv[1], int(sys.argv[2])
ready, go = pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
(ready / str(i)).touch()
deadline = time.monotonic() + 30
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.002)
p = Project.load(path)
name = p.reserve_name("runs", "cnn", {"worker": i, "status": "running", "lr": 1e-4 * i})
p.set_record("datasets", "d%d" % i, {"worker": i, "cycles": 10 * i, "tags": ["a", "b"]})
print(name)
"""


def test_eight_concurrent_processes_lose_nothing(tmp_path):
    n = 8
    path = tmp_path / DEFAULT_NAME
    ready, go = tmp_path / "ready", tmp_path / "go"
    ready.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(i), str(ready),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
             for i in range(n)]
    try:
        deadline = time.monotonic() + 30
        while len(list(ready.iterdir())) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()                               # release all workers at the same moment
        results = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    names = [out.strip() for out, _ in results]
    assert sorted(names) == sorted(["cnn", *(f"cnn-{k}" for k in range(1, n))])

    doc = tomllib.loads(path.read_text())          # valid TOML
    assert doc["schema"] == SCHEMA
    assert set(doc["runs"]) == set(names)
    assert sorted(r["worker"] for r in doc["runs"].values()) == list(range(n))
    assert doc["datasets"] == {f"d{i}": {"worker": i, "cycles": 10 * i, "tags": ["a", "b"]}
                               for i in range(n)}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ property


_keys = st.text(min_size=0, max_size=12)
_leaf = (st.integers(min_value=-(2**63), max_value=2**63 - 1)
         | st.floats(allow_nan=False, allow_infinity=False)
         | st.booleans()
         | st.text(max_size=20)
         | st.lists(st.text(max_size=8), max_size=4))
_values = st.recursive(_leaf, lambda inner: st.dictionaries(_keys, inner, max_size=4),
                       max_leaves=12)
_records = st.dictionaries(_keys, _values, max_size=6)


def _same(a, b) -> bool:
    """Equality that also checks types (True != 1 here) and the sign of zero.

    Key order inside a record is not compared: TOML writes a table's plain values
    before its sub-tables, so ``{"t": {}, "x": 1}`` comes back as ``{"x": 1, "t": {}}``.
    """
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float):
        return type(b) is float and (a == b) and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(min_size=1, max_size=10).filter(
           lambda s: s.strip() and s not in (".", "..") and not project_mod._BAD_NAME.search(s)),
       record=_records)
def test_random_records_round_trip(name, record):
    with tempfile.TemporaryDirectory() as tmp:
        p = Project.load(tmp)
        p.set_record("runs", name, record)
        p.set_record("datasets", "other", {"x": 1})
        loaded = Project.load(tmp)
        assert _same(loaded.get("runs", name), record)
        assert loaded.get("datasets", "other") == {"x": 1}
