"""The typed run config (`rsctool.runconfig.RunConfig`): it reads back exactly what train
writes, old configs load with their documented defaults, a newer format is refused, and
eval/predict write each option default once (in their options dataclass)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rsctool.cli import app
from rsctool.runconfig import RUN_CONFIG_VERSION, RunConfig

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

#: A run config as the first rsctool versions wrote it: no version, task, metadata
#: encoder, normalisation block, dataset or provenance.
OLD = {
    "run": "cnn-old",
    "options": {"model": "cnn", "seed": 3, "norm": "audioset"},
    "model": {"name": "cnn", "size": "tiny", "num_classes": 4},
    "classes": ["normal", "crackle", "wheeze", "both"],
    "clip": {"sample_rate": 16000, "clip_seconds": 2.0, "fbank": {}},
}


@pytest.fixture(scope="module")
def trained(analysed, tmp_path_factory) -> tuple[Path, str]:
    """A project copy with one tiny CNN run (one step): its folder and the run's."""
    from rsctool.project import Project
    from rsctool.train import TrainOptions
    from rsctool.train import run as train

    dst = tmp_path_factory.mktemp("rcproj") / "proj"
    shutil.copytree(analysed, dst, ignore=shutil.ignore_patterns("data"))
    project = Project.load(dst / "rsctool.toml")
    res = train(project, TrainOptions(model="cnn", size="tiny", clip_seconds=2.0, batch_size=16,
                                      epochs=1, max_steps=1, seed=0), device="cpu")
    return dst, project.rel(res.dir)


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    """A private copy of the trained project (tests rewrite its checkpoint); the run's
    folder in it (``<project>/<state>/runs/<run>``)."""
    src, rel = trained
    shutil.copytree(src, tmp_path / "proj")
    return tmp_path / "proj" / rel


def _rewrite_config(run_dir: Path, change) -> Path:
    """Save the run's best checkpoint again with its config passed through `change`."""
    from rsctool.checkpoint import load_checkpoint, save_checkpoint
    from rsctool.runs import rebuild_model

    path = run_dir / "best.safetensors"
    ck = load_checkpoint(path)
    model = rebuild_model(ck.state["config"])
    model.load_state_dict(ck.model_state)
    save_checkpoint(path, model=model, state={**ck.state, "config": change(ck.state["config"])})
    return path


def _project_file(run_dir: Path) -> Path:
    return next(p / "rsctool.toml" for p in run_dir.parents if (p / "rsctool.toml").exists())


def test_round_trip_gives_back_what_train_writes(run_dir):
    from rsctool.checkpoint import load_checkpoint

    written = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    cfg = RunConfig.from_dict(written)
    out = cfg.to_dict()
    assert out == {**written, "version": RUN_CONFIG_VERSION}
    assert list(out) == [*written, "version"]  # same keys, same order: same JSON
    assert RunConfig.from_dict(out) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(out))) == cfg
    # typed access to what eval/export/predict read
    assert cfg.model_name == "cnn" and cfg.task == "multiclass"
    assert cfg.classes == written["classes"] and cfg.dataset == "demo"
    assert cfg.needs_metadata is False and cfg.seed == 0
    assert cfg.norm == written["normalization"]["norm"]
    ck = load_checkpoint(run_dir / "best.safetensors").state["config"]
    assert RunConfig.from_dict(ck).to_dict() == {**ck, "version": RUN_CONFIG_VERSION}


def test_an_old_config_loads_with_the_documented_defaults():
    cfg = RunConfig.from_dict(OLD)
    assert cfg.version == 1
    assert cfg.task == "multiclass"
    assert cfg.needs_metadata is False and cfg.metadata_encoder is None
    assert cfg.dataset is None and cfg.synthetic is None and cfg.group is None
    assert cfg.norm == "audioset"  # recorded only in the options then
    assert cfg.seed == 3 and cfg.model_name == "cnn"
    assert cfg.to_dict() == {**OLD, "version": 1}  # no keys invented
    # null values and keys of a later version survive the round trip
    odd = {**OLD, "data": None, "from_the_future": {"x": 1}}
    assert RunConfig.from_dict(odd).to_dict() == {**odd, "version": 1}


@pytest.mark.parametrize("bad, why", [
    ({**OLD, "version": RUN_CONFIG_VERSION + 1}, "newer than this rsctool reads"),
    ({**OLD, "version": "1"}, "not a format version"),
    ({k: v for k, v in OLD.items() if k != "classes"}, "lacks classes"),
    ({**OLD, "model": {"size": "tiny"}}, "'model' must be an object with a 'name'"),
    ({**OLD, "classes": "normal"}, "bad class names"),
])
def test_a_bad_config_is_a_data_error_naming_its_file(bad, why):
    from rsctool.errors import DataError

    with pytest.raises(DataError, match=why) as e:
        RunConfig.from_dict(bad, "runs/x/config.json")
    assert str(e.value).startswith("runs/x/config.json: ")


def test_eval_reads_a_checkpoint_with_an_old_config(run_dir):
    from rsctool.project import Project
    from rsctool.runs import load_run

    def old(cfg):
        keep = ("run", "options", "model", "classes", "clip")
        return {k: v for k, v in cfg.items() if k in keep}

    _rewrite_config(run_dir, old)
    project_file = _project_file(run_dir)
    loaded = load_run(Project.load(project_file), run_dir.name)
    assert loaded.task == "multiclass" and loaded.encoder is None
    r = runner.invoke(app, ["--project", str(project_file), "-q", "eval", "--run",
                            run_dir.name, "--no-plots", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["dataset"] == "demo" and doc["seed"] == 0  # from the project record, options


def test_eval_refuses_a_newer_run_config_with_one_line(run_dir):
    path = _rewrite_config(run_dir, lambda cfg: {**cfg, "version": RUN_CONFIG_VERSION + 1})
    project_file = _project_file(run_dir)
    r = runner.invoke(app, ["--project", str(project_file), "eval", "--run", run_dir.name,
                            "--no-plots"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith(f"error: {path}: run config version {RUN_CONFIG_VERSION + 1} "
                                "is newer than this rsctool reads"), r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("module, cli_only", [
    ("eval", {"ctx", "names", "no_plots", "json_out"}),
    ("predict", {"ctx", "audio", "json_out"}),
])
def test_each_option_default_is_written_once(module, cli_only):
    """The command's defaults refer to its options dataclass (``_D.field``) instead of
    repeating its values."""
    tree = ast.parse((ROOT / "rsctool" / f"{module}.py").read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "command")
    repeated = []
    for arg, default in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True):
        if arg.arg in cli_only or default is None:
            continue
        if isinstance(default, ast.Constant) and default.value is None:
            continue
        if "_D." not in ast.unparse(default):
            repeated.append(f"{arg.arg}={ast.unparse(default)}")
    assert not repeated, f"rsctool/{module}.py command repeats defaults: {repeated}"


def test_no_eval_function_is_over_120_lines():
    """`evaluate_run` reads top to bottom in parts (it was one 216-line function)."""
    tree = ast.parse((ROOT / "rsctool" / "eval.py").read_text(encoding="utf-8"))
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 120}
    assert not long, long


def test_load_run_takes_the_checkpoint_weights_and_casts_other_dtypes(run_dir):
    """`load_run` makes the checkpoint's tensors the parameters when their dtypes match
    (no copy) and copies with a cast when they do not (a bf16-saved checkpoint)."""
    import torch

    from rsctool.checkpoint import load_checkpoint, save_checkpoint
    from rsctool.project import Project
    from rsctool.runs import load_run, rebuild_model

    path = run_dir / "best.safetensors"
    ck = load_checkpoint(path)
    project = Project.load(_project_file(run_dir))
    loaded = load_run(project, run_dir.name)
    got = loaded.model.state_dict()
    assert set(got) == set(ck.model_state)
    assert all(torch.equal(got[k], v) for k, v in ck.model_state.items())
    assert all(p.requires_grad for p in loaded.model.parameters())  # as a built model's
    model = rebuild_model(ck.state["config"]).to(torch.bfloat16)
    model.load_state_dict(ck.model_state)
    save_checkpoint(path, model=model, state=ck.state)
    cast = load_run(project, run_dir.name).model.state_dict()
    assert all(cast[k].dtype == v.dtype for k, v in got.items())
    assert all(torch.allclose(cast[k].float(), v.float(), rtol=1e-2, atol=1e-2)
               for k, v in got.items() if v.is_floating_point())
