"""Working memory does not grow with the batch: a study of many seeds in one call must not run out
of memory where one seed fits (issue: 64 seeds of hands asked a GPU for 32 GiB at once).

Each measurement runs in a fresh process: after a warm-up call with one image (it builds the cached
key tables), the peak resident set is reset (/proc/self/clear_refs) and one denoise call of B
images is made; its working memory is the new peak minus the memory before the call, less the
outputs it returns.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys, torch
from elsviz import Engine, load_dataset
from elsviz.schedule import alpha_sigma
torch.set_num_threads(1)
machine, bsz, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
train = load_dataset("hands", n=40)
engine = Engine(train, machine, device, chunk_elems=2**16)
def rss():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
a, b = alpha_sigma(0.3)
g = torch.Generator().manual_seed(0)
x = (a * train.images[torch.arange(bsz) % len(train)] + b * torch.randn(bsz, 1, 32, 32, generator=g)).to(device)
engine.denoise(x[:1], 0.3, 7)                       # warm: key tables cached
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set
    before = rss()["VmRSS"]
post = engine.denoise(x, 0.3, 7)
if device == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated()
else:
    peak = rss()["VmHWM"]
out = sum(v.numel() * v.element_size() for v in vars(post).values() if isinstance(v, torch.Tensor))
print(json.dumps({"work": peak - before - out, "outputs": out}))
"""


def working_memory(machine, bsz, device="cpu"):
    res = subprocess.run([sys.executable, "-c", SCRIPT, machine, str(bsz), device], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not can_reset_peak(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
@pytest.mark.parametrize("machine", ["bbels", "els"])
def test_batch_of_64_needs_no_more_working_memory_than_one_image(machine):
    one = working_memory(machine, 1)
    many = working_memory(machine, 64)
    floor = 8 * 2**20  # allocator granularity: a few MB of noise between two processes
    assert many["work"] < 2 * max(one["work"], floor), (
        f"{machine}: B=64 used {many['work'] / 2**20:.1f} MB beyond its {many['outputs'] / 2**20:.1f} MB of outputs, "
        f"B=1 used {one['work'] / 2**20:.1f} MB")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_of_64_on_cuda():
    one = working_memory("bbels", 1, "cuda")
    many = working_memory("bbels", 64, "cuda")
    assert many["work"] < 2 * max(one["work"], 2**20)


def test_the_cpu_cache_follows_the_machines_memory(monkeypatch):
    # a sixteenth of the memory, at least 384 MB (the digits' and hands' tables) and at most 2 GB
    import os

    from elsviz.engine.cache import cpu_cache_bytes as _cpu_cache_bytes
    for ram, want in ((4 * 2**30, 384 * 2**20), (24 * 2**30, 24 * 2**30 // 16), (256 * 2**30, 2 * 2**30)):
        monkeypatch.setattr(os, "sysconf", lambda name, ram=ram: ram // 4096 if name == "SC_PHYS_PAGES" else 4096)
        assert _cpu_cache_bytes() == want


def test_default_cpu_engines_share_one_cache_budget():
    """The app keeps an engine per set and machine: together they hold one cache's worth of tables."""
    from elsviz import Engine, ImageSet
    train = ImageSet(torch.rand(20, 1, 8, 8))
    a, b = Engine(train, "els", "cpu"), Engine(train, "bbels", "cpu")
    assert a._cache.budget is b._cache.budget
    assert a._cache.max_bytes == b._cache.max_bytes > 0
    own = Engine(train, "els", "cpu", cache_bytes=10**6)  # asked for its own size: its own budget
    assert own._cache.budget is not a._cache.budget and own._cache.max_bytes == 10**6


def test_a_shared_budget_drops_the_least_recently_used_entry_of_any_cache():
    import gc

    from elsviz.engine.cache import Budget as _Budget, Cache as _Cache
    budget = _Budget(1000)
    first, second = _Cache(0, budget), _Cache(0, budget)
    blob = lambda: torch.zeros(100)  # noqa: E731  (400 bytes)
    first.get("a1", blob)
    second.get("b1", blob)
    first.get("a1", None)  # used again: b1 is now the oldest
    second.get("b2", blob)  # 1,200 bytes: one entry must go
    assert first.peek("a1")[0] and not second.peek("b1")[0] and second.peek("b2")[0]
    assert (first.bytes, second.bytes, budget.bytes) == (400, 400, 800)
    first.get("a2", blob, size_hint=400)  # room made before it is built
    assert budget.bytes <= 1000 and not first.peek("a1")[0]
    too_big = first.get("huge", lambda: torch.zeros(1000))  # larger than the budget: returned, not kept
    assert too_big.numel() == 1000 and not first.peek("huge")[0]
    del second
    gc.collect()
    assert budget.bytes == first.bytes == 400  # a dropped engine's tables leave the budget


def test_caches_of_one_budget_stay_consistent_under_threads():
    from concurrent.futures import ThreadPoolExecutor

    from elsviz.engine.cache import Budget as _Budget, Cache as _Cache
    budget = _Budget(6_000)  # a few entries: nearly every miss evicts from another cache
    caches = [_Cache(0, budget) for _ in range(4)]

    def work(i):
        cache = caches[i % 4]
        for j in range(2000):
            got = cache.get(j % 37, lambda j=j: torch.full(((j % 5 + 1) * 100,), float(j % 37)))
            assert float(got[0]) == j % 37  # never another key's value
        return True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can: races show (without the lock, they did)
    try:
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(work, range(16)))
    finally:
        sys.setswitchinterval(old)
    assert budget.bytes == sum(sum(size for _, size, _ in c._items.values()) for c in caches) <= 6_000


def test_a_keyset_counts_what_it_holds_against_the_cache():
    """A cached KeySet weighs its tensors (it once counted as 64 bytes, outside any budget)."""
    from elsviz.engine.cache import Cache
    from elsviz.engine.keyset import KeySet
    from elsviz.engine.ties import distinct_keys, window_hash

    imgs = torch.rand(20, 1, 8, 8).round()
    rep, count = distinct_keys(window_hash(imgs, 3).flatten(1), torch.arange(64), 64)
    ks = KeySet.build(imgs, rep, count, 3)
    held = sum(v.numel() * v.element_size() for v in (ks.keys_t, ks.values, ks.rep, ks.logc, ks.centres, ks.basis,
                                                       ks.bound_t))
    assert held <= Cache._size(ks) <= held + 64 * 8  # (each field that is not a tensor: 64 bytes)
    assert held > 10_000
