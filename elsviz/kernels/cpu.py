"""The compiled CPU kernel of the engine (docs/ENGINE.md, "The compiled CPU kernel").

`cpu_kernel.cpp` is compiled with the machine's C++ compiler on first use (1-2 s) and kept in a
cache folder; where there is no compiler, or `ELSVIZ_KERNEL=torch` is set, the engine keeps its
torch path, which computes the same numbers. Two entry points:

    counted = tile_blocks(qa, pack(keys_t, 64), block, centres, logc, rep, blocks, into, running, bounds)

the big classes: the logits of query rows against blocks of keys made in
registers, six rows by 64 keys at a time, and folded at once into each row's running softmax
statistics (m, s, acc, ent, best), in place; no logit is written to memory. With bounds, blocks
that cannot matter are skipped (block_home gives each query's most promising block).

    stats = rows(logits [R, n], values [G, C, n], logc [n] or None)
    -> m [R], s [R], acc [R, C], ent [R], arg [R] int64

the small classes, whose logits come from torch's batched products: in two passes per row instead
of torch's dozen. Row r uses values[r // (R // G)].

And the key tables of a new k (cold runs): key_table (windows straight into the [D + 1, keys]
layout), pack (that layout in chunks, without shared entries), str_order (a KeySet's block order),
window_hash and same_count (the window hashes and the tie counts made from them).

The statistics, for the logits l_j of a row's keys (x_j = l_j - m + logc_j, logc_j the log of the
key's count): m = max_j l_j, arg = the first j with l_j == m (best: its key id), e_j = exp(x_j)
where x_j >= -80 (below, 0 or exp(-80) ~ 2e-35: nothing next to the max's 1), s = sum_j e_j,
acc = sum_j e_j values[:, j], ent = sum_j e_j (l_j - m).

Work is shared out over torch's threads: the library is built with OpenMP and, loaded after
torch, uses torch's OpenMP runtime (the same libgomp.so.1), so its threads are the ones that ran
torch's products; a thread pool of our own was measured to gain nothing next to torch's spinning
OpenMP threads on 2 cores.
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
from typing import NamedTuple

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("cpu.cpp")
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
                              "on the CPU (install g++ for a 3-7x faster engine).", stacklevel=2)
                return None
            try:
                lib = ctypes.CDLL(str(_build(cxx)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                warnings.warn(f"elsviz: the CPU kernel could not be built ({exc}); the engine uses its "
                              "torch path.", stacklevel=2)
                return None
            ptr, i64 = ctypes.c_void_p, ctypes.c_int64
            lib.rows_stats.argtypes = [i64, i64, ptr, i64, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64]
            lib.rows_stats.restype = ctypes.c_int
            f32 = ctypes.c_float
            keys = [ptr, ptr, ptr, ptr, ptr, i64, i64]  # Keys: data, entry, offsets, shared, any_shared, width, d1p
            lib.tile_blocks.argtypes = [i64, ptr, *keys, i64, i64, i64, ptr, i64, ptr, ptr, ptr, i64, ptr,
                                        ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, ptr, i64, f32, f32, f32, ptr,
                                        ctypes.c_int]
            lib.tile_blocks.restype = ctypes.c_int
            lib.tile_classes.argtypes = [i64, i64, ptr, *keys, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr,
                                         ptr, ctypes.c_int]
            lib.tile_classes.restype = ctypes.c_int
            lib.block_home.argtypes = [i64, ptr, ptr, ptr, i64, ptr, i64, i64, f32, f32, ptr, i64]
            lib.block_home.restype = None
            lib.exp_clamped.argtypes = [ptr, ptr, i64]
            lib.exp_clamped.restype = None
            lib.key_table.argtypes = [ptr, i64, i64, i64, ptr, ptr, i64, i64, i64, ptr, f32, ctypes.c_int]
            lib.key_table.restype = None
            lib.pack_count.argtypes = [ptr, i64, i64, i64, ptr, ctypes.c_int]
            lib.pack_count.restype = None
            lib.pack_fill.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
            lib.pack_fill.restype = None
            lib.str_order.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ctypes.c_int]
            lib.str_order.restype = None
            lib.window_hash.argtypes = [ptr, i64, i64, i64, i64, ctypes.c_uint64, ctypes.c_uint64, ptr, ctypes.c_int]
            lib.window_hash.restype = None
            lib.same_count.argtypes = [ptr, i64, ptr]
            lib.same_count.restype = None
            _state["lib"] = lib
        return _state["lib"]


def build_in_background() -> None:
    """Compile (or load) the library in a daemon thread, once per process, so that a first run finds
    it ready: the app calls this when it starts (a fresh machine compiles for a few seconds, which
    then overlap with the app's own start). An engine that needs the library meanwhile waits."""
    with _lock:
        if "lib" in _state or "building" in _state or not enabled():
            return
        _state["building"] = threading.Thread(target=library, name="elsviz-kernel-build", daemon=True)
        _state["building"].start()


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
    _call(logits, values, logc, out)
    return out


def _call(logits, values, logc, out) -> None:
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
        m.data_ptr(), s.data_ptr(), acc.data_ptr(), ent.data_ptr(), arg.data_ptr(), threads)
    if code:
        raise RuntimeError(f"elsviz: rows_stats refused C = {c}")  # guarded by usable(): a bug


class Keys(NamedTuple):
    """Keys as the fused kernels read them (pack): in chunks of `width` consecutive keys, without
    the entries that all keys of a chunk share (their part of a logit is one dot product with the
    chunk's constant vector)."""
    data: torch.Tensor  # [rows, width] the entries the keys of a chunk do not share, entry after entry
    entry: torch.Tensor  # [rows] int32: which entry each row holds
    offsets: torch.Tensor  # [chunks + 1] int64: the first row of each chunk
    shared: torch.Tensor  # [chunks, D1p] the shared entries' values (0 where the keys differ)
    any_shared: torch.Tensor  # [chunks] uint8: whether a chunk shares any entry
    width: int  # keys per chunk: 16, 32 or 64
    d1p: int  # entries per key, rounded up to 16 (queries are padded to it)

    @property
    def keys(self) -> int:
        return (self.offsets.shape[0] - 1) * self.width


def pack(keys_t: torch.Tensor, width: int) -> Keys:
    """The keys [D1, NK] (NK a multiple of width; width 16, 32 or 64) in the kernels' layout (Keys)."""
    lib = _state.get("lib") or library()
    keys_t = keys_t.contiguous()
    d1, nk = keys_t.shape
    chunks, d1p, threads = nk // width, -(-d1 // 16) * 16, torch.get_num_threads()
    counts = torch.empty(chunks, dtype=torch.int64)
    lib.pack_count(keys_t.data_ptr(), d1, nk, width, counts.data_ptr(), threads)
    offsets = torch.zeros(chunks + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    rows = int(offsets[-1])
    keys = Keys(data=torch.empty(rows, width), entry=torch.empty(rows, dtype=torch.int32), offsets=offsets,
                shared=torch.zeros(chunks, d1p), any_shared=torch.empty(chunks, dtype=torch.uint8), width=width, d1p=d1p)
    lib.pack_fill(keys_t.data_ptr(), d1, nk, width, d1p, offsets.data_ptr(), keys.data.data_ptr(), keys.entry.data_ptr(),
                  keys.shared.data_ptr(), keys.any_shared.data_ptr(), threads)
    return keys


def key_table(padded: torch.Tensor, img: torch.Tensor, pos: torch.Tensor, k: int, w: int, pad_sq: float) -> torch.Tensor:
    """keys_t [C*k*k + 1, M] of the keys (image img[m], flat position pos[m]) of the training images
    zero-padded by k // 2, padded [n, H + 2d, W + 2d, C] (channels last): each column the window
    (channel, row, col) and then |K|^2, as keyset.key_windows gives them; img[m] = -1: a padding
    key, zeros and |K|^2 = pad_sq."""
    lib = _state.get("lib") or library()
    padded, img, pos = padded.contiguous(), img.contiguous(), pos.contiguous()
    _, hp, wp, c = padded.shape
    out = torch.empty(c * k * k + 1, img.shape[0])
    lib.key_table(padded.data_ptr(), hp, wp, c, img.data_ptr(), pos.data_ptr(), img.shape[0], k, w, out.data_ptr(),
                  pad_sq, torch.get_num_threads())
    return out


def str_order(p: torch.Tensor, block: int, levels: int, per_level: int) -> torch.Tensor:
    """keyset._block_order's order of the rows of p [K, r] (the same permutation, about 3x faster)."""
    lib = _state.get("lib") or library()
    p = p.contiguous()
    order = torch.empty(p.shape[0], dtype=torch.int64)
    lib.str_order(p.data_ptr(), p.shape[0], p.shape[1], levels, block, per_level, order.data_ptr(), torch.get_num_threads())
    return order


def window_hash(mixed: torch.Tensor, k: int, a: int, b: int) -> torch.Tensor:
    """engine._window_hash's sums for mixed [N, H, W] int64 (a, b: its multipliers), bit for bit."""
    lib = _state.get("lib") or library()
    mixed = mixed.contiguous()
    n, h, w = mixed.shape
    out = torch.empty(n, h, w, dtype=torch.int64)
    lib.window_hash(mixed.data_ptr(), n, h, w, k, a % 2**64, b % 2**64, out.data_ptr(), torch.get_num_threads())
    return out


def same_count(key: torch.Tensor) -> torch.Tensor:
    """For each entry of key (int64, any shape), how many entries equal it: int32, same shape."""
    lib = _state.get("lib") or library()
    flat = key.contiguous().view(-1)
    out = torch.empty(flat.shape[0], dtype=torch.int32)
    lib.same_count(flat.data_ptr(), flat.shape[0], out.data_ptr())
    return out.view(key.shape)


def _padded(qa: torch.Tensor, d1p: int) -> torch.Tensor:
    return F.pad(qa, (0, d1p - qa.shape[-1])).contiguous()


class Bounds(NamedTuple):
    """What tile_blocks needs to skip blocks: the queries' top-r principal coordinates pq [Q, r],
    the norms rq [Q] of the rest and |q|^2 = qsq [Q]; the KeySet's bound table [2r + 3, Jp]
    (KeySet.bound_t); the step's a_t and b_t; and the gap below a row's maximum under which a
    block is skipped."""
    pq: torch.Tensor
    rq: torch.Tensor
    qsq: torch.Tensor
    table: torch.Tensor
    a: float
    b: float
    gap: float

    def take(self, rows: torch.Tensor) -> "Bounds":
        """The same bounds for the queries rows [R] (in that order)."""
        return self._replace(pq=self.pq[rows], rq=self.rq[rows], qsq=self.qsq[rows])


def block_home(bounds: Bounds, blocks: int) -> torch.Tensor:
    """For each query, the block (of the first `blocks`) with the largest upper bound [Q] int64."""
    lib = _state.get("lib") or library()
    pq, rq, qsq = (v.contiguous() for v in (bounds.pq, bounds.rq, bounds.qsq))
    nq, r = pq.shape
    home = torch.empty(nq, dtype=torch.int64)
    lib.block_home(nq, pq.data_ptr(), rq.data_ptr(), qsq.data_ptr(), r, bounds.table.data_ptr(), bounds.table.shape[1],
                   blocks, bounds.a, 1.0 / (2 * bounds.b * bounds.b), home.data_ptr(), torch.get_num_threads())
    return home


def tile_blocks(qa: torch.Tensor, keys: Keys, block: int, centres: torch.Tensor, logc: torch.Tensor | None,
                rep: torch.Tensor, blocks: torch.Tensor, into: torch.Tensor, running, bounds: Bounds | None = None,
                first: int = 0) -> torch.Tensor:
    """Merge the keys of `blocks` into the running statistics of the queries qa [Q, D1] (augmented),
    the logits computed inside the kernel and never written. Returns the number of blocks computed
    for each query [Q].

    keys: pack(keys_t, width), of which keys first .. first + NK - 1 serve (first: a multiple of
    the width); block: keys per block (a multiple of keys.width); centres [C, NK]; logc [NK] or
    None; rep [NK] key ids; blocks [J] int64 (of the NK keys), taken in this order;
    into [Q] distinct rows of the running statistics running = (m [N], s [N], acc [N, C], ent [N],
    best [N] int64), float32 and contiguous (m = -inf: nothing seen yet), merged in place; on
    equal maxima the earlier key stays. With bounds, each query first takes its block with the
    largest bound, and then only the blocks whose bound comes within bounds.gap of the largest
    logit of that block. Sort the queries by that block (block_home), so that the queries that
    need a block come together.
    """
    lib = _state.get("lib") or library()
    nq = qa.shape[0]
    c = centres.shape[0]
    qa, blocks, into = _padded(qa, keys.d1p), blocks.contiguous(), into.contiguous()
    centres, rep = centres.contiguous(), rep.contiguous()
    logc = None if logc is None else logc.contiguous()
    m, s, acc, ent, best = running
    counted = torch.zeros(nq, dtype=torch.int64)
    if bounds is None:
        pq = rq = qsq = table = None
        r = jp = 0
        a = inv2b2 = gap = 0.0
    else:
        pq, rq, qsq, table = (v.contiguous() for v in (bounds.pq, bounds.rq, bounds.qsq, bounds.table))
        r, jp = pq.shape[1], table.shape[1]
        a, inv2b2, gap = bounds.a, 1.0 / (2 * bounds.b * bounds.b), bounds.gap
    ptr = lambda v: None if v is None else v.data_ptr()  # noqa: E731
    code = lib.tile_blocks(
        nq, qa.data_ptr(), *_keys_args(keys), first, centres.shape[1], block, centres.data_ptr(), c, ptr(logc), rep.data_ptr(),
        blocks.data_ptr(), blocks.shape[0], into.data_ptr(), m.data_ptr(), s.data_ptr(), acc.data_ptr(),
        ent.data_ptr(), best.data_ptr(), ptr(pq), ptr(rq), ptr(qsq), r, ptr(table), jp, a, inv2b2, gap,
        counted.data_ptr(), torch.get_num_threads())
    if code:
        raise RuntimeError(f"elsviz: tile_blocks refused C = {c}, block = {block}")  # callers check: a bug
    return counted


def _keys_args(keys: Keys):
    return (keys.data.data_ptr(), keys.entry.data_ptr(), keys.offsets.data_ptr(), keys.shared.data_ptr(),
            keys.any_shared.data_ptr(), keys.width, keys.d1p)


def tile_classes(qa: torch.Tensor, keys: Keys, block: int, centres: torch.Tensor, rep: torch.Tensor,
                 into: torch.Tensor, running) -> None:
    """tile_blocks over every key, without bounds, for G classes at once, each with its own NK keys:
    qa [G, Q, D1], keys: pack of the classes' keys side by side ([D1, G * NK]), centres [G, C, NK],
    rep [G, NK], into [G, Q] (distinct rows of running). The classes are shared out over the threads."""
    lib = _state.get("lib") or library()
    ng, nq, _ = qa.shape
    nk = keys.keys // ng
    c = centres.shape[1]
    qa, centres, rep, into = _padded(qa, keys.d1p), centres.contiguous(), rep.contiguous(), into.contiguous()
    m, s, acc, ent, best = running
    code = lib.tile_classes(ng, nq, qa.data_ptr(), *_keys_args(keys), nk, block, centres.data_ptr(), c,
                            rep.data_ptr(), into.data_ptr(), m.data_ptr(), s.data_ptr(), acc.data_ptr(),
                            ent.data_ptr(), best.data_ptr(), torch.get_num_threads())
    if code:
        raise RuntimeError(f"elsviz: tile_classes refused C = {c}, block = {block}")  # callers check: a bug
