"""A fused flash-attention-style Triton kernel for the local machines' softmax statistics.

The torch path of a key-table step (engine/paths.py, table_torch) writes a chunk of logits [G, rows, keys] and reads it back
about a dozen times (max, argmax, subtract, clamp, exp, sums, entropy term). This kernel computes
the same statistics with the logits kept in registers, one tile of rows against one tile of keys
at a time (docs/ENGINE.md, "The fused kernel"):

    local_stats(q [G, R, D+1], keys [G, K, D+1], values [G, K, C], logc [G, K] or None)
        -> m [G, R], s [G, R], acc [G, R, C], ent [G, R], arg [G, R] int64

    l[g, r, j] = sum_d q[g, r, d] * keys[g, j, d]   (the engine's augmented queries (c1 Q, c2)
                                                     against (K, |K|^2))
    m = max_j l;  arg = the first j with l == m (torch.argmax; logc enters neither)
    e_j = exp(l_j - m + logc_j);  s = sum_j e_j;  acc = sum_j e_j values_j;  ent = sum_j e_j (l_j - m)

exactly what `_Softmax.merge_at` consumes. (The torch path clamps l - m at -80 for the CPU's
vectorised exp; here a key that far below weighs exp(-80) ~ 2e-35 less, which no float32 sum
sees.)

    gather_stats(q, images, sq, k, pos or ids, logc) -> the same statistics

reads no key table: the same kernel (its GATHER variant) cuts each key's window from the training
images laid out [H + 2d, W + 2d, C, N] and takes |K|^2 from a map [H*W, N] (the engine's default
on CUDA; key tables, written by key_table, serve where it fails).

The default for CUDA engines where triton is installed (measured on an H200: 1.5x the torch path
on 60,000 images, 2.6x on 64 hands; docs/BENCHMARKS.md); `ELSVIZ_KERNEL=torch` (read when an
Engine is made) turns it off, `ELSVIZ_KERNEL=triton` also turns it on for CPU engines under
Triton's interpreter (`TRITON_INTERPRET=1`, for the tests). Triton is imported lazily: elsviz
works without it. If the kernel fails, one warning, and the exact torch path serves.
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch

from ..errors import ElsvizError

# Tile sizes (rows, keys, window entries per tl.dot) and warps, chosen so that the kernel compiled
# for an H100 (sm_90) keeps everything in registers: 197 of them per thread, no spills (32 window
# entries or 4 warps spill; tests/test_triton_kernel.py checks). Timed on an H200 (gpu_check --sweep,
# docs/BENCHMARKS.md): 260 / 89 / 33 G logits/s at k = 3 / 7 / 15; 128 rows were 12-20% faster from
# k = 7 on but spill 48 bytes (gpu_check's kernel "triton-r128" times them in the engine).
BLOCK_R, BLOCK_K, BLOCK_D, NUM_WARPS = 64, 64, 16, 8
# tl.dot on float32: "ieee" (exact float32 FMAs) or "tf32x3" (tensor cores, 3 passes, ~float32).
# Plain tf32 (10-bit mantissa) is not enough: logits reach ~1e4 at small t.
PRECISION = "ieee"
# Programs along the group axis of one launch (CUDA's limit for grid dimensions 2 and 3)
_MAX_GRID = 65535
# Split the keys across programs (flash-decoding) until about this many programs per SM run.
PROGRAMS_PER_SM = 4
# Channels the kernel sums centres for (grey and colour: one running sum each, in registers)
CHANNELS = (1, 3)

_KERNELS: dict = {}  # the jitted kernel, made on first use; per interpreter mode


def available() -> bool:
    """Whether triton can be imported here (it comes with CUDA builds of torch)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


# triton.language, bound by _kernel(): the kernel below reads it as a global, as Triton expects
tl = None


def _local_stats_kernel(
    # One program: BR query rows of group g against the keys of one split, BK keys at a time.
    # Per tile: logits by tl.dot over D in pieces of BD, the tile's max and first argmax, the
    # running statistics rescaled by exp(m_old - m_new) (flash attention's online softmax).
    # GATHER: the keys' windows are read from the images (k_ptr, gather_stats' layout) instead of
    # a key table: key j is image n = j % N at the class's position s = j // N, whose window starts
    # at top[g, s] + n, its |K|^2 at sq[pos[g, s] * N + n]; LISTED: key j's window starts at
    # top[j], its |K|^2 is sq[j]. Entry e of a window lies off[e] after its start, the centre
    # off[CE] (channel c: c * N further). D is then the window's entries, and column D of q holds c2.
    # Only scalars are divided (no integer division per key or entry).
    q_ptr, k_ptr, v_ptr, lc_ptr, pos_ptr, top_ptr, sq_ptr, off_ptr,  # inputs
    m_ptr, s_ptr, acc_ptr, ent_ptr, arg_ptr,  # outputs [S, G, R] (acc [S, G, R, C])
    R, K, D, keys_per_split,
    sqg, sqr, sqd, skg, skj, skd, svg, svj, svc, slg, slj,
    N, CE, spg,  # GATHER: images, the centre's entry, the group stride of pos and top
    C: tl.constexpr, HAS_LOGC: tl.constexpr, PREC: tl.constexpr,
    BR: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, ONE_D: tl.constexpr,
    GATHER: tl.constexpr, LISTED: tl.constexpr, WRAPS: tl.constexpr,  # WRAPS: N < BK
):
    pid_r = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    ng = tl.num_programs(1)
    rows = pid_r * BR + tl.arange(0, BR)  # [BR]
    row_ok = rows < R
    rows64 = rows.to(tl.int64)
    dd = tl.arange(0, BD).to(tl.int64)  # [BD]
    q_base = q_ptr + g * sqg + rows64[:, None] * sqr  # [BR, 1]
    k_base = k_ptr + g * skg
    v_base = v_ptr + g * svg
    j_start = split * keys_per_split
    j_end = tl.minimum(j_start + keys_per_split, K)
    if GATHER:
        q_c2 = tl.load(q_base + D * sqd, mask=row_ok[:, None], other=0.0)  # [BR, 1] c2, times |K|^2
        centre = tl.load(off_ptr + CE)  # the centre's offset from a window's start

    m = tl.full([BR], -1.0e30, tl.float32)  # finite: 0 * (m_old - m_new) stays 0
    s = tl.zeros([BR], tl.float32)
    ent = tl.zeros([BR], tl.float32)
    acc0 = tl.zeros([BR], tl.float32)
    acc1 = tl.zeros([BR], tl.float32)
    acc2 = tl.zeros([BR], tl.float32)
    arg = tl.zeros([BR], tl.int64)
    if ONE_D:
        q_one = tl.load(q_base + dd[None, :] * sqd, mask=row_ok[:, None] & (dd < D)[None, :], other=0.0)  # [BR, BD]
        if GATHER:  # the window entries' offsets, once
            off_one = tl.load(off_ptr + dd, mask=dd < D, other=0)
    for j0 in range(j_start, j_end, BK):
        jj = j0 + tl.arange(0, BK)  # [BK]
        key_ok = jj < j_end
        jj64 = jj.to(tl.int64)
        if GATHER:
            if LISTED:
                top = tl.load(top_ptr + jj64, mask=key_ok, other=0)  # [BK] where each window starts
                k_sq = tl.load(sq_ptr + jj64, mask=key_ok, other=0.0)
            else:  # image n and position s of each key, from the tile's first (one scalar division)
                s0 = j0 // N
                nn = j0 - s0 * N + tl.arange(0, BK)  # [BK]
                if WRAPS:  # fewer images than keys in a tile
                    s_j, n_j = s0 + nn // N, nn % N
                else:
                    past = nn >= N
                    s_j, n_j = s0 + past.to(tl.int32), tl.where(past, nn - N, nn)
                n64 = n_j.to(tl.int64)
                top = tl.load(top_ptr + g * spg + s_j, mask=key_ok, other=0) + n64  # [BK]
                p_j = tl.load(pos_ptr + g * spg + s_j, mask=key_ok, other=0)
                k_sq = tl.load(sq_ptr + p_j * N + n64, mask=key_ok, other=0.0)  # [BK]
            if ONE_D:
                kt = tl.load(k_ptr + off_one[:, None] + top[None, :], mask=(dd < D)[:, None] & key_ok[None, :],
                             other=0.0)  # [BD, BK]
                logits = tl.dot(q_one, kt, input_precision=PREC)
            else:
                logits = tl.zeros([BR, BK], tl.float32)
                for d0 in range(0, D, BD):
                    de = d0 + dd
                    d_ok = de < D
                    off = tl.load(off_ptr + de, mask=d_ok, other=0)  # [BD]
                    qt = tl.load(q_base + de[None, :] * sqd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                    kt = tl.load(k_ptr + off[:, None] + top[None, :], mask=d_ok[:, None] & key_ok[None, :], other=0.0)
                    logits = tl.dot(qt, kt, logits, input_precision=PREC)
            logits = logits + q_c2 * k_sq[None, :]
            v_at = k_ptr + top + centre  # [BK] the centre's channel 0
            v_step = N
        else:
            if ONE_D:  # the rows stay in registers
                kt = tl.load(k_base + dd[:, None] * skd + jj64[None, :] * skj,
                             mask=(dd < D)[:, None] & key_ok[None, :], other=0.0)  # [BD, BK]
                logits = tl.dot(q_one, kt, input_precision=PREC)
            else:
                logits = tl.zeros([BR, BK], tl.float32)
                for d0 in range(0, D, BD):
                    d_ok = (d0 + dd) < D
                    qt = tl.load(q_base + (d0 + dd)[None, :] * sqd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                    kt = tl.load(k_base + (d0 + dd)[:, None] * skd + jj64[None, :] * skj,
                                 mask=d_ok[:, None] & key_ok[None, :], other=0.0)  # [BD, BK]
                    logits = tl.dot(qt, kt, logits, input_precision=PREC)
            v_at = v_base + jj64 * svj
            v_step = svc
        logits = tl.where(key_ok[None, :], logits, float("-inf"))
        # the tile's maximum and the first key that holds it (one reduction)
        tmax, targ = tl.max(logits, 1, return_indices=True, return_indices_tie_break_left=True)  # [BR]
        arg = tl.where(tmax > m, j0 + targ.to(tl.int64), arg)  # strictly greater: an earlier tile keeps ties
        m_new = tl.maximum(m, tmax)
        alpha = tl.exp(m - m_new)
        lm = logits - m_new[:, None]  # [BR, BK]; -inf for keys past the end
        if HAS_LOGC:
            lc = tl.load(lc_ptr + g * slg + jj64 * slj, mask=key_ok, other=0.0)
            e = tl.exp(lm + lc[None, :])
        else:
            e = tl.exp(lm)
        lm0 = tl.where(key_ok[None, :], lm, 0.0)  # (0 * -inf would be NaN)
        ent = alpha * (ent + s * (m - m_new)) + tl.sum(e * lm0, 1)
        s = alpha * s + tl.sum(e, 1)
        v0 = tl.load(v_at, mask=key_ok, other=0.0)
        acc0 = alpha * acc0 + tl.sum(e * v0[None, :], 1)
        if C == 3:
            v1 = tl.load(v_at + v_step, mask=key_ok, other=0.0)
            v2 = tl.load(v_at + 2 * v_step, mask=key_ok, other=0.0)
            acc1 = alpha * acc1 + tl.sum(e * v1[None, :], 1)
            acc2 = alpha * acc2 + tl.sum(e * v2[None, :], 1)
        m = m_new
    out = (split * ng + g) * R + rows64  # [BR] index into [S, G, R]
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(ent_ptr + out, ent, mask=row_ok)
    tl.store(arg_ptr + out, arg, mask=row_ok)
    tl.store(acc_ptr + out * C, acc0, mask=row_ok)
    if C == 3:
        tl.store(acc_ptr + out * C + 1, acc1, mask=row_ok)
        tl.store(acc_ptr + out * C + 2, acc2, mask=row_ok)


def _table_kernel(
    # One program: BK keys of group g, written into the key table [G, D + 1, M] (the window's
    # entries, then |K|^2) and the centres [G, C, M]; key j of the chunk is key j0 + j of the
    # class, image (j0 + j) % N at position pos[g, (j0 + j) // N], or (LISTED) the key id ids[j0 + j]
    # = image * H*W + position. Windows are read from the padded images [N, H + 2d, W + 2d, C].
    pad_ptr, pos_ptr, ids_ptr, keys_ptr, vals_ptr,
    M, j0, N, W, HW, spn, spy, spx, spg, skg, skd, skj, svg, svc, svj, KW, D,
    C: tl.constexpr, LISTED: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
):
    g = tl.program_id(1).to(tl.int64)
    jj = tl.program_id(0) * BK + tl.arange(0, BK)  # [BK] key of the chunk
    ok = jj < M
    jj64 = jj.to(tl.int64)
    j = jj64 + j0  # key of the class
    if LISTED:
        kid = tl.load(ids_ptr + j, mask=ok, other=0)
        n, p = kid // HW, kid % HW
    else:
        n = j % N
        p = tl.load(pos_ptr + g * spg + j // N, mask=ok, other=0).to(tl.int64)
    base = n * spn + (p // W) * spy + (p % W) * spx  # [BK] the window's top-left entry
    sq = tl.zeros([BK], tl.float32)
    for e0 in range(0, D, BD):
        e = e0 + tl.arange(0, BD)  # [BD] entries (channel, row, column)
        e_ok = e < D
        off = ((e % (KW * KW)) // KW) * spy + (e % KW) * spx + e // (KW * KW)
        v = tl.load(pad_ptr + base[None, :] + off[:, None], mask=e_ok[:, None] & ok[None, :], other=0.0)  # [BD, BK]
        # entry x stride in 64 bits: a table row holds M keys, and 225 entries x 12 M keys pass 2^31
        tl.store(keys_ptr + g * skg + e.to(tl.int64)[:, None] * skd + jj64[None, :] * skj, v,
                 mask=e_ok[:, None] & ok[None, :])
        sq += tl.sum(v * v, 0)
    tl.store(keys_ptr + g * skg + D.to(tl.int64) * skd + jj64 * skj, sq, mask=ok)
    for ch in tl.static_range(C):
        centre = tl.load(pad_ptr + base + (KW // 2) * (spy + spx) + ch, mask=ok, other=0.0)
        tl.store(vals_ptr + g * svg + ch * svc + jj64 * svj, centre, mask=ok)


def _kernel(which: str = "stats"):
    """A Triton kernel ("stats": _local_stats_kernel, "table": _table_kernel), jitted on first use
    (so that importing this module needs no triton); anew under the interpreter (triton.jit reads
    TRITON_INTERPRET when it decorates)."""
    global tl
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if (which, interpret) not in _KERNELS:
        import triton
        import triton.language

        tl = triton.language
        # sizes and group strides change with every class group and k: specialising on them (a
        # variant for multiples of 16) would compile the kernel again and again in a trajectory
        if which == "stats":
            _KERNELS[which, interpret] = triton.jit(_local_stats_kernel, do_not_specialize=[
                "R", "K", "D", "keys_per_split", "sqg", "skg", "svg", "slg", "N", "CE", "spg"])
        else:
            _KERNELS[which, interpret] = triton.jit(_table_kernel, do_not_specialize=[
                "M", "j0", "N", "W", "HW", "spn", "spy", "spx", "spg", "skg", "skd", "skj", "svg", "svc", "svj",
                "KW", "D"])  # (k and the window size too: no compile per k)
    return _KERNELS[which, interpret]


def key_table(padded, k: int, w: int, pos=None, ids=None, j0: int = 0, j1: int | None = None, out=None):
    """Keys j0..j1 of a class table, built by one kernel: keys [G, D + 1, M] (window entries
    (channel, row, column), then |K|^2) and centres [G, C, M], M = j1 - j0 (out: those two
    tensors to write into, any strides; None: new ones). padded: the images
    [N, H + 2d, W + 2d, C] (keyset.padded_images); the keys are either every image at each
    position of pos [G, S] (key j: image j % N at pos[:, j // N], the dense order), or the ids
    [M'] (image * H*W + position; one group). Torch's gathers (engine.tables.torch_table) wrote the same
    windows in about five passes over the table."""
    n, hp, wp, c = padded.shape
    padded = padded.contiguous()
    listed = ids is not None
    ng = 1 if listed else pos.shape[0]
    total = ids.shape[0] if listed else pos.shape[1] * n
    j1 = total if j1 is None else j1
    m, dim = j1 - j0, c * k * k
    keys, vals = out if out is not None else (torch.empty(ng, dim + 1, m, device=padded.device),
                                              torch.empty(ng, c, m, device=padded.device))
    if keys.shape != (ng, dim + 1, m) or vals.shape != (ng, c, m):
        raise ElsvizError(f"key_table's out must be keys {[ng, dim + 1, m]} and centres {[ng, c, m]}, got "
                          f"{list(keys.shape)} and {list(vals.shape)}.")
    if m == 0:
        return keys, vals
    pos_t = padded if listed else pos.contiguous()
    ids_t = ids.contiguous() if listed else padded  # (a dummy pointer where unused)
    if ng > _MAX_GRID:  # CUDA grids allow 65,535 programs along the group axis: in pieces
        for g0 in range(0, ng, _MAX_GRID):
            key_table(padded, k, w, pos=pos[g0:g0 + _MAX_GRID], j0=j0, j1=j1,
                      out=(keys[g0:g0 + _MAX_GRID], vals[g0:g0 + _MAX_GRID]))
        return keys, vals
    bk = 64
    _kernel("table")[(math.ceil(m / bk), ng)](
        padded, pos_t, ids_t, keys, vals, m, j0, n, w, (hp - k + 1) * w, *padded.stride()[:3],
        0 if listed else pos_t.stride(0), *keys.stride(), *vals.stride(), k, dim,
        C=c, LISTED=listed, BK=bk, BD=16, num_warps=4,
    )
    return keys, vals


def _next_pow2(v: int) -> int:
    """The smallest power of 2 >= v (as triton.next_power_of_2)."""
    return 1 << max(0, v - 1).bit_length()


def _auto_splits(device: torch.device, programs: int, key_tiles: int) -> int:
    """Key splits so that about PROGRAMS_PER_SM programs per SM run; at least 4 key tiles each."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 1  # the interpreter: one program at a time
    want = math.ceil(PROGRAMS_PER_SM * sms / max(programs, 1))
    return max(1, min(want, key_tiles // 4))


def local_stats(q, keys, values, logc=None, *, splits: int | None = None,
                block_r: int | None = None, block_k: int | None = None, block_d: int | None = None):
    """Softmax statistics of the rows q [G, R, D+1] over the keys [G, K, D+1] (any strides),
    fused: m, s, acc [G, R, C], ent, arg (see the module's docstring). values [G, K, C] with
    C in {1, 3}; logc [G, K] (log counts added to the weights) or None.

    splits: key ranges computed by separate programs and combined after (None: enough to fill
    the GPU); block_*: tile sizes (None: the module's)."""
    ng, nr, dim = q.shape
    nk = keys.shape[1]
    c = values.shape[2]
    if keys.shape != (ng, nk, dim) or values.shape[:2] != (ng, nk) or c not in CHANNELS or nk < 1:
        raise ElsvizError(f"local_stats needs q [G, R, D+1], keys [G, K, D+1] (K >= 1) and values [G, K, C] with "
                          f"C = 1 or 3; got q {tuple(q.shape)}, keys {tuple(keys.shape)}, values {tuple(values.shape)}.")
    if logc is not None and logc.shape != (ng, nk):
        raise ElsvizError(f"local_stats needs logc [G, K] = {[ng, nk]} (or None), got {list(logc.shape)}.")
    if ng > _MAX_GRID:  # CUDA grids allow 65,535 programs along the group axis: in pieces
        cut = lambda v, g0: None if v is None else v[g0:g0 + _MAX_GRID]  # noqa: E731
        parts = [local_stats(cut(q, g0), cut(keys, g0), cut(values, g0), cut(logc, g0), splits=splits,
                             block_r=block_r, block_k=block_k, block_d=block_d) for g0 in range(0, ng, _MAX_GRID)]
        return tuple(torch.cat(p, 0) for p in zip(*parts))
    return _launch(q, nk, c, dim, logc, (keys, values, q, q, q, q), (*keys.stride(), *values.stride()), (0, 0, 0),
                   False, False, False, splits, (block_r, block_k, block_d))


def gather_stats(q, images, sq, k: int, pos=None, ids=None, logc=None, *, splits: int | None = None,
                 block_r: int | None = None, block_k: int | None = None, block_d: int | None = None):
    """local_stats without a key table: the kernel reads each key's window from the training
    images itself. q [G, R, C*k*k + 1] as for local_stats (column C*k*k holds c2); images
    [H + 2d, W + 2d, C, N], the training images zero-padded by d = k // 2 and laid out position
    first, image last, so that the keys of one position (consecutive in the dense order) are
    consecutive floats; sq [H*W, N] |K|^2 of the window at every position of every image. The keys:
    every image at each position of pos [G, S] (key j: image j % N at pos[:, j // N], the dense
    order of key_table), or the key ids [K] (image * H*W + position; one group) with logc [1, K].
    Returns m, s, acc, ent, arg as local_stats (arg: the key's index in that order)."""
    ng, nr, dim = q.shape
    hp, wp, c, n = images.shape
    h, w = hp - (k - 1), wp - (k - 1)
    listed = ids is not None
    if listed == (pos is not None) or (listed and ng != 1):
        raise ElsvizError("gather_stats takes either pos [G, S] or ids [K] (then q holds one group [1, R, D + 1]).")
    nk = ids.shape[0] if listed else pos.shape[1] * n
    if (dim != c * k * k + 1 or c not in CHANNELS or nk < 1 or tuple(sq.shape) != (h * w, n)
            or (not listed and pos.shape[0] != ng)):
        raise ElsvizError(f"gather_stats needs q [G, R, C*k*k + 1], images [H + k - 1, W + k - 1, C, N] with C = 1 or 3, "
                          f"sq [H*W, N] and at least one key; got q {tuple(q.shape)}, images {tuple(images.shape)}, "
                          f"k = {k}, sq {tuple(sq.shape)}, {'ids' if listed else 'pos'} "
                          f"{tuple((ids if listed else pos).shape)}.")
    if nk >= 2**31:  # key indices are 32-bit in the kernel (as in key_table)
        raise ElsvizError(f"gather_stats takes fewer than 2^31 keys per group, got {nk}: split the training set.")
    if logc is not None and logc.shape != (ng, nk):
        raise ElsvizError(f"gather_stats needs logc [G, K] = {[ng, nk]} (or None), got {list(logc.shape)}.")
    if ng > _MAX_GRID:  # CUDA grids allow 65,535 programs along the group axis: in pieces
        parts = [gather_stats(q[g0:g0 + _MAX_GRID], images, sq, k, pos=pos[g0:g0 + _MAX_GRID], splits=splits,
                              block_r=block_r, block_k=block_k, block_d=block_d) for g0 in range(0, ng, _MAX_GRID)]
        return tuple(torch.cat(p, 0) for p in zip(*parts))
    images, sq = images.contiguous(), sq.contiguous()
    # where each window starts (the float of its entry (0, 0, 0)), per position or per listed key,
    # and each entry's offset from there: the kernel only adds
    pos = None if listed else pos.contiguous()
    at = ids % (h * w) if listed else pos
    top = ((at // w) * wp + at % w) * (c * n)
    if listed:
        top, sq = top + ids // (h * w), sq.flatten()[at * n + ids // (h * w)]
    e = torch.arange(dim - 1, device=q.device)
    offsets = ((e % (k * k)) // k * wp + e % k) * (c * n) + (e // (k * k)) * n
    bk = block_k or BLOCK_K
    return _launch(q, nk, c, dim - 1, logc, (images, images, pos if not listed else top, top.contiguous(), sq, offsets),
                   (0,) * 6, (n, (k // 2) * (k + 1), 0 if listed else top.stride(0)), True, listed, n < bk, splits,
                   (block_r, bk, block_d))


def _launch(q, nk, c, dim, logc, inputs, strides, gather_args, gather, listed, wraps, splits, blocks):
    """One launch of the statistics kernel over row tiles x groups x key splits, the splits
    combined after. inputs: (keys, values, pos, top, sq, off) pointers (dummies where unused);
    strides: those of keys and values; gather_args: N, the centre's entry, the group stride of pos
    and top (GATHER); dim: the entries the product runs over (D + 1 from a table, the window's D
    when gathering)."""
    ng, nr, _ = q.shape
    block_r, block_k, block_d = blocks
    # tiles no larger than the problem (tl.dot needs 16 at least): few rows (bbELS's border
    # classes) or a short window (k = 3) waste less
    br = block_r or min(BLOCK_R, max(16, _next_pow2(nr)))
    bk = block_k or BLOCK_K
    bd = block_d or min(BLOCK_D, max(16, _next_pow2(dim)))
    row_tiles, key_tiles = math.ceil(nr / br), math.ceil(nk / bk)
    ns = splits or _auto_splits(q.device, row_tiles * ng, key_tiles)
    ns = max(1, min(ns, key_tiles))
    per_split = math.ceil(key_tiles / ns) * bk
    ns = math.ceil(nk / per_split)  # no empty split
    dev = q.device
    m = torch.empty(ns, ng, nr, device=dev)
    s = torch.empty(ns, ng, nr, device=dev)
    acc = torch.empty(ns, ng, nr, c, device=dev)
    ent = torch.empty(ns, ng, nr, device=dev)
    arg = torch.empty(ns, ng, nr, dtype=torch.int64, device=dev)
    lc = logc if logc is not None else q  # a dummy pointer when there are no counts
    keys, values, pos, top, sq, off = inputs
    _kernel("stats")[(row_tiles, ng, ns)](
        q, keys, values, lc, pos, top, sq, off, m, s, acc, ent, arg, nr, nk, dim, per_split,
        *q.stride(), *strides, *(logc.stride() if logc is not None else (0, 0)), *gather_args,
        C=c, HAS_LOGC=logc is not None, PREC=PRECISION, BR=br, BK=bk, BD=bd, ONE_D=dim <= bd,
        GATHER=gather, LISTED=listed, WRAPS=wraps,
        num_warps=NUM_WARPS, enable_fp_fusion=True,  # a*b+c in one rounding (and no warning of Triton 3.9's)
    )
    if ns == 1:
        return m[0], s[0], acc[0], ent[0], arg[0]
    # combine the key ranges, in order: on equal maxima the earlier range's key stays
    mx = m.amax(0)  # [G, R]
    w = torch.exp(m - mx)  # [S, G, R]
    first = (m == mx).to(torch.int8).argmax(0)  # [G, R] first range that holds the maximum
    return (mx, (w * s).sum(0), (w.unsqueeze(-1) * acc).sum(0), (w * (ent + s * (m - mx))).sum(0),
            torch.gather(arg, 0, first.unsqueeze(0)).squeeze(0))
