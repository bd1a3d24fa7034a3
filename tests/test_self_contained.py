"""The repository stands on its own: nothing in it points at files outside it.

A reader on the project's page must be able to follow every reference: the theory is in
docs/THEORY.md, and no file sends anyone to a sibling folder of the clone (issue 10 found README,
docs and docstrings pointing at a mathematics page that was not part of the repository).
"""
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "out", "__pycache__", ".pytest_cache", ".benchmarks", "build"}
# written in pieces so that this file does not match itself
OUTSIDE = ["../" + "shared", "ELS" + "_MATH", "..\\" + "shared"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def repo_files() -> list[Path]:
    """The files a clone holds (tracked, or new and not ignored); every file but build output without git."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
        paths = [ROOT / p for p in out.decode().split("\0") if p]
    else:
        paths = [p for p in ROOT.rglob("*")
                 if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts) and ".egg-info" not in str(p)]
    return [p for p in paths if p.is_file()]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:4096]:
        return None  # binary (pictures)
    return data.decode("utf-8", errors="replace")


def test_nothing_refers_to_files_outside_the_repository():
    found = []
    for path in repo_files():
        text = text_of(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if any(bad in line for bad in OUTSIDE):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "references to files outside the repository (point to docs/THEORY.md instead):\n" + "\n".join(found)


def test_every_relative_markdown_link_lands_on_a_file_of_the_repository():
    files = repo_files()
    inside = {p.resolve() for p in files}
    broken = []
    for md in (p for p in files if p.suffix == ".md"):
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            dest = (md.parent / target.split("#")[0]).resolve()
            if dest not in inside and not (dest.is_dir() and dest.is_relative_to(ROOT)):
                broken.append(f"{md.relative_to(ROOT)}: ({target})")
    assert not broken, "links that leave the repository or lead nowhere:\n" + "\n".join(broken)


def test_the_theory_page_cites_the_paper():
    theory = (ROOT / "docs" / "THEORY.md").read_text()
    assert "Kamb" in theory and "Ganguli" in theory and "ICML 2025" in theory
    assert "arXiv:2412.20292" in theory
    for section in ("## Noise schedule", "## The four machines", "## The reverse process", "## Provenance",
                    "## Agreement with a network"):
        assert section in theory
    assert "docs/THEORY.md" in (ROOT / "README.md").read_text()


def test_the_app_page_says_what_the_app_opens_with():
    from elsviz.machines import MACHINE_NAMES
    from elsviz.ui.sidebar import DEFAULTS, PRESET

    app_md = (ROOT / "docs" / "APP.md").read_text()
    opening = app_md.split("\n## ", 1)[0]  # the text before the first section
    assert DEFAULTS["loc_mode"] == PRESET, "the app no longer opens on a paper schedule: update docs/APP.md"
    for said in (f"`{DEFAULTS['dataset']}`", MACHINE_NAMES[DEFAULTS["machine"]], f"`{DEFAULTS['preset']}`",
                 f"{DEFAULTS['steps']} steps", f"seed {DEFAULTS['seed']}"):
        assert said in opening, f"docs/APP.md does not say the app opens with {said}"
