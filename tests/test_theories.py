"""The rival theories (nearest, wiener, pca, pspc, cfdm; docs/THEORIES.md) against their float64
restatement in tests/reference.py (`Theories`), their exact relations to IS, and their refusals.

Tolerances as in tests/test_engine_exact.py: mean relative L2 <= 1e-4; weights 2e-3 relative and
entropies 2e-3 (1 + entropy) (float32 logits of ~1e3-1e4 at small t); the named source is checked
where the reference's top weight is clearly ahead of any weight that would name another source
(ratio > 1.01; nearest: the second-smallest distance over the smallest > 1 + 1e-4), and there it
must be the reference's argmax.
"""
import math

import numpy as np
import pytest
import torch

from elsviz import ElsvizError, Engine, ImageSet, load_dataset, sample
from elsviz.machines import BY_KEY, MACHINES, THEORIES
from elsviz.schedule import alpha_sigma
from tests.reference import Theories, a_b, as_f64, noisy_query, random_images, rel_l2

CLEAR = 1.01
# nearest: the runner-up's distance over the winner's; float32 distances are good to ~1e-6 relative
CLEAR_NEAREST = 1 + 1e-4


def make(machine, images, labels=None, **kwargs):
    lab = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    kwargs.setdefault("device", "cpu")
    return Engine(ImageSet(torch.from_numpy(np.ascontiguousarray(images)), lab), machine, **kwargs)


def eps_of(engine, shape):
    """cfdm's perturbations as docs/THEORIES.md states them (restated here, not taken from the engine)."""
    gen = torch.Generator().manual_seed(engine.options["seed"])
    return torch.randn((engine.options["samples"], *shape), generator=gen).numpy()


def reference(engine, machine, images, labels, x, t, k, label=None):
    o = engine.options
    shape = images.shape[1:]
    return Theories(images, labels).denoise(machine, x, t, k, label=label, threshold=o.get("threshold", 0.02),
                                            eps=eps_of(engine, shape) if machine == "cfdm" else None,
                                            sigma=o.get("sigma", 0.0))


def same_source(images, machine, n, ref_n, pos, k):
    """Image n names the same source as the reference's ref_n: the same image, or an identical copy
    (identical whole images; pspc: identical crops centred at pos)."""
    if n == ref_n:
        return True
    if machine != "pspc":
        return np.array_equal(images[n], images[ref_n])
    (u, v), d = pos, k // 2
    crop = lambda img: img[:, u - d:u + d + 1, v - d:v + d + 1]  # noqa: E731
    return np.array_equal(crop(images[n]), crop(images[ref_n]))


def check(post, rp, machine, x, t, allowed=None, images=None, k=None):
    """An engine Posterior against the reference's; returns the share of pixels whose source was
    checked. A tie between identical copies may name either (float32 products of identical rows
    need not round alike); images: the training images, to tell identical copies."""
    B, C, H, W = x.shape
    assert tuple(post.mean.shape) == (B, C, H, W) and post.mean.dtype == torch.float32
    for name in ("source_index", "source_count"):
        assert tuple(getattr(post, name).shape) == (B, H, W) and getattr(post, name).dtype == torch.int64, name
    assert tuple(post.source_pos.shape) == (B, H, W, 2) and post.source_pos.dtype == torch.int64
    assert tuple(post.source_weight.shape) == (B, H, W) and tuple(post.entropy.shape) == (B, H, W)
    err = rel_l2(post.mean, rp.mean)
    assert err <= 1e-4, f"{machine} t={t}: mean relative L2 error {err:.3g} > 1e-4"
    a, b = a_b(t)
    own = -(as_f64(x) - a * as_f64(post.mean)) / b**2
    assert rel_l2(post.score, own) <= 1e-5, "score is not -(x - a_t mean) / b_t^2"
    if machine == "wiener":  # no source: documented fill values
        assert (post.source_index == -1).all() and (post.source_pos == -1).all() and (post.source_count == 0).all()
        assert torch.isnan(post.source_weight).all() and torch.isnan(post.entropy).all()
        return 1.0
    np.testing.assert_allclose(as_f64(post.source_weight), rp.source_weight, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(as_f64(post.entropy), rp.entropy, rtol=2e-3, atol=2e-3)
    idx, pos, cnt = post.source_index.numpy(), post.source_pos.numpy(), post.source_count.numpy()
    if allowed is not None:
        assert set(np.unique(idx).tolist()) <= set(allowed), "a source outside the label's images"
    clear = rp.margin > (CLEAR_NEAREST if machine == "nearest" else CLEAR)
    for bi, i, j in zip(*np.nonzero(clear)):
        where = f"{machine} t={t} pixel (b={bi}, {i}, {j})"
        assert tuple(pos[bi, i, j]) == tuple(rp.source_pos[bi, i, j]), where + ": position"
        n, ref_n = int(idx[bi, i, j]), int(rp.source_index[bi, i, j])
        assert n == ref_n or (images is not None and same_source(images, machine, n, ref_n, pos[bi, i, j], k)), \
            where + f": image {n}, reference {ref_n}"
        assert cnt[bi, i, j] == rp.source_count[bi, i, j], where + ": count"
    return float(clear.mean())


# machine, N, C, (H, W), k, labelled, B, engine settings: grey and colour, H != W, odd N, labels,
# batches. cfdm: a sigma that matters at every t here (the default 0.1 is small next to b_t at
# t = 0.95). pca: on these uncorrelated images the default mask holds 88-94% of the entries;
# threshold 0.2 keeps 14-43%.
CASES = [
    ("nearest", 13, 1, (5, 7), None, False, 2, {}),
    ("nearest", 37, 3, (6, 5), None, True, 1, {}),
    ("wiener", 13, 1, (5, 7), None, False, 2, {}),
    ("wiener", 37, 3, (6, 5), None, True, 1, {}),
    ("pca", 13, 1, (5, 7), None, False, 2, {}),
    ("pca", 13, 1, (5, 7), None, False, 1, {"threshold": 0.2}),
    ("pca", 37, 3, (6, 5), None, True, 1, {"threshold": 0.2}),
    ("pspc", 13, 1, (5, 7), 1, False, 1, {}),
    ("pspc", 13, 1, (5, 7), 3, False, 2, {}),
    ("pspc", 37, 3, (6, 5), 5, True, 1, {}),  # k = W: one column of crops
    ("cfdm", 13, 1, (5, 7), None, False, 2, {"sigma": 0.3, "samples": 5, "seed": 3}),
    ("cfdm", 37, 3, (6, 5), None, True, 1, {"sigma": 0.3, "samples": 5, "seed": 3}),
]


def case_id(c):
    m, N, C, hw, k, lab, B, opts = c
    return (f"{m}-N{N}-C{C}-{hw[0]}x{hw[1]}-k{k}{'-label' if lab else ''}-B{B}"
            + "".join(f"-{name}{v}" for name, v in opts.items() if name != "seed"))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=120)


def make_case(N, C, hw, labelled, seed):
    images = random_images(N, C, *hw, seed=seed)
    labels = np.random.default_rng(seed + 1).integers(0, 3, size=N) if labelled else None
    if labelled:
        labels[:2] = 1
    return images, labels


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_denoise_matches_reference(case, t):
    machine, N, C, hw, k, labelled, B, opts = case
    images, labels = make_case(N, C, hw, labelled, seed=CASES.index(case))
    engine = make(machine, images, labels, **opts)
    label = 1 if labelled else None
    x = noisy_query(B, C, *hw, t, seed=N + (k or 0))
    post = engine.denoise(torch.from_numpy(x), t, k, label=label)
    rp = reference(engine, machine, images, labels, x, t, k, label)
    allowed = None if labels is None else np.nonzero(labels == 1)[0].tolist()
    checked = check(post, rp, machine, x, t, allowed, images, k)
    # pspc: at k = 1 one-pixel crops tie often; at t = 0.05 every crop is nearly certain, so the
    # crops holding a pixel tie within float32 at weight 1 (the engine then names the crop centred
    # nearest the pixel) and only some pixels have a clearly heaviest crop. Colour pca at t = 0.05
    # likewise: each channel's softmax is nearly certain, often on different images, and the
    # channels tie at weight 1 (the engine names the first channel's image)
    least = 0.0 if machine == "pspc" and k == 1 else 0.1 if machine == "pspc" and t < 0.1 else \
        0.05 if machine == "pca" and C > 1 and t < 0.1 else 0.25
    assert checked > least, "test data too tied to say anything about provenance"


@pytest.mark.parametrize("machine", THEORIES)
def test_real_digits_match_reference(digits, machine):
    """60 real digits at 16x16 against another digit on its way to noise: correlated pixels (pca's
    mask keeps 6-34% of the entries, local), a background of identical crops (pspc's ties and counts)."""
    images = digits.images[:60].numpy()
    engine = make(machine, images)
    a, b = a_b(0.3)
    x = (a * digits.images[100:101] + b * torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(9))).numpy()
    post = engine.denoise(torch.from_numpy(x), 0.3, 3)
    rp = reference(engine, machine, images, None, x, 0.3, 3)
    assert check(post, rp, machine, x, 0.3, None, images, 3) > 0.25
    if machine == "pspc":
        assert (rp.source_count > 1).any()  # identical background crops


@pytest.mark.parametrize("machine", THEORIES)
def test_pure_noise_and_small_chunks(machine):
    """x ~ N(0, I) (the start of sampling), with chunks of a few images and a batch split into
    slices: the streaming statistics and the second passes are exact across chunk borders."""
    images, labels = make_case(37, 3, (5, 6), True, seed=5)
    engine = make(machine, images, labels, chunk_elems=300)
    x = np.random.default_rng(4).standard_normal((3, 3, 5, 6)).astype(np.float32)
    for t, label in ((0.3, None), (0.8, 1)):
        post = engine.denoise(torch.from_numpy(x), t, 3, label=label)
        check(post, reference(engine, machine, images, labels, x, t, 3, label), machine, x, t, None, images, 3)


@pytest.mark.parametrize("machine", THEORIES)
def test_batch_is_the_same_as_one_by_one(machine):
    images, _ = make_case(13, 3, (5, 7), False, seed=11)
    engine = make(machine, images)
    x = torch.from_numpy(noisy_query(3, 3, 5, 7, 0.4, seed=12))
    batch = engine.denoise(x, 0.4, 3)
    for bi in range(3):
        one = engine.denoise(x[bi:bi + 1], 0.4, 3)
        torch.testing.assert_close(batch.mean[bi:bi + 1], one.mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(batch.entropy[bi:bi + 1], one.entropy, atol=1e-5, rtol=1e-4, equal_nan=True)
        assert torch.equal(batch.source_index[bi:bi + 1], one.source_index)


@pytest.mark.parametrize("machine,k", [("nearest", None), ("pca", None), ("pspc", 3), ("cfdm", None)])
def test_duplicate_images_are_counted(machine, k):
    """A twice-present image is two sources that tie: source_count 2 where it wins (pspc: its crop)."""
    base = random_images(5, 1, 5, 7, seed=7)
    images = np.concatenate([base, base[:2]])
    engine = make(machine, images)
    x = noisy_query(1, 1, 5, 7, 0.3, seed=8)
    post = engine.denoise(torch.from_numpy(x), 0.3, k)
    rp = reference(engine, machine, images, None, x, 0.3, k)
    assert (rp.source_count == 2).any()
    check(post, rp, machine, x, 0.3, None, images, k)
    np.testing.assert_array_equal(post.source_count.numpy(), rp.source_count)


# -- exact relations ----------------------------------------------------------------------------------
def same_as_is(post, ideal):
    """The same posterior as IS's, up to float32 rounding (two ways of summing the same terms)."""
    assert rel_l2(post.mean, ideal.mean) <= 1e-4
    torch.testing.assert_close(post.source_weight, ideal.source_weight, rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(post.entropy, ideal.entropy, rtol=2e-3, atol=2e-3)
    assert torch.equal(post.source_index, ideal.source_index)
    assert torch.equal(post.source_count, ideal.source_count)


@pytest.mark.parametrize("t", [0.1, 0.6])
def test_pca_with_threshold_0_is_ideal(digits, t):
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ideal = Engine(digits, "is", device="cpu").denoise(x, t)
    same_as_is(Engine(digits, "pca", device="cpu", threshold=0.0).denoise(x, t), ideal)


@pytest.mark.parametrize("t", [0.1, 0.6])
def test_pspc_with_k_the_image_size_is_ideal(digits, t):
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    ideal = Engine(digits, "is", device="cpu").denoise(x, t)
    post = Engine(digits, "pspc", device="cpu").denoise(x, t, 15)
    assert rel_l2(post.mean, ideal.mean) > 1e-3  # k = 15 on 16x16 (four crops) is not IS yet
    images = random_images(23, 1, 9, 9, seed=3)
    xs = torch.from_numpy(noisy_query(2, 1, 9, 9, t, seed=4))
    same_as_is(make("pspc", images).denoise(xs, t, 9), make("is", images).denoise(xs, t))


def test_cfdm_with_sigma_0_is_ideal(digits):
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    for t in (0.1, 0.6):
        same_as_is(Engine(digits, "cfdm", device="cpu", sigma=0.0, samples=7).denoise(x, t),
                   Engine(digits, "is", device="cpu").denoise(x, t))


def test_nearest_is_the_ideal_argmax_at_small_t(digits):
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    for t in (0.02, 0.5, 0.9):  # the image is IS's heaviest at every t (the argmax does not depend on b_t)
        near = Engine(digits, "nearest", device="cpu").denoise(x, t)
        ideal = Engine(digits, "is", device="cpu").denoise(x, t)
        assert torch.equal(near.source_index, ideal.source_index)
        assert torch.equal(near.mean, digits.images[near.source_index[:, 0, 0]])  # a training image, exactly
        assert (near.source_weight == 1).all() and (near.entropy == 0).all()
        if t == 0.02:  # small t: IS has collapsed onto it
            torch.testing.assert_close(near.mean, ideal.mean, atol=1e-4, rtol=0)


def test_cfdm_is_deterministic_for_a_seed(digits):
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    one = Engine(digits, "cfdm", device="cpu", seed=7).denoise(x, 0.3)
    again = Engine(digits, "cfdm", device="cpu", seed=7).denoise(x, 0.3)
    other = Engine(digits, "cfdm", device="cpu", seed=8).denoise(x, 0.3)
    assert torch.equal(one.mean, again.mean) and torch.equal(one.source_index, again.source_index)
    assert not torch.equal(one.mean, other.mean)
    # the defaults are the documented ones
    assert Engine(digits, "cfdm", device="cpu").options == {"samples": 10, "sigma": 0.1, "seed": 0}
    assert Engine(digits, "pca", device="cpu").options == {"threshold": 0.02}


def test_wiener_is_linear_and_gaussian(digits):
    """The Wiener filter is affine in x, and gives the set's mean image back for x = a_t mu (the
    mean image, noiseless)."""
    engine = Engine(digits, "wiener", device="cpu")
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    f = lambda v: engine.denoise(v, 0.4).mean  # noqa: E731
    torch.testing.assert_close(f(x[:1] + 2 * x[1:2]) - f(x[:1]), 2 * (f(x[1:2]) - f(torch.zeros_like(x[:1]))),
                               atol=1e-4, rtol=1e-4)
    mu = digits.images.mean(0, keepdim=True)
    for t in (0.1, 0.9):
        torch.testing.assert_close(engine.denoise(alpha_sigma(t)[0] * mu, t).mean, mu, atol=1e-5, rtol=0)


def test_gaussian_model_and_masks_are_computed_once(digits, monkeypatch):
    """wiener and pca decompose the covariance once per set (and label); pca makes its mask once per t."""
    from elsviz.engine import theories

    calls = {"model": 0, "mask": 0}
    real_model, real_mask = theories.gaussian_model, theories.pca_mask
    monkeypatch.setattr(theories, "gaussian_model", lambda *a: calls.__setitem__("model", calls["model"] + 1) or real_model(*a))
    monkeypatch.setattr(theories, "pca_mask", lambda *a: calls.__setitem__("mask", calls["mask"] + 1) or real_mask(*a))
    engine = Engine(digits, "pca", device="cpu")
    x = torch.randn(1, 1, 16, 16)
    sample(engine, x, steps=4, k=3)
    sample(engine, x, steps=4, k=3)
    assert calls == {"model": 1, "mask": 3}  # t = 3/4, 2/4, 1/4
    engine.denoise(x, 0.5, label=3)
    assert calls["model"] == 2


def test_plans_name_every_machine(digits):
    x = torch.randn(2, 1, 16, 16)
    for machine in THEORIES:
        plan = Engine(digits, machine, device="cpu").plan(x, 0.5, 5)
        assert plan.paths() == {(machine, "torch")}
        assert machine in str(plan) and plan.k == (5 if machine == "pspc" else None)


def test_registry():
    for machine in THEORIES:
        m = BY_KEY[machine]
        assert machine in MACHINES and m.name and m.summary and m.assumes and m.cite
        assert m.local == (machine == "pspc") and m.retrieves == (machine != "wiener")
    assert [o.name for o in BY_KEY["cfdm"].options] == ["samples", "sigma", "seed"]


def test_sampling_runs_every_machine_to_the_end(digits):
    for machine in THEORIES:
        run = sample(Engine(digits, machine, device="cpu"), seed=0, steps=4, k=5)
        assert torch.isfinite(run.final).all()
    run = sample(Engine(digits, "nearest", device="cpu"), seed=0, steps=4)
    assert any(torch.equal(run.final[0], img) for img in digits.images)  # nearest copies a training image


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("machine", THEORIES)
def test_cuda_matches_the_reference(machine):
    images, labels = make_case(37, 3, (6, 5), True, seed=21)
    engine = make(machine, images, labels, device="cuda")
    for t in (0.05, 0.5):
        x = noisy_query(2, 3, 6, 5, t, seed=22)
        post = engine.denoise(torch.from_numpy(x).cuda(), t, 3, label=1)
        post = type(post)(**{f: (v.cpu() if isinstance(v, torch.Tensor) else v) for f, v in vars(post).items()})
        check(post, reference(engine, machine, images, labels, x, t, 3, 1), machine, x, t)


# -- refusals -----------------------------------------------------------------------------------------
BAD = [  # machine, engine kwargs, call(engine, x), words the message must hold
    ("pca", {"threshold": "0.02"}, None, ["threshold", "number"]),
    ("pca", {"threshold": -0.1}, None, ["threshold", "between 0 and 1"]),
    ("pca", {"threshold": 1.5}, None, ["threshold", "between 0 and 1"]),
    ("pca", {"threshold": math.nan}, None, ["threshold"]),
    ("pca", {"threshold": True}, None, ["threshold", "number"]),
    ("cfdm", {"samples": 0}, None, ["samples", "from 1"]),
    ("cfdm", {"samples": 2.5}, None, ["samples", "integer"]),
    ("cfdm", {"samples": True}, None, ["samples", "integer"]),
    ("cfdm", {"samples": 10**6}, None, ["samples", "4,096"]),
    ("cfdm", {"sigma": -1.0}, None, ["sigma", "between 0 and 10"]),
    ("cfdm", {"sigma": 1e30}, None, ["sigma", "between 0 and 10"]),
    ("cfdm", {"sigma": math.inf}, None, ["sigma"]),
    ("cfdm", {"sigma": "0.1"}, None, ["sigma", "number"]),
    ("cfdm", {"seed": -1}, None, ["seed", "from 0"]),
    ("cfdm", {"seed": "x"}, None, ["seed", "integer"]),
    ("bbels", {"threshold": 0.1}, None, ["threshold", "pca", "leave it out"]),
    ("pca", {"samples": 4}, None, ["samples", "cfdm"]),
    ("nearest", {"seed": 1}, None, ["seed", "cfdm"]),
    ("pspc", {}, lambda e, x: e.denoise(x, 0.5, 4), ["k", "odd"]),
    ("pspc", {}, lambda e, x: e.denoise(x, 0.5, None), ["k", "odd"]),
    ("pspc", {}, lambda e, x: e.denoise(x, 0.5, 17), ["PSPC", "k <= 16", "15"]),
    ("pspc", {}, lambda e, x: e.denoise(torch.randn(1, 1, 20, 20), 0.5, 3), ["training size", "16x16"]),
    ("wiener", {}, lambda e, x: e.denoise(torch.randn(1, 1, 8, 8), 0.5), ["training size"]),
    ("pca", {}, lambda e, x: e.explain(x, 0.5, pixel=(3, 3)), ["explain", "source_index"]),
    ("wiener", {}, lambda e, x: e.explain(x, 0.5, pixel=(3, 3)), ["explain", "wiener has none"]),
]


@pytest.mark.parametrize("machine,kwargs,call,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_refusals_say_what_to_do(digits, machine, kwargs, call, words):
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(ElsvizError) as err:
        engine = Engine(digits, machine, device="cpu", **kwargs)
        call(engine, x)
    for word in words:
        assert word in str(err.value), f"{word!r} not in: {err.value}"


def test_wiener_refuses_images_too_large_for_its_covariance():
    big = ImageSet(torch.zeros(2, 3, 40, 40))
    for machine in ("wiener", "pca"):
        with pytest.raises(ElsvizError, match="at most 4,096 entries"):
            Engine(big, machine, device="cpu")


def test_fuzz_settings_and_calls(digits):
    """A seeded fuzz (as tests/test_fuzz.py): every Engine setting and call of the theories either
    works or raises ElsvizError, never a bare error from deep inside torch."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    hostile = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                        st.text(max_size=3), st.sampled_from([torch.tensor(0.5), np.float32(0.1), np.int64(3),
                                                              [1], (0.1,), complex(1, 1), math.inf, -0.0]))
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(machine=st.sampled_from(THEORIES + ("bbels",)),
           option=st.sampled_from(["threshold", "samples", "sigma", "seed"]), value=hostile,
           k=st.one_of(st.sampled_from([1, 3, 5, 15, 16, 17, None]), hostile), t=st.sampled_from([0.3, 0.0, 1.5, "x"]))
    def run(machine, option, value, k, t):
        try:
            post = Engine(digits, machine, device="cpu", **{option: value}).denoise(x, t, k)
        except ElsvizError as err:
            assert str(err)
            return
        assert torch.isfinite(post.mean).all()
        if machine != "wiener":  # (wiener's NaN weight is its documented "no source")
            assert torch.isfinite(post.source_weight).all()

    run()
