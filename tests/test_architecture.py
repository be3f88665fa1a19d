"""The layout docs/architecture.md describes, kept: faces at the top, one metric table, one error family,
short functions. (One-way imports are checked by `lint-imports`, style by `ruff`; both run in .ci/run.)"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from pytest_factedit import errors
from pytest_factedit.metrics.spec import MANY_METRICS, METRICS
from pytest_factedit.run.options import OPTIONS, Options

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "pytest_factedit"
FACES = {"__init__.py", "plugin.py", "items.py", "session.py", "cli.py", "errors.py", "fixtures.py", "xdist.py"}
NOUNS = {"cases", "model", "metrics", "localize", "edit", "run", "report", "infra"}
MAX_FUNCTION_LINES = 60


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "results" not in p.parts)


def test_the_top_level_holds_only_the_faces_and_the_nouns() -> None:
    files = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == FACES
    assert folders == NOUNS
    assert all((PACKAGE / noun / "__init__.py").is_file() for noun in NOUNS)


@pytest.mark.parametrize(
    "path", python_files(PACKAGE, REPO / "bench", REPO / "tests"), ids=lambda p: str(p.relative_to(REPO))
)
def test_no_function_is_longer_than_60_lines(path: Path) -> None:
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"split these functions (at most {MAX_FUNCTION_LINES} lines): {long}"


def test_metric_names_are_spelled_only_in_the_metric_table() -> None:
    names = {f'"{spec.name}"' for spec in METRICS + MANY_METRICS}
    spelled = {
        str(path.relative_to(REPO))
        for path in python_files(PACKAGE)
        if any(name in path.read_text(encoding="utf-8") for name in names)
    }
    assert spelled == {"pytest_factedit/metrics/spec.py"}


def _exception_classes(tree: ast.AST) -> list[str]:
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id == "AssertionError")
            for b in node.bases
        )
    ]


def _caught_names(tree: ast.AST) -> set[str]:
    caught = set()
    for handler in (n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler) and n.type is not None):
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        caught |= {t.id for t in types if isinstance(t, ast.Name)}
    return caught


def test_every_exception_class_of_the_package_is_in_the_one_family() -> None:
    """Public exception classes live in errors.py; private ones (`_Name`) are signals, caught in the module
    that raises them, so only the family reaches a user."""
    defined, uncaught = [], []
    for path in python_files(PACKAGE):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes, caught = _exception_classes(tree), _caught_names(tree)
        defined += [(path.name, name) for name in classes if not name.startswith("_")]
        uncaught += [(path.name, name) for name in classes if name.startswith("_") and name not in caught]
    assert defined and all(file == "errors.py" for file, _ in defined), defined
    assert not uncaught, f"private exceptions never caught where they are raised: {uncaught}"
    family = [getattr(errors, name) for _, name in defined if name != "FactEditError"]
    assert all(issubclass(cls, errors.FactEditError) for cls in family)


def test_errors_carry_file_and_key_and_print_one_way() -> None:
    error = errors.MethodError("lr", "expected a positive number, found str 'x'")
    assert str(error) == "key 'method.lr': expected a positive number, found str 'x'"
    located = error.at("cases/a.yaml")
    assert str(located) == "cases/a.yaml: key 'method.lr': expected a positive number, found str 'x'"
    assert isinstance(located, errors.MethodError) and error.path is None  # the original is unchanged
    assert str(errors.CaseError("a.yaml", None, "invalid YAML")) == "a.yaml: invalid YAML"


def test_every_option_is_declared_once_and_read_by_one_field() -> None:
    """OPTIONS declares each option; Options reads each by name: none is left unread, none read twice."""
    read = [Options.option_of(spec) for spec in fields(Options)]
    assert sorted(read) == sorted(OPTIONS)


def test_options_read_back_the_defaults_of_their_specs() -> None:
    """An option the getter lacks takes its spec's default; a repeatable one becomes a tuple."""
    given = {"model": "tiny", "threshold": [("forget_rate", 0.9)]}
    options = Options.from_values(given.get, Path("reports-here"))
    assert options.model == "tiny" and options.thresholds == (("forget_rate", 0.9),)
    assert options.reports_dir == Path("reports-here") and options.mode == "isolated" and options.alpha == 0.05
    assert options.dtype == "auto" and options.show_trace is False and options.tolerances == ()


def diagram_modules() -> dict[str, set[str]]:
    """Package -> the module names docs/architecture.md's diagram lists on that package's node."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named: dict[str, set[str]] = {}
    for package, listed in re.findall(r'\b(\w+)\["\1/ — ([^"]*)"\]', text):
        without_notes = re.sub(r"\([^)]*\)", "", listed)
        named[package] = {part.strip().removesuffix(".py") for part in without_notes.split("·") if part.strip()}
    return named


def test_the_architecture_diagram_names_every_module_and_no_other() -> None:
    named = diagram_modules()
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and p.name in NOUNS):
        modules = {p.stem for p in folder.glob("*.py") if p.name != "__init__.py"}
        listed = named.get(folder.name, set())
        assert not modules - listed, f"docs/architecture.md: {folder.name}/ misses {sorted(modules - listed)}"
        assert not listed - modules, f"docs/architecture.md: {folder.name}/ names {sorted(listed - modules)}, not files"


def test_every_file_the_architecture_page_cites_exists() -> None:
    """A path must exist from the repository or package root; a bare file name somewhere in the repository."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`((?:[\w.-]+/)*[\w.-]+\.(?:py|toml|md|yml|yaml))", text))
    tracked = {p.name for folder in (PACKAGE, REPO / "fact_cases", REPO / "docs") for p in folder.rglob("*")}
    tracked |= {p.name for p in REPO.iterdir()}
    missing = [
        path
        for path in sorted(cited)
        if not ((REPO / path).exists() or (PACKAGE / path).exists() or ("/" not in path and path in tracked))
    ]
    assert not missing, f"docs/architecture.md cites files that are not in the repository: {missing}"
