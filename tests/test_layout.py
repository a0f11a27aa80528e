"""Package layering: the evaluation stages never import the training package.

Evaluation reads what training wrote (``model.pt``, checkpoints, ``history.jsonl``) through the
modules that own those formats (``giblet.model.model_file``, ``giblet.data``), so it can be run,
tested and changed without the trainer. The check parses every module under ``giblet/evaluate/``
and looks at every import statement, including those inside functions, relative ones and
``importlib.import_module``/``__import__`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import giblet

PACKAGE_ROOT = Path(giblet.__file__).parent
FORBIDDEN = "giblet.train"


def _absolute(module: str | None, level: int, package: str) -> str:
    """The absolute module name of ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_forbidden(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def train_imports(source: str, package: str) -> list[str]:
    """``line: imported name`` for every import of ``giblet.train`` in ``source`` (a module of ``package``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]  # from giblet import train
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                names = [node.args[0].value]
        found += [f"{node.lineno}: {name}" for name in names if _is_forbidden(name)]
    return found


@pytest.mark.parametrize("source", [
    "from giblet.train.loop import collate",
    "def predict():\n    from giblet.train.loop import collate\n",
    "import giblet.train.checkpoint as ck",
    "from giblet import train",
    "from ..train import loop",
    "from ..train.loop import collate",
    "import importlib\nimportlib.import_module('giblet.train.loop')",
])
def test_the_check_finds_every_form_of_importing_the_training_package(source):
    assert train_imports(source, "giblet.evaluate")


@pytest.mark.parametrize("source", [
    "from giblet.data.batch import collate",
    "from giblet.model.model_file import read_model_file",
    "from . import metrics",
    "from .load import predict",
    "import giblet.training_helpers",  # a name that merely starts with "train" is not the package
])
def test_the_check_passes_imports_outside_the_training_package(source):
    assert not train_imports(source, "giblet.evaluate")


def test_no_evaluation_module_imports_the_training_package():
    modules = sorted((PACKAGE_ROOT / "evaluate").rglob("*.py"))
    assert modules, "no modules found under giblet/evaluate"
    offenders = {}
    for path in modules:
        relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
        package = ".".join(relative.parts[:-1]) if relative.name != "__init__" else ".".join(relative.parts)
        found = train_imports(path.read_text(), package)
        if found:
            offenders[str(path.relative_to(PACKAGE_ROOT.parent))] = found
    assert not offenders, f"evaluation modules import giblet.train: {offenders}"
