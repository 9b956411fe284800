"""The code's structure, checked: no import circles, each module importable first in a fresh
interpreter, run-folder file names spelled in one module, no branch on a modality's name outside
the modalities (issue 33). benchmarks/structure.py prints the same measures."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from structure import measure, module_name  # noqa: E402

PACKAGE = ROOT / "selfsup"
# ("features" and "report" name other things too: a dict key, a command. Inside checkpoints/ the pointers
# `latest` and `best` belong to the checkpoint format, selfsup.checkpoint.)
RUN_FOLDER_NAMES = {"config.yaml", "metrics.jsonl", "checkpoints", "train_summary.json", "eval", "results.jsonl",
                    "report.html", ".budget-trial", "trackers.json", "mlruns"}
MODALITY_NAMES = {"image", "text", "tabular"}


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_module_level_import_graph_has_no_circles_and_nothing_imports_inside_a_function():
    measured = measure(PACKAGE)
    assert measured["circles"] == []
    assert measured["local_imports"] == 0


def test_the_import_graph_check_finds_a_circle(tmp_path):
    """The check above can fail: two modules that import each other form a circle."""
    package = tmp_path / "selfsup"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from selfsup import b\n")
    (package / "b.py").write_text("import selfsup.a\n\ndef f():\n    from selfsup import a\n")
    measured = measure(package)
    assert measured["circles"] == [["selfsup.a", "selfsup.b"]] and measured["local_imports"] == 1


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported before any other selfsup module (torch stays loaded between them, so one
    interpreter serves for all): a circle hidden by import order fails here."""
    names = [module_name(f) for f in sources() if f.name != "__main__.py"]
    script = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n"
              "    for loaded in [m for m in sys.modules if m == 'selfsup' or m.startswith('selfsup.')]:\n"
              "        del sys.modules[loaded]\n"
              "    try:\n        importlib.import_module(name)\n"
              "    except Exception as e:\n        failed.append(f'{name}: {e!r}')\n"
              "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n")
    done = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def string_constants(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def test_only_the_run_folder_spells_the_names_of_a_run_folders_files():
    spelled = [f"{f.relative_to(ROOT)}:{node.lineno} {node.value!r}" for f in sources()
               if f.name != "run_folder.py" for node in string_constants(f) if node.value in RUN_FOLDER_NAMES]
    assert spelled == []


def test_nothing_outside_the_modalities_compares_with_a_modality_name():
    """A kind of data declares what it can do (selfsup.modalities.base.Modality); the trainer, evaluation
    and report read that, and never ask `modality.name == "image"`."""
    found = []
    for f in sources():
        if "modalities" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if MODALITY_NAMES & set(c for c in constants if isinstance(c, str)):
                    found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert found == []
