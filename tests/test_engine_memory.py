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

    from elsviz.engine import _cpu_cache_bytes
    for ram, want in ((4 * 2**30, 384 * 2**20), (24 * 2**30, 24 * 2**30 // 16), (256 * 2**30, 2 * 2**30)):
        monkeypatch.setattr(os, "sysconf", lambda name, ram=ram: ram // 4096 if name == "SC_PHYS_PAGES" else 4096)
        assert _cpu_cache_bytes() == want
