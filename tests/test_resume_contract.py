"""The resume contract for the plain commands: the same `train`/`synth` command without a
name finds its run (or set, or seed group) again, so it resumes an interrupted one and is
a no-op for a finished one; `--new` asks for another; `--extend` trains a finished run
longer (issue 16, part 1)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.project import Project

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
# a tiny CNN on 2 s clips: one epoch is a few steps on the demo dataset
TRAIN = ["train", "--model", "cnn", "--size", "tiny", "--clip-seconds", "2",
         "--batch-size", "32", "--lr", "3e-3"]


def _cli(project: Project, *args: str):
    return runner.invoke(app, ["--project", str(project.path), "--device", "cpu", *args])


def _runs(project: Project) -> dict[str, dict]:
    return Project.load(project.path).section("runs")


def test_same_unnamed_command_twice_is_a_noop_naming_the_run(project):
    first = _cli(project, *TRAIN, "--epochs", "1", "--json")
    assert first.exit_code == 0, first.output
    name = json.loads(first.stdout)["run"]
    again = _cli(project, *TRAIN, "--epochs", "1", "--json")
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)  # --json stays one valid document on stdout
    assert doc["run"] == name and doc["skipped"] is True, again.output
    assert f"already done: run {name!r}" in again.stderr, again.stderr
    assert list(_runs(project)) == [name]


def test_interrupted_unnamed_run_resumes_under_its_name(project, monkeypatch):
    import rsctool.data.dataset as ds

    orig = ds.spec_augment
    calls = {"n": 0}

    def interrupt(x, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # in the first epoch's third batch: Ctrl-C
            raise KeyboardInterrupt
        return orig(x, **kw)

    monkeypatch.setattr(ds, "spec_augment", interrupt)
    stopped = _cli(project, *TRAIN, "--batch-size", "8", "--epochs", "1")
    assert stopped.exit_code == 130, stopped.output
    (name, rec), = _runs(project).items()
    assert rec["status"] == "interrupted"
    monkeypatch.setattr(ds, "spec_augment", orig)
    resumed = _cli(project, *TRAIN, "--batch-size", "8", "--epochs", "1", "--json")
    assert resumed.exit_code == 0, resumed.output
    doc = json.loads(resumed.stdout)
    assert doc["run"] == name and doc["resumed"] is True and not doc["skipped"], resumed.output
    runs = _runs(project)
    assert list(runs) == [name] and runs[name]["status"] == "done"


def test_other_options_get_a_new_run_and_new_forces_one(project):
    base = [*TRAIN, "--epochs", "1", "--max-steps", "1", "--json"]
    a = json.loads(_cli(project, *base).stdout)["run"]
    b = _cli(project, *base, "--lr", "1e-3")  # other options: another run
    assert b.exit_code == 0, b.output
    assert json.loads(b.stdout)["run"] != a
    c = _cli(project, "--seed", "1", *base)  # the global --seed is part of the options
    assert c.exit_code == 0, c.output
    assert json.loads(c.stdout)["run"] not in (a, json.loads(b.stdout)["run"])
    d = _cli(project, *base, "--new")  # the same options, explicitly a fresh run
    assert d.exit_code == 0, d.output
    doc = json.loads(d.stdout)
    assert doc["run"] not in _runs(project).keys() - {doc["run"]} and not doc["skipped"]
    assert len(_runs(project)) == 4
    # and the plain command is still a no-op (it finds one of its runs)
    again = _cli(project, *base)
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"], again.output
    assert len(_runs(project)) == 4
    taken = _cli(project, *base, "--run", a, "--new")
    assert taken.exit_code == 2 and "--new" in taken.output and a in taken.output, taken.output


def test_unnamed_seed_group_twice_makes_no_new_group(project):
    args = [*TRAIN, "--epochs", "1", "--max-steps", "1", "--seeds", "2", "--json"]
    first = _cli(project, *args)
    assert first.exit_code == 0, first.output
    group = json.loads(first.stdout)["group"]
    again = _cli(project, *args)
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["group"] == group and doc["skipped"] is True, again.output
    assert "already done: seed group" in again.stderr, again.stderr
    p = Project.load(project.path)
    assert list(p.section("groups")) == [group] and len(p.section("runs")) == 2
    fresh = _cli(project, *args, "--new")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["group"] != group
    assert len(Project.load(project.path).section("groups")) == 2


def test_extend_a_finished_run_keeps_its_history(project):
    first = _cli(project, *TRAIN, "--epochs", "2", "--run", "x", "--json")
    assert first.exit_code == 0, first.output
    p = Project.load(project.path)
    run_dir = p.abs(p.get("runs", "x")["dir"])
    before = json.loads((run_dir / "history.json").read_text())
    refused = _cli(project, *TRAIN, "--epochs", "3", "--run", "x")
    assert refused.exit_code == 2 and "--extend" in refused.output, refused.output
    # the documented form: the run's own options, only the new total given
    longer = _cli(project, "train", "--run", "x", "--epochs", "3", "--extend", "--json")
    assert longer.exit_code == 0, longer.output
    doc = json.loads(longer.stdout)
    assert doc["epochs"] == 3 and not doc["skipped"], longer.output
    after = json.loads((run_dir / "history.json").read_text())
    assert len(after) == 3 and after[:2] == before
    rec = Project.load(project.path).get("runs", "x")
    assert rec["status"] == "done" and rec["epoch"] == 3
    assert rec["extended"] == [{"from": 2, "to": 3, "epoch": 2,
                                "step": before[-1]["step"]}]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["extended"] == rec["extended"] and config["options"]["epochs"] == 3
    # the best checkpoint is still chosen on validation only
    best = max(after, key=lambda h: (h["val_select"], -h["val_loss"]))["epoch"]
    assert rec["best_epoch"] == best
    # the extended run is the run of its new options: the same command is a no-op
    same = _cli(project, *TRAIN, "--epochs", "3", "--run", "x", "--extend", "--json")
    assert same.exit_code == 2 and "larger --epochs" in same.output, same.output
    plain = _cli(project, *TRAIN, "--epochs", "3", "--run", "x", "--json")
    assert plain.exit_code == 0 and json.loads(plain.stdout)["skipped"], plain.output
    for bad, needle in ((["--run", "nope", "--epochs", "4", "--extend"], "no run 'nope'"),
                        (["--epochs", "4", "--extend"], "--run NAME"),
                        (["--run", "x", "--extend"], "--epochs N")):
        r = _cli(project, *TRAIN, *bad)
        assert r.exit_code == 2 and needle in r.output, r.output


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    from rsctool.testing import write_tiny_audioldm

    return write_tiny_audioldm(tmp_path_factory.mktemp("models") / "tiny-audioldm", "audioldm")


def test_unnamed_synth_twice_is_one_set_and_new_makes_another(project, tiny_ldm):
    args = ["synth", "--classes", "crackle", "--n", "1", "--model", str(tiny_ldm),
            "--steps", "2", "--seconds", "1", "--json"]
    first = _cli(project, *args)
    assert first.exit_code == 0, first.output
    name = json.loads(first.stdout)["name"]
    again = _cli(project, *args)
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["name"] == name and doc["skipped"] is True and doc["made"] == 0, again.output
    assert f"already done: synthetic set {name!r}" in again.stderr, again.stderr
    assert list(Project.load(project.path).section("synthetic")) == [name]
    fresh = _cli(project, *args, "--new")
    assert fresh.exit_code == 0, fresh.output
    doc = json.loads(fresh.stdout)
    assert doc["name"] != name and doc["made"] == 1 and not doc["skipped"]
    assert len(Project.load(project.path).section("synthetic")) == 2
    taken = _cli(project, *args, "--name", name, "--new")
    assert taken.exit_code == 2 and "--new" in taken.output, taken.output


def test_identical_unnamed_command_started_meanwhile_is_refused_not_repeated(project,
                                                                             monkeypatch):
    """Two identical unnamed commands started together: both look up (none found), one
    claims the run while the other builds its model; the other's claim sees it and exits 2
    instead of training a copy under `cnn-1`."""
    import rsctool.train as train

    base = [*TRAIN, "--epochs", "1", "--max-steps", "1"]
    first = _cli(project, *base)
    assert first.exit_code == 0, first.output
    (name,) = _runs(project)
    Project.load(project.path).update_record("runs", name, status="running")
    monkeypatch.setattr(train, "find_same_run", lambda *a, **k: None)  # looked too early
    second = _cli(project, *base)
    assert second.exit_code == 2, second.output
    assert f"{name!r} with the same options was started meanwhile" in second.output
    assert list(_runs(project)) == [name]
    third = _cli(project, *base, "--new")  # --new still means another run
    assert third.exit_code == 0, third.output
    assert len(_runs(project)) == 2


def test_an_option_added_at_its_default_keeps_the_identity_of_earlier_runs(monkeypatch):
    """Upgrading rsctool (a new option whose default keeps the old behaviour) must not
    orphan the runs made before it: the same command still finds them."""
    import dataclasses

    import rsctool.train as train

    opts = train.TrainOptions(model="cnn", size="tiny", epochs=2).resolve()
    before = train.run_hash(opts, "demo")
    # the same options, with one more field at its default (as a later rsctool adds one)
    Extended = dataclasses.make_dataclass(
        "Extended", [("new_option", int, dataclasses.field(default=3))],
        bases=(train.TrainOptions,))
    monkeypatch.setattr(train, "_DEFAULT_OPTIONS", dataclasses.asdict(Extended()))
    extended = Extended(**dataclasses.asdict(opts))
    assert train.run_hash(extended, "demo") == before
    assert train.run_hash(dataclasses.replace(extended, new_option=4), "demo") != before
    assert train.run_hash(dataclasses.replace(opts, epochs=3), "demo") != before
