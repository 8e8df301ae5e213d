"""Train's options: one resolver, one documented order, each default written once; a
`Trainer` built completely before use (issue 17, items 2 and 3)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from typer.testing import CliRunner

import rsctool
from rsctool.cli import app
from rsctool.project import Project
from rsctool.train import TrainOptions, resolve_train_options

runner = CliRunner()
ROOT = Path(rsctool.__file__).parent
FAST = ["--model", "cnn", "--size", "tiny", "--clip-seconds", "2", "--batch-size", "32",
        "--lr", "0.003", "--epochs", "1", "--max-steps", "1"]


def test_resolver_order_defaults_like_config_set_command_line(project, tmp_path):
    """defaults < --like < --config < --set < explicit; model/loss configs merge by key."""
    r = runner.invoke(app, ["--project", str(project.path), "train", *FAST, "--run", "a",
                            "--set", "model.dropout=0.2", "--patience", "3",
                            "--num-mel-bins", "32"])
    assert r.exit_code == 0, r.output
    project = Project.load(project.path)  # as the command left it
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\npatience = 4\nepochs = 5\nmax_steps = 7\n'
                   '[train.model_cfg]\noutput = "logits"\n')
    opts, explicit, like_seeds = resolve_train_options(
        project, {"epochs": 6}, like="a", config=cfg, sets=["max_steps=9"], seed=11)
    assert like_seeds is None
    assert opts.num_mel_bins == 32 and opts.model == "cnn"       # from --like
    assert opts.patience == 4                                      # --config over --like
    assert opts.max_steps == 9                                     # --set over --config
    assert opts.epochs == 6                                        # command line over all
    assert opts.model_cfg == {"dropout": 0.2, "output": "logits"}  # merged key by key
    assert opts.seed == 0 and explicit["seed"] == 0               # the like run's seed
    assert opts.lr == 0.003 and opts.window is not None            # resolved
    assert explicit["epochs"] == 6 and "run" not in explicit
    # the global --seed, when given, sits above --like and below --config
    opts, explicit, _ = resolve_train_options(project, {}, like="a", seed=11, seed_given=True)
    assert opts.seed == 11 and explicit["seed"] == 11
    (tmp_path / "s.toml").write_text("seed = 5\n")
    opts, _, _ = resolve_train_options(project, {}, config=tmp_path / "s.toml", seed=11,
                                       seed_given=True)
    assert opts.seed == 5
    # no source: the defaults (ranking's default model is cnn)
    opts, explicit, _ = resolve_train_options(project, {"task": "ranking"}, seed=3)
    assert (opts.model, opts.seed, opts.num_mel_bins) == ("cnn", 3, 128)
    assert "model" not in explicit and "seed" not in explicit


def test_cli_resolves_train_options_once_and_reads_config_once(project, tmp_path,
                                                               monkeypatch):
    import rsctool.train as train

    calls = {"resolve": 0, "config": 0}
    resolve, load = TrainOptions.resolve, train._load_config_file

    def counting_resolve(self):
        calls["resolve"] += 1
        return resolve(self)

    def counting_load(path):
        calls["config"] += 1
        return load(path)

    monkeypatch.setattr(TrainOptions, "resolve", counting_resolve)
    monkeypatch.setattr(train, "_load_config_file", counting_load)
    cfg = tmp_path / "c.toml"
    cfg.write_text("patience = 2\n")
    r = runner.invoke(app, ["--project", str(project.path), "--seed", "1", "train", *FAST,
                            "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    assert calls == {"resolve": 1, "config": 1}, calls
    run_dir = Path(json.loads(r.stdout)["dir"])
    options = json.loads((run_dir / "config.json").read_text())["options"]
    assert options["patience"] == 2 and options["seed"] == 1


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_feature_defaults_are_written_once():
    """The AudioSet statistics are written in one module, and no option or config field
    named clip_seconds / num_mel_bins spells its default as a number, except the home of
    the mel bins' (`FbankConfig`); the others import `rsctool.audio.DEFAULT_CLIP_SECONDS`
    and `FbankConfig.num_mel_bins`."""
    homes = [p.relative_to(ROOT).as_posix() for p in sorted(ROOT.rglob("*.py"))
             if "4.2677393" in p.read_text(encoding="utf-8")]
    assert homes == ["features_np.py"], homes
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and node.target.id in ("clip_seconds", "num_mel_bins")
                    and isinstance(node.value, ast.Constant)
                    and (path.name, node.target.id) != ("features_np.py", "num_mel_bins")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.target.id}")
        for fn in _functions(tree):
            args = fn.args.args + fn.args.kwonlyargs
            defaults = ([None] * (len(fn.args.args) - len(fn.args.defaults))
                        + list(fn.args.defaults) + list(fn.args.kw_defaults))
            for arg, default in zip(args, defaults, strict=True):
                if (arg.arg in ("clip_seconds", "num_mel_bins")
                        and isinstance(default, ast.Constant) and default.value is not None):
                    bad.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}({arg.arg})")
    assert not bad, "feature defaults written as numbers: " + ", ".join(bad)


def test_trainer_is_complete_when_built():
    """`run` builds the Trainer with its name, folder, group and trackers; nothing in
    train.py sets them on a built trainer afterwards."""
    tree = ast.parse((ROOT / "train.py").read_text(encoding="utf-8"))
    late = [f"line {node.lineno}: trainer.{t.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
            and t.value.id == "trainer" and t.attr in ("run_name", "dir", "group", "trackers")]
    assert not late, late
    trainer = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "Trainer")
    init = next(f for f in trainer.body
                if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    names = {a.arg for a in init.args.args + init.args.kwonlyargs}
    assert {"run_name", "run_dir", "group", "trackers"} <= names
