"""The benchmark's synthetic MNIST-scale set (elsviz.bench.synthetic_set): what the GPU targets of
docs/BENCHMARKS.md are measured on, so it must repeat windows no more than handwriting does."""
import torch

from elsviz.bench import synthetic_set
from elsviz.engine.ties import window_hash as _window_hash
from elsviz.engine.ties import distinct_keys


def distinct_share(imgs: torch.Tensor, k: int) -> float:
    """Share of the interior k x k windows (every image, every position) that are distinct."""
    n, _, h, w = imgs.shape
    d = k // 2
    rows, cols = torch.arange(d, h - d), torch.arange(d, w - d)
    pos = (rows.view(-1, 1) * w + cols.view(1, -1)).flatten()
    rep, _ = distinct_keys(_window_hash(imgs, k).flatten(1), pos, h * w)
    return rep.numel() / (pos.numel() * n)


def test_synthetic_set_is_mnist_like_and_repeatable():
    train = synthetic_set(4000, 28)
    imgs = train.images
    assert imgs.shape == (4000, 1, 28, 28) and train.labels.shape == (4000,)
    assert torch.equal(imgs, synthetic_set(4000, 28).images)  # the same set every run
    assert not torch.equal(imgs, synthetic_set(4000, 28, seed=1).images)
    assert imgs.min() == -1 and imgs.max() <= 1
    levels = (imgs + 1) * 127.5
    assert (levels - levels.round()).abs().max() < 1e-3  # 256 grey levels, like MNIST
    assert torch.unique(imgs.flatten(1), dim=0).shape[0] == 4000  # every image its own
    border = torch.cat([imgs[..., 0, :], imgs[..., -1, :], imgs[..., :, 0], imgs[..., :, -1]], -1)
    assert (border == -1).float().mean() > 0.9  # a digit on a background
    # windows repeat in the background only: shifted copies of the 1,797 digits (the set before)
    # had 61% of their 7 x 7 windows distinct at this size, 7% at 60,000 images
    assert distinct_share(imgs, 7) > 0.8
    assert 0.3 < distinct_share(imgs, 3) < 0.8  # and the background does repeat


def test_the_recorded_estimate_timings_are_the_benchs_cases():
    """tests/estimate_timings.json is what `python -m elsviz.bench --estimates --record` writes for its
    cases (tests/test_estimates.py checks the estimates against it): every case, named as the bench
    names it, a cold run and warm ones, each step with its k, t, wall-clock and CPU seconds."""
    import json
    from pathlib import Path

    from elsviz.bench import ESTIMATE_CASES, case_name

    recorded = json.loads((Path(__file__).parent / "estimate_timings.json").read_text())
    assert sorted(case_name(e["case"]) for e in recorded["cases"]) == sorted(case_name(c) for c in ESTIMATE_CASES)
    assert len({case_name(c) for c in ESTIMATE_CASES}) == len(ESTIMATE_CASES)  # each case its own name
    for entry in recorded["cases"]:
        steps = entry["case"].get("steps", 20) - 1
        for run in entry["runs"]:
            assert len(run["steps"]) == steps and all(len(s) == 4 for s in run["steps"])
            assert abs(sum(s[3] for s in run["steps"]) - run["cpu"]) < 0.05 * run["cpu"] + 0.05
