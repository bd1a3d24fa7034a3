"""Time estimates (runs.Estimator), the long-run gate and its subset offer, the time left during a run,
and live k: the neighbouring k computed in the background (elsviz.app.worker.Worker)."""
import threading
import time

import pytest

from elsviz.app.worker import Job, Worker
from elsviz.app.runs import GATE_WORK, LONG_S, Estimator, RunSpec, Workload, left_text, needs_confirmation, neighbour_ks, run_ks, step_work, subset_offer, time_left

DIGITS = step_work(1797, (1, 16, 16), "bbels")  # 1.2e8 per step
HANDS = step_work(1000, (1, 32, 32), "bbels")  # 1.0e9 per step
PHOTOS = step_work(2000, (3, 32, 32), "bbels")


def steps(k, seconds, n=19):
    """A run's timed steps: n steps at k, each taking seconds."""
    return [(k, seconds)] * n


def test_rates_are_kept_per_workload_and_k():
    est = Estimator(build_steps=0.0)
    digits, hands = Workload("digits", "bbels"), Workload("hands", "bbels")
    est.record(digits, DIGITS, steps(3, 0.4))
    est.record(digits, DIGITS, steps(15, 0.04))  # k matters: large windows leave few keys per pixel
    est.record(hands, HANDS, steps(5, 5.0))
    assert est.seconds(digits, DIGITS, [3] * 19) == pytest.approx(19 * 0.4, rel=0.01)  # the 18 warm steps: 0.4 s each
    assert est.seconds(digits, DIGITS, [15] * 19) == pytest.approx(19 * 0.04, rel=0.01)
    assert est.seconds(digits, DIGITS, [5] * 19) == pytest.approx(19 * 0.4, rel=0.01)  # the nearest k measured: 3
    assert est.seconds(hands, HANDS, [5] * 19) == pytest.approx(19 * 5.0, rel=0.01)
    # a schedule: each step at its own k
    assert est.seconds(digits, DIGITS, [15, 15, 3, 3]) == pytest.approx(2 * 0.04 + 2 * 0.4, rel=0.01)
    # another device or machine learns nothing from these
    prior = Estimator(build_steps=0.0).seconds(Workload("digits", "ls"), DIGITS, [5])
    assert est.seconds(Workload("digits", "ls"), DIGITS, [5]) == prior


def test_a_never_measured_workload_scales_a_measured_one_by_its_work():
    est = Estimator(build_steps=0.0)
    assert est.basis(Workload("hands", "bbels", family="hands")) == "prior"
    est.record(Workload("hands", "bbels", family="hands"), HANDS, steps(5, 5.0))
    subset = Workload(("hands", 200), "bbels", family="hands")  # a subset: another set, never run
    assert est.basis(Workload("hands", "bbels", family="hands")) == "measured" and est.basis(subset) == "carried"
    work = step_work(200, (1, 32, 32), "bbels")
    # 1/5 of the work, at a rate 5 ** -0.35 = 0.57 times as high (overheads weigh more in small runs)
    assert est.seconds(subset, work, [5] * 19) == pytest.approx(19 * 5.0 * 0.2 ** 0.65, rel=0.01)
    # a subset of the same set learns from that set first, not from the closest other set
    est.record(Workload("digits", "bbels", family="digits"), DIGITS, steps(5, 0.1))
    hands_sub = Workload(("hands", 150), "bbels", family="hands")
    work = step_work(150, (1, 32, 32), "bbels")
    assert est.seconds(hands_sub, work, [5] * 19) == pytest.approx(19 * 5.0 * 0.15 ** 0.65, rel=0.01)
    digits_sub = Workload(("digits", 150), "bbels", family="digits")
    work = step_work(150, (1, 16, 16), "bbels")
    assert est.seconds(digits_sub, work, [5] * 19) == pytest.approx(19 * 0.1 * (150 / 1797) ** 0.65, rel=0.01)
    # nothing measured at all: the prior rate of the machine on this device
    fresh = Estimator(priors={("cpu", "bbels"): 2e8}, build_steps=0.0)
    assert fresh.seconds(Workload("hands", "bbels"), HANDS, [5] * 19) == pytest.approx(19 * HANDS / 2e8)


def test_the_first_step_at_a_k_is_cold_and_counted_as_a_build():
    est = Estimator(priors={("cpu", "bbels"): 3e8}, build_steps=8.0)  # a first guess slower than the runs below
    w = Workload("digits", "bbels")
    engine = object()
    cold = est.seconds(w, DIGITS, [5] * 19, engine)
    assert est.cold(w, 5, engine)
    est.record(w, DIGITS, [(5, 3.0)] + steps(5, 0.2, 18), engine)  # step 1 built the tables: 3 s
    assert not est.cold(w, 5, engine)
    warm = est.seconds(w, DIGITS, [5] * 19, engine)
    assert warm == pytest.approx(19 * 0.2, rel=0.01)  # the cold step is not a rate
    assert cold > warm
    # a k never run on this engine costs the build learned here (14 warm steps): 0.2 s x 19 + 2.8 s
    assert est.seconds(w, DIGITS, [7] * 19, engine) == pytest.approx(19 * 0.2 + 2.8, rel=0.01)
    # another engine (rebuilt after an eviction) builds again
    assert est.cold(w, 5, object())


def test_one_loaded_run_does_not_move_the_estimate_but_lasting_load_does():
    est = Estimator(build_steps=0.0)
    w = Workload("digits", "bbels")
    for _ in range(4):
        est.record(w, DIGITS, steps(5, 0.2))
    base = est.seconds(w, DIGITS, [5] * 19)
    est.record(w, DIGITS, steps(5, 2.0))  # a loaded moment: 10x slower
    assert est.seconds(w, DIGITS, [5] * 19) == pytest.approx(base)
    est.record(w, DIGITS, steps(5, 0.02))  # a lucky one: 10x faster
    assert est.seconds(w, DIGITS, [5] * 19) == pytest.approx(base)
    for _ in range(4):  # the machine stays busy: corrected after a few runs
        est.record(w, DIGITS, steps(5, 1.0))
    assert est.seconds(w, DIGITS, [5] * 19) == pytest.approx(19 * 1.0, rel=0.01)


def test_steps_at_high_noise_weigh_more_where_the_set_says_so():
    """On the hands a step at large t takes about 8x one at small t: after a full run the estimate of a
    branch from a late step (small t only) counts its steps as the cheap ones they are."""
    est = Estimator(build_steps=0.0)
    hands = Workload("hands", "bbels", family="hands")
    ts = [i / 20 for i in range(19, 0, -1)]
    took = [(5, t, 4.0 if t >= 0.5 else 0.5) for t in ts]  # 10 slow steps, 9 fast ones: 44.5 s
    est.record(hands, HANDS, took)
    est.record(hands, HANDS, took)
    assert est.seconds(hands, HANDS, [5] * 19, ts=ts) == pytest.approx(44.5, rel=0.1)
    late = [0.2, 0.15, 0.1, 0.05]
    assert est.seconds(hands, HANDS, [5] * 4, ts=late) == pytest.approx(2.0, rel=0.2)  # flat would say 10 s
    assert est.weight(hands, 0.9, 5) > 4 * est.weight(hands, 0.1, 5)
    assert est.weight(hands, 0.9, 9) == est.weight(hands, 0.9, 5)  # another k: the nearest k's profile ...
    flat = [(9, t, 1.0) for t in ts]
    est.record(hands, HANDS, flat)
    est.record(hands, HANDS, flat)
    assert est.weight(hands, 0.9, 9) == pytest.approx(1.0)  # ... until its own is measured
    assert est.weight(hands, 0.9, 5) > 1.5
    assert est.weight(Workload("digits", "bbels", family="digits"), 0.9) == 1.0  # another set: flat until measured
    # the time left during such a run: after the 10 slow steps, only the 9 fast ones remain
    plan = est.step_plan(hands, HANDS, [5] * 19, ts=ts)
    assert time_left(plan, 10, 40.0) == pytest.approx(4.5, rel=0.2)


def test_digits_are_never_gated_and_hands_on_a_cpu_are_with_a_sensible_subset():
    slow = Estimator(priors={("cpu", "bbels"): 1e3})  # a machine so loaded every run looks endless
    digits = slow.seconds(Workload("digits", "bbels"), DIGITS, run_ks(RunSpec(k=5, steps=50)))
    assert digits > 1000 * LONG_S and DIGITS < GATE_WORK
    assert not needs_confirmation(DIGITS, digits)  # whatever the load
    # first guesses on a CPU (the compiled kernel, docs/BENCHMARKS.md): 1,000 hands take seconds, not
    # worth a question; 2,000 colour photos take 20 s where their tables fit the cache and minutes
    # where they do not (little memory), which is
    hands = Estimator().seconds(Workload("hands", "bbels"), HANDS, run_ks(RunSpec(k=5, steps=20)))
    assert 3 < hands < LONG_S and not needs_confirmation(HANDS, hands, guess=True)
    photos = Estimator().seconds(Workload("photos", "bbels"), PHOTOS, run_ks(RunSpec(k=5, steps=20)))
    assert photos > 2 * LONG_S and needs_confirmation(PHOTOS, photos, guess=True)
    assert needs_confirmation(HANDS, 1.2 * LONG_S) and needs_confirmation(PHOTOS, 30.0)  # measured long: asked
    assert not needs_confirmation(HANDS, LONG_S / 2)  # measured fast (a GPU, a quiet machine): no question
    assert not needs_confirmation(HANDS, 1.5 * LONG_S, guess=True)  # a guess must be clearly long to ask
    assert needs_confirmation(HANDS, 2.5 * LONG_S, guess=True)
    # the subset: sized for about 10 s (time grows as work ** 0.65), never under 100 images, round,
    # absent for small sets
    assert subset_offer(1000, 280.0) == 100
    assert subset_offer(1000, 39.0) == 120  # (10 / 39) ** (1 / 0.65) = 12%
    assert subset_offer(2000, 40.0) == 230
    assert subset_offer(60, 280.0) is None  # not "4 images out of 60"
    assert subset_offer(150, 100.0) is None
    assert subset_offer(1000, 15.0) is None  # a subset would keep most of the set
    assert 100 <= subset_offer(5000, 1e4) <= 200


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
