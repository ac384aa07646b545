"""The prepared GPU command (``benchmarks/gpu_check.sh``) kept runnable on a CPU-only
machine: a device is lent to few sessions, for 15 minutes, and a flag renamed or a
helper moved since the script was written would spend a run on a traceback. Its
benchmark command lines parse against the benchmarks' own options, and its inline
checks compile and name only modules, functions and attributes that exist."""

import ast
import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = (ROOT / "benchmarks" / "gpu_check.sh").read_text()


def benchmark_lines() -> list[list[str]]:
    """Each ``python3 benchmarks/X.py ...`` command of the script, its continued lines
    joined, ``$OUT`` given a value: [script, arg, ...]."""
    joined = SCRIPT.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        match = re.search(r"python3 (benchmarks/\w+\.py)(.*)$", line)
        if match:
            found.append([match.group(1), *shlex.split(match.group(2).replace("$OUT", "/tmp/out"))])
    return found


LINES = benchmark_lines()

# Runs each benchmark's own argument parsing and stops there (before any model is
# built), every line in one process: the benchmarks' imports (torch, the models) are
# paid once, not once a line (~8 s each). Each line sees the import path `python3
# benchmarks/X.py` gives (its folder first, not the repo's root), and none of the
# modules of benchmarks/ or tests/ an earlier line imported. Its last line: a verdict
# per line, as JSON.
PARSE_ONLY = """
import argparse, contextlib, io, json, os, runpy, sys
parse = argparse.ArgumentParser.parse_args
class Parsed(Exception):
    pass
def parse_and_stop(self, args=None, namespace=None):
    parse(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_and_stop
path, ours = sys.path[1:], tuple(os.path.abspath(d) + os.sep for d in ("benchmarks", "tests"))
verdicts = []
for line in json.loads(sys.argv[1]):
    sys.path[:] = [os.path.dirname(os.path.abspath(line[0])), *path]
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(ours):
            del sys.modules[name]
    sys.argv, said = line, io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            runpy.run_path(line[0], run_name="__main__")
        verdicts.append("never parsed its options")
    except Parsed:
        verdicts.append("parsed")
    except BaseException as error:  # argparse's exit 2, or the script's own failure
        verdicts.append((said.getvalue().strip().splitlines() or [repr(error)])[-1])
print(json.dumps(verdicts))
"""


def test_the_script_runs_the_benchmarks_it_names():
    scripts = {line[0] for line in LINES}
    assert {"benchmarks/index_throughput.py", "benchmarks/gpu_profile.py", "benchmarks/sam_levers.py"} <= scripts
    assert all((ROOT / script).is_file() for script in scripts)


def test_each_benchmark_line_parses():
    """Each line's options parse; a line with an option its benchmark lacks (added here)
    is caught, with argparse's words."""
    wrong = [LINES[0][0], "--no-such-option"]
    done = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, json.dumps([*LINES, wrong])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    *verdicts, caught = json.loads(done.stdout.splitlines()[-1])
    assert len(verdicts) == len(LINES) >= 6
    failed = {" ".join(line): verdict for line, verdict in zip(LINES, verdicts, strict=True) if verdict != "parsed"}
    assert not failed, failed
    assert "unrecognized arguments: --no-such-option" in caught, caught


def inline_checks() -> list[str]:
    """The Python the script runs in line: each ``python3 - <<'PY'`` document and each
    ``python3 -c "..."``."""
    documents = re.findall(r"python3 - <<'PY'\n(.*?)\nPY\n", SCRIPT, re.S)
    documents += re.findall(r'python3 -c "\n(.*?)\n"', SCRIPT, re.S)
    return documents


def test_the_inline_checks_compile_and_name_what_exists():
    """Each ``from M import N`` and each ``module.name`` of an imported module of the
    project (or of benchmarks/) resolves; the CUDA work itself is the GPU's to run."""
    documents = inline_checks()
    assert len(documents) >= 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        missing = []
        for source in documents:
            tree = ast.parse(source)  # a syntax error fails here
            modules: dict[str, object] = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and _ours(node.module):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        value = getattr(module, alias.name, None)
                        if value is None:
                            try:
                                value = importlib.import_module(f"{node.module}.{alias.name}")
                            except ImportError:
                                missing.append(f"{node.module}.{alias.name}")
                                continue
                        modules[alias.asname or alias.name] = value
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if _ours(alias.name):
                            modules[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    owner = modules.get(node.value.id)
                    if owner is not None and type(owner).__name__ == "module" and not hasattr(owner, node.attr):
                        missing.append(f"{node.value.id}.{node.attr}")
        assert not missing, f"gpu_check.sh names what is not there: {', '.join(sorted(set(missing)))}"
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _ours(module: str) -> bool:
    top = module.split(".")[0]
    return top in ("usesearch", "tests") or (ROOT / "benchmarks" / f"{top}.py").is_file()


@pytest.mark.parametrize("call", [[], ["mid"]])
def test_a_spent_budget_skips_each_step_and_names_it(tmp_path, call):
    """The call's time is the session's device time: a step that cannot fit what is left
    of the budget is skipped and named (exit 3), not started to be cut off mid-way."""
    steps = re.findall(r"^\s*step (\S+) \d+ ", SCRIPT, re.M)
    mid = SCRIPT.index('if [ "${1:-}" = mid ]; then\n')
    wanted = [s for s in steps if (s in SCRIPT[mid : SCRIPT.index("finish", mid)]) == bool(call) or s == "gpu.txt"]
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "BUDGET": "0", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["sh", "benchmarks/gpu_check.sh", *call], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    skipped = re.findall(r"^SKIPPED: (\S+) ", done.stdout, re.M)
    assert done.returncode == 3 and skipped == wanted and len(wanted) >= 3, (done.stdout, done.stderr)
    assert "none failed; skipped (budget): " + " ".join(wanted) in done.stdout
    assert list((tmp_path / "out").iterdir()) == []  # no step started


def test_a_step_stopped_at_a_limit_the_budget_cut_is_named_cut_not_failed(tmp_path):
    """A step given less than its own limit (what was left of the budget) and stopped
    there was counted a failure, though the step itself may be sound."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho card\n")
    (bin_dir / "python3").write_text("#!/bin/sh\nsleep 30\n")  # every Python step outlasts the budget
    for tool in ("nvidia-smi", "python3"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(tmp_path / "out"), "BUDGET": "3", "LEAST": "1"}
    done = subprocess.run(
        ["sh", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert re.search(r"^CUT: imports\.txt \(its [123] s were what was left of the budget\)$", done.stdout, re.M)
    assert "FAILED" not in done.stdout and "skipped (budget): imports.txt(cut) checks.txt" in done.stdout
