"""The Triton kernel gathering its keys' windows from the training images (no key table:
kernels/triton.py, gather_stats), on the CPU under Triton's interpreter, and the plan that picks it.

Two levels, as tests/test_triton_kernel.py: gather_stats against a float64 statement of its contract
whose windows torch's gathers cut from zero-padded images (tables.key_windows, not the kernel's
layout), and the Engine through it against tests/reference.py and the torch path. Sets are tiny and
tiles 16 wide, so that every case crosses several row and key tiles in about a second.
"""
import math

import pytest
import torch

from elsviz import ElsvizError
from tests.reference import noisy_query
from tests.test_engine_fast_paths import silhouettes
from tests.test_triton_kernel import (CASES, ONCE, TILES, case_matches_the_reference, check, contract,
                                      falls_back_with_one_warning, same_as_the_torch_path,
                                      ties_name_the_dense_paths_key)
from tests.test_triton_kernel import interpret  # noqa: F401 (the fixture: the kernel module, interpreted)

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -r requirements-dev.txt)")


def statement(imgs, k, q, pos=None, ids=None, logc=None):
    """gather_stats' contract in float64: the windows of the keys (every image at each position of
    pos [G, S] in the dense order, or the ids [K]) cut by torch's gathers, with the |K|^2 the kernel
    is given (gather_layout's, float32: at t ~ 0 its rounding times c2 ~ -500 moves a logit by
    1e-4, whoever sums it), then contract()."""
    from elsviz.engine.tables import key_windows, padded_images

    n, c, h, w = imgs.shape
    sq = layout(imgs, k)[1].double()  # [H*W, n]
    padded = padded_images(imgs.double(), k)
    if ids is not None:
        img, at = (ids // (h * w)).view(1, -1), (ids % (h * w)).view(1, -1)
    else:
        j = torch.arange(pos.shape[1] * n)
        img, at = (j % n).expand(pos.shape[0], -1), pos[:, j // n]
    win = key_windows(padded, img.flatten(), at.flatten(), k, w).view(*img.shape, -1)  # [G, K, D]
    keys = torch.cat([win, sq[at, img].unsqueeze(-1)], -1)  # (K, |K|^2)
    d = k // 2
    centres = win[..., [ch * k * k + d * k + d for ch in range(c)]]  # [G, K, C]
    return contract(q, keys, centres, logc)


def grid_problem(n, c, h, w, k, rows, groups, seed):
    """Images and rows on grids of 1/2 and 1/8 (every product and sum exact in float32, so exact
    ties stay ties whatever order a sum takes; few grey levels, so windows repeat): imgs, q."""
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.randint(-2, 3, (n, c, h, w), generator=gen).float() / 2
    dim = c * k * k
    q = torch.randint(-8, 9, (groups, rows, dim + 1), generator=gen).float() / 8
    q[..., -1] = -0.5  # c2: l = <Q, K> - |K|^2 / 2
    return imgs, q


def layout(imgs, k):
    from elsviz.engine.tables import gather_layout

    return gather_layout(imgs, k)


@pytest.mark.parametrize("c,k", [(1, 1), (1, 3), (3, 5)])
def test_the_layout_holds_the_padded_images_and_every_windows_squares(c, k):
    """gather_layout: the images zero-padded, position first; |K|^2 of every window within float32
    rounding of its float64 sum, and bit for bit the same for identical windows (a shifted copy)."""
    import torch.nn.functional as F

    from elsviz.engine.tables import key_windows, padded_images

    gen = torch.Generator().manual_seed(c + k)
    imgs = torch.rand(3, c, 7, 9, generator=gen) * 2 - 1
    imgs[2, :, :, 1:] = imgs[1, :, :, :-1]  # image 2: image 1 moved one column right
    images, sq = layout(imgs, k)
    d = k // 2
    assert torch.equal(images, F.pad(imgs, (d, d, d, d)).permute(2, 3, 1, 0))
    img, at = torch.arange(3).repeat_interleave(63), torch.arange(63).repeat(3)
    win = key_windows(padded_images(imgs.double(), k), img, at, k, 9)
    torch.testing.assert_close(sq[at, img].double(), (win * win).sum(-1), rtol=1e-6, atol=1e-6)
    u, v = torch.meshgrid(torch.arange(d, 7 - d), torch.arange(d + 1, 9 - d), indexing="ij")
    moved = (u * 9 + v).flatten()  # positions whose window in image 2 is image 1's, one column left
    assert torch.equal(sq[moved, 2], sq[moved - 1, 1])


@pytest.mark.parametrize("n,c,h,w,k", [
    (5, 1, 6, 8, 3),  # grey, even sizes
    (4, 3, 5, 7, 3),  # colour, odd sizes
    (3, 1, 7, 5, 5),  # a larger window (D = 25: two pieces of 16 entries)
    (6, 3, 5, 6, 1),  # k = 1: one entry per channel
    (2, 3, 7, 7, 5),  # colour, D = 75
    (20, 1, 5, 6, 3),  # more images than keys in a tile: a tile spans at most two positions
    (16, 3, 4, 5, 3),  # exactly a tile of images per position
])
def test_dense_keys_match_the_contract(interpret, n, c, h, w, k):
    """Every image at each position of pos, groups of different positions (corners and borders,
    where the window reaches into the zero padding: bbELS's and LS's keys), against torch's gathers;
    fewer images than keys in a tile (a tile spans several positions) and more."""
    imgs, q = grid_problem(n, c, h, w, k, rows=19, groups=2, seed=n + k)
    hw = h * w
    pos = torch.tensor([[0, w - 1, hw - 1, w + 1], [hw // 2, 1, hw - w, 2 * w + 2]])
    got = interpret.gather_stats(q, *layout(imgs, k), k, pos=pos, **TILES)
    check(got, statement(imgs, k, q, pos=pos))


@pytest.mark.parametrize("c", [1, 3])
def test_listed_keys_with_counts_match_the_contract(interpret, c):
    """Key ids in any order (the distinct windows of a class) with log counts."""
    imgs, q = grid_problem(6, c, 5, 7, 3, rows=21, groups=1, seed=c)
    ids = torch.randperm(6 * 35, generator=torch.Generator().manual_seed(c))[:40]
    logc = torch.log(torch.randint(1, 5, (1, 40), generator=torch.Generator().manual_seed(9)).float())
    got = interpret.gather_stats(q, *layout(imgs, 3), 3, ids=ids, logc=logc, **TILES)
    check(got, statement(imgs, 3, q, ids=ids, logc=logc))


@pytest.mark.parametrize("splits", [None, 3])
def test_ties_name_the_first_key_in_the_dense_order(interpret, splits):
    """Repeated windows tie bit for bit (their |K|^2 too: box sums of the same entries): the first
    key of the dense order wins, within a tile and across tiles and key splits."""
    imgs = torch.zeros(9, 1, 6, 6)
    imgs[4, 0, 2:4, 2:4] = 1.0  # image 4 only differs near the middle
    q = torch.zeros(1, 20, 10)
    q[..., -1] = -0.5  # every key's logit is -|K|^2 / 2: the zero windows tie at 0
    pos = torch.tensor([[14, 15, 20, 21, 0]])  # keys 0..44; those at position 14 of image 4 lose
    got = interpret.gather_stats(q, *layout(imgs, 3), 3, pos=pos, splits=splits, **TILES)
    assert (got[4] == 0).all()
    check(got, statement(imgs, 3, q, pos=pos))
    # a query like image 4's window at position 21 (key 3 * 9 + 4 = 31) names it, not a copy
    imgs[7] = imgs[4]
    q[0, :, :9] = imgs[4, 0, 2:5, 2:5].flatten()
    got = interpret.gather_stats(q, *layout(imgs, 3), 3, pos=pos, splits=splits, **TILES)
    assert (got[4] == 31).all()
    check(got, statement(imgs, 3, q, pos=pos))


@pytest.mark.parametrize("t", [0.02, 0.5, 0.98])
def test_engine_like_logits(interpret, t):
    """Logits as the engine makes them, (c1 Q, c2) against (K, |K|^2): c1 ~ 1e3 near t = 0 (one
    key takes everything), c2 -> 0 near t = 1 (every key counts); random images."""
    a, b = math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)
    gen = torch.Generator().manual_seed(int(t * 100))
    imgs = torch.rand(7, 1, 6, 7, generator=gen) * 2 - 1
    pos = torch.tensor([[8, 9, 10, 15, 16, 17, 22]])
    qw = torch.rand(1, 23, 9, generator=gen) * 2 - 1
    q = torch.cat([a / b**2 * qw, torch.full((1, 23, 1), -a * a / (2 * b * b))], -1)
    check(interpret.gather_stats(q, *layout(imgs, 3), 3, pos=pos, **TILES), statement(imgs, 3, q, pos=pos))


def test_default_tiles_and_many_groups(interpret, monkeypatch):
    """The tiles gather_stats picks itself, and more groups than one launch may hold."""
    imgs, q = grid_problem(4, 1, 5, 5, 3, rows=3, groups=5, seed=4)
    pos = torch.arange(5).view(5, 1) * 5  # LS-like: one position per group
    want = statement(imgs, 3, q, pos=pos)
    check(interpret.gather_stats(q, *layout(imgs, 3), 3, pos=pos), want)
    monkeypatch.setattr(interpret, "_MAX_GRID", 2)
    check(interpret.gather_stats(q, *layout(imgs, 3), 3, pos=pos, **TILES), want)


def test_bad_arguments_are_refused(interpret):
    imgs, q = grid_problem(2, 1, 5, 5, 3, rows=4, groups=1, seed=1)
    images, sq = layout(imgs, 3)
    pos = torch.tensor([[6, 7]])
    with pytest.raises(ElsvizError, match="either pos"):
        interpret.gather_stats(q, images, sq, 3)
    with pytest.raises(ElsvizError, match="either pos"):
        interpret.gather_stats(q, images, sq, 3, pos=pos, ids=torch.tensor([0]))
    with pytest.raises(ElsvizError, match="C\\*k\\*k"):
        interpret.gather_stats(q, images, sq, 5, pos=pos)  # rows of a 3 x 3 window, k = 5
    with pytest.raises(ElsvizError, match="logc"):
        interpret.gather_stats(q, images, sq, 3, pos=pos, logc=torch.zeros(1, 3))


# -- the plan -----------------------------------------------------------------------------------------
def test_the_plan_gathers_on_cuda_and_keeps_tables_as_the_fallback():
    """On a CUDA device with the Triton kernel every table step gathers; a one-class group takes its
    distinct windows where they are few; without the gather (its failure, or GATHER off) key tables,
    as for images of 2 channels (which the table kernel refuses too: the torch path serves)."""
    from elsviz.engine.plan import GATHER_DISTINCT_SHARE, decide

    cuda = torch.device("cuda")
    shape = (500, 1, 28, 28)
    for machine, k in (("els", 7), ("bbels", 7), ("ls", 3)):
        plan = decide(machine, k, (28, 28), shape, 1, 1, cuda, "triton", 2**30, tensor_device="cpu")
        table_steps = [s for s in plan.steps if s.path != "embedded"]
        assert table_steps and {(s.path, s.kernel, s.table) for s in table_steps} == {("gather", "triton", "none")}, plan
        tables = decide(machine, k, (28, 28), shape, 1, 1, cuda, "triton", 2**30, tensor_device="cpu", gather=False)
        assert {s.path for s in tables.steps} <= {"table", "embedded"}, tables
    two = decide("els", 3, (28, 28), (500, 2, 28, 28), 1, 1, cuda, "triton", 2**30, tensor_device="cpu")
    assert [s.path for s in two.steps] == ["table"], "the kernel sums centres of 1 or 3 channels only"
    keys = 22 * 22 * 500  # ELS at k = 7: the one class's keys
    for kd, table in ((keys // 2, "distinct"), (int(GATHER_DISTINCT_SHARE * keys) + 1, "none")):
        plan = decide("els", 7, (28, 28), shape, 1, 1, cuda, "triton", 2**30, tensor_device="cpu",
                      distinct=lambda index, pos: kd)
        assert [(s.path, s.table) for s in plan.steps] == [("gather", table)], plan
        assert str(kd) in plan.steps[0].why


# -- the Engine through the gather ---------------------------------------------------------------------
@pytest.fixture
def gather_engine(interpret, monkeypatch, make_pair):
    """make_pair for engines with the Triton kernel on (the gather is its default); counts the
    gather's calls and those of the table kernel."""
    monkeypatch.setenv("ELSVIZ_KERNEL", "triton")
    calls = {"gather": 0, "table": 0}
    real_gather, real_table = interpret.gather_stats, interpret.local_stats

    def gather(*args, **kwargs):
        calls["gather"] += 1
        return real_gather(*args, **{**TILES, **kwargs})

    def table(*args, **kwargs):
        calls["table"] += 1
        return real_table(*args, **{**TILES, **kwargs})

    monkeypatch.setattr(interpret, "gather_stats", gather)
    monkeypatch.setattr(interpret, "local_stats", table)
    return make_pair, calls


@ONCE
@pytest.mark.parametrize("t", [0.05, 0.6])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_engine_through_the_gather_matches_the_reference(gather_engine, case, t):
    """ELS (circular queries, interior keys), bbELS (border classes reaching into the zero padding;
    colour and a label; silhouettes whose windows repeat; another output size), LS (30 groups of
    one position): every field within the reference's tolerances, no key table read."""
    make_pair, calls = gather_engine
    engine = case_matches_the_reference(make_pair, case, t)
    assert calls["gather"] > 0 and calls["table"] == 0, calls
    machine, _, out, k, labelled, bsz = CASES[case]
    x = torch.zeros(bsz, engine.images.shape[1], *out)
    assert {s.path for s in engine.plan(x, t, k, label=1 if labelled else None).steps} <= {"gather", "embedded"}


@ONCE
@pytest.mark.parametrize("machine,k", [("els", 3), ("bbels", 3)])
def test_engine_through_the_gather_agrees_with_the_torch_path(gather_engine, monkeypatch, machine, k):
    """Silhouettes repeat their windows (the one big class gathers its distinct keys, by id): the same
    means, weights and entropies as the torch path within 1e-4, the same tie counts, and the same
    heaviest key wherever no other window ties with it."""
    make_pair, calls = gather_engine
    images = silhouettes(16, 9, 9, seed=5)
    x = torch.from_numpy(noisy_query(2, 1, 9, 9, 0.2, seed=6))
    fused, _ = make_pair(machine, images)
    assert "distinct" in {s.table for s in fused.plan(x, 0.2, k).steps}
    got = fused.denoise(x, 0.2, k)
    assert calls["gather"] > 0 and calls["table"] == 0
    monkeypatch.setenv("ELSVIZ_KERNEL", "torch")
    dense, _ = make_pair(machine, images)
    same_as_the_torch_path(got, dense.denoise(x, 0.2, k))


@ONCE
@pytest.mark.parametrize("distinct", [True, False])
def test_exact_ties_between_windows_name_the_dense_paths_key(gather_engine, monkeypatch, distinct):
    """A query of zeros gives every window of +-1 pixels the same logit: the dense path names the
    first key, and so must the gather, of every key or of the distinct ones (listed in the order of
    their first occurrence)."""
    from elsviz.engine import plan

    make_pair, calls = gather_engine
    monkeypatch.setattr(plan, "GATHER_DISTINCT_SHARE", 1.0 if distinct else 0.0)
    fused = ties_name_the_dense_paths_key(make_pair, monkeypatch)
    assert calls["gather"] > 0 and calls["table"] == 0
    assert [s.table for s in fused.plan(torch.zeros(1, 1, 9, 9), 0.5, 3).steps] == ["distinct" if distinct else "none"]


@ONCE
def test_a_failing_gather_falls_back_to_key_tables_with_one_warning(gather_engine, interpret, monkeypatch):
    make_pair, calls = gather_engine

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(interpret, "gather_stats", broken)
    engine = falls_back_with_one_warning(make_pair, "bbels", "using key tables")
    assert engine.kernel() == "triton" and calls["table"] > 0
    assert {s.path for s in engine.plan(torch.zeros(1, 1, 6, 6), 0.5, 3).steps} <= {"table", "embedded"}


# -- on a GPU: compiled, production tiles (python -m elsviz.gpu_check runs these) ----------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by python -m elsviz.gpu_check)")


@needs_cuda
@pytest.mark.parametrize("splits", [None, 1, 5])
@pytest.mark.parametrize("n,c,h,w,k,listed", [(300, 1, 28, 28, 7, False), (64, 3, 17, 19, 5, True), (50, 1, 28, 28, 15, False)])
def test_cuda_gather_matches_the_contract(splits, n, c, h, w, k, listed):
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the interpreter and the compiler cannot share a process")
    from elsviz.kernels import triton as tk

    imgs, q = grid_problem(n, c, h, w, k, rows=200, groups=1 if listed else 2, seed=k)
    d = k // 2
    if listed:
        gen = torch.Generator().manual_seed(1)
        ids, pos = torch.randperm(n * h * w, generator=gen)[:5000], None
        logc = torch.log(torch.randint(1, 5, (1, 5000), generator=gen).float())
    else:
        ids, logc = None, None
        pos = torch.tensor([[u * w + v for u in range(d, h - d) for v in range(d, w - d)][:40],
                            [u * w + v for u in range(h) for v in range(w)][-40:]])
    images, sq = (v.cuda() for v in layout(imgs, k))
    got = tk.gather_stats(q.cuda(), images, sq, k, pos=None if pos is None else pos.cuda(),
                          ids=None if ids is None else ids.cuda(), logc=None if logc is None else logc.cuda(),
                          splits=splits)
    check([v.cpu() for v in got], statement(imgs, k, q, pos=pos, ids=ids, logc=logc))


# -- elsviz.gpu_check, for the session that has a GPU -------------------------------------------------
def test_gpu_check_sweep_times_the_gather_here(interpret, monkeypatch):
    """--sweep times gather_stats beside local_stats, per tile configuration (two here, interpreted)."""
    from elsviz import gpu_check

    monkeypatch.setattr(gpu_check, "SWEEP_CONFIGS", gpu_check.SWEEP_CONFIGS[:2])
    rows = gpu_check._sweep("cpu", {"tiny": (20, 150, 10)}, gather=True)
    assert [r["problem"] for r in rows] == ["tiny", "tiny", "tiny gather", "tiny gather"]
    assert all(r["same_arg"] == 1.0 and r["s_rel_diff"] < 1e-5 for r in rows)


def test_gpu_check_prints_a_table_for_benchmarks_md():
    from elsviz.gpu_check import markdown

    rows = [{"workload": "60k-els", "kernel": "torch", "times": [6.8, 6.9], "cold": 9.1},
            {"workload": "60k-els", "kernel": "triton", "times": [1.2, 1.4], "cold": 2.0, "agreement": "7e-05 / 99.7%"},
            {"workload": "60k-bbels", "kernel": "torch", "error": "out of memory"}]
    lines = markdown(rows, "H100").splitlines()
    assert lines[0] == "| workload (20 steps, H100) | torch | triton | target |" and lines[1] == "|---|---|---|---|"
    assert lines[2] == ("| 60k-els | 6.85 s (cold 9.1 s) | 1.30 s (cold 2.0 s, 7e-05 / 99.7%) | <= 1.5 s: met |")
    assert lines[3] == "| 60k-bbels | failed | - | <= 1.5 s: not met |"
