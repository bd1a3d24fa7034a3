"""A real app server for the tests that need one (browser, idle CPU, `elsviz app`).

    with running([sys.executable, "-m", "streamlit", "run", "app.py", ...], cwd=ROOT, port=port,
                 log=tmp / "server.log") as proc:
        ...  # http://127.0.0.1:{port} answers

The server's output goes to a log file (a pipe that nobody reads would block a chatty server)
and is shown when it does not start. On leaving, a server still running is stopped (terminate,
then kill); a test that stops it itself (Ctrl-C) finds it stopped.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

from elsviz.app.first_picture import stop, wait_until_answering
from elsviz.errors import ElsvizError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


@contextlib.contextmanager
def running(args: list[str], *, cwd, port: int, log: Path, timeout_s: float = 60, **popen):
    """Start `args`, wait until http://127.0.0.1:port/_stcore/health answers "ok", yield the process."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, **popen)
        try:
            try:
                wait_until_answering(proc, url, timeout_s)
            except ElsvizError as err:
                raise AssertionError(f"{err}:\n{log_tail(log)}") from None
            yield proc
        finally:
            stop(proc)
