"""A compiled pass over each chunk of logits, for the engine on the CPU (docs/ENGINE.md).

torch turns the softmax statistics of a chunk of logits (max, argmax, exp, sum, weighted values,
entropy term) into about a dozen passes over memory: 4-7 ns per logit on the 2-core Xeon, three
to five times the matrix product that made the logits. `cpu_kernel.cpp` does them in two passes
per row, sixteen keys at a time: about 0.8 ns per logit. It is compiled with the machine's C++
compiler on first use (1-2 s) and kept in a cache folder; where there is no compiler,
or `ELSVIZ_KERNEL=torch` is set, the engine keeps its torch path, which computes the same numbers.

    stats = rows(logits [R, n], values [G, C, n], logc [n] or None)
    -> m [R], s [R], acc [R, C], ent [R], arg [R] int64

Row r uses values[r // (R // G)]. With x_j = l_j - m + logc_j, e_j = exp(x_j) where x_j >= -80 and
0 below (exp(-80) ~ 2e-35 adds nothing next to the max's 1): m = max_j l_j, arg = the first j with
l_j == m, s = sum_j e_j, acc = sum_j e_j values[:, j], ent = sum_j e_j (l_j - m).

Large chunks are shared out over torch's threads: the library is built with OpenMP and, loaded
after torch, uses torch's OpenMP runtime (the same libgomp.so.1), so its threads are the ones that
just ran the matrix product; a thread pool of our own was measured to gain nothing next to
torch's spinning OpenMP threads on 2 cores.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
CHANNELS = (1, 3)  # the channel counts compiled in
# a chunk with fewer logits than this runs on one thread (starting threads costs a few us)
SPLIT_MIN = 2**16

_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded library, or None once it could not be had


def cache_dir() -> Path:
    """Where compiled kernels are kept: $ELSVIZ_CACHE/kernels, else ~/.cache/elsviz/kernels."""
    root = os.environ.get("ELSVIZ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "elsviz")
    return Path(root) / "kernels"


def enabled() -> bool:
    """Whether ELSVIZ_KERNEL lets the engine use this kernel (anything but 'torch')."""
    return os.environ.get("ELSVIZ_KERNEL", "").strip().lower() != "torch"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _build(cxx: str) -> Path:
    """The compiled library for this source, compiler and CPU (compiled now if not cached)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, version, " ".join(FLAGS), _cpu_id()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"rows-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        os.replace(tmp, target)  # atomic: another process may be compiling the same file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library():
    """The loaded kernel library, or None (no compiler, a failed build, ELSVIZ_KERNEL=torch)."""
    if not enabled():
        return None
    with _lock:
        if "lib" not in _state:
            _state["lib"] = None
            cxx = _compiler()
            if cxx is None:
                warnings.warn("elsviz: no C++ compiler (g++) found; the engine uses its slower torch path "
                              "on the CPU (install g++ for a 2-4x faster engine).", stacklevel=2)
                return None
            try:
                lib = ctypes.CDLL(str(_build(cxx)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                warnings.warn(f"elsviz: the CPU kernel could not be built ({exc}); the engine uses its "
                              "torch path.", stacklevel=2)
                return None
            ptr, i64 = ctypes.c_void_p, ctypes.c_int64
            lib.rows_stats.argtypes = [i64, i64, ptr, i64, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64]
            lib.rows_stats.restype = ctypes.c_int
            lib.query_blocks.argtypes = [i64, ptr, i64, ptr, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, i64,
                                         ctypes.c_float, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64]
            lib.query_blocks.restype = ctypes.c_int
            lib.exp_clamped.argtypes = [ptr, ptr, i64]
            lib.exp_clamped.restype = None
            _state["lib"] = lib
        return _state["lib"]


def usable(logits: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether rows() takes these tensors: float32 on the CPU, C in CHANNELS, keys contiguous."""
    return (logits.device.type == "cpu" and logits.dtype == torch.float32 and values.dtype == torch.float32
            and logits.dim() == 2 and logits.stride(1) == 1 and values.dim() == 3 and values.stride(2) == 1
            and values.shape[1] in CHANNELS and values.shape[2] == logits.shape[1]
            and logits.shape[0] % values.shape[0] == 0 and (_state.get("lib") or library()) is not None)


def rows(logits: torch.Tensor, values: torch.Tensor, logc: torch.Tensor | None = None):
    """Softmax statistics of every row of logits [R, n] (see the module's docstring).

    values [G, C, n] (keys contiguous: stride 1 on the last dim), logc [n] contiguous or None.
    Call only where usable(logits, values) holds.
    """
    nr, c = logits.shape[0], values.shape[1]
    out = (torch.empty(nr), torch.empty(nr), torch.empty(nr, c), torch.empty(nr), torch.empty(nr, dtype=torch.int64))
    _call(logits, values, logc, out, None, None)
    return out


def merge_rows(logits: torch.Tensor, values: torch.Tensor, logc: torch.Tensor | None, into: torch.Tensor,
               rep: torch.Tensor | None, running) -> None:
    """Merge the statistics of each row r of logits into the running statistics at row into[r].

    running: (m [Q], s [Q], acc [Q, C], ent [Q], best [Q] int64), contiguous, updated in place
    (m = -inf: nothing seen yet; best: rep[arg], the id of the heaviest key, or arg without rep).
    into [R] int64: distinct rows. On equal maxima the earlier key stays. Call only where
    usable(logits, values) holds and mergeable(running) does.
    """
    _call(logits, values, logc, running, into.contiguous(), None if rep is None else rep.contiguous())


def mergeable(running) -> bool:
    """Whether merge_rows and query_blocks can update these running statistics in place."""
    m, s, acc, ent, best = running
    return (all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in (m, s, acc, ent))
            and best.dtype == torch.int64 and best.is_contiguous())


def _call(logits, values, logc, out, into, rep) -> None:
    lib = _state.get("lib") or library()
    nr, n = logits.shape
    g, c, _ = values.shape
    if logc is not None:
        logc = logc.contiguous()
    m, s, acc, ent, arg = out
    rpg = nr // g
    ldl = logits.stride(0)
    vgs, vcs = values.stride(0), values.stride(1)

    threads = torch.get_num_threads() if nr * n >= SPLIT_MIN else 1
    code = lib.rows_stats(
        nr, n, logits.data_ptr(), ldl, values.data_ptr(), c, rpg, vgs, vcs, None if logc is None else logc.data_ptr(),
        m.data_ptr(), s.data_ptr(), acc.data_ptr(), ent.data_ptr(), arg.data_ptr(),
        None if into is None else into.data_ptr(), None if rep is None else rep.data_ptr(), threads)
    if code:
        raise RuntimeError(f"elsviz: rows_stats refused C = {c}")  # guarded by usable(): a bug


def query_blocks(qa: torch.Tensor, keys_t: torch.Tensor, block: int, centres: torch.Tensor, logc: torch.Tensor | None,
                 rep: torch.Tensor, order: torch.Tensor, ub: torch.Tensor, gap: float, into: torch.Tensor,
                 running) -> torch.Tensor:
    """The pruned path one query at a time, the logits computed inside the kernel (never written).

    qa [Q, D+1] augmented queries; keys_t [D+1, NK] with NK a multiple of `block` (a multiple of
    16, at most 1024); centres [C, NK]; logc [NK] or None; rep [NK] key ids; order [Q, J] the
    blocks of each query by descending bound, ub [Q, J] those bounds; into [Q] distinct rows of
    the running statistics (see merge_rows), merged in place. Blocks whose bound is more than gap
    below the best logit found are skipped. Returns the number of blocks computed per query [Q].
    """
    lib = _state.get("lib") or library()
    nq, d1 = qa.shape
    nk = keys_t.shape[1]
    c = centres.shape[0]
    qa, order, ub, into = qa.contiguous(), order.contiguous(), ub.contiguous(), into.contiguous()
    keys_t, centres, rep = keys_t.contiguous(), centres.contiguous(), rep.contiguous()
    logc = None if logc is None else logc.contiguous()
    j = order.shape[1]
    m, s, acc, ent, best = running
    counted = torch.zeros(nq, dtype=torch.int64)

    code = lib.query_blocks(
        nq, qa.data_ptr(), d1, keys_t.data_ptr(), nk, block, centres.data_ptr(), c,
        None if logc is None else logc.data_ptr(), rep.data_ptr(), order.data_ptr(), ub.data_ptr(), j, float(gap),
        into.data_ptr(), m.data_ptr(), s.data_ptr(), acc.data_ptr(), ent.data_ptr(), best.data_ptr(),
        counted.data_ptr(), torch.get_num_threads())
    if code:
        raise RuntimeError(f"elsviz: query_blocks refused C = {c}, block = {block}")  # callers check: a bug
    return counted
