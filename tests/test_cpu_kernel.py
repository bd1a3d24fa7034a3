"""The compiled CPU kernel (elsviz/cpu_kernel.py) against a float64 statement of what it computes.

The engine's own answers with and without the kernel are compared with the float64 reference of
the mathematics in tests/test_engine_exact.py and tests/test_engine_fast_paths.py (their engines
are made once with the kernel and once with ELSVIZ_KERNEL=torch, see conftest.make_pair).
"""
import shutil

import pytest
import torch

import elsviz.kernels.cpu as ck
from elsviz import Engine, ImageSet

needs_compiler = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                    reason="no C++ compiler on this machine: the engine uses its torch path")


def expected(logits, values, logc=None):
    """The kernel's contract in float64: rows of logits [R, n], values [G, C, n], logc [n]."""
    l64 = logits.double()
    r, n = l64.shape
    g = values.shape[0]
    v = values.double().repeat_interleave(r // g, 0)  # [R, C, n]
    m, arg = l64.max(-1)  # torch.argmax: the first index of the max
    d = l64 - m[:, None]
    x = d + (0 if logc is None else logc.double())
    e = torch.where(x >= -80, torch.exp(x), 0.0)
    return m, e.sum(-1), torch.einsum("rn,rcn->rc", e, v), (e * d).sum(-1), arg


def check(logits, values, logc=None):
    got = ck.rows(logits, values, logc)
    want = expected(logits, values, logc)
    for name, a, b in zip(("m", "s", "acc", "ent"), got[:4], want[:4]):
        torch.testing.assert_close(a.double(), b, rtol=2e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert torch.equal(got[4], want[4]), "argmax differs"


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)
    lib = ck.library()
    assert lib is not None, "a C++ compiler is here but the kernel did not build"
    return lib


@needs_compiler
def test_exp_is_accurate(kernel):
    x = torch.linspace(-80, 0, 160_000)
    y = torch.empty_like(x)
    kernel.exp_clamped(x.data_ptr(), y.data_ptr(), x.numel())
    rel = ((y.double() - torch.exp(x.double())) / torch.exp(x.double())).abs().max()
    assert rel < 2e-7, f"relative error of exp {rel:.3g}"


@needs_compiler
@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("with_logc", [False, True])
def test_rows_match_the_contract(kernel, n, c, with_logc):
    g = torch.Generator().manual_seed(n * 10 + c)
    logits = torch.randn(5, n, generator=g) * 30
    values = torch.rand(1, c, n, generator=g) * 2 - 1
    logc = torch.log(torch.randint(1, 9, (n,), generator=g).float()) if with_logc else None
    check(logits, values, logc)


@needs_compiler
def test_ties_name_the_first_key(kernel):
    logits = torch.tensor([[1.0, 5.0, 2.0, 5.0] * 9, [0.0] * 36, [-3.0] * 35 + [7.0]])
    values = torch.rand(1, 1, 36)
    check(logits, values)
    assert ck.rows(logits, values)[4].tolist() == [1, 0, 35]


@needs_compiler
def test_far_keys_weigh_nothing_and_do_not_spoil_the_entropy(kernel):
    # padding keys of the engine's key sets have logits near -1e30: their e must be 0, not
    # exp(-80) times -1e30 in the entropy term
    logits = torch.cat([torch.randn(3, 40), torch.full((3, 50), -1e30), torch.randn(3, 10) - 85], 1)
    values = torch.rand(1, 3, 100)
    check(logits, values)
    m, s, acc, ent, arg = ck.rows(logits, values)
    assert torch.isfinite(ent).all() and (ent <= 0).all()


@needs_compiler
def test_groups_of_rows_use_their_own_values(kernel):
    # _windowed: logits [G, R, n] with values [G, C, n]; _embedded: one value table per row
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4 * 6, 50, generator=g) * 10
    check(logits, torch.rand(4, 3, 50, generator=g))
    check(logits, torch.rand(24, 1, 50, generator=g))
    # strided values: a [R, C, n] view of a [C, R, n] table, as _embedded passes it
    per_c = torch.rand(3, 24, 50, generator=g)
    check(logits, per_c.transpose(0, 1))


@needs_compiler
@pytest.mark.parametrize("rows,groups", [(64, 1), (64, 4), (64, 64), (6, 3), (90, 2)])
def test_rows_shared_out_over_threads_give_the_same_answer(kernel, monkeypatch, rows, groups):
    monkeypatch.setattr(ck, "SPLIT_MIN", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    g = torch.Generator().manual_seed(rows + groups)
    logits = torch.randn(rows, 70, generator=g) * 20
    check(logits, torch.rand(groups, 1, 70, generator=g), torch.rand(70, generator=g))


def test_elsviz_kernel_torch_turns_it_off(monkeypatch):
    monkeypatch.setenv("ELSVIZ_KERNEL", "torch")
    assert ck.library() is None
    engine = Engine(ImageSet(torch.zeros(3, 1, 4, 4)), "els", "cpu")
    assert engine.kernel() == "torch"


def test_no_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)
    monkeypatch.setattr(ck, "_state", {})
    monkeypatch.setattr(ck, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert ck.library() is None
    assert ck.library() is None  # remembered, no second warning or attempt


@needs_compiler
def test_a_failed_build_falls_back(monkeypatch, tmp_path):
    monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)
    monkeypatch.setenv("ELSVIZ_CACHE", str(tmp_path))
    monkeypatch.setattr(ck, "_state", {})
    bad = tmp_path / "bad.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(ck, "SOURCE", bad)
    with pytest.warns(UserWarning, match="could not be built"):
        assert ck.library() is None
    assert not list((tmp_path / "kernels").glob("*.so")), "a failed build left a library behind"


@needs_compiler
def test_the_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)
    monkeypatch.setenv("ELSVIZ_CACHE", str(tmp_path))
    monkeypatch.setattr(ck, "_state", {})
    assert ck.library() is not None
    built = list((tmp_path / "kernels").glob("rows-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(ck, "_state", {})
    assert ck.library() is not None
    assert built[0].stat().st_mtime_ns == stamp, "compiled again although the source did not change"


@needs_compiler
def test_build_in_background_builds_once_and_engines_wait_for_it(monkeypatch, tmp_path):
    monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)
    monkeypatch.setenv("ELSVIZ_CACHE", str(tmp_path))
    monkeypatch.setattr(ck, "_state", {})
    ck.build_in_background()
    thread = ck._state["building"]
    ck.build_in_background()  # a second call (every rerun of the app) starts nothing
    assert ck._state["building"] is thread
    assert ck.library() is not None  # waits for the build in progress, or loads what it built
    thread.join(timeout=300)
    assert len(list((tmp_path / "kernels").glob("rows-*.so"))) == 1


# -- building key tables: the kernel's builders against torch statements of the same ------------
def torch_pack(keys_t, width):
    """cpu_kernel.pack in torch: chunks of `width` keys; the entries all keys of a chunk share go to
    `shared`, the others are rows of `data`."""
    d1, nk = keys_t.shape
    chunks = keys_t.view(d1, nk // width, width).permute(1, 0, 2)  # [chunks, D1, width]
    shared = (chunks == chunks[:, :, :1]).all(-1)  # [chunks, D1]
    d1p = -(-d1 // 16) * 16
    offsets = torch.zeros(chunks.shape[0] + 1, dtype=torch.int64)
    offsets[1:] = (~shared).sum(1).cumsum(0)
    return ck.Keys(data=chunks[~shared], entry=torch.nonzero(~shared)[:, 1].to(torch.int32), offsets=offsets,
                   shared=torch.nn.functional.pad(torch.where(shared, chunks[:, :, 0], 0.0), (0, d1p - d1)),
                   any_shared=shared.any(1).to(torch.uint8), width=width, d1p=d1p)


@needs_compiler
@pytest.mark.parametrize("c,k", [(1, 3), (1, 7), (3, 5)])
def test_key_table_and_pack_build_what_the_torch_statements_build(kernel, c, k):
    from elsviz.engine.tables import PAD_SQ, key_windows, window_table
    gen = torch.Generator().manual_seed(c * 10 + k)
    # silhouette-like images (many windows alike, so that chunks share entries), values to 2 decimals
    imgs = (torch.rand(30, c, 14, 11, generator=gen) > 0.5).float() * torch.randint(1, 4, (30, c, 14, 11), generator=gen)
    imgs[:5] = torch.round(torch.randn(5, c, 14, 11, generator=gen) * 100) / 100
    d = k // 2
    padded = torch.nn.functional.pad(imgs, (d, d, d, d)).permute(0, 2, 3, 1).contiguous()
    m = 64 * 40
    img = torch.randint(0, 30, (m,), generator=gen)
    pos = torch.randint(0, 14 * 11, (m,), generator=gen)
    img[-50:] = -1  # padding keys
    img[:64 * 3], pos[:64 * 3] = 7, 20  # three chunks of one window: every entry shared
    imgs[29] = 0
    imgs[29, :, 7, 5] = 1.5
    img[64 * 3:64 * 9] = 29  # six chunks of an empty image with one dot: zeros shared, the dot not
    got = window_table(padded, img, pos, k, 11, kernel=True)
    want = window_table(padded, img, pos, k, 11, kernel=False)
    real = img >= 0
    assert torch.equal(got[:-1], want[:-1]), "windows differ"
    assert torch.equal(got[:-1, :-50], key_windows(padded, img[:-50], pos[:-50], k, 11).T)
    torch.testing.assert_close(got[-1, real], want[-1, real], rtol=1e-6, atol=0)  # |K|^2, summed in another order
    assert (got[-1, ~real] == PAD_SQ).all() and (got[:-1, ~real] == 0).all()
    for width in (16, 32, 64):
        a, b = ck.pack(got, width), torch_pack(got, width)
        assert int(a.any_shared.sum()) > 0, "no chunk shares an entry: the test does not test sharing"
        for field in ("data", "entry", "offsets", "shared", "any_shared"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert (a.width, a.d1p) == (b.width, b.d1p)


@needs_compiler
@pytest.mark.parametrize("keys,r", [(1, 1), (255, 2), (257, 8), (5000, 8), (40_000, 3)])
def test_str_order_is_the_torch_block_order(kernel, keys, r):
    from elsviz.engine.keyset import block_order as _block_order
    gen = torch.Generator().manual_seed(keys + r)
    p = torch.randn(keys, r, generator=gen)
    p[::7] = p[min(3, keys - 1)].clone()  # whole rows alike
    p[:, 0] = torch.round(p[:, 0] * 4) / 4  # ties along a coordinate, -0.0 among them
    p[:, -1] = torch.round(p[:, -1] * 2) / 2  # ties inside a slab: their order is the previous level's
    for block in (16, 256):
        assert torch.equal(_block_order(p, block, kernel=True), _block_order(p, block)), block


@needs_compiler
@pytest.mark.parametrize("c,k", [(1, 1), (1, 3), (3, 5), (1, 15), (1, 31)])
def test_window_hash_is_the_torch_hash_bit_for_bit(kernel, monkeypatch, c, k):
    from elsviz.engine.ties import window_hash as _window_hash
    gen = torch.Generator().manual_seed(k)
    imgs = torch.round(torch.randn(30, c, 16, 12, generator=gen) * 3) / 3  # repeated values: equal windows
    imgs[0, 0, :4, :4] = -0.0  # hashes as 0.0
    got = _window_hash(imgs, k)
    monkeypatch.setenv("ELSVIZ_KERNEL", "torch")  # library() is None: the torch statement
    want = _window_hash(imgs, k)
    assert torch.equal(got, want)


@needs_compiler
@pytest.mark.parametrize("machine,k", [("bbels", 3), ("els", 5), ("ls", 3), ("bbels", 7)])
def test_same_count_counts_what_torch_unique_counts(kernel, monkeypatch, machine, k):
    from elsviz.engine.geometry import train_class as _train_class
    from elsviz.engine.ties import same_count as _same_count, window_hash as _window_hash
    gen = torch.Generator().manual_seed(k)
    imgs = (torch.rand(40, 1, 12, 10, generator=gen) > 0.85).float()  # sparse dots: many windows alike
    hashes, klass = _window_hash(imgs, k), _train_class(machine, k, 12, 10)
    got = _same_count(hashes, klass)
    assert int(got.max()) > 1, "no two windows alike: the test would not test counting"
    monkeypatch.setenv("ELSVIZ_KERNEL", "torch")  # library() is None: torch.unique
    assert torch.equal(got, _same_count(hashes, klass))
    monkeypatch.delenv("ELSVIZ_KERNEL")
    some = hashes[:, 0, 0]  # [N], as IS counts whole images
    want = torch.tensor([int((some == v).sum()) for v in some], dtype=torch.int32)
    assert torch.equal(_same_count(some, torch.zeros(1, dtype=torch.int64)), want)


def fresh(q, c):
    return (torch.full((q,), -float("inf")), torch.zeros(q), torch.zeros(q, c), torch.zeros(q),
            torch.zeros(q, dtype=torch.int64))


def assert_stats(running, into, want, rep, rtol=1e-5):
    m, s, acc, ent, best = (v[into] for v in running)
    torch.testing.assert_close(m.double(), want[0], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(s.double(), want[1], rtol=rtol, atol=1e-6)
    torch.testing.assert_close(acc.double(), want[2], rtol=rtol, atol=1e-6)
    torch.testing.assert_close(ent.double(), want[3], rtol=1e-4, atol=1e-4)
    assert torch.equal(best, rep[want[4]]), "heaviest key differs"


@needs_compiler
@pytest.mark.parametrize("c,block,with_logc", [(1, 64, False), (3, 32, True), (1, 256, True), (3, 16, False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_tile_blocks_computes_the_logits_of_the_listed_blocks(kernel, monkeypatch, c, block, with_logc, threads):
    # logits <qa, key> inside the kernel (six rows, 64 keys at a time, a tail of rows and of keys),
    # for the listed blocks only, merged call after call into the running statistics of rows `into`
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = torch.Generator().manual_seed(block + c + threads)
    nq, d1, nb = 15, 11, 6
    nk = nb * block
    keys_t = torch.randn(d1, nk, generator=g)
    qa = torch.randn(nq, d1, generator=g) * 2
    centres = torch.rand(c, nk, generator=g)
    logc = torch.log(torch.randint(1, 4, (nk,), generator=g).float()) if with_logc else None
    rep = torch.randperm(nk, generator=g) * 10 + 3  # key ids
    into = torch.randperm(nq + 4, generator=g)[:nq]  # rows of the running statistics, not in query order
    running = fresh(nq + 4, c)
    first, second = torch.tensor([4, 1]), torch.tensor([0, 5])  # blocks 2 and 3 are never listed
    for blocks in (first, second):
        counted = ck.tile_blocks(qa, ck.pack(keys_t, min(block, 64)), block, centres, logc, rep, blocks, into, running)
        assert torch.equal(counted, torch.full((nq,), 2))
    keys = torch.cat([torch.arange(b * block, (b + 1) * block) for b in (4, 1, 0, 5)])  # in the order taken
    want = expected(qa @ keys_t[:, keys], centres[:, keys].unsqueeze(0), None if logc is None else logc[keys])
    assert_stats(running, into, want, rep[keys])
    untouched = torch.ones(nq + 4, dtype=torch.bool)
    untouched[into] = False
    assert torch.isinf(running[0][untouched]).all() and (running[1][untouched] == 0).all()


@needs_compiler
@pytest.mark.parametrize("c", [1, 3])
def test_tile_classes_gives_each_class_its_own_keys(kernel, monkeypatch, c):
    # small classes of the windowed path: G classes at once, shared out over threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    g = torch.Generator().manual_seed(c)
    ng, nq, d1, nk = 5, 7, 10, 128
    keys_t = torch.randn(ng, d1, nk, generator=g)
    qa = torch.randn(ng, nq, d1, generator=g)
    centres = torch.rand(ng, c, nk, generator=g)
    rep = torch.randperm(ng * nk, generator=g).view(ng, nk)
    into = torch.randperm(ng * nq, generator=g).view(ng, nq)
    running = fresh(ng * nq, c)
    ck.tile_classes(qa, ck.pack(keys_t.permute(1, 0, 2).reshape(d1, -1), 64), 64, centres, rep, into, running)
    for gi in range(ng):
        want = expected(qa[gi] @ keys_t[gi], centres[gi].unsqueeze(0))
        assert_stats(running, into[gi], want, rep[gi])


@needs_compiler
def test_tile_blocks_ties_keep_the_earlier_key(kernel):
    # on equal maxima the key taken first stays: within a block, across blocks and across calls
    nk, d1 = 64, 3
    keys_t = torch.zeros(d1, nk)
    keys_t[0] = torch.linspace(-1, 0.5, nk)
    keys_t[0, [7, 40]] = 2.0  # the two largest logits, equal
    qa = torch.tensor([[1.0, 0.0, 0.0]])
    rep = torch.arange(nk) + 100
    for blocks, winner in ((torch.tensor([0, 1]), 7), (torch.tensor([1, 0]), 40)):
        running = fresh(1, 1)
        ck.tile_blocks(qa, ck.pack(keys_t, 32), 32, torch.rand(1, nk), None, rep, blocks, torch.tensor([0]), running)
        assert int(running[4][0]) == 100 + winner
    running = fresh(1, 1)
    for blocks in (torch.tensor([1]), torch.tensor([0])):
        ck.tile_blocks(qa, ck.pack(keys_t, 32), 32, torch.rand(1, nk), None, rep, blocks, torch.tensor([0]), running)
    assert int(running[4][0]) == 140


def blob_keyset(k, seed, n=60, size=12):
    """A KeySet (the kernel's chunks) of blob images, with many repeated windows, and its keys [D + 1, NK]."""
    from elsviz.engine.keyset import KeySet
    from elsviz.engine.tables import key_windows
    from elsviz.engine.ties import distinct_keys
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy, cx = torch.rand(n, 1, 1, generator=g) * size, torch.rand(n, 1, 1, generator=g) * size
    r = 1.5 + torch.rand(n, 1, 1, generator=g) * size / 3
    imgs = (((r - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()).clamp(0, 1) * 4).round() / 2 - 1).unsqueeze(1)
    d = k // 2
    pos = torch.tensor([y * size + x for y in range(d, size - d) for x in range(d, size - d)])
    win = key_windows(F.pad(imgs, (d,) * 4).permute(0, 2, 3, 1), torch.arange(n).repeat(len(pos)),
                      pos.repeat_interleave(n), k, size)  # every key, (position, image) order
    hashes = torch.unique(win, dim=0, return_inverse=True)[1]  # window ids stand in for the hashes
    flat = torch.zeros(n, size * size, dtype=torch.int64)
    flat[torch.arange(n).repeat(len(pos)), pos.repeat_interleave(n)] = hashes
    rep, count = distinct_keys(flat, pos, size * size)
    return KeySet.build(imgs, rep, count, k, kernel=True), KeySet.build(imgs, rep, count, k).keys_t


@needs_compiler
@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_tile_blocks_with_bounds_skips_only_what_weighs_nothing(kernel, monkeypatch, t):
    # each query first takes its block with the best bound, then only the blocks whose bound comes
    # within the gap of what that block gave; the statistics are those of every key
    from elsviz.schedule import alpha_sigma
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    import elsviz.engine.keyset as keyset_mod
    monkeypatch.setattr(keyset_mod, "BLOCK", 16)
    ks, keys_t = blob_keyset(5, seed=3)
    a, b = alpha_sigma(t)
    g = torch.Generator().manual_seed(4)
    kd = int((ks.rep >= 0).sum())
    real = keys_t[:-1, :kd].T  # [Kd, D] the distinct windows
    queries = a * real[torch.randint(0, kd, (40,), generator=g)] + b * torch.randn(40, real.shape[1], generator=g)
    qsq = (queries * queries).sum(-1)
    proj = queries @ ks.basis.T
    bounds = ck.Bounds(proj, (queries - proj @ ks.basis).norm(dim=-1), qsq, ks.bound_t, a, b, 36.0)
    home = ck.block_home(bounds, ks.blocks)
    assert torch.equal(home, ks.upper_logits(queries, qsq, a, b).argmax(-1)), "home blocks differ from the bounds"
    order = torch.argsort(home, stable=True)
    aug = torch.cat([a / b**2 * queries, torch.full((40, 1), -a * a / (2 * b * b))], -1)
    logits = aug.double() @ keys_t.double()  # [Q, NK] (padding keys far below)
    want = expected(logits, ks.centres.unsqueeze(0), ks.logc)
    everything = torch.arange(ks.blocks)
    running = fresh(40, 1)
    counted = ck.tile_blocks(aug[order], ks.chunks, ks.block, ks.centres, ks.logc, ks.rep, everything, order,
                             running, bounds.take(order))
    # (logits of a few hundred in float32: the kernel's sums of weights are within a few 1e-6 of float64's)
    assert_stats(running, order, [w[order] for w in want], ks.rep, rtol=5e-5)
    ub = ks.upper_logits(queries, qsq, a, b)
    assert (ub.max(1).values >= want[0].float() - 1e-3).all(), "a bound below a real logit"
    needed = (ub >= (want[0].float() - 36).unsqueeze(1)).sum(1)[order]  # blocks a query cannot skip
    assert (counted >= needed).all()
    if t < 0.1:  # (at t = 0.3 these 40 scattered queries still need most blocks)
        assert counted.float().mean() < 0.5 * ks.blocks, f"{counted.float().mean():.1f} of {ks.blocks} blocks computed"
    elif t > 0.5:
        assert (counted == ks.blocks).all(), "at large t every block counts"
    running = fresh(40, 1)  # queries not sorted by their best block: slower, the same statistics
    ck.tile_blocks(aug, ks.chunks, ks.block, ks.centres, ks.logc, ks.rep, everything, torch.arange(40), running, bounds)
    assert_stats(running, torch.arange(40), want, ks.rep, rtol=5e-5)


@needs_compiler
def test_the_kernel_runs_on_torchs_openmp_runtime(kernel):
    # one OpenMP runtime in the process: the kernel's threads are the ones torch's products use
    # (two runtimes on two cores spin against each other)
    maps = open("/proc/self/maps").read()
    gomp = {line.split()[-1] for line in maps.splitlines() if "libgomp" in line}
    assert len(gomp) == 1, f"two OpenMP runtimes loaded: {sorted(gomp)}"
