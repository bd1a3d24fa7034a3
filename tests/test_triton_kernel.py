"""The fused Triton kernel (elsviz/kernels/triton.py) reading key tables, on the CPU under Triton's
interpreter (the same kernel gathering windows from the images: tests/test_triton_gather.py).

TRITON_INTERPRET=1 runs a kernel's program instances one after another in numpy on CPU tensors, so
the kernel's arithmetic (tiles, masks, the online max and rescaling, key splits, ties) is tested
here without a GPU; its speed is not (elsviz/gpu_check.py, on a GPU). Sizes are small and tiles are
16 wide so that every case crosses several row and key tiles in well under a second.

Two levels: `local_stats` against a float64 torch statement of its contract, and the Engine with
ELSVIZ_KERNEL=triton against tests/reference.py and the dense torch path.
"""
import math
import os
import warnings

import numpy as np
import pytest
import torch

from elsviz import ElsvizError
from tests.reference import noisy_query, random_images
from tests.test_engine_exact import check_posterior
from tests.test_engine_fast_paths import silhouettes



def _have_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_triton(), reason="triton is not installed (pip install -r requirements-dev.txt)")

TILES = dict(block_r=16, block_k=16, block_d=16)


@pytest.fixture
def interpret():
    """The kernel under Triton's interpreter. TRITON_INTERPRET=1 must be set before triton is
    first imported (tests/conftest.py does so where there is no GPU), so it cannot be turned on here."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 is not set for this process (on a GPU machine: "
                    "TRITON_INTERPRET=1 pytest tests/test_triton_kernel.py -k 'not cuda')")
    from elsviz.kernels import triton as triton_kernel

    return triton_kernel


def contract(q, keys, values, logc=None):
    """local_stats as its docstring states it, in float64, with whole [G, R, K] logits."""
    lg = torch.einsum("grd,gjd->grj", q.double(), keys.double())
    m = lg.amax(-1)
    lm = lg - m.unsqueeze(-1)
    e = torch.exp(torch.clamp(lm + (0.0 if logc is None else logc.double().unsqueeze(1)), min=-80.0))
    return (m, e.sum(-1), torch.einsum("grj,gjc->grc", e, values.double()), (e * lm).sum(-1),
            lg.argmax(-1))


def check(got, want):
    m, s, acc, ent, arg = got
    wm, ws, wacc, went, warg = want
    assert arg.dtype == torch.int64 and m.dtype == s.dtype == acc.dtype == ent.dtype == torch.float32
    assert torch.equal(arg, warg), f"argmax differs at {torch.nonzero(arg != warg)[:5].tolist()}"
    scale = wm.abs().clamp(min=1.0)  # float32 logits: relative to their size
    assert ((m.double() - wm).abs() <= 1e-6 * scale).all()
    np.testing.assert_allclose(s.double(), ws, rtol=1e-5)
    # acc, ent: relative to what they are compared with (acc / s, ent / s are what the engine uses)
    np.testing.assert_allclose(acc.double(), wacc, rtol=1e-5, atol=1e-5 * float(ws.max()))
    np.testing.assert_allclose(ent.double(), went, rtol=1e-5, atol=1e-5 * float(ws.max()))


def problem(g, r, k, d, c, seed, scale=1.0, logc=False, dup=()):
    """Random rows and keys; dup: pairs (later, earlier) of key indices made identical (exact ties)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(g, r, d, generator=gen) * scale
    keys = torch.randn(g, k, d, generator=gen)
    for later, earlier in dup:
        keys[:, later] = keys[:, earlier]
    values = torch.rand(g, k, c, generator=gen) * 2 - 1
    lc = torch.log(torch.randint(1, 5, (g, k), generator=gen).float()) if logc else None
    return q, keys, values, lc


@pytest.mark.parametrize("g,r,k,d,c,logc", [
    (1, 5, 7, 3, 1, False),  # smaller than one tile everywhere
    (1, 37, 83, 20, 1, False),  # R, K, D not multiples of the tiles
    (3, 20, 50, 17, 3, True),  # G > 1, colour, log counts
    (2, 16, 64, 16, 3, False),  # exact multiples
])
def test_matches_the_contract(interpret, g, r, k, d, c, logc):
    q, keys, values, lc = problem(g, r, k, d, c, seed=r + k, logc=logc)
    check(interpret.local_stats(q, keys, values, lc, **TILES), contract(q, keys, values, lc))


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_key_table_writes_the_windows_of_the_torch_gathers(interpret, c, k):
    """key_table: one kernel writes what engine._table (dense order, groups, a slice j0..j1) and
    keyset.window_table (listed key ids) gather, window entries and centres exactly."""
    from elsviz.engine.tables import torch_table as _table
    from elsviz.engine.tables import centre_entries, padded_images, window_table

    imgs = torch.rand(7, c, 6, 8, generator=torch.Generator().manual_seed(k + c)) * 2 - 1
    padded = padded_images(imgs, k)
    pos = torch.tensor([[0, 5, 9, 47], [12, 13, 20, 30]])  # two groups, corners included
    keys, vals = interpret.key_table(padded, k, 8, pos=pos)
    want_keys, want_vals = next(_table(imgs, pos, k, 1000))
    assert torch.equal(keys[:, :-1], want_keys[:, :-1]) and torch.equal(vals, want_vals)
    torch.testing.assert_close(keys[:, -1], want_keys[:, -1], rtol=1e-6, atol=1e-6)  # |K|^2
    part = interpret.key_table(padded, k, 8, pos=pos, j0=5, j1=19)
    assert torch.equal(part[0], keys[:, :, 5:19]) and torch.equal(part[1], vals[:, :, 5:19])
    ids = torch.tensor([3 * 48 + 7, 0, 6 * 48 + 47, 2 * 48 + 20])  # image * H*W + position
    listed, centres = interpret.key_table(padded, k, 8, ids=ids)
    want = window_table(padded, ids // 48, ids % 48, k, 8)
    assert torch.equal(listed[0, :-1], want[:-1]) and torch.equal(centres[0], want[centre_entries(c, k)])
    torch.testing.assert_close(listed[0, -1], want[-1], rtol=1e-6, atol=1e-6)


# run in a child process: 32-bit offsets would write 8 GB before the table, and the crash would end the whole run
PAST_2_31 = """
import torch
from elsviz.kernels import triton as tk
from elsviz.engine.tables import padded_images, window_table

imgs = torch.rand(5, 1, 6, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
ids = torch.tensor([0, 47, 2 * 48 + 20, 4 * 48 + 9, 3 * 48 + 33])
row = 2**28
try:
    store = torch.empty(9 * row + ids.shape[0])  # untouched pages cost no memory
except RuntimeError:
    print("no room")
    raise SystemExit(0)
keys = store.as_strided((1, 10, ids.shape[0]), (0, row, 1))
centres = torch.empty(1, 1, ids.shape[0])
padded = padded_images(imgs, 3)
got, _ = tk.key_table(padded, 3, 8, ids=ids, out=(keys, centres))
want = window_table(padded, ids // 48, ids % 48, 3, 8)
assert got is keys and torch.equal(keys[0, :-1], want[:-1])
torch.testing.assert_close(keys[0, -1], want[-1], rtol=1e-6, atol=1e-6)
print("ok")
"""


def test_key_table_offsets_past_2_to_the_31(interpret):
    """A table row holds M keys, so entry x stride passes 2^31 on real sets (60,000 images at k = 15:
    225 entries x 12 M keys); 32-bit offsets would wrap and write elsewhere. Here the rows of the
    table lie 2^28 floats apart (9.7 GB reserved, a few pages of it written), so entry 8 and |K|^2
    (row 9) lie past 2^31."""
    import subprocess
    import sys
    from pathlib import Path

    from elsviz.engine.tables import padded_images

    run = subprocess.run([sys.executable, "-c", PAST_2_31], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    if run.stdout.strip() == "no room":
        pytest.skip("this machine does not reserve 9.7 GB of untouched memory")
    assert run.stdout.strip() == "ok", run.stdout
    padded = padded_images(torch.zeros(2, 1, 4, 4), 3)
    with pytest.raises(ElsvizError, match="out must be"):
        interpret.key_table(padded, 3, 4, ids=torch.tensor([0, 1]), out=(torch.empty(1, 5, 2), torch.empty(1, 1, 2)))


@pytest.mark.parametrize("splits", [2, 3, 7])
def test_key_splits_combine_exactly(interpret, splits):
    """Keys split over programs (flash-decoding) and combined after: the same statistics."""
    q, keys, values, lc = problem(2, 20, 100, 9, 3, seed=5, logc=True, dup=[(90, 3), (60, 40)])
    check(interpret.local_stats(q, keys, values, lc, splits=splits, **TILES), contract(q, keys, values, lc))


@pytest.mark.parametrize("splits", [None, 4])
def test_exact_ties_name_the_first_key(interpret, splits):
    """Duplicate keys tie bit for bit: the first index wins, within a tile and across tiles and
    splits, whatever the log counts (which do not enter the maximum)."""
    q, keys, values, _ = problem(1, 24, 70, 7, 1, seed=7)
    # on a grid of 1/8 every product and sum is exact in float32, whatever order the interpreter's
    # BLAS sums in (its blocking differs with the row's place in a tile, and on some CPUs copies
    # then differ in the last bit); the kernel's own order is what is under test
    q, keys = (q * 8).round() / 8, (keys * 8).round() / 8
    keys[0, [5, 12, 63]] = keys[0, 50].clone()  # key 50 has copies in tiles 0, 0 and 3 (its own: 3)
    keys[..., -1] = (keys[..., :-1] ** 2).sum(-1)  # (K, |K|^2): l = -|Q - K|^2 / 2 + a term of Q
    q[0, :12, :-1], q[0, :12, -1] = keys[0, 50, :-1], -0.5  # rows whose best key is 50 and its copies
    lc = torch.zeros(1, 70)
    lc[0, 63] = 5.0  # a heavier copy after the first: still not the argmax
    got = interpret.local_stats(q, keys, values, lc, splits=splits, **TILES)
    assert (got[4][0, :12] == 5).all()
    check(got, contract(q, keys, values, lc))


@pytest.mark.parametrize("scale", [0.05, 1.0, 300.0])
def test_large_negative_logits(interpret, scale):
    """Logits like the engine's: (c1 Q, c2) against (K, |K|^2). c1 = a/b^2 is ~1e3 near t = 0
    (logits ~ -1e4, one key takes everything) and c2 -> 0 near t = 1 (all keys count)."""
    for t in (0.02, 0.5, 0.98):
        a, b = math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)
        c1, c2 = a / b**2, -a * a / (2 * b * b)
        gen = torch.Generator().manual_seed(int(t * 100))
        win = torch.rand(1, 45, 12, generator=gen) * scale / 100
        keys = torch.cat([win, (win * win).sum(-1, keepdim=True)], -1)  # [1, K, D + 1]
        qw = win[:, :9] + 0.1 * torch.randn(1, 9, 12, generator=gen) * scale / 100
        q = torch.cat([c1 * qw, torch.full((1, 9, 1), c2)], -1)
        values = win[..., :1]
        check(interpret.local_stats(q, keys, values, **TILES), contract(q, keys, values))


@pytest.mark.parametrize("g,r,k,d", [(1, 9, 30, 5), (2, 70, 150, 40)])
def test_default_tiles(interpret, g, r, k, d):
    """The tiles local_stats picks itself (sized to R and D, 16 at least; 64 keys)."""
    q, keys, values, lc = problem(g, r, k, d, 1, seed=d, logc=True)
    check(interpret.local_stats(q, keys, values, lc), contract(q, keys, values, lc))


def test_many_groups_go_in_launches_of_at_most_the_grid_limit(interpret, monkeypatch):
    monkeypatch.setattr(interpret, "_MAX_GRID", 2)
    q, keys, values, lc = problem(5, 7, 20, 4, 3, seed=2, logc=True)
    check(interpret.local_stats(q, keys, values, lc, **TILES), contract(q, keys, values, lc))


def test_strided_keys_like_the_table(interpret):
    """The engine passes its key table [G, D + 1, K] transposed (not contiguous)."""
    q, keys, values, lc = problem(2, 18, 40, 5, 3, seed=11)
    kt, vt = keys.transpose(1, 2).contiguous(), values.transpose(1, 2).contiguous()
    got = interpret.local_stats(q, kt.transpose(1, 2), vt.transpose(1, 2), **TILES)
    check(got, contract(q, keys, values))


def test_bad_shapes_are_refused(interpret):
    q, keys, values, _ = problem(1, 4, 6, 3, 1, seed=1)
    with pytest.raises(ElsvizError, match="keys"):
        interpret.local_stats(q, keys[..., :2], values)
    with pytest.raises(ElsvizError, match="C = 1 or 3"):
        interpret.local_stats(q, keys, torch.zeros(1, 6, 2))
    with pytest.raises(ElsvizError, match="logc"):
        interpret.local_stats(q, keys, values, torch.zeros(1, 5))


# -- compiled for an H100 ahead of time (no GPU needed) ------------------------------------------
# Run in a fresh process: Triton cannot generate code in a process whose triton was imported under
# TRITON_INTERPRET=1 (this one, where there is no GPU).
AOT = """
import json, subprocess, sys, tempfile
from pathlib import Path
import triton, triton.language
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from elsviz.kernels import triton as tk

tk.tl = triton.language  # what tk._kernel() binds
stats, table = JITFunction(tk._local_stats_kernel), JITFunction(tk._table_kernel)
builds = [(stats, dict(C=c, HAS_LOGC=has_logc, PREC=tk.PRECISION, BR=tk.BLOCK_R, BK=tk.BLOCK_K, BD=tk.BLOCK_D, ONE_D=one_d,
                       GATHER=gather, LISTED=listed, WRAPS=False), tk.NUM_WARPS)
          for c, has_logc, one_d, gather, listed in json.loads(sys.argv[1])]
builds += [(table, dict(C=c, LISTED=listed, BK=64, BD=16), 4) for c, listed in json.loads(sys.argv[2])]
out = []
for fn, consts, warps in builds:
    sig = {n: "constexpr" if n in consts else ("*i64" if n in ("arg_ptr", "pos_ptr", "ids_ptr", "top_ptr", "off_ptr") else "*fp32")
           if n.endswith("_ptr") else "i32" for n in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "enable_fp_fusion": True})
    cubin = Path(tempfile.mkdtemp()) / "kernel.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    fields = dict(f.split(":") for f in next(line for line in usage.splitlines() if "REG:" in line).split())
    out.append({"bytes": len(kernel.asm["cubin"]), "regs": int(fields["REG"]), "stack": int(fields["STACK"])})
print(json.dumps(out))
"""
VARIANTS = [  # C, HAS_LOGC, ONE_D, GATHER, LISTED: from tables, then windows gathered (every key, or listed ids)
    (1, False, False, False, False), (1, False, True, False, False), (3, True, False, False, False),
    (1, False, True, True, False), (1, False, False, True, False), (3, True, False, True, True),
]
TABLE_VARIANTS = [(1, False), (1, True), (3, True)]  # the table kernel: C, LISTED


def test_compiles_for_an_h100_without_spilling_registers():
    """Triton compiles for a GPU without one: the kernel must build for sm_90 (H100) with the
    module's tiles, everything in registers (a spill to local memory would cost more than the
    fusion saves)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if triton.__version__ != "3.9.0":  # the compiler's API (ASTSource, GPUTarget) moves between versions
        pytest.skip(f"the ahead-of-time build is written for triton 3.9.0 (requirements-dev.txt), this is {triton.__version__}")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this triton wheel has no NVIDIA tools")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", AOT, json.dumps(VARIANTS), json.dumps(TABLE_VARIANTS)],
                         capture_output=True, text=True, env=env, cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == len(VARIANTS) + len(TABLE_VARIANTS)
    for variant, res in zip(VARIANTS + TABLE_VARIANTS, results):
        assert res["bytes"] > 0 and res["regs"] <= 255
        assert res["stack"] == 0, f"{variant}: {res['regs']} registers, {res['stack']} bytes spilled"


# -- the Engine with ELSVIZ_KERNEL=triton ----------------------------------------------------------
# make_pair runs each test with and without the compiled CPU kernel (tests/conftest.py); here
# ELSVIZ_KERNEL=triton decides, so once is enough
ONCE = pytest.mark.parametrize("make_pair", ["kernel"], indirect=True)


@pytest.fixture
def kernel_engine(interpret, monkeypatch, make_pair):
    """make_pair for engines with the kernel on, reading key tables (plan.GATHER off); counts the
    kernel's calls."""
    from elsviz.engine import plan

    monkeypatch.setattr(plan, "GATHER", False)
    monkeypatch.setenv("ELSVIZ_KERNEL", "triton")
    calls = {"n": 0}
    real = interpret.local_stats

    def spy(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **{**TILES, **kwargs})

    monkeypatch.setattr(interpret, "local_stats", spy)
    return make_pair, calls


CASES = [  # machine, images, output size, k, labelled, B
    ("els", lambda: random_images(11, 1, 7, 8, seed=1, levels=3), (7, 8), 3, False, 2),
    ("bbels", lambda: random_images(9, 3, 6, 7, seed=2), (6, 7), 3, True, 1),
    ("bbels", lambda: silhouettes(12, 8, 8, seed=3), (8, 8), 5, False, 1),
    ("ls", lambda: random_images(13, 1, 5, 6, seed=4, levels=2), (5, 6), 1, False, 2),  # G = 30
    ("bbels", lambda: random_images(10, 1, 6, 7, seed=5, levels=3), (8, 9), 3, False, 1),  # another output size
]


@ONCE
@pytest.mark.parametrize("t", [0.05, 0.6])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_engine_with_the_kernel_matches_the_reference(kernel_engine, case, t):
    make_pair, calls = kernel_engine
    engine = case_matches_the_reference(make_pair, case, t)
    assert engine.kernel() == "triton"
    assert calls["n"] > 0, "the kernel did not run"


def case_matches_the_reference(make_pair, case, t):
    """CASES[case] at t through an engine of make_pair, checked against the reference; returns the
    engine."""
    machine, make_images, out, k, labelled, bsz = CASES[case]
    images = make_images()
    labels = (np.arange(len(images)) % 3) if labelled else None
    label = 1 if labelled else None
    engine, ref = make_pair(machine, images, labels)
    x = noisy_query(bsz, images.shape[1], *out, t, seed=case + 20)
    post = engine.denoise(torch.from_numpy(x), t, k, label=label)
    check_posterior(post, ref.denoise(machine, x, t, k, label=label), ref, machine, x, t, k, label)
    return engine


@ONCE
def test_engine_with_the_kernel_agrees_with_the_dense_path(kernel_engine, monkeypatch):
    """Same heaviest key (where no other window ties with it) and tie count as the torch path."""
    make_pair, calls = kernel_engine
    images = silhouettes(16, 9, 9, seed=5)
    x = torch.from_numpy(noisy_query(2, 1, 9, 9, 0.2, seed=6))
    fused, _ = make_pair("els", images)
    got = fused.denoise(x, 0.2, 3)
    assert calls["n"] > 0
    tables = [v[0] for key, v in fused._cache._items.items() if key[0] == "dtable"]
    assert len(tables) == 1 and tables[0][0].shape[-1] < 16 * 9 * 9 / 2, "the class's distinct keys were not used"
    monkeypatch.setenv("ELSVIZ_KERNEL", "torch")
    dense, _ = make_pair("els", images)
    assert dense.kernel() != "triton"
    same_as_the_torch_path(got, dense.denoise(x, 0.2, 3))


def same_as_the_torch_path(got, want):
    """Posteriors of the kernel and of the torch path: the same numbers within float32 rounding, the
    same tie counts, and the same heaviest key wherever no other window ties with it."""
    torch.testing.assert_close(got.mean, want.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.score, want.score, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.entropy, want.entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.source_weight, want.source_weight, atol=1e-6, rtol=1e-4)
    assert torch.equal(got.source_count, want.source_count)
    unique = want.source_count == 1
    assert unique.any()
    assert torch.equal(got.source_index[unique], want.source_index[unique])
    assert torch.equal(got.source_pos[unique], want.source_pos[unique])


@ONCE
def test_exact_ties_between_distinct_windows_name_the_dense_paths_key(kernel_engine, monkeypatch):
    """A query of zeros gives every window of +-1 pixels the same logit (-a^2 |K|^2 / 2b^2, |K|^2 =
    k^2 exactly): the dense path names the first key. The distinct keys must keep the order of
    first occurrence for the kernel to name the same one (ordered by hash, it names another)."""
    make_pair, calls = kernel_engine
    ties_name_the_dense_paths_key(make_pair, monkeypatch)
    assert calls["n"] > 0


def ties_name_the_dense_paths_key(make_pair, monkeypatch):
    """ELS, k = 3, on 16 images of +-1 pixels (2^9 windows, some repeated) and a query of zeros:
    through the kernel (the environment's choice), then the torch path; the same keys named."""
    images = random_images(16, 1, 9, 9, seed=7, levels=2)
    x = torch.zeros(1, 1, 9, 9)
    fused, _ = make_pair("els", images)
    got = fused.denoise(x, 0.5, 3)
    monkeypatch.setenv("ELSVIZ_KERNEL", "torch")
    dense, _ = make_pair("els", images)
    want = dense.denoise(x, 0.5, 3)
    assert torch.equal(got.source_index, want.source_index) and torch.equal(got.source_pos, want.source_pos)
    assert torch.equal(got.source_count, want.source_count)
    torch.testing.assert_close(got.mean, want.mean, atol=1e-5, rtol=1e-5)
    return fused


@ONCE
def test_a_table_too_big_for_the_cache_goes_in_chunks(kernel_engine):
    """No cached table: the keys come in chunks, each through the kernel, merged in order."""
    make_pair, calls = kernel_engine
    images = random_images(10, 1, 6, 6, seed=8, levels=3)
    engine, ref = make_pair("els", images, cache_bytes=2000, chunk_elems=256)
    x = noisy_query(1, 1, 6, 6, 0.3, seed=9)
    post = engine.denoise(torch.from_numpy(x), 0.3, 3)
    assert calls["n"] > 1
    check_posterior(post, ref.denoise("els", x, 0.3, 3), ref, "els", x, 0.3, 3)


@ONCE
def test_a_failing_kernel_falls_back_to_torch_with_one_warning(kernel_engine, monkeypatch):
    make_pair, _ = kernel_engine
    from elsviz.kernels import triton as triton_kernel

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(triton_kernel, "local_stats", broken)
    engine = falls_back_with_one_warning(make_pair, "els", "Triton kernel failed")
    assert engine.kernel() != "triton"


def falls_back_with_one_warning(make_pair, machine, match):
    """A call on 8 random images whose kernel fails: one warning that matches, an answer as the
    reference's, and no second warning on the next call. Returns the engine."""
    images = random_images(8, 1, 6, 6, seed=10)
    engine, ref = make_pair(machine, images)
    x = noisy_query(1, 1, 6, 6, 0.5, seed=11)
    with pytest.warns(UserWarning, match=match):
        post = engine.denoise(torch.from_numpy(x), 0.5, 3)
    check_posterior(post, ref.denoise(machine, x, 0.5, 3), ref, machine, x, 0.5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.denoise(torch.from_numpy(x), 0.5, 3)  # no second warning
    return engine


def test_kernel_switch(monkeypatch):
    from elsviz.engine.plan import kernel_for

    monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)
    assert "triton" not in kernel_for(torch.device("cpu"))
    monkeypatch.setenv("ELSVIZ_KERNEL", "cuda-please")
    with pytest.raises(ElsvizError, match="ELSVIZ_KERNEL"):
        kernel_for(torch.device("cpu"))
    monkeypatch.setenv("ELSVIZ_KERNEL", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.warns(UserWarning, match="CUDA devices only"):
        assert "triton" not in kernel_for(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_for(torch.device("cpu"))[0] == "triton"


# -- on a GPU: the compiled kernel (not the interpreter), production tiles -------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by python -m elsviz.gpu_check)")


@pytest.fixture
def compiled():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the interpreter and the compiler cannot share a process")
    from elsviz.kernels import triton as triton_kernel

    return triton_kernel


@needs_cuda
@pytest.mark.parametrize("splits", [None, 1, 5])
@pytest.mark.parametrize("g,r,k,d,c,logc", [(1, 300, 5000, 50, 1, False), (3, 77, 2001, 76, 3, True), (2, 5, 9, 2, 1, False)])
def test_cuda_kernel_matches_the_contract(compiled, splits, g, r, k, d, c, logc):
    q, keys, values, lc = problem(g, r, k, d, c, seed=k, logc=logc, dup=[(k - 1, 0), (k // 2, 1)])
    cuda = [None if v is None else v.cuda() for v in (q, keys, values, lc)]
    got = compiled.local_stats(*cuda, splits=splits)
    check([v.cpu() for v in got], contract(q, keys, values, lc))


@needs_cuda
def test_cuda_kernel_ties_and_large_logits(compiled):
    q, keys, values, _ = problem(1, 200, 3000, 49, 1, seed=3)
    keys[0, [7, 9, 1500, 2999]] = keys[0, 2000].clone()  # copies in one tile (7, 9) and in others
    keys[..., -1] = (keys[..., :-1] ** 2).sum(-1)
    q[0, :, :-1] = keys[0, 2000, :-1] + 0.01 * torch.randn(200, 48)
    q[0, :, -1] = -0.5
    q *= 1e3  # logits ~ -1e6 .. 0: one key takes everything
    got = [v.cpu() for v in compiled.local_stats(q.cuda(), keys.cuda(), values.cuda())]
    assert (got[4] == 7).all()
    check(got, contract(q, keys, values))


@ONCE
@needs_cuda
@pytest.mark.parametrize("t", [0.05, 0.6])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_cuda_engine_with_the_kernel_matches_the_reference(compiled, monkeypatch, make_pair, case, t):
    from types import SimpleNamespace

    from elsviz.engine import plan
    from tests.test_engine_exact import FIELDS

    monkeypatch.setattr(plan, "GATHER", False)  # key tables (the gather: tests/test_triton_gather.py)
    monkeypatch.setenv("ELSVIZ_KERNEL", "triton")
    calls = {"n": 0}
    real = compiled.local_stats
    monkeypatch.setattr(compiled, "local_stats", lambda *a, **kw: (calls.__setitem__("n", calls["n"] + 1), real(*a, **kw))[1])
    machine, make_images, out, k, labelled, bsz = CASES[case]
    images = make_images()
    labels = (np.arange(len(images)) % 3) if labelled else None
    label = 1 if labelled else None
    engine, ref = make_pair(machine, images, labels, device="cuda")
    x = noisy_query(bsz, images.shape[1], *out, t, seed=case + 20)
    post = engine.denoise(torch.from_numpy(x).cuda(), t, k, label=label)
    assert calls["n"] > 0 and engine.kernel() == "triton", "the kernel did not run (or failed and fell back)"
    post = SimpleNamespace(**{f: getattr(post, f).cpu() for f in FIELDS})
    check_posterior(post, ref.denoise(machine, x, t, k, label=label), ref, machine, x, t, k, label)


def test_gpu_check_sweep_runs_here(interpret):
    """elsviz.gpu_check --sweep (for a GPU session) on a tiny problem, interpreted: every tile
    configuration builds and agrees with the module's."""
    from elsviz.gpu_check import SWEEP_CONFIGS, _sweep

    rows = _sweep("cpu", {"tiny": (20, 150, 12)})
    assert len(rows) == len(SWEEP_CONFIGS)
    assert all(r["same_arg"] == 1.0 and r["s_rel_diff"] < 1e-5 for r in rows)
