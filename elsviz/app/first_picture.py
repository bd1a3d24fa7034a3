"""The app's first picture, timed as a user meets it (`python -m elsviz.bench --first-picture`).

`streamlit run app.py` is started afresh in a source tree (README's command), and as soon as it
answers, the page is opened in headless Chromium: the seconds from opening it to the first picture
drawn on the page (the first <img> of the main area, loaded: on a first visit the Lesson's first
picture, the output of its first run). Then, once that page has finished, a second tab on the same
server and browser (its runs cached, the browser's cache warm). Each server is new: nothing of the
app is imported, loaded or computed before it starts (what the app begins when it starts, its head
start, races the visit, as for a user). The 1-minute load average is noted with every row: on a
shared machine other work slows all of it.

Needs the source tree (app.py), Playwright and Debian's chromium (requirements-dev.txt); no network.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import ElsvizError

# True once the page's first picture is drawn: the first image of the main area (not the sidebar) has loaded
FIRST_PICTURE = """() => { const i = document.querySelector('[data-testid="stMain"] [data-testid="stImage"] img');
  if (document.querySelector('[data-testid="stException"]')) throw new Error('the page shows an exception');
  return !!(i && i.complete && i.naturalWidth > 0); }"""
# True once the script has finished (no "Running..." status, no progress bar)
FINISHED = """() => !document.querySelector('[data-testid="stStatusWidget"]')
                  && !document.querySelector('[data-testid="stProgress"]')"""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(root: Path, port: int, log) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(root), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    return subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until_answering(proc: subprocess.Popen, url: str, timeout_s: float = 60) -> None:
    """Wait until the Streamlit server proc answers at url (its /_stcore/health says "ok"); ElsvizError if it
    exits or does not answer within timeout_s (tests/servers.py starts the tests' servers with it too)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() > deadline:
            raise ElsvizError(f"the server did not start on {url} (exit code {proc.poll()})")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server still running: terminate, then kill after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _open(context, url: str, timeout_s: float) -> tuple:
    """(page, seconds from opening url to its first picture)."""
    page = context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(FIRST_PICTURE, polling=50)
    return page, time.perf_counter() - start


def time_first_picture(root: Path, browser, path: str = "/", open_after: float = 0.0, timeout_s: float = 600) -> dict:
    """One fresh server of the tree at root: {server_s (start to answering), first_s (its first visit,
    from opening the page to the first picture), first_from_start_s (from starting the server), done_s
    (the first visit's page finished), second_s (a second tab, after that), load (1-minute average at
    the start)}. open_after: seconds between the server answering and the page being opened (0: at once;
    a person reads the address first)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    row = {"load": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = _serve(root, port, log)
        try:
            wait_until_answering(proc, url)
            row["server_s"] = time.perf_counter() - start
            time.sleep(open_after)
            context = browser.new_context(viewport={"width": 1440, "height": 1200})
            page, row["first_s"] = _open(context, url + path, timeout_s)
            row["first_from_start_s"] = time.perf_counter() - start
            page.wait_for_timeout(300)
            page.wait_for_function(FINISHED, polling=100)
            row["done_s"] = time.perf_counter() - start - row["server_s"]
            second, row["second_s"] = _open(context, url + path, timeout_s)
            context.close()
        finally:
            stop(proc)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def launch(playwright):
    """Debian's headless chromium through Playwright (ElsvizError where it is missing)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise ElsvizError("the first-picture benchmark drives Debian's chromium: apt-get install chromium.")
    return playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)


def run(trees: dict[str, Path], runs: int = 3, path: str = "/", open_after: float = 0.0) -> dict[str, list[dict]]:
    """`runs` fresh servers of each tree ({label: source tree}), the trees alternated (so that both
    meet the same load); prints a row per server and the medians. open_after: see time_first_picture."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise ElsvizError("the first-picture benchmark needs Playwright: pip install -r requirements-dev.txt.") from exc
    for label, root in trees.items():
        if not (root / "app.py").exists():
            raise ElsvizError(f"{root} has no app.py: --first-picture times the app of a source tree.")
    rows: dict[str, list[dict]] = {label: [] for label in trees}
    if open_after:
        print(f"each page opened {open_after:g} s after its server answered")
    print(f"{'tree':<12} {'load':>5} {'server up':>10} {'first picture':>14} {'from start':>11} "
          f"{'page done':>10} {'second tab':>11}")
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            for _ in range(runs):
                for label, root in trees.items():
                    r = time_first_picture(root, browser, path, open_after)
                    rows[label].append(r)
                    print(f"{label:<12} {r['load']:>5.1f} {r['server_s']:>9.2f}s {r['first_s']:>13.2f}s "
                          f"{r['first_from_start_s']:>10.2f}s {r['done_s']:>9.2f}s {r['second_s']:>10.2f}s", flush=True)
        finally:
            browser.close()
    for label, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("load", "first_s", "first_from_start_s", "second_s")}
        print(f"{label}: median of {len(rs)}: first picture {med['first_s']:.2f} s after opening the page "
              f"({med['first_from_start_s']:.2f} s after starting the server), second tab {med['second_s']:.2f} s; "
              f"load {med['load']:.1f}")
    return rows
