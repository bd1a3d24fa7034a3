"""The core of elsviz (everything outside elsviz/ui) never imports Streamlit: scripts, the command line
and notebooks use the engine, datasets and figures without a web framework."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "elsviz"
UI = PACKAGE / "ui"
WEB = ("streamlit",)


def web_imports(path: Path) -> list[str]:
    """The Streamlit modules a source file imports (at any depth: functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in WEB]
    return found


def core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if UI not in p.parents)


def test_core_sources_do_not_import_streamlit():
    modules = core_modules()
    assert PACKAGE / "figures.py" in modules and PACKAGE / "app" / "runs.py" in modules
    offenders = {str(p.relative_to(ROOT)): web_imports(p) for p in modules if web_imports(p)}
    assert not offenders, f"move these to elsviz/ui: {offenders}"


def test_the_check_sees_streamlit_where_it_is():
    assert web_imports(UI / "sidebar.py")  # the UI layer does import it: the scan is not blind


def test_importing_the_core_loads_no_streamlit():
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in core_modules()]
    names = [n[: -len(".__init__")] if n.endswith(".__init__") else n for n in names]
    names = [n for n in names if not n.endswith("__main__")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {WEB!r})\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
