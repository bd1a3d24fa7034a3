"""`elsviz fetch` against a local HTTP server on 127.0.0.1 serving files the tests make. No internet."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from elsviz import ElsvizError, load_dataset
from elsviz.cli.commands import main
from elsviz.datasets.fetch import REMOTES, Remote, fetch


def idx_gz(arr: np.ndarray) -> bytes:
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    return gzip.compress(raw, mtime=0)


def mnist_files(n=10) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte.gz": idx_gz(np.arange(n, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx_gz(np.array([3, 1, 4, 1], np.uint8)),
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """Serves {name: bytes} at http://127.0.0.1:PORT/NAME; `mode` may corrupt or cut off the bodies."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.mode, self.requests = dict(files), "ok", []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                name = self.path.lstrip("/")
                outer.requests.append(name)
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                if outer.mode == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.mode == "cut":  # the connection drops half-way
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served():
    files = mnist_files()
    with Server(files) as server:
        yield server, files


def names_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_fetch_downloads_verifies_and_loads(tmp_path, served):
    server, files = served
    folder = fetch("mnist", tmp_path / "mnist", base_url=server.url,
                   checksums={k: sha(v) for k, v in files.items()})
    assert names_in(folder) == set(files)  # the four files, no temporary leftovers
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    ims = load_dataset("mnist-full", data_dir=folder)  # "mnist" alone is the built-in subset
    assert len(ims) == 10 and ims.labels.tolist() == list(range(10))
    assert load_dataset("mnist-full", data_dir=folder, split="test").labels.tolist() == [3, 1, 4, 1]


@pytest.mark.parametrize("mode, message", [
    ("corrupt", "checksum mismatch.*corrupt.*Nothing was kept"),  # wrong bytes
    ("cut", "run the same command again"),  # the connection drops half-way
])
def test_broken_download_leaves_no_file_and_a_rerun_succeeds(tmp_path, served, mode, message):
    server, files = served
    server.mode = mode
    sums = {k: sha(v) for k, v in files.items()}
    with pytest.raises(ElsvizError, match=message):
        fetch("mnist", tmp_path, base_url=server.url, checksums=sums)
    assert names_in(tmp_path) == set()  # no final file, no .part file
    server.mode = "ok"  # a rerun starts cleanly and succeeds
    fetch("mnist", tmp_path, base_url=server.url, checksums=sums)
    assert names_in(tmp_path) == set(files)


def test_leftovers_of_a_killed_run_are_cleared(tmp_path, served):
    server, files = served
    stale = tmp_path / ".train-images-idx3-ubyte.gz.abc123.part"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a file")
    fetch("mnist", tmp_path, base_url=server.url, checksums={k: sha(v) for k, v in files.items()})
    assert names_in(tmp_path) == set(files)


def test_files_already_there_are_checked_not_downloaded_again(tmp_path, served):
    server, files = served
    sums = {k: sha(v) for k, v in files.items()}
    fetch("mnist", tmp_path, base_url=server.url, checksums=sums)
    server.requests.clear()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged on disk")
    fetch("mnist", tmp_path, base_url=server.url, checksums=sums)
    assert server.requests == ["t10k-labels-idx1-ubyte.gz"]  # only the damaged file comes again
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes() == files["t10k-labels-idx1-ubyte.gz"]


def test_missing_file_on_the_server_is_an_error(tmp_path, served):
    server, files = served
    with pytest.raises(ElsvizError, match="Could not download .*nothing-here.gz"):
        fetch("mnist", tmp_path, base_url=server.url, checksums={"nothing-here.gz": "0" * 64})
    assert names_in(tmp_path) == set()


def test_size_in_the_table_is_checked(tmp_path, served, monkeypatch):
    server, files = served
    name = "train-labels-idx1-ubyte.gz"
    monkeypatch.setitem(REMOTES, "mnist", Remote("MNIST", server.url, {name: (len(files[name]) + 1, sha(files[name]))}))
    with pytest.raises(ElsvizError, match="incomplete or the server's file changed"):
        fetch("mnist", tmp_path)
    assert names_in(tmp_path) == set()


def test_cli_fetch_with_base_url(tmp_path, served, monkeypatch, capsys):
    server, files = served
    table = {k: (len(v), sha(v)) for k, v in files.items()}
    monkeypatch.setitem(REMOTES, "mnist", Remote("MNIST", "http://unused.invalid/", table))
    assert main(["fetch", "mnist", "--dir", str(tmp_path / "m"), "--base-url", server.url]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "m") and "sha256 verified" in out.err
    assert names_in(tmp_path / "m") == set(files)
    server.mode = "corrupt"
    (tmp_path / "m" / "train-images-idx3-ubyte.gz").unlink()
    assert main(["fetch", "mnist", "--dir", str(tmp_path / "m"), "--base-url", server.url]) == 1  # an error, not bad usage
    assert "checksum mismatch" in capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" not in names_in(tmp_path / "m")


def test_fetch_goes_where_load_dataset_looks(tmp_path, served, monkeypatch):
    server, files = served
    monkeypatch.setenv("ELSVIZ_DATA", str(tmp_path / "data"))
    with pytest.raises(ElsvizError, match="not downloaded yet.*elsviz fetch mnist"):
        load_dataset("mnist-full")
    fetch("mnist", base_url=server.url, checksums={k: sha(v) for k, v in files.items()})
    assert (tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert len(load_dataset("mnist-full", limit=4)) == 4
    assert len(load_dataset("mnist")) == 5000  # the built-in subset, whatever was fetched


def test_checksum_table_is_complete():
    assert set(REMOTES) == {"mnist", "fashion-mnist", "cifar10"}
    for remote in REMOTES.values():
        assert remote.base_url.startswith("https://")
        for name, (size, digest) in remote.files.items():
            assert size > 0 and re.fullmatch(r"[0-9a-f]{64}", digest), name
    assert set(REMOTES["mnist"].files) == set(REMOTES["fashion-mnist"].files) == set(mnist_files())


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(ElsvizError, match="choose one of"):
        fetch("imagenet", tmp_path)


def test_python_dash_m_elsviz_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "elsviz", "info", "digits", "-O", "limit=50"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "images:      50 x 1 x 16 x 16" in res.stdout and "CC BY 4.0" in res.stdout


def test_cli_reports_errors_in_one_line(capsys):
    assert main(["info", "no-such-set"]) == 1  # an error (exit 2 is for a command line that does not parse)
    err = capsys.readouterr().err
    assert err.startswith("elsviz info: error: 'no-such-set' is neither a built-in") and err.count("\n") == 1


def test_cli_sheet_writes_a_png(tmp_path, capsys):
    out = tmp_path / "hands.png"
    assert main(["sheet", "hands", "-O", "n=20", "-O", "fingers=4", "-o", str(out), "--zoom", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

