"""The `elsviz` command: exit codes, one-line errors, output files written all or none, `elsviz app`.

Exit codes: 0 done, 2 bad usage (the command line does not parse), 1 the command failed (one line
on stderr, the traceback only with --debug), 130 interrupted.
"""
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port, log_tail, running

import elsviz.cli.commands as cli
from elsviz.cli.commands import COMMANDS, build_parser, main, output_files
from elsviz.errors import ElsvizError

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["digits", "-O", "limit=20", "--steps", "3", "--k", "3", "--device", "cpu"]  # a sample run well under a second


def elsviz(*argv, cwd=None, timeout=180) -> subprocess.CompletedProcess:
    """`python -m elsviz ARGV...` in a fresh interpreter, as a shell would run it."""
    return subprocess.run([sys.executable, "-m", "elsviz", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted write would leave (hidden .partial files)."""
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name)


# -- exit codes ------------------------------------------------------------------------------------
def test_exit_codes_of_a_real_shell_run(tmp_path):
    done = elsviz("info", "digits", "-O", "limit=3")
    assert done.returncode == 0, done.stderr
    assert "images:      3 x 1 x 16 x 16" in done.stdout

    usage = elsviz("sample", "--steps", "twenty")
    assert usage.returncode == 2
    assert "usage: elsviz sample" in usage.stderr and "invalid int value: 'twenty'" in usage.stderr

    failed = elsviz("info", "no-such-set")
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("elsviz info: error: 'no-such-set' is neither a built-in set")

    debug = elsviz("--debug", "info", "no-such-set")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "ElsvizError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("elsviz info: error: 'no-such-set'")


@pytest.mark.parametrize("argv", [
    [],  # no command
    ["paint"],  # no such command
    ["info", "digits", "--bogus"],  # no such option
    ["sample", "--machine", "gan"],  # not a choice
    ["sample", "--seed", "0.5"],  # not an int
    ["sample", "--size", "16"],  # needs two numbers
    ["fetch"],  # missing argument
])
def test_a_command_line_that_does_not_parse_is_bad_usage(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: elsviz" in err


def test_help_is_not_an_error(capsys):
    assert main(["--help"]) == 0
    assert main(["sample", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--force" in out and "--debug" in out


@pytest.mark.parametrize("argv, message", [
    (["info", "no-such-set"], "'no-such-set' is neither a built-in set"),
    (["sample", *TINY[:3], "--k", "4", "--steps", "3"], "k must be an odd integer"),
    (["sample", *TINY[:3], "--steps", "1"], "steps must be an integer from 2"),
    (["sample", *TINY[:3], "--steps", "3", "--label", "12"], "No training image has label 12"),
    (["sheet", "digits", "-O", "size=0"], "size"),
])
def test_a_failed_command_says_why_in_one_line_and_exits_1(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"elsviz {argv[0]}: error: ") and err.count("\n") == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_unexpected_exception_is_one_line_too_and_the_traceback_comes_with_debug(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("the machine\nbroke")

    monkeypatch.setitem(COMMANDS, "info", COMMANDS["info"].__class__("info", "x", (), broken))
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err == "elsviz info: error: RuntimeError: the machine broke (run with --debug for the traceback)\n"
    for argv in (["--debug", "info"], ["info", "--debug"]):  # before or after the command name
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and 'raise RuntimeError("the machine' in err


def test_interrupted_is_130(monkeypatch, capsys):
    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, "info", COMMANDS["info"].__class__("info", "x", (), stopped))
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "elsviz info: interrupted\n"


# -- output files ----------------------------------------------------------------------------------
def test_sheet_refuses_an_existing_file_unless_force(tmp_path, capsys):
    out = tmp_path / "digits.png"
    out.write_bytes(b"my slides")
    assert main(["sheet", "digits", "-O", "limit=10", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists already; pass --force" in err and err.count("\n") == 1
    assert out.read_bytes() == b"my slides"
    assert main(["sheet", "digits", "-O", "limit=10", "-o", str(out), "--force"]) == 0
    assert out.read_bytes()[:8] == PNG
    assert leftovers(tmp_path) == []


def test_sample_refuses_existing_outputs_before_it_runs(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.gif").write_bytes(b"last week's run")
    assert main(["sample", *TINY, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "run.gif exists already; pass --force" in err
    assert "step" not in err  # refused before the first step
    assert sorted(p.name for p in out.iterdir()) == ["run.gif"]
    assert main(["sample", *TINY, "-o", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["final.png", "provenance.png", "run.gif"]
    assert (out / "run.gif").read_bytes()[:6] == b"GIF89a"
    assert (out / "final.png").read_bytes()[:8] == PNG == (out / "provenance.png").read_bytes()[:8]


def test_sample_mp4_without_pyav_says_how_to_get_it_before_it_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    out = tmp_path / "run"
    assert main(["sample", *TINY, "-o", str(out), "--mp4"]) == 1
    err = capsys.readouterr().err
    assert "pip install av" in err and err.count("\n") == 1 and "step" not in err  # refused before the first step
    assert not out.exists()


def test_a_sample_that_fails_half_way_leaves_no_files(tmp_path, monkeypatch, capsys):
    from elsviz import figures

    def no_gif(traj, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(figures, "animation_gif", no_gif)  # fails after final.png is written
    out = tmp_path / "new" / "run"
    assert main(["sample", *TINY, "-o", str(out)]) == 1
    assert capsys.readouterr().err.rstrip().endswith("elsviz sample: error: No space left on device")
    assert list(tmp_path.iterdir()) == []  # not even the folders made for it

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["sample", *TINY, "-o", str(kept)]) == 1
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_output_files_writes_all_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    with pytest.raises(ValueError, match="half"):
        with output_files([a, b]) as tmp:
            tmp[a].write_text("A")
            raise ValueError("half done")
    assert list(tmp_path.iterdir()) == []
    with output_files([a, str(b)]) as tmp:
        assert tmp[a].parent == a.parent and tmp[a].suffix == ".txt" and tmp[a].name.startswith(".a.txt.")
        tmp[a].write_text("A")
        tmp[b].write_text("B")
        assert not a.exists()  # only in place once the block ends
    assert a.read_text() == "A" and b.read_text() == "B"
    assert leftovers(tmp_path) == []
    with pytest.raises(ElsvizError, match="exists already; pass --force"):
        with output_files([a]):
            pass
    with pytest.raises(ElsvizError, match="is a folder"):
        with output_files([tmp_path / "sub"], force=True):
            pass
    with output_files([a], force=True) as tmp:
        tmp[a].write_text("A2")
    assert a.read_text() == "A2"


# -- the command line section of the README ----------------------------------------------------------
def test_readme_lists_every_subcommand():
    build_parser()  # imports the modules that register commands
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in COMMANDS if f"elsviz {name}" not in section]
    assert not missing, f"README's command-line section does not show: {missing}"


# -- elsviz app --------------------------------------------------------------------------------------
class FakeProcess:
    def __init__(self, cmd, code):
        self.cmd, self.code = cmd, code

    def wait(self, timeout=None):
        return self.code


def test_app_runs_streamlit_on_the_app_with_its_settings_and_passes_options_through(monkeypatch):
    started = []

    def popen(cmd, **kwargs):
        started.append(cmd)
        return FakeProcess(cmd, 3)

    monkeypatch.setattr(cli.subprocess, "Popen", popen)
    assert main(["app", "--server.port", "8502", "--server.fileWatcherType", "auto"]) == 3  # streamlit's code
    (cmd,) = started
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    assert "--server.fileWatcherType=none" in cmd and "--client.toolbarMode=viewer" in cmd
    # the user's options come last, so they win over the app's settings
    assert cmd[-4:] == ["--server.port", "8502", "--server.fileWatcherType", "auto"]


def test_app_without_its_files_says_how_to_get_them(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "elsviz" / "cli" / "commands.py"))
    assert main(["app"]) == 1
    err = capsys.readouterr().err
    assert "pip install -e ." in err and err.count("\n") == 1


@pytest.mark.slow
def test_elsviz_app_serves_the_app_from_any_folder_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    log = tmp_path.parent / f"{tmp_path.name}-server.log"  # not in tmp_path: it must stay empty
    with running([sys.executable, "-m", "elsviz", "app", "--server.port", str(port), "--server.address", "127.0.0.1"],
                 cwd=tmp_path, port=port, log=log, timeout_s=90, start_new_session=True) as proc:
        try:
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
            assert page.status == 200 and b"<title>" in page.read().lower().replace(b"<title >", b"<title>")
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
            code = proc.wait(timeout=30)
    assert code == 0, log_tail(log)
    assert list(tmp_path.iterdir()) == []  # nothing written where it was started


def test_every_option_of_every_command_says_what_it_does():
    """`elsviz COMMAND --help` explains every argument: no flag (--machine, --steps, --seed, ...) without help."""
    import argparse

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) >= {"fetch", "info", "sheet", "sample", "app", "train", "calibrate", "compare"}
    missing = []
    for name, sub in [("elsviz", parser), *subs.choices.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = (action.help or "").strip()
            if not text or text == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "arguments without help: " + ", ".join(missing)
    usage = subs.choices["sample"].format_help()
    assert "reverse-diffusion steps (default 20" in usage and "seed of the starting noise" in usage
