"""The Extra fingers page's sentences against the numbers they state (elsviz.analysis.fingers.explain_extra_finger).

`check_sentence` recomputes every claim of a sentence from the run and its branch test, from first
principles (count_fingers of the outputs, region_sources of the frames): the finger count, which
finger is the extra one and the shares behind that, the step of its birth, its place in the run
(counting forwards: the n-th of the run's steps, early, midway or late), how many branches fit, the
training hands its pixels' heaviest patches come from and their finger counts, how much the fixing branch redraws. It runs
over 60 hand-made runs (generated hands as outputs and fixes, each seed another hand, other steps,
another birth step and flickering branches) and over real bbELS runs.
"""
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch

from elsviz import Engine, count_fingers, finger_birth, load_dataset, region_sources, sample
from elsviz.analysis.fingers import KEPT, PHASES, explain_extra_finger, extra_finger, extra_fingers, fix_cover, run_phase, when_in_run
from elsviz.analysis.fingers import study_noise
from tests.test_fingers import _grid

WORDS = {1: "one", 2: "two", 3: "three"}


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def listed(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def pct(values) -> str:
    parts = [f"{v:.0%}" for v in values]
    return f"{parts[0]} each" if len(parts) > 1 and len(set(parts)) == 1 else listed(parts)


def covers(traj, birth) -> list[float]:
    """Per finger of the run's output: the share of its pixels inside the fixing branch's hand."""
    fc = count_fingers(traj.final[0, 0])
    fixed = count_fingers(birth.final(birth.window[0])[0, 0])
    return [float(fixed.hand[fc.regions == label].mean()) for label in range(1, fc.count + 1)]


def top_sources(traj, mask, window, top=2) -> list[int]:
    """The training images most of the region's attributed pixels copy over the window's steps."""
    frames = [f for f in traj.frames if window[1] <= f.i <= window[0]]
    pixels = Counter()
    for f in frames:
        for src in region_sources(f, mask, top=None):
            pixels[src["image"]] += src["pixels"]
    return [i for i, _ in pixels.most_common(top)]


def check_sentence(text: str, traj, birth, train=None) -> str:
    """Assert every claim of explain_extra_finger's text against the numbers; return which kind it was."""
    fc = count_fingers(traj.final[0, 0])
    if not fc.is_hand:
        assert text == f"No hand to explain: {fc.reason}."
        return "not a hand"
    if fc.count == 5:
        assert text == "This hand has 5 fingers: nothing extra to explain."
        return "five"
    diff = fc.count - 5
    head = f"This hand has {fc.count} fingers, {WORDS.get(abs(diff), abs(diff))} {'more' if diff > 0 else 'fewer'} than 5."
    assert text.startswith(head), text
    if birth is None:
        assert extra_finger(traj) is None and not re.search(r"Fingers? \d+ of", text)
        return "no branch test"
    assert extra_finger(traj, birth) in (None, *range(1, fc.count + 1))
    if birth.window is None:
        assert "cannot tell" in text and extra_fingers(traj, birth) == [] and " born at" not in text
        if len(birth.steps) == 1:
            assert f"from step {birth.steps[0]}" in text and f"gives {birth.counts[0]} fingers, not 5" in text
            assert ("the binary search stops there" in text) == birth.searched
        else:
            fixed = sum(c == 5 for c in birth.counts)
            assert f"gives 5 fingers on {f'only {fixed}' if fixed else 'none'} of the {len(birth.steps)} branches" in text
        return "no window"
    first, last = birth.window
    steps = traj.steps
    k = "the other denoiser" if birth.k is None else f"k = {birth.k}"
    if first == 1:
        assert f"Even the last step alone with {k} gives 5 fingers" in text and "cannot tell" in text and extra_fingers(traj, birth) == []
        return "last step"
    # when: the step, counted forwards, and its third of the run
    if first == last:
        when = f"at step {first}, the {ordinal(steps - first)} of the run's {steps - 1} steps, "
        assert when + PHASES[run_phase(first, steps)] in text, text
    else:
        when = (f"somewhere in steps {first} to {last}, the {ordinal(steps - first)} to {ordinal(steps - last)} of the "
                f"run's {steps - 1} steps")
        assert when in text, text
    assert f"(steps count down from {steps - 1}, the noisiest, to 1, the last)" in text
    assert f"finishing from step {first} or any earlier step gives 5 fingers" in text
    if last > 1:
        assert f"from step {last - 1} or any later one it does not" in text
    fit = re.search(r"\((\d+) of (\d+) branches fit this\)", text)
    if birth.agreement == 1:
        assert fit is None
    else:
        assert fit and (int(fit.group(1)), int(fit.group(2))) == (round(birth.agreement * len(birth.steps)),
                                                                  len(birth.steps))
        assert sum((s >= first) == (c == 5) for s, c in birth.points) == int(fit.group(1))  # the branches that fit
    redraw = birth.changed[birth.steps.index(first)]
    assert text.endswith(f" That branch redraws {redraw:.0%} of the silhouette.")
    if diff < 0:
        assert "The finger is lost" in text
        return "lost"
    # which finger: the fixing branch drops it (under half of it still hand there) and keeps the others
    cover = covers(traj, birth)
    assert fix_cover(traj, birth) == pytest.approx(cover)
    assert f"finishing the run with {k} from step {first} gives 5 fingers" in text
    dropped = [label for label, c in enumerate(cover, start=1) if c < KEPT]
    if len(dropped) == diff:
        kept = [c for label, c in enumerate(cover, start=1) if label not in dropped]
        name = (f"Finger {dropped[0]} of {fc.count} (the {ordinal(dropped[0])} around the hand from the wrist) is the "
                "extra one" if diff == 1 else f"Fingers {listed(dropped)} of {fc.count} are the extra ones")
        assert name in text, text
        assert f"keeping the other {len(kept)} (at least {min(kept):.0%} of each is still hand there)" in text
        assert f"and dropping finger{'s' if diff > 1 else ''} {listed(dropped)} ({pct(cover[d - 1] for d in dropped)} " \
               "left)" in text
        assert extra_fingers(traj, birth) == dropped
        assert extra_finger(traj, birth) == (dropped[0] if diff == 1 else None)
        kind = "extra finger"
    elif len(dropped) > diff:
        assert "No single finger is the extra one" in text and extra_fingers(traj, birth) == []
        assert (f"dropping fingers {listed(dropped)} ({pct(cover[d - 1] for d in dropped)} still hand there) and drawing "
                f"{WORDS.get(len(dropped) - diff, len(dropped) - diff)} other") in text, text
        kind = "redrawn"
    else:
        assert "No finger is the extra one" in text and extra_fingers(traj, birth) == []
        assert "Finger" not in text
        if not dropped:
            assert f"keeps at least {min(cover):.0%} of every finger" in text
        else:
            kept = [c for c in cover if c >= KEPT]
            assert (f"drops only finger{'s' if len(dropped) > 1 else ''} {listed(dropped)} "
                    f"({pct(cover[d - 1] for d in dropped)} left) and keeps at least {min(kept):.0%} of each other "
                    "finger") in text
        assert f"rather than by dropping {'one' if diff == 1 else diff}" in text
        return "kept every finger"
    # the training hands those fingers' pixels copy during the birth window, and their own finger counts
    if traj.frames[-1].source_index is None:
        assert "This run's denoiser names no training patches." in text
        return kind
    images = top_sources(traj, np.isin(fc.regions, dropped), birth.window)
    said = re.search(r"heaviest patches of [a-z ]+? came from training hands? ([#\d, and]+?)(?:, which|\.)", text)
    if not images:
        assert "shared only" in text
    else:
        assert said and said.group(1) == listed(f"#{i}" for i in images), text
        if train is not None:
            counts = [count_fingers(train.images[i, 0]).count for i in images]
            if len(counts) == 1:
                assert f"which has {counts[0]} fingers" in text
            elif len(set(counts)) == 1:
                assert f"which have {counts[0]} fingers each" in text
            else:
                assert f"which have {listed(counts)} fingers" in text
    return kind


# -- when, in words -----------------------------------------------------------------------------------------
def test_steps_in_words_count_forwards_and_split_the_run_in_thirds():
    for steps in range(2, 61):
        n = steps - 1
        phases = [run_phase(s, steps) for s in range(n, 0, -1)]  # in the order the run takes them
        order = {"early": 0, "midway": 1, "late": 2}
        assert [order[p] for p in phases] == sorted(order[p] for p in phases)  # early, then midway, then late
        for position, phase in enumerate(phases, start=1):  # the position-th step of the run
            middle = (position - 0.5) / n
            assert phase == ("early" if middle < 1 / 3 else "late" if middle > 2 / 3 else "midway")
        if n >= 3:
            shares = Counter(phases)
            assert set(shares) == {"early", "midway", "late"} and max(shares.values()) - min(shares.values()) <= 1
        for s in range(1, steps):
            text = when_in_run((s, s), steps)
            assert text.startswith(f"at step {s}, the {ordinal(steps - s)} of the run's {n} steps, ")
            assert text.endswith(PHASES[run_phase(s, steps)])
    assert when_in_run((3, 3), 10) == "at step 3, the 7th of the run's 9 steps, late in the run, in its last third"
    assert when_in_run((8, 5), 10) == ("somewhere in steps 8 to 5, the 2nd to 5th of the run's 9 steps, from early to "
                                       "midway in the run")
    with pytest.raises(Exception, match="step"):
        run_phase(10, 10)


# -- hand-made runs: the output and the fixes are generated hands -------------------------------------------
class Shows:
    """A denoiser whose output is always one picture (the run to explain, or a branch that keeps it)."""

    def __init__(self, picture):
        self.picture = picture

    def denoise(self, x, t, k, label=None):
        return type("P", (), {"mean": self.picture.expand(x.shape[0], -1, -1, -1)})()


class FixesAt:
    """A larger window that gives `fixed` when the branch starts at one of the steps in `fixing`, else `odd`."""

    def __init__(self, fixed, odd, steps, fixing):
        self.fixed, self.odd, self.steps, self.fixing = fixed, odd, steps, set(fixing)
        self.start = None

    def denoise(self, x, t, k, label=None):
        i = round(t * self.steps)
        if self.start is None:
            self.start = i
        out = self.fixed if self.start in self.fixing else self.odd
        if i == 1:
            self.start = None
        return type("P", (), {"mean": out.expand(x.shape[0], -1, -1, -1)})()


def without(picture, fc, labels) -> torch.Tensor:
    """The picture with the given fingers erased (background -1)."""
    out = picture.clone()
    out[0, 0][torch.from_numpy(np.isin(fc.regions, list(labels)))] = -1.0
    return out


@pytest.fixture(scope="module")
def hands():
    """Generated hands to play outputs and fixes: 6- and 7-finger ones (the odd runs), 4-finger ones, 5-finger ones."""
    odd = load_dataset("hands", fingers=[4, 6, 7], n=240, seed=21)
    five = load_dataset("hands", fingers=5, n=60, seed=22)
    counts = [count_fingers(im[0]).count for im in odd.images]
    return odd, five, counts


def hand_made_run(rng, odd, five, counts):
    """One hand-made odd run, its branch test and the training hands its frames copy (all from rng)."""
    while True:
        i = rng.randrange(len(odd))
        if counts[i] in (4, 6, 7) and counts[i] == int(odd.meta["fingers"][i]):
            break
    picture = odd.images[i:i + 1]
    fc = count_fingers(picture[0, 0])
    steps = rng.randrange(4, 21)
    kind = rng.choice(["drop the surplus", "drop more", "another hand", "another hand"])
    if fc.count > 5 and kind == "drop the surplus":
        fixed = without(picture, fc, rng.sample(range(1, fc.count + 1), fc.count - 5))
    elif fc.count > 5 and kind == "drop more":
        fixed = without(picture, fc, rng.sample(range(1, fc.count + 1), fc.count - 4))
        fixed = torch.where(five.images[0:1] > 0, five.images[0:1], fixed)  # and another hand's fingers drawn in
    else:
        fixed = five.images[rng.randrange(len(five)):][:1]
    if count_fingers(fixed[0, 0]).count != 5:
        fixed = five.images[:1]
    born = rng.randrange(1, steps)
    fixing = {s for s in range(born, steps)}  # fixed from `born` back
    for s in rng.sample(range(1, steps), rng.choice([0, 0, 1, 2]) if steps > 3 else 0):
        fixing ^= {s}  # a flickering branch: the larger window sometimes errs
    traj = sample(Shows(picture), x=torch.zeros(1, 1, 32, 32), steps=steps, k=5)
    for f in traj.frames:  # provenance: each pixel copies one of four training hands, another mix per step
        g = torch.Generator().manual_seed(rng.randrange(10**6))
        f.source_index = torch.randint(0, 4, (1, 32, 32), generator=g) * 7 + rng.randrange(3)
        f.source_pos = _grid(32, 32)[None].clone()
        f.source_count = torch.where(torch.rand(1, 32, 32, generator=g) < 0.1, 3, 1)
    every = rng.random() < 0.7
    birth = finger_birth(traj, denoiser=FixesAt(fixed, picture, steps, fixing), bisect=not every)
    return traj, birth


def test_sentences_state_their_numbers_on_60_hand_made_runs(hands):
    odd, five, counts = hands
    train = five  # the source indices (0 .. 23) name hands of this set: their finger counts are stated
    rng = random.Random(18)
    kinds = Counter()
    for _ in range(60):
        traj, birth = hand_made_run(rng, odd, five, counts)
        text = explain_extra_finger(traj, birth, train=train)
        kinds[check_sentence(text, traj, birth, train)] += 1
        assert check_sentence(explain_extra_finger(traj), traj, None) == "no branch test"
    # every kind of sentence was met
    assert {"extra finger", "redrawn", "lost"} <= set(kinds) and sum(kinds.values()) == 60, kinds


def test_one_finger_dropped_by_the_fix_is_the_extra_one_whichever_it_is(hands):
    odd, five, counts = hands
    i = next(n for n, c in enumerate(counts) if c == 6)
    six = odd.images[i:i + 1]
    fc = count_fingers(six[0, 0])
    for label in range(1, 7):
        fixed = without(six, fc, [label])
        assert count_fingers(fixed[0, 0]).count == 5
        traj = sample(Shows(six), x=torch.zeros(1, 1, 32, 32), steps=10, k=5)
        birth = finger_birth(traj, denoiser=FixesAt(fixed, six, 10, range(6, 10)))
        assert birth.window == (6, 6) and extra_finger(traj, birth) == label
        text = explain_extra_finger(traj, birth)
        assert f"Finger {label} of 6 (the {ordinal(label)} around the hand from the wrist) is the extra one" in text
        assert "keeping the other 5 (at least 100% of each is still hand there)" in text
        assert f"dropping finger {label} (0% left)" in text
        assert "born at step 6, the 4th of the run's 9 steps, midway through the run, in its middle third" in text
        assert check_sentence(text, traj, birth) == "extra finger"
    # without the branch test no finger is called extra, and the sentence says how one will be
    text = explain_extra_finger(traj)
    assert extra_finger(traj) is None and "No finger is extra by itself" in text and "drops while it keeps" in text


def test_a_fix_that_keeps_every_finger_names_none(hands):
    """The larger window joins two fingers (a bridge between their tips): 5 counted, every finger still there."""
    odd, five, counts = hands
    for i in (n for n, c in enumerate(counts) if c == 6):
        six = odd.images[i:i + 1]
        fc = count_fingers(six[0, 0])
        joined = six.clone()
        (r1, c1), (r2, c2) = fc.tips[2].round().astype(int), fc.tips[3].round().astype(int)
        for t in np.linspace(0, 1, 40):
            r, c = int(round(r1 + t * (r2 - r1))), int(round(c1 + t * (c2 - c1)))
            joined[0, 0, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = 1.0
        if count_fingers(joined[0, 0]).count == 5:
            break
    else:
        pytest.fail("no six-finger hand whose fingers 3 and 4 join into one")
    traj = sample(Shows(six), x=torch.zeros(1, 1, 32, 32), steps=8, k=5)
    birth = finger_birth(traj, denoiser=FixesAt(joined, six, 8, range(4, 8)))
    text = explain_extra_finger(traj, birth)
    assert check_sentence(text, traj, birth) == "kept every finger"
    assert "No finger is the extra one" in text and "keeps at least 100% of every finger" in text


# -- real runs -------------------------------------------------------------------------------------------------
def test_sentences_state_their_numbers_on_real_bbels_runs():
    """bbELS k = 13 on 40 training hands, 60 seeds as one batch (4 steps): every sentence without the branch
    test; with it (k = 17, every step) for the first odd hands."""
    train = load_dataset("hands", n=40)
    engine = Engine(train, "bbels", "cpu")
    seeds = list(range(60))
    batch = sample(engine, x=study_noise(engine, seeds), steps=4, k=13)
    kinds, tested = Counter(), 0
    for n, seed in enumerate(seeds):
        traj = sample(engine, seed=seed, steps=4, k=13) if tested < 6 else None
        one = traj if traj is not None else _row(batch, n)
        kinds[check_sentence(explain_extra_finger(one, train=train), one, None, train)] += 1
        fc = count_fingers(one.final[0, 0])
        if traj is not None and fc.is_hand and fc.count != 5:
            birth = finger_birth(traj, k=17)
            check_sentence(explain_extra_finger(traj, birth, train=train), traj, birth, train)
            tested += 1
    assert sum(kinds.values()) == 60 and kinds["no branch test"] >= 10, kinds
    assert tested >= 3


def _row(traj, n):
    from elsviz.analysis.fingers import _one

    return _one(traj, n)


def test_the_branch_chart_names_each_step_counting_forwards():
    from elsviz import figures

    fig = figures.birth_steps_figure([(9, 5), (6, 5), (3, 6), (1, 6)], 10, born=(6, 4))
    assert list(fig.layout.xaxis.ticktext) == ["9<br>(1/9)", "6<br>(4/9)", "3<br>(7/9)", "1<br>(9/9)"]
    notes = [a.text for a in fig.layout.annotations if a.text.startswith("born at")]
    assert notes == ["born at steps 6-4 (midway in the run)"]
    late = figures.birth_steps_figure([(3, 5), (2, 6)], 10, born=(3, 3))
    assert [a.text for a in late.layout.annotations if a.text.startswith("born")] == ["born at step 3 (late in the run)"]
