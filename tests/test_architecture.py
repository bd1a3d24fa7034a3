"""The house: no import cycles, kernels that never reach into the engine, one place that plans a
call (and docs/ENGINE.md's table says what it plans), explain in bounded memory, and a wheel that
installs and runs without the source tree."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "elsviz"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every elsviz module that `path` imports, at the top or inside functions (lazy imports
    count: a cycle through them still ties the two modules together)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("elsviz")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("elsviz"):
                continue
            for alias in node.names:  # `from . import x` imports the module x
                sub = f"{target}.{alias.name}"
                found.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                          or (ROOT / Path(*sub.split(".")) / "__init__.py").exists() else target)
    return found


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {t for t in imports_of(p) if t in mods and t != m} for m, p in mods.items()}


def test_imports_walk_the_package():
    """The walker sees what it must (else the cycle test below proves nothing)."""
    g = graph()
    assert "elsviz.engine.core" in g["elsviz.engine"]
    assert "elsviz.kernels.cpu" in g["elsviz.engine.core"]
    assert "elsviz.kernels.triton" in g["elsviz.engine.plan"]  # a lazy import, inside kernel_for


def test_no_import_cycles():
    """No module reaches itself through imports (a package's __init__ importing its own modules is
    the package's table of contents, not a cycle: edges into an __init__ from below are left out)."""
    g = graph()
    inits = {module_name(p) for p in PACKAGE.rglob("__init__.py")}

    def edges(m):
        return {t for t in g[m] if not (t in inits and m.startswith(t + "."))}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_kernels_import_nothing_of_the_engine():
    """Kernels compute what they are given: no engine state, no plans, no caches."""
    for path in (PACKAGE / "kernels").glob("*.py"):
        bad = {m for m in imports_of(path) if m.startswith(("elsviz.engine", "elsviz.ui", "elsviz.app"))}
        assert not bad, f"{path.name} imports {bad}"


def test_no_private_name_crosses_a_module():
    """What two modules share is public in one of them."""
    crossings = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("elsviz")):
                crossings += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossings, crossings


# -- the plan, and docs/ENGINE.md's table of it ---------------------------------------------------
def engine_table() -> dict[str, tuple[str, str]]:
    """docs/ENGINE.md's "Which path runs where": {device row: (big classes, small classes)}."""
    text = (ROOT / "docs" / "ENGINE.md").read_text()
    section = text.split("## Which path runs where", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r][1:]
    return {cells[0]: (cells[1], cells[2]) for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}


def cells(plan) -> tuple[str, str]:
    """(big, small) as 'path / kernel': the one-class group with the most pixels, and the others."""
    big = max(plan.steps, key=lambda s: s.pix.shape[1])
    small = {f"{s.path} / {s.kernel}" for s in plan.steps if s is not big and s.path != "embedded"}
    assert len(small) == 1, small
    return f"{big.path} / {big.kernel}", small.pop()


@pytest.fixture(scope="module")
def hands():
    from elsviz import load_dataset

    return load_dataset("hands")


def test_engine_md_says_what_the_plans_do(hands, monkeypatch):
    """Every cell of the table is what Engine.plan returns for one hand at k = 7: on the CPU from
    real engines, on CUDA from the same decision function with a CUDA device."""
    from elsviz import Engine
    from elsviz.engine.plan import decide
    from elsviz.kernels import cpu as cpu_kernel

    table = engine_table()
    assert len(table) == 5, table
    x = torch.randn(1, 1, 32, 32)
    seen = {}
    for row, (big, small) in table.items():
        if row.startswith("CPU"):
            if "torch" in row:
                monkeypatch.setenv("ELSVIZ_KERNEL", "torch")
            elif cpu_kernel.library() is None:
                continue  # no compiler here: that row cannot be built
            else:
                monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)
            plan = Engine(hands, "bbels", device="cpu").plan(x, 0.5, 7)
        else:
            kernel = "torch" if "torch" in row else "triton"
            plan = decide("bbels", 7, (32, 32), tuple(hands.images.shape), 1, 1, torch.device("cuda"), kernel,
                          2**30, tensor_device="cpu", gather="key tables" not in row)
        seen[row] = cells(plan)
        assert seen[row] == (big, small), f"docs/ENGINE.md says {(big, small)} for {row!r}; the plan says:\n{plan}"


def test_a_plan_prints_what_it_does(hands):
    from elsviz import Engine

    text = str(Engine(hands, "els", device="cpu").plan(torch.randn(2, 1, 32, 32), 0.5, 5))
    assert text.startswith("plan: els, k = 5, batch 2, 1000 training images")
    assert re.search(r"\b(table|pruned)\b", text) and "why" in text


# -- explain in bounded memory ----------------------------------------------------------------------
EXPLAIN = r"""
import json, torch
from elsviz import Engine, ImageSet
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
train = ImageSet((torch.rand(20000, 1, 16, 16, generator=g) * 2 - 1).round(decimals=1))
engine = Engine(train, "els", "cpu", cache_bytes=2**30)
x = torch.randn(1, 1, 16, 16, generator=g)
def rss():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
engine.explain(x, 0.5, 7, pixel=(8, 8))          # warm: hashes and tie counts cached
open("/proc/self/clear_refs", "w").write("5")   # reset the peak resident set
before = rss()["VmRSS"]
top = engine.explain(x, 0.5, 7, pixel=(8, 8))
print(json.dumps({"work": rss()["VmHWM"] - before, "weight": top[0]["weight"]}))
"""


@pytest.mark.slow
def test_explain_needs_bounded_memory():
    """20,000 images at ELS k = 7: 2 M keys of 49 numbers, 390 MB as one table (the windows of every
    key at once took twice that). Streamed, the call needs a few chunks."""
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    res = subprocess.run([sys.executable, "-c", EXPLAIN], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["work"] < 96 * 2**20, f"explain used {got['work'] / 2**20:.0f} MB"


# -- the wheel --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_wheel_installs_and_runs_without_the_source_tree(tmp_path):
    """Build the wheel, install it (without its dependencies, which this environment has) into a
    folder of its own, and use it from a directory where the source tree is not on the path."""
    src = tmp_path / "src"  # a copy: setuptools builds in the tree's build/, and a stale one would leak into wheels
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".hypothesis", "assets", "out"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), "-q"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("elsviz-*.whl")
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel),
                              "-q"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target), "ELSVIZ_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "elsewhere"
    run.mkdir()
    check = ("import elsviz, elsviz.ui, elsviz.datasets, elsviz.kernels.cpu as k; "
             "print(elsviz.__file__); print(k.SOURCE.exists())")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=run, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where, source = out.stdout.split()
    assert where.startswith(str(target)), where  # the wheel's copy, not the source tree
    assert source == "True"  # the C++ kernel's source came with it
    sample = subprocess.run([sys.executable, "-m", "elsviz", "sample", "digits", "--steps", "3", "--out", str(run / "out")],
                            capture_output=True, text=True, cwd=run, env=env, timeout=600)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert (run / "out" / "final.png").stat().st_size > 0
