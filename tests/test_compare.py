"""elsviz.analysis.compare's baselines: what agreement unrelated pictures reach, the quartiles, and the sentence that
reads a comparison's numbers against them, recomputed here by brute force over many seeds."""
import json
import math
import random
import re

import pytest
import torch

from elsviz.analysis.compare import BASELINES, NAMES, agreement, baselines, median, nearest_images, random_images, scale_sentence, score, spread
from elsviz.errors import ElsvizError


def test_spread_gives_the_quartiles_numpy_gives():
    import numpy as np

    rng = random.Random(0)
    for n in range(1, 60):
        values = [rng.uniform(-1, 1) for _ in range(n)]
        assert spread(values) == pytest.approx(tuple(np.percentile(values, [25, 50, 75])))
        assert spread(values)[1] == pytest.approx(median(values))
    assert spread([0.5, math.nan, 0.7]) == pytest.approx((0.55, 0.6, 0.65))
    assert all(math.isnan(v) for v in spread([math.nan]))


def test_the_nearest_training_image_is_the_best_agreement_over_the_set():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(300, 1, 6, 6, generator=g)
    outputs = torch.cat([images[[7, 250]] * 2 + 0.5, torch.randn(3, 1, 6, 6, generator=g)])  # two are copies
    values, index = nearest_images(outputs, images, chunk=64)  # over several chunks
    for o, (v, i) in enumerate(zip(values, index)):
        every = [agreement(outputs[o], im) for im in images]
        assert v == pytest.approx(max(every)) and i == max(range(300), key=every.__getitem__)
    assert index[:2] == [7, 250] and values[:2] == pytest.approx([1.0, 1.0])  # brightness and contrast do not count
    with pytest.raises(ElsvizError, match="cannot be held against"):
        nearest_images(outputs, torch.randn(5, 1, 4, 4))


def test_baselines_per_seed():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(40, 1, 5, 5, generator=g)
    outputs = torch.randn(4, 1, 5, 5, generator=g)
    seeds = [10, 11, 12, 13]
    values, index = baselines(outputs, images, seeds)
    assert list(values) == list(BASELINES) and index["other-seed"] == [11, 12, 13, 10]
    assert index["random-image"] == random_images(seeds, 40) == random_images(seeds, 40)  # the seed's own draw
    for s in range(4):
        assert values["other-seed"][s] == pytest.approx(agreement(outputs[s], outputs[(s + 1) % 4]))
        assert values["random-image"][s] == pytest.approx(agreement(outputs[s], images[index["random-image"][s]]))
        assert values["nearest-image"][s] >= values["random-image"][s] - 1e-12
    one, _ = baselines(outputs[:1], images, [3])
    assert math.isnan(one["other-seed"][0]) and not math.isnan(one["random-image"][0])
    with pytest.raises(ElsvizError, match="one seed per output"):
        baselines(outputs, images, [1, 2])


def _comparison(rng: random.Random, n_seeds: int):
    """A scored comparison of made-up runs: the network's outputs, machines that copy them with noise or
    return training images, on a small random training set."""
    g = torch.Generator().manual_seed(rng.randrange(10**6))
    images = torch.randn(60, 1, 6, 6, generator=g)
    net = torch.randn(n_seeds, 1, 6, 6, generator=g)
    outputs = {"network": net,
               "bbels": net + rng.uniform(0.05, 3) * torch.randn(net.shape, generator=g),
               "els": torch.randn(net.shape, generator=g),
               "is": images[torch.randint(60, (n_seeds,), generator=g)]}
    return score(list(range(100, 100 + n_seeds)), 5, [3] * 5, [5], outputs, {}, train=images)


def test_the_scale_sentence_states_the_medians_and_places_each_machine_over_60_comparisons():
    rng = random.Random(18)
    for trial in range(60):
        n = rng.randrange(1, 9)
        result = _comparison(rng, n)
        text = scale_sentence(result)
        base = {b: median(v) for b, v in result.baselines["network"].items()}
        stated = re.findall(r"(-?\d\.\d\d)", text.split(". ")[0])
        shown = [b for b in BASELINES if not math.isnan(base[b])]
        assert stated == [f"{base[b]:.2f}" for b in shown], text
        assert f"on these {n} seed{'s' if n > 1 else ''} (medians)" in text
        assert ("Another seed's output needs two seeds" in text) == (n == 1)
        for m in ("bbels", "els", "is"):
            value = f"{median(result.agreement['network'][m]):.2f}"
            said = re.search(r"(?<![A-Za-z])" + NAMES[m] + r" \((-?\d\.\d\d)\) lies (above|below|between|level with)"
                             r" ?([^;.]*)", text)
            assert said and said.group(1) == value, text
            levels = {b: f"{base[b]:.2f}" for b in shown}
            higher = [b for b in shown if float(levels[b]) > float(value)]
            lower = [b for b in shown if float(levels[b]) < float(value)]
            if any(v == value for v in levels.values()):
                assert said.group(2) == "level with"
            elif not higher:
                assert said.group(2) == "above"
            elif not lower:
                assert said.group(2) == "below"
            else:
                assert said.group(2) == "between"
                lo = max(lower, key=lambda b: base[b])
                hi = min(higher, key=lambda b: base[b])
                names = {"other-seed": "another seed's output", "random-image": "a random training image",
                         "nearest-image": "the nearest training image"}
                assert said.group(3) == f"{names[lo]} and {names[hi]}", text


def test_a_comparison_carries_its_baselines_into_its_table_json_and_summary():
    result = _comparison(random.Random(3), 3)
    row = result.table()[1]
    assert row["seed_network_other-seed"] == 102 and row["agreement_network_nearest-image"] == pytest.approx(
        result.baselines["network"]["nearest-image"][1], abs=1e-4)
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["quartiles"]["network"]["is"] == pytest.approx(list(spread(result.agreement["network"]["is"])))
    assert set(data["median_baselines"]["network"]) == set(BASELINES)
    assert "for scale, the network against another seed's output" in result.summary()
    assert result.spreads()["random-image"][1] == pytest.approx(median(result.baselines["network"]["random-image"]))
    alone = _comparison(random.Random(4), 1)
    json.dumps(alone.to_json()["median_baselines"], allow_nan=False)  # one seed: no other seed, and no NaN
    assert alone.table()[0]["agreement_network_other-seed"] is None
    bare = score([0], 5, [3] * 5, [5], {"network": torch.randn(1, 1, 4, 4), "is": torch.randn(1, 1, 4, 4)}, {})
    assert bare.baselines == {} and scale_sentence(bare) == "" and "for scale" not in bare.summary()


def test_the_spread_figure_draws_each_seed_and_marks_the_median_and_quartiles():
    from elsviz import figures

    rows = {"bbELS": [0.9, 0.95, 0.97, 0.99], "a random training image": [0.5, 0.6, math.nan, 0.4]}
    fig = figures.agreement_spread_figure(rows, [0, 1, 2, 3], baselines=["a random training image"])
    for name, values in rows.items():
        traces = [t for t in fig.data if t.y[0] == name]
        bar, dots, diamond = traces
        q1, med, q3 = spread(values)
        assert list(bar.x) == pytest.approx([q1, q3]) and list(diamond.x) == pytest.approx([med])
        assert list(dots.customdata) == [0, 1, 2, 3] and len(dots.x) == 4
    assert "140" in [t for t in fig.data if t.y[0] == "a random training image"][1].marker.color  # baselines grey
