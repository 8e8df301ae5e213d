"""No test is skipped for a missing package: every module a test `importorskip`s is a
declared dependency (the main list or the ``dev`` extra), so `pip install -e .[dev]`
runs them all."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-")
            for r in reqs}


def test_every_importorskip_module_is_a_declared_dependency():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _names(meta["dependencies"]) | _names(meta["optional-dependencies"]["dev"])
    skipped = set()
    for path in (ROOT / "tests").glob("*.py"):
        skipped |= set(re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']",
                                  path.read_text(encoding="utf-8")))
    assert {"tensorboard", "onnxscript"} <= skipped  # the two this test was written for
    missing = sorted(m for m in skipped
                     if m.split(".")[0].replace("_", "-") not in declared)
    assert not missing, f"tests skip without these, add them to the dev extra: {missing}"
