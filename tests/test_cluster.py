"""The Ray engine (issue 21, docs/SCALING.md): Engine(train, machine, device="ray", shards=N) gives the
single engine's results on every machine (mean within 1e-5 relative, the same source_index,
source_pos and source_count), on one local cluster shared by these tests (`ray.init(num_cpus=2)`:
each start costs seconds) and on two Ray nodes started on this machine; a killed shard is started
again and its part recomputed, or the run stops naming it; a bad address fails within seconds.

Ray is the optional extra requirements-cluster.txt, which requirements-dev.txt installs: a missing
Ray fails here rather than skipping.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from elsviz import MACHINES, ElsvizError, Engine, ImageSet, load_dataset, sample
from elsviz.schedule import alpha_sigma

ROOT = Path(__file__).resolve().parents[1]
# 301 digits: 2 shards hold 151 and 150, 3 shards 101, 100, 100
TRAIN = load_dataset("digits").subset(list(range(301)))
# Ray resources of a test shard: the session cluster's 2 CPUs hold every pool these tests keep at once
CPUS = 0.2
K = {"ls": 3, "els": 5, "bbels": 5, "pspc": 5}  # machines without k take None


@pytest.fixture(scope="session")
def cluster():
    """One local cluster for the whole session; its workers import this tree's elsviz."""
    for name in ("RAY_ADDRESS", "ELSVIZ_RAY_ADDRESS"):
        os.environ.pop(name, None)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    # the shards of TRAIN, 2 and 3 ways, held for the session: the engines of every machine over
    # TRAIN share them (each start of a shard's worker costs seconds)
    held = [Engine(TRAIN, "is", device="ray", shards=s, cpus_per_shard=CPUS) for s in (2, 3)]
    yield held
    ray.shutdown()


_SINGLE: dict = {}


def single(machine: str, train: ImageSet = TRAIN) -> Engine:
    key = (machine, id(train))
    if key not in _SINGLE:
        _SINGLE[key] = Engine(train, machine, device="cpu")
    return _SINGLE[key]


def assert_same(one, sharded, where: str) -> None:
    """The sharded posterior is the single engine's: mean within 1e-5 relative, the same sources."""
    rel = float((sharded.mean - one.mean).norm() / one.mean.norm())
    assert rel <= 1e-5, f"{where}: mean differs by {rel:.2e} relative"
    for name in ("source_index", "source_pos", "source_count"):
        a, b = getattr(one, name), getattr(sharded, name)
        assert torch.equal(a, b), f"{where}: {name} differs at {int((a != b).sum())} place(s)"
    torch.testing.assert_close(sharded.source_weight, one.source_weight, rtol=1e-4, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(sharded.entropy, one.entropy, rtol=1e-3, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("machine", list(MACHINES))
def test_sharded_is_the_single_engine(cluster, machine, shards):
    """Every machine, 2 and 3 (uneven) shards: early, middle and late t, and a conditional call."""
    eng = Engine(TRAIN, machine, device="ray", shards=shards, cpus_per_shard=CPUS)
    assert eng.shards == shards and eng.machine == machine and len(eng.placement) == shards
    k = K.get(machine)
    gen = torch.Generator().manual_seed(shards)
    for t, label in ((0.1, None), (0.5, None), (0.9, None), (0.4, 3)):
        x = torch.randn(2, 1, 16, 16, generator=gen)
        assert_same(single(machine).denoise(x, t, k, label=label), eng.denoise(x, t, k, label=label),
                    f"{machine} shards={shards} t={t} label={label}")
    assert eng.last_call["rounds"] >= 1 and eng.last_call["merge"] >= 0


def test_provenance_names_the_whole_sets_images_and_sums_ties_across_shards(cluster):
    """An image held by shard 1 is named by its index in the whole set; identical images in
    different shards count together, and the first of them is named (as one engine names it)."""
    imgs = TRAIN.images[:40].clone()
    imgs[21] = imgs[17]  # image 17 (shard 1 of 2) again in shard 1, and twice in shard 0
    imgs[30] = imgs[17]
    imgs[32] = imgs[17]
    train = ImageSet(imgs, TRAIN.labels[:40], name="copies")
    a, b = alpha_sigma(0.05)
    for j in (17, 23):
        x = (a * imgs[j] + b * 0.05 * torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(j)))[None]
        for machine in ("is", "nearest"):
            eng = Engine(train, machine, device="ray", shards=2, cpus_per_shard=CPUS)
            post = eng.denoise(x, 0.05)
            assert int(post.source_index[0, 0, 0]) == j, machine
            assert int(post.source_count[0, 0, 0]) == (4 if j == 17 else 1), machine
            assert_same(single(machine, train).denoise(x, 0.05), post, f"{machine} image {j}")


def test_shards_load_their_images_where_they_run(cluster):
    """A dataset name: each shard loads the set and keeps its part; the driver holds no pixels."""
    eng = Engine("digits", "bbels", device="ray", shards=2, cpus_per_shard=CPUS, dataset_options={"limit": 301})
    here = load_dataset("digits", limit=301)
    assert len(eng.train) == 301 and eng.train.shape == (1, 16, 16) and torch.equal(eng.train.labels, here.labels)
    with pytest.raises(ElsvizError, match="stay on the cluster"):
        eng.train.images
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    assert_same(Engine(here, "bbels", device="cpu").denoise(x, 0.3, 5), eng.denoise(x, 0.3, 5), "loaded")
    traj = sample(eng, steps=3, k=5, seed=2)  # sample() takes the size from eng.train
    assert traj.final.shape == (1, 1, 16, 16)


def test_a_killed_shard_is_started_again_and_its_part_recomputed(cluster):
    """Killed between two steps of a run, and killed while a call is in flight: the run goes on,
    with the single engine's numbers."""
    eng = Engine(TRAIN, "bbels", device="ray", shards=2, cpus_per_shard=CPUS)
    pids = [p["pid"] for p in eng.placement]

    def kill(frame):
        if frame.i == 3:
            ray.kill(eng.actors[1])

    traj = sample(eng, steps=5, k=5, seed=1, callback=kill)
    want = sample(single("bbels"), steps=5, k=5, seed=1)
    assert eng.placement[1]["pid"] != pids[1] and eng.placement[0]["pid"] == pids[0]
    for got, ref in zip(traj.frames, want.frames):
        assert_same(ref, got, f"step {got.i}")
    x = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    timer = threading.Timer(0.3, lambda: ray.kill(eng.actors[0]))
    timer.start()
    post = eng.denoise(x, 0.5, 7)
    timer.join()
    assert_same(single("bbels").denoise(x, 0.5, 7), post, "killed in flight")


def test_a_shard_that_dies_beyond_its_restarts_stops_the_run_naming_it(cluster):
    eng = Engine(TRAIN, "is", device="ray", shards=2, cpus_per_shard=CPUS, restarts=0)
    pid = eng.placement[1]["pid"]
    ray.kill(eng.actors[1])
    with pytest.raises(ElsvizError, match=rf"shard 1 of 2 \(Ray worker pid {pid} on [\d.]+\) died"):
        eng.denoise(torch.randn(1, 1, 16, 16), 0.5)
    eng.close()
    with pytest.raises(ElsvizError, match="closed"):
        eng.denoise(torch.randn(1, 1, 16, 16), 0.5)


def test_a_remote_call_past_its_timeout_stops_with_a_message(cluster):
    eng = Engine(TRAIN, "els", device="ray", shards=2, cpus_per_shard=CPUS, restarts=2, timeout=1.0)
    x = torch.randn(512, 1, 16, 16)  # ELS at k = 9: 128 images took 2.2 s on one core here (AVX2), so ~4 s a shard
    try:
        with pytest.raises(ElsvizError, match=r"did not answer \(stats\) within 1 s"):
            eng.denoise(x, 0.5, 9)
    finally:
        eng.close()  # the shards stop computing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bad_address_fails_within_seconds(cluster, monkeypatch):
    port = free_port()  # nothing listens there
    for setting in ("argument", "environment"):
        start = time.monotonic()
        with pytest.raises(ElsvizError, match=rf"No Ray cluster answers at 127\.0\.0\.1:{port}"):
            if setting == "argument":
                Engine(TRAIN, "is", device="ray", address=f"127.0.0.1:{port}")
            else:
                monkeypatch.setenv("ELSVIZ_RAY_ADDRESS", f"127.0.0.1:{port}")
                Engine(TRAIN, "is", device="ray")
        assert time.monotonic() - start < 10
    monkeypatch.delenv("ELSVIZ_RAY_ADDRESS")
    with socket.socket() as srv:  # something that is not a Ray head answers
        srv.bind(("127.0.0.1", 0))
        srv.listen()

        def answer():
            conn, _ = srv.accept()
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(ElsvizError, match="not a Ray cluster's head"):
            Engine(TRAIN, "is", device="ray", address=f"127.0.0.1:{srv.getsockname()[1]}")
    with pytest.raises(ElsvizError, match="not host:port"):
        Engine(TRAIN, "is", device="ray", address="nowhere")


def test_ray_settings_are_refused_without_ray_and_shards_are_checked(cluster):
    with pytest.raises(ElsvizError, match="device='ray'"):
        Engine(TRAIN, "is", device="cpu", shards=2)
    with pytest.raises(ElsvizError, match="shards"):
        Engine(TRAIN, "is", device="ray", shards=0)
    with pytest.raises(ElsvizError, match="threshold= is a setting of the pca"):
        Engine(TRAIN, "is", device="ray", threshold=0.1)


TWO_NODES = textwrap.dedent("""
    import json, torch
    from elsviz import Engine, load_dataset, sample
    train = load_dataset("digits").subset(list(range(301)))
    out = {}
    for machine in ("bbels", "pca"):
        eng = Engine(train, machine, device="ray", shards=2)
        one = Engine(train, machine, device="cpu")
        got, want = sample(eng, steps=4, k=5, seed=3), sample(one, steps=4, k=5, seed=3)
        out[machine] = {
            "nodes": len({p["node"] for p in eng.placement}),
            "rel": max(float((g.mean - w.mean).norm() / w.mean.norm()) for g, w in zip(got.frames, want.frames)),
            "same_sources": all(torch.equal(g.source_index, w.source_index) and torch.equal(g.source_count, w.source_count)
                                for g, w in zip(got.frames, want.frames)),
            "where": eng.describe()}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_two_ray_nodes_on_this_machine():
    """`ray start --head` and a second `ray start --address` (one CPU each), a driver in its own
    process (this one holds the session's cluster): one shard per node, the single engine's
    numbers. The nodes' processes are ended by their ids afterwards (`ray stop` would end every
    Ray on the machine)."""
    temp = tempfile.mkdtemp(prefix="elsviz-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RAY_AUTH_MODE": "disabled"}
    for name in ("RAY_ADDRESS", "ELSVIZ_RAY_ADDRESS"):
        env.pop(name, None)
    cli = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([*cli, "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([*cli, f"--address=127.0.0.1:{port}"], env=env, check=True, capture_output=True, timeout=120)
        run = subprocess.run([sys.executable, "-c", TWO_NODES], env={**env, "ELSVIZ_RAY_ADDRESS": f"127.0.0.1:{port}"},
                             capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        end_processes_of(temp)
        shutil.rmtree(temp, ignore_errors=True)
    for machine, r in out.items():
        assert r["nodes"] == 2, r["where"]
        assert r["rel"] <= 1e-5 and r["same_sources"], (machine, r)
        assert "2 shards on 2 nodes" in r["where"]


def end_processes_of(temp: str) -> None:
    """End the Ray processes started with this temp folder (every one names it in its arguments)."""
    def ours():
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if temp.encode() in (proc / "cmdline").read_bytes():
                        pids.append(int(proc.name))
                except OSError:
                    pass
        return pids

    for sig in (15, 9):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while ours() and time.monotonic() < deadline:
            time.sleep(0.2)


def test_import_elsviz_needs_no_ray_and_device_ray_says_how_to_install_it():
    code = textwrap.dedent("""
        import sys
        import elsviz
        assert "ray" not in sys.modules, "import elsviz imported ray"
        sys.modules["ray"] = None  # as if Ray were not installed
        try:
            elsviz.Engine(elsviz.load_dataset("digits", limit=10), "is", device="ray")
        except elsviz.ElsvizError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "pip install elsviz[cluster]" in run.stdout


def test_the_command_line_samples_on_the_cluster(cluster, tmp_path, capsys):
    from elsviz.cli import main

    out = tmp_path / "run"
    assert main(["sample", "digits", "-O", "limit=120", "--ray", "--shards", "2", "--steps", "3", "--k", "5",
                 "-o", str(out)]) == 0
    assert (out / "final.png").is_file() and (out / "provenance.png").is_file()
    assert "runs on: Ray cluster at" in capsys.readouterr().err
    assert main(["sample", "digits", "--shards", "2", "-o", str(tmp_path / "other")]) == 1
    assert "--shards splits the training set over a Ray cluster" in capsys.readouterr().err


def test_the_app_runs_on_the_cluster_and_says_where(cluster, monkeypatch):
    """With ELSVIZ_RAY_ADDRESS set the app's engines are Ray engines, and the sidebar says where they run."""
    from streamlit.testing.v1 import AppTest

    from elsviz.ui import data
    from elsviz.ui.runs import _worker

    monkeypatch.setenv("ELSVIZ_RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    data.engine.clear()  # engines of other tests in this process were made without it
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        for key, value in {"limit": 120, "steps": 3, "loc_mode": "one k"}.items():
            at.session_state[key] = value
        at.switch_page("app_pages/reverse_diffusion.py")
        at.run()
        assert not at.exception, at.exception
        captions = "\n".join(c.value for c in at.sidebar.caption)
        assert "Runs on: Ray cluster at" in captions and "shards on 1 node" in captions, captions
        result = at.session_state["_last_result"]
        assert result.engine.describe() in captions and result.traj.final.shape[-2:] == (16, 16)
    finally:
        assert _worker().idle(timeout=300)  # the live-k worker's neighbouring runs, done before the cluster goes
        data.engine.clear()
