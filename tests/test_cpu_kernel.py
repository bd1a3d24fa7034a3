"""The compiled CPU kernel (elsviz/cpu_kernel.py) against a float64 statement of what it computes.

The engine's own answers with and without the kernel are compared with the float64 reference of
the mathematics in tests/test_engine_exact.py and tests/test_engine_fast_paths.py (their engines
are made once with the kernel and once with ELSVIZ_KERNEL=torch, see conftest.make_pair).
"""
import shutil

import pytest
import torch

import elsviz.cpu_kernel as ck
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
    assert not engine._cpu_kernel


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
@pytest.mark.parametrize("c", [1, 3])
def test_merging_chunks_gives_the_statistics_of_all_keys(kernel, monkeypatch, c):
    # _blocks: chunk after chunk of keys merged in place into the running statistics of rows `into`
    monkeypatch.setattr(ck, "SPLIT_MIN", 1)  # also through the threads
    g = torch.Generator().manual_seed(c)
    q, n = 9, 120
    logits = torch.randn(4, n, generator=g) * 25
    logits[1, 100] = logits[1, 10] = logits[1].max() + 1  # a tie across chunks: the earlier key wins
    values = torch.rand(1, c, n, generator=g)
    logc = torch.log(torch.randint(1, 5, (n,), generator=g).float())
    rep = torch.randperm(n, generator=g) + 1000  # key ids
    into = torch.tensor([7, 0, 3, 5])
    running = (torch.full((q,), -float("inf")), torch.zeros(q), torch.zeros(q, c), torch.zeros(q),
               torch.zeros(q, dtype=torch.int64))
    assert ck.mergeable(running)
    for j0, j1 in [(0, 50), (50, 51), (51, n)]:
        ck.merge_rows(logits[:, j0:j1].contiguous(), values[:, :, j0:j1], logc[j0:j1], into, rep[j0:j1], running)
    m, s, acc, ent, arg = expected(logits, values, logc)
    torch.testing.assert_close(running[0][into].double(), m)
    torch.testing.assert_close(running[1][into].double(), s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(running[2][into].double(), acc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(running[3][into].double(), ent, rtol=1e-5, atol=1e-5)
    assert torch.equal(running[4][into], rep[arg])
    assert int(running[4][0]) == int(rep[10])
    untouched = torch.tensor([1, 2, 4, 6, 8])
    assert torch.isinf(running[0][untouched]).all() and (running[1][untouched] == 0).all()


@needs_compiler
@pytest.mark.parametrize("c,block,with_logc", [(1, 64, False), (3, 32, True), (1, 256, True)])
def test_query_blocks_computes_the_logits_and_skips_only_what_weighs_nothing(kernel, monkeypatch, c, block, with_logc):
    # the per-query pruned path: logits <qa, keys_t[:, j]> inside the kernel, blocks by descending
    # bound, stop at the first bound more than gap below the best logit found
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # also split between threads
    g = torch.Generator().manual_seed(block + c)
    nq, d1, nb = 7, 11, 6
    nk = nb * block
    keys_t = torch.randn(d1, nk, generator=g)
    qa = torch.randn(nq, d1, generator=g) * 3
    centres = torch.rand(c, nk, generator=g)
    logc = torch.log(torch.randint(1, 4, (nk,), generator=g).float()) if with_logc else None
    rep = torch.arange(nk) * 10 + 3
    logits = qa @ keys_t  # [Q, NK]
    want = expected(logits, centres.unsqueeze(0), logc)
    # exact bounds: each block's true max logit (plus its largest log count)
    bmax = (logits + (0 if logc is None else logc)).view(nq, nb, block).amax(-1)
    ub, order = bmax.sort(dim=1, descending=True)
    for gap in (1e9, 36.0, 5.0):
        running = (torch.full((nq,), -float("inf")), torch.zeros(nq), torch.zeros(nq, c), torch.zeros(nq),
                   torch.zeros(nq, dtype=torch.int64))
        into = torch.arange(nq).flip(0)  # rows of the running statistics, not in query order
        counted = ck.query_blocks(qa, keys_t, block, centres, logc, rep, order, ub, gap, into, running)
        m, s, acc, ent, best = (v[into] for v in running)
        torch.testing.assert_close(m.double(), want[0], rtol=1e-5, atol=1e-4)
        assert torch.equal(best, rep[want[4]]), f"gap {gap}: heaviest key differs"
        if gap >= 36:  # what is skipped weighs < exp(-36) per key
            torch.testing.assert_close(s.double(), want[1], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(acc.double(), want[2], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ent.double(), want[3], rtol=1e-4, atol=1e-4)
        skippable = (ub < (want[0].float() - gap).unsqueeze(1)).sum(1)
        assert torch.equal(counted, nb - skippable), f"gap {gap}: blocks computed {counted.tolist()}"


@needs_compiler
def test_the_kernel_runs_on_torchs_openmp_runtime(kernel):
    # one OpenMP runtime in the process: the kernel's threads are the ones torch's products use
    # (two runtimes on two cores spin against each other)
    maps = open("/proc/self/maps").read()
    gomp = {line.split()[-1] for line in maps.splitlines() if "libgomp" in line}
    assert len(gomp) == 1, f"two OpenMP runtimes loaded: {sorted(gomp)}"
