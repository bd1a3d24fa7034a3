"""The app is fast by default: Streamlit never watches the source tree and users get the viewer menu.

With a virtual environment inside the clone (.venv/, as README suggests), Streamlit's file watcher
overflowed its inotify queue and rescanned the tree on a full core, slowing every run 3-9x
(issue 10). tests/test_idle.py measures the effect in a real server; this file checks the settings.
"""
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".streamlit" / "config.toml"


def test_config_file_turns_the_watcher_off_and_hides_the_developer_menu():
    cfg = tomllib.loads(CONFIG.read_text())
    assert cfg["server"]["fileWatcherType"] == "none"
    assert cfg["server"]["runOnSave"] is False
    assert cfg["server"]["headless"] is True
    assert cfg["client"]["toolbarMode"] == "viewer"


def test_streamlit_reads_those_settings_when_started_from_the_repository():
    """The names are Streamlit's own (a misspelt key would be ignored silently): ask Streamlit,
    started in the repository root as `streamlit run app.py` is, what it will use."""
    probe = ("import json; from streamlit import config; config.get_config_options(force_reparse=True); "
             "print(json.dumps({k: config.get_option(k) for k in "
             "['server.fileWatcherType', 'server.runOnSave', 'client.toolbarMode', 'server.headless']}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "server.fileWatcherType": "none", "server.runOnSave": False,
        "client.toolbarMode": "viewer", "server.headless": True,
    }


@pytest.mark.parametrize("folder", [".venv", "venv"])
def test_a_virtual_environment_in_the_clone_is_ignored_by_git(folder):
    lines = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert f"{folder}/" in lines
    if shutil.which("git") and (ROOT / ".git").exists():
        probe = subprocess.run(["git", "check-ignore", "-q", f"{folder}/lib/python3.11/site-packages/x.py"], cwd=ROOT)
        assert probe.returncode == 0, f"git does not ignore {folder}/"
