"""Start-up cost is behaviour: the command line imports the heavy libraries only for the commands
that need them (timed figures live in scripts/bench_pipeline.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "models" / "digits_cnn.onnx"
HEAVY = ("onnx", "onnxruntime", "networkx")


def imported_after(code: str) -> list[str]:
    """The heavy top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"""
import json, sys
{code}
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_library():
    assert imported_after("import onnxprune.cli") == []


def test_import_onnxprune_alone_is_light_and_names_load_on_use():
    assert imported_after("import onnxprune; assert onnxprune.__version__") == []
    assert imported_after("import onnxprune; onnxprune.Plan") == ["networkx", "onnx"]


def test_help_and_argument_errors_import_no_heavy_library():
    run = """
from onnxprune.cli import main
for argv in (["--help"], ["prune", "--help"], ["prune", "m.onnx"]):
    try:
        main(argv)
    except SystemExit:
        pass
"""
    assert imported_after(run) == []


def test_inspect_does_not_import_onnxruntime():
    run = f"""
import contextlib, io
from onnxprune.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["inspect", {str(SAMPLE)!r}]) == 0
"""
    assert imported_after(run) == ["networkx", "onnx"]


def test_api_functions_survive_submodule_imports():
    """`onnxprune.load`/`save` are functions even after the submodules of the same names load."""
    run = """
import onnxprune
import onnxprune.load, onnxprune.save
from onnxprune.load import load_model
assert callable(onnxprune.load) and callable(onnxprune.save), (onnxprune.load, onnxprune.save)
assert onnxprune.load.__module__ == "onnxprune.api"
"""
    assert imported_after(run) == ["networkx", "onnx"]


def test_cli_criterion_names_match_the_criteria():
    from onnxprune.importance import CRITERIA
    from onnxprune.names import CRITERION_NAMES

    assert tuple(CRITERIA) == CRITERION_NAMES
