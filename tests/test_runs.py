"""elsviz.app.runs (run specs, the run cache, time estimates) and elsviz.analysis.provenance (the summaries the app shows)."""
import pytest
import torch

from elsviz import Engine, ImageSet
from elsviz.errors import ElsvizError
from elsviz.analysis.provenance import changed_fraction, distinct_sources, mosaic, patch, seams, shared_mask, source_shares
from elsviz.app.runs import Estimator, pixel_from_click, Result, run, run_ks, run_ts, RunCache, RunSpec, Workload
from elsviz.machines import k_limit, k_sweep


def consistent_pos(h, w, dr=0, dc=0):
    """source_pos [H, W, 2] of a straight copy: pixel (i, j) from (i + dr, j + dc)."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows + dr, cols + dc], -1)


def test_seams_follow_changes_of_image_and_of_offset_but_not_shared_pixels():
    h, w = 4, 6
    idx = torch.zeros(h, w, dtype=torch.int64)
    idx[:, 3:] = 1  # left half from image 0, right half from image 1
    pos = consistent_pos(h, w)
    count = torch.ones(h, w, dtype=torch.int64)
    vertical, horizontal = seams(idx, pos, count)
    assert vertical.shape == (h, w - 1) and horizontal.shape == (h - 1, w)
    assert vertical[:, 2].all() and vertical.sum() == h  # one seam line, between columns 2 and 3
    assert not horizontal.any()

    # the same image, but the bottom rows copied from elsewhere in it: a seam between rows 1 and 2
    pos2 = pos.clone()
    pos2[2:] += torch.tensor([5, 0])
    vertical, horizontal = seams(torch.zeros(h, w, dtype=torch.int64), pos2, count)
    assert not vertical.any()
    assert horizontal[1].all() and horizontal.sum() == w

    # shared pixels make no seams, whatever index the engine put there
    count2 = count.clone()
    count2[:, 2:4] = 7
    vertical, _ = seams(idx, pos, count2)
    assert not vertical.any()


def test_sources_count_only_attributed_pixels():
    idx = torch.tensor([[3, 3, 5], [3, 9, 9]])
    count = torch.tensor([[1, 1, 1], [1, 40, 40]])  # image 9's pixels are shared: not counted
    assert source_shares(idx, count) == [(3, 3), (5, 1)]
    assert distinct_sources(idx, count) == 2
    assert shared_mask(count).sum() == 2
    assert distinct_sources(idx, torch.full_like(count, 2)) == 0


def test_mosaic_takes_each_pixel_from_its_key_centre():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 5, 6, generator=g) * 2 - 1  # [N, C, H, W]
    idx = torch.randint(0, 4, (2, 3, 3), generator=g)
    pos = torch.stack([torch.randint(0, 5, (2, 3, 3), generator=g), torch.randint(0, 6, (2, 3, 3), generator=g)], -1)
    out = mosaic(images, idx, pos)
    assert out.shape == (2, 3, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                n, u, v = idx[b, i, j], pos[b, i, j, 0], pos[b, i, j, 1]
                assert torch.equal(out[b, :, i, j], images[n, :, u, v])


def test_patch_is_zero_padded():
    img = torch.arange(1, 26, dtype=torch.float32).reshape(1, 5, 5)
    p = patch(img, 0, 0, 3)
    assert p.shape == (1, 3, 3)
    assert torch.equal(p[0], torch.tensor([[0.0, 0, 0], [0, 1, 2], [0, 6, 7]]))
    assert torch.equal(patch(img, 2, 2, 3)[0], img[0, 1:4, 1:4])
    assert patch(img, 4, 4, 1)[0, 0, 0] == 25
    assert torch.equal(patch(img, 2, 2, 9)[0, 2:7, 2:7], img[0])  # a window larger than the image


def test_k_limits_and_sweep_follow_the_machines_ranges():
    assert k_limit("is", (16, 16)) is None
    assert k_limit("els", (16, 16)) == 15
    assert k_limit("els", (16, 16), (48, 48)) == 15
    assert k_limit("bbels", (16, 16)) == 31  # any k works; 31 already covers the image from every pixel
    assert k_limit("bbels", (16, 16), (48, 40)) == 15
    assert k_limit("ls", (28, 28)) == 55
    assert k_sweep("bbels", (16, 16)) == [1, 3, 5, 7, 9, 11, 13, 15, 17]
    assert k_sweep("els", (16, 16)) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert k_sweep("ls", (7, 9)) == [1, 3, 5, 7, 9]


def test_pixel_from_click_scales_to_the_image():
    assert pixel_from_click(None, (16, 16)) is None
    assert pixel_from_click({"x": 0, "y": 0, "width": 448, "height": 448}, (16, 16)) == (0, 0)
    assert pixel_from_click({"x": 447, "y": 29, "width": 448, "height": 448}, (16, 16)) == (1, 15)
    assert pixel_from_click({"x": 100, "y": 50, "width": 200, "height": 100}, (10, 20)) == (5, 10)
    assert pixel_from_click({"x": 999, "y": -3, "width": 100, "height": 100}, (4, 4)) == (0, 3)


def test_run_cache_is_bounded_and_least_recently_used():
    cache = RunCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    made = []
    assert cache.fetch("d", lambda: made.append(1) or 4) == 4
    assert cache.fetch("d", lambda: made.append(1) or 5) == 4 and made == [1]  # made once


def test_time_estimates_scale_with_the_work():
    """The cost of a run grows with what it computes: the images, the channels, the output's pixels, the
    steps; IS and LS cost little beside ELS and bbELS."""
    def cost(n=2000, c=1, spec=RunSpec(machine="bbels", k=5, steps=20), size=16):
        w = Workload("set", spec.machine, size=spec.size, n=n, shape=(c, size, size))
        return sum(Estimator().cost(w, run_ks(spec), run_ts(spec)))

    small = cost()  # (large enough that the fixed cost of a step is small beside its work)
    assert cost(4000) == pytest.approx(2 * small, rel=0.1)
    assert 2 * small < cost(c=3) < 6 * small
    assert cost(spec=RunSpec(machine="bbels", k=5, steps=20, size=(32, 32))) == pytest.approx(4 * small, rel=0.25)
    assert cost(spec=RunSpec(machine="bbels", k=5, steps=39)) == pytest.approx(2 * small, rel=0.1)
    assert cost(spec=RunSpec(machine="ls", k=5, steps=20)) < small / 3
    assert cost(spec=RunSpec(machine="is", k=5, steps=20)) < small / 30


def test_spec_describes_itself_and_checks_k():
    assert RunSpec("bbels", 5, 20, 3).describe() == "bbELS, k=5, 20 steps, seed 3"
    assert "schedule mnist-resnet" in RunSpec("els", "mnist-resnet").describe()
    assert "no window" in RunSpec("is").describe()
    assert RunSpec("ls", (3, 3, 5), steps=3).schedule() == [3, 3, 5]
    assert RunSpec("bbels", 7).differences(RunSpec("bbels", 5)) == "k=7"
    assert RunSpec("els", 5, seed=3).differences(RunSpec("bbels", 5)) == "ELS, seed 3"
    assert RunSpec("els", 5).differences(RunSpec("els", 5)) == ""


def test_results_name_what_sets_them_apart():
    digits = ImageSet(torch.zeros(1, 1, 4, 4), name="digits")
    hands = ImageSet(torch.zeros(1, 1, 4, 4), name="hands")
    a = Result(("builtin", "digits"), digits, None, RunSpec("bbels", 5), None, 1.0)
    b = Result(("builtin", "digits"), digits, None, RunSpec("bbels", 7), None, 1.0)
    c = Result(("builtin", "hands"), hands, None, RunSpec("els", 7), None, 1.0)
    assert b.differences(a) == "k=7"
    assert c.differences(b) == "hands, ELS"
    assert a.differences(a) == "same settings"
    with pytest.raises(ElsvizError):
        RunSpec("bbels", 4).schedule()
    hash(RunSpec("bbels", (3, 5), steps=2))  # a cache key


def test_run_makes_the_requested_size_and_is_reproducible():
    g = torch.Generator().manual_seed(1)
    train = ImageSet(torch.rand(5, 1, 8, 8, generator=g) * 2 - 1)
    engine = Engine(train, machine="bbels", device="cpu")
    seen = []
    spec = RunSpec("bbels", 3, steps=4, seed=7, size=(10, 12))
    traj = run(engine, spec, callback=lambda f: seen.append(f.i))
    assert traj.final.shape == (1, 1, 10, 12)
    assert seen == [3, 2, 1]
    again = run(engine, spec)
    assert torch.equal(traj.final, again.final)
    assert changed_fraction(traj.final[0], again.final[0]) == 0.0
    other = run(engine, RunSpec("bbels", 3, steps=4, seed=8, size=(10, 12)))
    assert changed_fraction(traj.final[0], other.final[0]) > 0.0


def test_the_app_leaves_a_core_for_the_browser_unless_told_otherwise():
    from elsviz.app.runs import app_threads

    assert app_threads(2, {}) == 1  # 2 cores: the engine takes one, the browser and server the other
    assert app_threads(8, {}) == 7
    assert app_threads(1, {}) == 1 and app_threads(None, {}) == 1
    assert app_threads(8, {"OMP_NUM_THREADS": "4"}) is None  # the user's own setting: torch reads it
    assert app_threads(2, {"ELSVIZ_THREADS": "2"}) == 2
