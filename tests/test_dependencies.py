"""The installed tree is the one constraints.txt pins (with hashes), and every package the
code imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Installer tooling in the venv, not dependencies of the project.
TOOLING = {"pip", "setuptools", "wheel", "datahub-assets"}
# Java packages reached through JPype's import hook.
JAVA = {"java", "javax", "com"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    text = (REPO / "constraints.txt").read_text()
    return {_norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)", text, re.M)}


def _requirement_name(spec: str) -> str:
    return _norm(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)[0])


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return {_requirement_name(s) for s in specs}


def test_every_pinned_distribution_is_installed_at_its_pinned_version_and_nothing_else_is():
    pins = _pins()
    assert len(pins) > 50  # the whole tree, not only the direct dependencies
    installed = {_norm(d.metadata["Name"]): d.version for d in md.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in pins.items() if installed.get(name) != version}
    assert wrong == {}, "installed tree differs from constraints.txt (run scripts/setup.sh): pinned, installed"
    unpinned = sorted(set(installed) - set(pins) - TOOLING)
    assert unpinned == [], "installed but not in constraints.txt"


def test_every_direct_dependency_is_pinned_by_the_constraints():
    assert sorted(_declared() - set(_pins())) == []


def _third_party_imports(folders: list[str]) -> dict[str, set[str]]:
    local = {p.stem for f in ("tests", "bench") for p in (REPO / f).glob("*.py")}
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in local or top in JAVA or top.startswith("datahub_"):
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared_in_pyproject():
    imports = _third_party_imports(["datahub_assets", "datahub_emulator", "datahub_dev", "tests", "bench"])
    assert {"polars", "starlette", "uvicorn", "yaml", "psycopg2", "pymysql", "dagster_slack"} <= set(imports)
    providers = md.packages_distributions()
    declared = _declared()
    undeclared = {
        module: sorted(files)[:3] for module, files in imports.items()
        if not {_norm(d) for d in providers.get(module, [module])} & declared
    }
    assert undeclared == {}
