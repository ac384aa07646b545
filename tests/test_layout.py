"""The layers the folders show hold in the code: which package may import which, no
circle of imports, and an installed wheel that adds one top-level name.

The imports are read from the source (every ``import`` and ``from ... import``,
inside functions too), so a lazy import cannot hide an arrow that runs back up."""

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "usesearch"
STAGES = ("indexer", "curation", "training")
# What each layer must not import. The core (models, masks, io, tasks and the modules
# at the package's top) knows no stage and no CLI; a stage knows no CLI and no other
# stage, except that training reads curation's dataset format.
FORBIDDEN = {
    "core": {"cli", *STAGES},
    "indexer": {"cli", "curation", "training"},
    "curation": {"cli", "indexer", "training"},
    "training": {"cli", "indexer"},
    "cli": set(),
}


def modules() -> dict[str, Path]:
    found = {}
    for folder, _, names in os.walk(PACKAGE, followlinks=True):  # the stages are links under usesearch/
        for name in names:
            if name.endswith(".py"):
                parts = list((Path(folder) / name).relative_to(ROOT).with_suffix("").parts)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = Path(folder) / name
    return found


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """The project's modules that ``name`` imports (a ``from pkg import sub`` names the
    submodule, not the package it is read from)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (*STAGES, "cli") else "core"


def test_the_package_is_read_whole():
    # The walk follows the stage links and finds each layer, so the rules below bite.
    assert {layer(m) for m in MODULES} == {"core", "cli", *STAGES}
    assert {"usesearch.indexer.pipeline", "usesearch.cli.options", "usesearch.models.model"} <= set(MODULES)


@pytest.mark.parametrize("low", sorted(FORBIDDEN))
def test_no_arrow_runs_back_up(low):
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        if layer(m) == low and m != "usesearch.__main__"
        for d in deps
        if layer(d) in FORBIDDEN[low]
    )
    assert not wrong


def test_cli_command_modules_import_only_the_shared_options():
    # options.py offers what spellings.py holds (the old spellings' machinery), paths.py (the
    # checks of paths a command writes), failures.py (the consoles, the one-line error rule) and
    # checks.py (a preset's and a device's spelling, checked as the command line is read),
    # sam_options.py SAM's flags built with both, photo_limits.py the flags of how large a photo is
    # read, eval_report.py an evaluation's report and walk built on options, search_output.py what a
    # search gives (its files, the hits, the notes) built on options, index_output.py what index and
    # prune print, built on options and photo_limits, class_lists.py the class lists segment and
    # eval take; nothing else in cli/ is shared.
    shared = {
        "usesearch.cli.options": {
            "usesearch.cli.spellings",
            "usesearch.cli.paths",
            "usesearch.cli.failures",
            "usesearch.cli.checks",
        },
        "usesearch.cli.spellings": set(),
        "usesearch.cli.checks": set(),
        "usesearch.cli.paths": set(),
        "usesearch.cli.failures": set(),
        "usesearch.cli.sam_options": {"usesearch.cli.options", "usesearch.cli.spellings"},
        "usesearch.cli.eval_report": {"usesearch.cli.options"},
        "usesearch.cli.photo_limits": {"usesearch.cli.options"},
        "usesearch.cli.search_output": {"usesearch.cli.options"},
        "usesearch.cli.index_output": {"usesearch.cli.options", "usesearch.cli.photo_limits"},
        "usesearch.cli.class_lists": set(),
    }
    commands_import = {
        "usesearch.cli.options",
        "usesearch.cli.sam_options",
        "usesearch.cli.eval_report",
        "usesearch.cli.photo_limits",
        "usesearch.cli.search_output",
        "usesearch.cli.index_output",
        "usesearch.cli.class_lists",
    }
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        if layer(m) == "cli" and m not in ("usesearch.cli", "usesearch.cli.app")
        for d in deps
        if layer(d) == "cli" and d not in shared.get(m, commands_import)
    )
    assert not wrong


def test_no_circle_of_imports():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles


def test_a_built_wheel_installs_one_top_level_name_with_its_data(tmp_path):
    # The stage folders at the repository's top install as usesearch.indexer etc.
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, str(ROOT), "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("usesearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"usesearch", wheel.name.split("-py3")[0] + ".dist-info"}
    for expected in (
        "usesearch/indexer/pipeline.py",
        "usesearch/curation/pipeline.py",
        "usesearch/training/train.py",
        "usesearch/indexer/web/static/index.html",
        "usesearch/models/model_configs/usesearch-tiny-clip.json",
        "usesearch/tasks/data/coco_stuff_91.txt",
    ):
        assert expected in names


def layout_rows() -> dict[str, str]:
    """The README's layout table: folder -> what the row says of it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n") : text.index("## Benchmarks\n")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) == 3:
            rows[cells[0].strip("`")] = cells[2]
    return rows


def test_the_readme_layout_names_every_module_where_it_is():
    rows = layout_rows()
    assert {"usesearch/cli/", "indexer/", "curation/", "training/", "usesearch/models/", "usesearch/"} <= set(rows)
    for folder, said in rows.items():
        path = ROOT / folder
        files = path.glob("*.py") if folder == "usesearch/" else path.rglob("*.py")
        actual = {f.name for f in files if f.name not in ("__init__.py", "__main__.py")}
        named = set(re.findall(r"`([\w/]+\.py)`", said)) - {"__init__.py"}
        assert named == actual, folder


@pytest.mark.parametrize("package", ["usesearch", "usesearch.indexer"])
def test_every_public_name_of_a_lazy_package_loads(package):
    """The packages load their public names on first use (PEP 562): each one listed
    must load, and be the object of the module that defines it."""
    import importlib

    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        value = getattr(module, name)
        assert getattr(value, "__name__", name) == name or not callable(value), (package, name)
