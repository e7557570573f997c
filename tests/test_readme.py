"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path: Path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "models", tmp_path / "models")
    (tmp_path / "out").mkdir()
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the documented example itself
    result = namespace["result"]
    assert (tmp_path / "out" / "digits_api.onnx").exists() and (tmp_path / "out" / "digits_api_plan.json").exists()
    assert result.after.macs < result.before.macs
    assert namespace["plan2"].groups and all(len(g.keep) < g.channels for g in namespace["plan2"].groups)
    halved = [g for g in namespace["plan3"].groups if g.removed]
    assert len(halved) == 1 and halved[0].removed == halved[0].channels // 2


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, re.S)
    assert len(commands) == 2  # install + demo, install + tests
    assert commands[1] in ci
