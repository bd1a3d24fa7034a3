"""Time estimates (runs.Estimator: the work a run implies, per path of the engine, at this machine's
pace), the question before a long run and its subset offer, the time left during a run, and live k:
the neighbouring k computed in the background (elsviz.app.worker.Worker).

The estimates are checked against runs timed with the real engine on the two 2-core CPUs this project has
run on, each with the costs of its vector width (tests/estimate_timings.json: AVX-512;
tests/estimate_timings_avx2.json: AVX2 only; written by `python -m elsviz.bench --estimates --record`;
conditions and the machines in docs/BENCHMARKS.md, "Estimates"): no timing happens here."""
import json
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from elsviz import Engine, ImageSet, load_dataset
from elsviz.bench import case_costs, case_name
from elsviz.app.runs import (ASK_S, COSTS, MIN_SUBSET, Estimator, RunSpec, Workload, class_groups, distinct_share, left_text,
                         needs_confirmation, neighbour_ks, run_ks, run_ts, subset_offer, time_left, workload)
from elsviz.app.worker import Job, Worker
from tests.test_app import app, ok

FILES = {path.name: json.loads(path.read_text()) for path in sorted(Path(__file__).parent.glob("estimate_timings*.json"))}


def costs_of(timings: dict) -> list:
    """[(recorded case, the Estimator's cost of each of its runs, in order)], with the costs of the file's CPU;
    without the cases the engine no longer runs as recorded (marked "stale", with why)."""
    return [(entry, [sum(steps) for steps in case_costs(entry, Estimator(COSTS[timings["costs"]]))])
            for entry in timings["cases"] if not entry.get("stale")]


def test_only_one_recorded_case_is_stale():
    """hands/bbels/mnist-resnet on the AVX-512 CPU: its warm runs found every k's tables because the cache then
    counted a KeySet as 64 bytes; the same runs rebuild them now (measured on the AVX2 CPU: warm 23.8 s of CPU
    as cold 23.9 s), and the estimate says so."""
    stale = [(name, case_name(e["case"])) for name, t in FILES.items() for e in t["cases"] if e.get("stale")]
    assert stale == [("estimate_timings.json", "hands/bbels/mnist-resnet")]


@pytest.fixture(scope="module", params=sorted(FILES))
def recorded(request):
    """Each recorded file's cases with their costs (computed once per file)."""
    return costs_of(FILES[request.param])


def test_both_cpus_were_recorded():
    assert sorted(t["costs"] for t in FILES.values()) == ["cpu-avx2", "cpu-avx512"]


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_recorded_runs_cover_the_three_sets_every_machine_cold_and_warm(name):
    cases = FILES[name]["cases"]
    names = [case_name(e["case"]) for e in cases]
    for needed in ("digits/bbels/mnist-resnet", "hands/bbels/k=5", "photos/bbels/k=5", "photos/bbels/mnist-resnet",
                   "digits/els", "hands/els", "photos/els", "/ls/", "/is/", "batch 16", "photos 300", "/torch"):
        assert any(needed in n for n in names), needed
    assert all(e["runs"][0]["cold"] and len(e["runs"]) >= 3 and not any(r["cold"] for r in e["runs"][1:])
               for e in cases)


def test_every_recorded_run_is_estimated_within_1_5x_of_its_time(recorded):
    """Before it runs, from its work alone: the first run on a fresh engine (cold: every key table built) and
    the median of the warm ones, against the CPU seconds they took (one thread: what they take on a quiet
    machine). Runs under half a second only need to be within a quarter of a second."""
    off = []
    for entry, costs in recorded:
        runs = entry["runs"]
        pairs = {"cold": (costs[0], runs[0]["cpu"]),
                 "warm": (statistics.median(costs[1:]), statistics.median(r["cpu"] for r in runs[1:]))}
        for when, (estimate, took) in pairs.items():
            if took < 0.5 and abs(estimate - took) < 0.25:
                continue
            if not 1 / 1.5 <= estimate / took <= 1.5:
                off.append(f"{case_name(entry['case'])} {when}: estimated {estimate:.2f} s, took {took:.2f} s")
    assert not off, off


def test_the_pace_carries_the_estimates_to_a_busy_machine():
    """The app's estimate is the cost times the pace of the runs before it (wall-clock over cost). Fed the
    runs recorded on the AVX-512 CPU in the order they ran, on a machine whose other work came and went
    (wall-clock up to 4.5x the CPU time), it is within 1.5x of the wall-clock time for at least 80% of the
    runs (83% recorded), more often than the cost alone (a quiet machine; 67%)."""
    est, paced, alone = Estimator(COSTS["cpu-avx512"]), [], []
    for entry, costs in costs_of(FILES["estimate_timings.json"]):
        case = entry["case"]
        work = Workload(case_name(case), case["machine"], family=case["set"])
        for run, cost in zip(entry["runs"], costs):
            if run["wall"] >= 0.5:
                paced.append(cost * est.pace(work) / run["wall"])
                alone.append(cost / run["wall"])
            est.record_total(work, [], [], run["wall"], cost=cost)
    within = lambda ratios: sum(1 / 1.5 <= r <= 1.5 for r in ratios) / len(ratios)  # noqa: E731
    assert within(paced) >= 0.8 and within(paced) >= within(alone) + 0.1, (within(paced), within(alone))


def test_the_work_follows_the_engines_classes_and_paths():
    """The cost counts the classes the engine makes (bbELS's border bands and corners, ELS's one class, LS's
    one per pixel), at the training size and another output size."""
    from elsviz import engine as eng

    classes = getattr(eng, "_classes", None)
    if classes is None:
        pytest.skip("the engine no longer lists its classes (elsviz.engine._classes)")
    for machine, k, out in [("bbels", 1, (16, 16)), ("bbels", 5, (16, 16)), ("bbels", 15, (16, 16)),
                            ("bbels", 5, (20, 24)), ("bbels", 7, (10, 12)), ("els", 5, (16, 16)),
                            ("els", 9, (24, 20)), ("ls", 5, (16, 16))]:
        made: dict = {}
        for pix, pos in classes(machine, k, *out, 16, 16):
            if pos:
                made[(len(pix), len(pos))] = made.get((len(pix), len(pos)), 0) + 1
        assert {(p, s): g for g, p, s in class_groups(machine, k, (1, 16, 16), out)} == made, (machine, k, out)


def small_set(n=60, size=16, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.rand(n, channels, size, size, generator=g).round() * 2 - 1)  # silhouettes: windows repeat


def test_cold_runs_build_key_tables_and_warm_runs_find_them():
    train = small_set()
    engine = Engine(train, "bbels", "cpu")
    est, w = Estimator(), workload(engine, "set", family="set")
    spec = RunSpec("bbels", 5, steps=20)
    cold = est.cost(w, run_ks(spec), run_ts(spec), engine)
    assert est.cost(w, run_ks(spec), run_ts(spec), engine) == cold  # estimating builds nothing
    est.record(w, [(k, t, 0.01) for k, t in zip(run_ks(spec), run_ts(spec))], engine)  # it ran: tables kept
    warm = est.cost(w, run_ks(spec), run_ts(spec), engine)
    assert sum(warm) < sum(cold) and warm[0] < cold[0] and warm[1:] == cold[1:]  # only the first step built them
    assert est.cost(w, run_ks(spec), run_ts(spec), Engine(train, "bbels", "cpu"))[0] == cold[0]  # another engine: cold
    other = RunSpec("bbels", 7, steps=20)
    assert est.cost(w, run_ks(other), run_ts(other), engine)[0] > est.cost(w, run_ks(other), run_ts(other), engine)[1]
    # tables larger than the cache are built at every step (the photos' large k on a CPU with little memory)
    tight = replace(w, cache_bytes=10_000)
    every = est.cost(tight, run_ks(spec), run_ts(spec), engine)
    assert min(every) > max(warm[1:]) and every[5] == pytest.approx(every[6], rel=0.2)


def test_steps_of_the_pruned_path_cost_less_at_small_noise():
    """Where the engine takes distinct keys in blocks with bounds, the bounds skip most blocks at small t:
    a branch from a late step costs a fraction of the early steps."""
    w = workload(Engine(small_set(100, 32), "bbels", "cpu"), "hands-like", family="h")
    est = Estimator()
    early, late = est.cost(w, [5, 5], [0.9, 0.05])
    assert late < early / 4


def test_repeated_windows_are_counted_once():
    """Silhouettes repeat their windows (the engine merges them): fewer distinct keys, a cheaper step."""
    flat = ImageSet(torch.full((50, 1, 16, 16), -1.0))
    noise = small_set(50)
    assert distinct_share(flat.images, 5) == pytest.approx(1 / (50 * 144))
    assert distinct_share(noise.images, 5) > 0.99
    engine = Engine(noise, "els", "cpu")
    assert distinct_share(None, 5, engine) == pytest.approx(distinct_share(noise.images, 5))  # the engine's counts


def test_the_pace_is_learned_per_set_and_machine_and_ignores_one_odd_run():
    est = Estimator()
    digits, hands = Workload("digits", "bbels", family="digits"), Workload("hands", "bbels", family="hands")
    assert est.basis(hands) == "model" and est.pace(hands) == 1.0  # one thread, nothing run yet
    for _ in range(3):
        est.record_total(digits, [], [], 3.0, cost=1.0)  # a busy machine: 3x the cost
    assert est.pace(hands) == 3.0 and est.basis(hands) == "carried"  # a set never run: the machine's pace
    est.record_total(hands, [], [], 2.0, cost=1.0)
    assert est.pace(hands) == 2.0 and est.basis(hands) == "measured"  # its own runs first
    est.record_total(hands, [], [], 20.0, cost=1.0)  # a loaded moment
    est.record_total(hands, [], [], 2.2, cost=1.0)
    assert est.pace(hands) == 2.2  # the median of the last runs
    est.record_total(hands, [], [], 30.0, cost=0.1)  # a run of little work: mostly overheads, it teaches nothing
    assert est.pace(hands) == 2.2
    for _ in range(Estimator.KEEP):
        est.record_total(hands, [], [], 5.0, cost=1.0)  # the load lasts: followed
    assert est.pace(hands) == 5.0
    assert est.pace(Workload("hands", "els", family="hands")) == 5.0  # the machine's latest pace


def test_a_run_longer_than_a_few_seconds_asks_first_the_first_run_of_a_set_included():
    """The app's default run (bbELS, the mnist-resnet schedule, 20 steps) on each set, estimated on a fresh
    estimator (nothing has run: the work at this CPU's speed): the photos ask (they took minutes), the digits
    and hands do not; on a machine three times as busy the hands ask too."""
    spec = RunSpec("bbels", "mnist-resnet", 20)
    est = Estimator()

    def seconds(name, spec=spec):  # with one thread, as the app's engines on this 2-core CPU
        engine = Engine(load_dataset(name), "bbels", "cpu")
        work = replace(workload(engine, name, family=name), threads=1)
        return est.seconds(work, run_ks(spec), run_ts(spec), engine)

    photos, hands, digits = seconds("photos"), seconds("hands", RunSpec("bbels", 5, 20)), seconds("digits")
    assert needs_confirmation(photos) and photos > 60
    assert not needs_confirmation(digits) and digits < 3
    assert not needs_confirmation(hands)
    assert needs_confirmation(3 * hands)


def test_the_subset_offered_is_sized_for_the_target_and_round():
    def linear(per_image, fixed=0.5):
        return lambda n: fixed + per_image * n

    assert subset_offer(2000, linear(0.02)) == 220  # 0.5 + 0.02 x 220 = 4.9 s, the largest round size under 5 s
    assert subset_offer(1000, linear(0.2)) == MIN_SUBSET  # never fewer than 100 images, even if that takes 20 s
    assert subset_offer(1000, linear(0.004)) is None  # the whole set takes 4.5 s: no subset
    assert subset_offer(1000, linear(0.009)) is None  # a subset would keep more than half the set
    assert subset_offer(150, linear(1.0)) is None  # too small a set to cut
    assert subset_offer(60_000, linear(0.001), target_s=10.0) == 9_500
    assert subset_offer(5000, linear(1.0)) == MIN_SUBSET
    assert needs_confirmation(ASK_S + 0.1) and not needs_confirmation(ASK_S)


def test_where_k_cannot_be_live_the_page_says_so_and_offers_a_subset(monkeypatch):
    """The note under the picture, when a run at the next k is estimated above LIVE_MAX_S (here: set so low
    that the digits are such a set), and its button to a subset; none where k is live."""
    import elsviz.ui.runs as cache

    digits = ok(app(limit=0, steps=3, seed=515151, dataset="digits"))
    assert not any("not live" in i.value for i in digits.info)
    monkeypatch.setattr(cache, "LIVE_MAX_S", 0.01)
    monkeypatch.setattr(cache, "LIVE_TARGET_S", 0.01)
    at = ok(app(limit=0, steps=3, seed=515151, dataset="digits"))
    note = " ".join(i.value for i in at.info)
    assert "k is not live here" in note and "1,797 images of 16x16" in note and "CUDA GPU" in note
    live = [b for b in at.button if "Make k live" in b.label]
    assert live and "100 images" in live[0].label
    live[0].click()
    ok(at.run())
    assert at.session_state["limit"] == 100 and at.main.get("plotly_chart")


def test_the_time_left_follows_the_pace_of_the_run():
    plan = [1.0] * 10
    assert time_left(plan, 0, 0.0) == pytest.approx(10.0)
    assert time_left(plan, 5, 10.0) == pytest.approx(10.0)  # twice as slow as planned
    assert time_left(plan, 5, 2.5) == pytest.approx(2.5)
    assert time_left([0.1, 0.1, 1.0, 1.0], 2, 0.4) == pytest.approx(4.0)  # slow steps ahead count as such
    assert left_text(40.2) == "about 40 s left"
    assert left_text(200) == "about 3 min left"
    assert left_text(1.0) == ""


def test_neighbours_nearest_first_within_the_limit():
    assert neighbour_ks(5, 15) == [7, 3, 9, 1]
    assert neighbour_ks(1, 15) == [3, 5, 7, 9]
    assert neighbour_ks(15, 15) == [13, 11, 9, 7]
    assert neighbour_ks(3, 5, count=4) == [5, 1]


# -- the background worker ------------------------------------------------------------------------------
class Slow:
    """A fake background run of n steps of `step` seconds; stores its key in done when it finishes."""

    def __init__(self, key, n=5, step=0.05, started=None):
        self.key, self.n, self.step, self.started = key, n, step, started
        self.steps = 0

    def __call__(self, check):
        if self.started is not None:
            self.started.set()
        for _ in range(self.n):
            time.sleep(self.step)
            self.steps += 1
            check(self.steps, self.n)


def test_the_worker_computes_the_plan_nearest_first_then_sleeps():
    worker, engine = Worker(), object()
    jobs = [Job(k, engine, Slow(k, n=2, step=0.01)) for k in (7, 3, 9, 1)]
    worker.submit(jobs)
    assert worker.idle(timeout=10)
    assert worker.done == [7, 3, 9, 1]
    thread = worker._thread
    assert thread.is_alive()  # it waits on a condition: no CPU while idle
    clock = time.pthread_getcpuclockid(thread.ident)  # the worker thread's own CPU time
    before = time.clock_gettime(clock)
    time.sleep(0.5)
    assert time.clock_gettime(clock) - before < 0.01


def test_new_settings_cancel_the_running_neighbour():
    worker, engine = Worker(), object()
    started = threading.Event()
    long = Slow("seed 0, k=7", n=200, step=0.01, started=started)
    worker.submit([Job("seed 0, k=7", engine, long), Job("seed 0, k=3", engine, Slow("seed 0, k=3"))])
    assert started.wait(5)
    worker.submit([Job("seed 1, k=7", engine, Slow("seed 1, k=7", n=1))])  # the seed changed
    assert worker.idle(timeout=10)
    assert long.steps < 200 and "seed 0, k=7" in worker.stopped
    assert worker.done == ["seed 1, k=7"]  # seed 0's k = 3 never ran
    worker.cancel()  # nothing planned: nothing runs
    assert worker.idle(timeout=1) and worker.running() is None


def test_the_foreground_waits_at_most_one_background_step():
    worker, engine = Worker(), object()
    started = threading.Event()
    job = Slow("k=7", n=40, step=0.05, started=started)
    worker.submit([Job("k=7", engine, job)])
    assert started.wait(5)
    t0 = time.perf_counter()
    with worker.foreground(engine):
        waited = time.perf_counter() - t0
        assert worker.running() is None  # the background stopped ...
    assert waited < 0.5
    assert worker.idle(timeout=10)
    assert worker.done == ["k=7"]  # ... and finished the run once the foreground was done


def test_a_foreground_run_waits_for_the_same_run_in_the_background():
    worker, engine = Worker(), object()
    started = threading.Event()
    worker.submit([Job("k=7", engine, Slow("k=7", n=20, step=0.05, started=started))])
    assert started.wait(5)
    seen = []
    assert worker.wait_for("k=7", timeout=10, tick=lambda job: seen.append((job.done, job.total)))
    assert worker.done == ["k=7"]
    assert seen and all(0 <= d <= 20 and t in (0, 20) for d, t in seen)  # its progress, for a progress bar
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] >= 10
    assert not worker.wait_for("k=9")  # not running: the caller computes it


def test_each_session_keeps_its_own_plan():
    """Two users of one app: one's new plan (or cancel) leaves the other's neighbours planned, and
    the thread takes the plans' jobs in turn, so both see their nearest k soon."""
    worker, engine = Worker(), object()
    started = threading.Event()
    block = Slow("a: k=5", n=30, step=0.01, started=started)
    worker.submit([Job("a: k=5", engine, block), Job("a: k=9", engine, Slow("a: k=9", n=1, step=0.01))], owner="a")
    assert started.wait(5)
    worker.submit([Job(f"b: k={k}", engine, Slow(f"b: k={k}", n=1, step=0.01)) for k in (3, 7)], owner="b")
    worker.submit([Job("c: k=11", engine, Slow("c: k=11", n=1, step=0.01))], owner="c")
    worker.cancel("c")  # c moved on: only c's plan goes
    assert worker.idle(timeout=10)
    assert worker.done[0] == "a: k=5" and block.steps == 30  # b's and c's plans did not stop a's run
    assert worker.done[1:] == ["a: k=9", "b: k=3", "b: k=7"] or worker.done[1:] == ["b: k=3", "a: k=9", "b: k=7"]
    assert "c: k=11" not in worker.done
    assert worker._plans == {} and worker._wanted == {}  # sessions that end leave nothing behind


def test_a_run_two_sessions_want_goes_on_when_one_cancels():
    worker, engine = Worker(), object()
    started = threading.Event()
    shared = Slow("k=7", n=40, step=0.01, started=started)
    worker.submit([Job("k=7", engine, shared)], owner="a")
    assert started.wait(5)
    worker.submit([Job("k=7", engine, Slow("k=7"))], owner="b")  # the same run: not computed twice
    worker.cancel("a")
    assert worker.idle(timeout=10)
    assert worker.done == ["k=7"] and shared.steps == 40 and worker.stopped == []
    worker.cancel_all()
    assert worker.idle(timeout=1) and worker.running() is None


def test_a_ray_engines_run_is_estimated_per_shard():
    """On the Ray engine a step costs its slowest shard's part of the images (every shard at once, on its own
    threads) and the rounds of calls that reach them; its runs set their own pace, not the single engine's."""
    from elsviz.app.runs import SHARDS_STEP_S

    engine = Engine(small_set(n=120), "bbels", "cpu")

    class Sharded:  # what workload reads of an elsviz.cluster.RayEngine
        train, machine, device, shards, shard_threads = engine.train, "bbels", torch.device("cpu"), 4, 1

    one, four = workload(engine, "set", family="set"), workload(Sharded(), "set", family="set")
    assert (one.n, one.shards) == (120, 1) and (four.n, four.shards, four.threads) == (30, 4, 1)
    spec = RunSpec("bbels", 5, steps=20)
    ks, ts = run_ks(spec), run_ts(spec)
    est = Estimator()
    shard = est.cost(replace(one, n=30, threads=1, cache_bytes=four.cache_bytes, kernel=four.kernel), ks, ts)
    assert est.cost(four, ks, ts) == pytest.approx([s + SHARDS_STEP_S for s in shard])
    est.record_total(one, [], [], 10.0, cost=1.0)  # a single engine's run took 10x its cost
    assert est.pace(one) == pytest.approx(10) and est.basis(four) == "carried"  # the Ray engine's own: none yet
    est.record_total(four, [], [], 2.0, cost=1.0)
    assert est.pace(four) == pytest.approx(2) and est.pace(one) == pytest.approx(10)


def test_a_run_of_too_little_work_does_not_move_the_pace():
    """Runs under PACE_MIN_S of work are mostly the app's own overheads: they teach nothing; longer ones do."""
    from elsviz.app.runs import PACE_MIN_S

    est, w = Estimator(), Workload("set", "bbels", family="set")
    est.record_total(w, [], [], 100.0, cost=PACE_MIN_S / 2)
    assert est.basis(w) == "model"
    est.record_total(w, [], [], 3 * PACE_MIN_S, cost=PACE_MIN_S)
    assert est.basis(w) == "measured" and est.pace(w) == pytest.approx(3)
