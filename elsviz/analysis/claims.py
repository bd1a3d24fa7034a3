"""What the pages and the lesson say about a run, computed from the run's numbers.

Every sentence the app states about a run ("copied from", "new", "gives it back", "x% of the
pixels") is made here from the numbers it is about, and worded so that it is true whatever the
seed: each function takes a run's numbers (a Frame's or Posterior's provenance fields, an output,
the training images) and returns a Claim, the sentence and the numbers behind it. The pages only
show these sentences; tests/test_claims.py recomputes every claim from the numbers over many seeds
of every built-in set.

The numbers (docs/THEORY.md, "Provenance"): a pixel's estimate is the average of the centre pixels
of all keys (training patches; whole training images for IS), each weighted by how well its window
matches. The heaviest key names the pixel's source; together with the keys identical to it
(source_count of them) it holds source_weight x source_count of the pixel's weight, its *share*.
The weights sum to 1 and every centre lies in [-1, 1], so a pixel differs from its heaviest key's
centre by at most 2 x (1 - share): only a share near 1 makes a pixel a copy. Measured on the
default run (digits, bbELS, the mnist-resnet schedule, 20 steps, seed 0), at its last step the
heaviest key holds a median share of 0.07 and the median entropy is 4.5 nats: most pixels are
averages of many patches, which mostly agree on the centre pixel (the picture rebuilt from the
heaviest keys' centres is within 0.12 of the output everywhere, within 0.017 at the median pixel).
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field

import torch

COPIED = 0.99  # a share at least this large: the pixel is its key's centre to within 2 x 0.01 = 0.02
MOSTLY = 0.5  # ... at least this large (and below COPIED): one key holds most of the pixel's weight
EQUAL_TOL = 1 / 255  # two pictures on the -1..1 scale that differ by less than half an 8-bit level look the same
COPY_RMS = 0.03  # an output this close (RMS, -1..1 scale) to a training image is a copy of it: measured on the
# 1,797 digits at 16x16, the two closest distinct training digits are 0.059 apart; IS outputs after 6 steps lie
# within 0.004 of their training image; bbELS outputs at k = 15 are either copies (0.000) or 0.03 and more away
TYPICAL_Q = 0.99  # an output as close to a training image as this share of training images are to their nearest
# neighbour "reads as one of the set" (digits at 16x16: 0.29; ELS k = 5 textures: 0.5-1.0; bbELS with the
# mnist-resnet schedule, 20 steps, seeds 0-49: half within)
TYPICAL_SAMPLE = 500  # training images whose nearest neighbour is measured for TYPICAL_Q (all of a smaller set)
CHANGED_TOL = 0.05  # a pixel "changed" between two pictures when it moved by more than this (-1..1 scale)

# one plain sentence for each word a page uses before it explains it
JARGON = {
    "k": "k is the side of the square window, in pixels, that each pixel sees: k = 5 means a 5 x 5 window.",
    "posterior": "The posterior mean is the machine's best guess of the clean picture: the average of the "
                 "pictures it still thinks possible, each weighted by how likely it is.",
    "entropy": "Entropy, measured in nats, says how spread a pixel's weights are: 0 when one patch (or a set "
               "of identical ones) has all the weight, about 4.6 when the weight is spread as evenly as over "
               "100 patches (ln 100).",
    "score": "The score is what a diffusion model learns: for a noisy picture, the direction that removes "
             "noise; knowing it is the same as knowing the model's guess of the clean picture.",
    "weight": "A patch's weight is the part of the pixel's average it contributes (all the weights of a "
              "pixel add up to 1).",
}

# what one training image of a set is called in a sentence (any other set: "image")
NOUNS = {"digits": "digit", "mnist": "digit", "hands": "hand", "photos": "photo crop", "fashion-mnist": "garment"}


@dataclass(frozen=True)
class Claim:
    """A sentence about a run (markdown) with the numbers it rests on; kind names which sentence it is."""

    kind: str
    text: str
    numbers: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


# -- words for numbers that stay true when rounded ---------------------------------------------------
def percent(x: float) -> str:
    """A share as a percentage that never rounds to a false one: '0%' and '100%' only when exact,
    'under 1%' / 'over 99%' next to them; 'no share' for NaN (nothing to count)."""
    if x != x:
        return "no share"
    if x <= 0:
        return "0%"
    if x >= 1:
        return "100%"
    if x < 0.01:
        return "under 1%"
    if x > 0.99:
        return "over 99%"
    return f"{x:.0%}"


def amount(x: float) -> str:
    """A distance or weight on the -1..1 (or 0..1) scale that never rounds to a false one: '0' and '1' only
    when exact (up to float rounding), 'under 0.001' and 'over 0.99' next to them, three decimals under 0.1, two
    above."""
    if x <= 0:
        return "0"
    if x < 0.001:
        return "under 0.001"
    if abs(x - 1) <= 1e-6:  # a share of 1 up to float rounding (a weight of 1/7 times 7 keys)
        return "1"
    if 0.995 <= x < 1:
        return "over 0.99"
    if 1 < x < 1.005:  # (distances go past 1): '1.00' would read as exactly 1
        return "just over 1"
    return f"{x:.3f}" if x < 0.1 else f"{x:.2f}"


def about(n: float) -> str:
    """A count such as an effective number of patches: 'about 90', '1', 'about 1,200'."""
    r = max(1, round(n))
    return f"{r:,}" if abs(n - r) < 0.05 else f"about {r:,}"


def noun(set_name: str) -> str:
    """What one image of the named training set is called ('digit' for the digits, else 'image' ...)."""
    return NOUNS.get(str(set_name).lower(), "image")


def plural(word: str, n: int | float = 2) -> str:
    return word if n == 1 else word + "es" if word.endswith(("ch", "sh", "s", "x")) else word + "s"


# -- the pixel's numbers ---------------------------------------------------------------------------------
def shares(source_weight: torch.Tensor, source_count: torch.Tensor) -> torch.Tensor:
    """The weight held by each pixel's heaviest key together with its identical copies, [..., H, W] (float64: a
    weight times a count of 1,000 keeps its digits)."""
    return source_weight.double() * source_count.double()


def spread(entropy: float) -> float:
    """The number of keys whose even split has this entropy (exp(entropy), the weights' perplexity)."""
    return math.exp(max(0.0, float(entropy)))


def evenly(entropy: float, one: str) -> str:
    """'about 93 patches': the even split with this entropy."""
    n = spread(entropy)
    return f"{about(n)} {plural(one, max(1, round(n)))}"


def centres(images: torch.Tensor, source_index: torch.Tensor, source_pos: torch.Tensor) -> torch.Tensor:
    """The centre pixel of each pixel's heaviest key: images [N, C, H, W], source_index [H', W'],
    source_pos [H', W', 2] -> [C, H', W'] (provenance.mosaic for one image)."""
    idx, pos = source_index.to(images.device), source_pos.to(images.device)
    return images[idx, :, pos[..., 0], pos[..., 1]].permute(2, 0, 1)


def _field(frame, name: str, b: int) -> torch.Tensor:
    return getattr(frame, name)[b].detach().cpu()


def _key_words(machine: str) -> tuple[str, str]:
    """('patch', 'patches') or, for IS, whose keys are whole images, ('whole training image', ...)."""
    return ("whole training image", "whole training images") if machine == "is" else ("patch", "patches")


def pixel_claim(frame, pixel: tuple[int, int], images: torch.Tensor, *, final: bool = True, machine: str = "bbels",
                noun: str = "image", class_name=None, b: int = 0) -> Claim:
    """What pixel (row, col) of image b of a frame is made of: copied from one key (share >= COPIED),
    mostly from one (>= MOSTLY), or an average of many; with the key, its share, the entropy and how far
    the pixel lies from the key's centre. final: the frame is the run's last step (its mean is the output).
    class_name(i): the class of training image i, for the sentence ('a 7'), or None."""
    r, c = (int(v) for v in pixel)
    mean = _field(frame, "mean", b)[:, r, c]
    idx = int(frame.source_index[b, r, c])
    u, v = (int(p) for p in frame.source_pos[b, r, c])
    weight = float(frame.source_weight[b, r, c])
    count = int(frame.source_count[b, r, c])
    share = weight * count
    ent = float(frame.entropy[b, r, c])
    centre = images[idx, :, u, v].detach().cpu()
    gap = float((mean - centre).abs().max())
    one, many = _key_words(machine)
    numbers = {"row": r, "col": c, "image": idx, "pos": (u, v), "weight": weight, "count": count, "share": share,
               "entropy": ent, "spread": spread(ent), "gap": gap}
    kind = "copied" if share >= COPIED else "mostly" if share >= MOSTLY else "average"
    if count > 1:
        kind += "-shared"
    at = "" if final else " at this step"
    label = "" if class_name is None else f" (a {class_name(idx)})"
    where = "" if machine == "is" else f", {one} centred at ({u}, {v})"
    centre_word = ("the same pixel of that image" if machine == "is" else "that patch's centre pixel") if count == 1 \
        else f"their centre pixel (the same in all {count:,})"
    if count > 1:
        heaviest = (f"**{count:,} identical {many}** (the same window in several places, as on flat background, so "
                    f"no single training {noun} is named)")
        holds = f"weight {amount(share)} together"
    else:
        heaviest = f"training {noun} **#{idx}**{label}{where}"
        holds = f"weight {amount(share)}"
    distance_words = (f"The pixel equals {centre_word}." if gap == 0 else
                      f"The pixel lies {amount(gap)} from {centre_word} (on the -1..1 scale).")
    entropy_words = f"entropy {ent:.2f} nats: as spread as an even split over {evenly(ent, one)}"
    if kind.startswith("copied"):
        text = (f"**Pixel ({r}, {c})**{at} is copied from {heaviest}, {holds} ({percent(share)} of its weight). "
                f"{distance_words}")
    elif kind.startswith("mostly"):
        text = (f"**Pixel ({r}, {c})**{at} leans mostly on {heaviest}, {holds}; the rest of its weight is spread "
                f"over other {many} ({entropy_words}). {distance_words}")
    else:
        several = "many" if spread(ent) >= 10 else "several"  # the heaviest under half: three keys at least
        text = (f"**Pixel ({r}, {c})**{at} is an average of {several} {many}: the heaviest is {heaviest}, with only "
                f"{holds} ({entropy_words}). {distance_words}")
    return Claim(kind, text, numbers)


def top_keys_claim(keys: list[dict], many: str = "patches") -> Claim:
    """How much of a pixel's weight the listed keys hold (each key's weight times its identical copies)."""
    held = sum(float(k["weight"]) * int(k.get("count", 1)) for k in keys)
    n = len(keys)
    kind = "all" if held >= COPIED else "most" if held >= MOSTLY else "part"
    rest = "" if kind == "all" else f"; the other {percent(max(0.0, 1 - held))} is spread over {many} not shown"
    return Claim(kind, f"These {n} hold {percent(held)} of its weight{rest}.", {"held": held, "keys": n})


# -- the whole picture ------------------------------------------------------------------------------------
def settled_claim(frame, *, b: int = 0, final: bool = True, machine: str = "bbels") -> Claim:
    """How decided the pixels of a frame are: the share copied from one key (or identical ones), the share
    that are averages (the heaviest key under half the weight), the median heaviest share and entropy."""
    s = shares(_field(frame, "source_weight", b), _field(frame, "source_count", b)).flatten()
    ent = _field(frame, "entropy", b).float().flatten()
    copied = float((s >= COPIED).float().mean())
    averages = float((s < MOSTLY).float().mean())
    med_share, med_ent = float(s.median()), float(ent.median())
    numbers = {"copied": copied, "averages": averages, "median_share": med_share, "median_entropy": med_ent,
               "median_spread": spread(med_ent), "pixels": int(s.numel())}
    one, many = _key_words(machine)
    when = "At the last step" if final else "At this step"
    lead = (f"{when}, **{percent(copied)}** of the pixels are copied from one {one} (or identical ones) that holds "
            f"{COPIED:.0%} of their weight or more")
    median = (f"the heaviest {one} holds a median **{amount(med_share)}** of a pixel's weight, and the median entropy "
              f"is **{med_ent:.1f} nats** (as spread as an even split over {evenly(med_ent, one)})")
    if copied > 0.5:
        kind, tail = "copied", "most pixels are copies"
    elif averages > 0.5:
        kind, tail = "averages", (f"most pixels ({percent(averages)}) are averages, their heaviest {one} under half "
                                  "their weight")
    else:
        kind, tail = "mixed", (f"{percent(averages)} of the pixels are averages (their heaviest {one} holds under "
                               "half their weight)")
    return Claim(kind, f"{lead}; {median}: {tail}.", numbers)


def mosaic_claim(output: torch.Tensor, rebuilt: torch.Tensor, *, what: str = "output", machine: str = "bbels") -> Claim:
    """The picture rebuilt from its heaviest keys' centre pixels (provenance.mosaic) against the picture itself
    ([C, H, W] each): equal (to half an 8-bit level), or different by a measured largest and median amount."""
    diff = (output.detach().float().cpu() - rebuilt.detach().float().cpu()).abs().amax(0).flatten()
    top, med = float(diff.max()), float(diff.median())
    numbers = {"max": top, "median": med, "over_tol": float((diff > EQUAL_TOL).float().mean())}
    one, many = _key_words(machine)
    source = "the same pixels of its heaviest whole training images" if machine == "is" else \
        "the centre pixels of its heaviest patches"
    if top <= EQUAL_TOL:
        return Claim("equal", f"Rebuilt from {source}, the picture gives back the {what} (to the 8-bit level: they "
                              f"differ by at most {amount(top)} on the -1..1 scale): it is a mosaic of "
                              f"{'copied pixels' if machine == 'is' else 'copied patches'}.", numbers)
    return Claim("differs", f"Rebuilt from {source}, the picture differs from the {what} by up to **{amount(top)}** "
                            f"(median **{amount(med)}**, on the -1..1 scale): {percent(numbers['over_tol'])} of the "
                            f"pixels are averages of {many} that disagree there, not copies of one.", numbers)


def sources_claim(source_index: torch.Tensor, source_count: torch.Tensor, *, noun: str = "image",
                  machine: str = "bbels") -> Claim:
    """How many training images hold the heaviest key of at least one (unshared) pixel of one image [H, W]."""
    attributed = source_count <= 1
    n = int(torch.unique(source_index[attributed]).numel()) if bool(attributed.any()) else 0
    shared = float((~attributed).float().mean())
    _, many = _key_words(machine)
    text = (f"the heaviest {many} of its pixels come from **{n:,} training {plural(noun, n)}**"
            + (f" ({percent(shared)} of the pixels are shared by identical {many} and name none)" if shared > 0
               else ""))
    return Claim("sources", text, {"sources": n, "shared": shared})


# -- new or copied ----------------------------------------------------------------------------------------
def nearest(images: torch.Tensor, img: torch.Tensor, chunk: int = 4096) -> tuple[int, float]:
    """(index, RMS distance on the [-1, 1] scale) of the training image closest to img [C, H, W]
    (images [N, C, H, W]; computed exactly, a chunk of images at a time)."""
    flat = img.detach().to(images.device, torch.float32).flatten()
    best, best_i = math.inf, -1
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].flatten(1).float()
        rms = (part - flat).pow(2).mean(1).sqrt()
        i = int(torch.argmin(rms))
        if float(rms[i]) < best:
            best, best_i = float(rms[i]), start + i
    return best_i, best


_TYPICAL: dict[int, tuple] = {}  # id(images) -> (weak reference to images, {(q, sample): distance})
_TYPICAL_LOCK = threading.Lock()


def _forget(key: int) -> None:
    with _TYPICAL_LOCK:
        _TYPICAL.pop(key, None)


def typical_distance(images: torch.Tensor, q: float = TYPICAL_Q, sample: int = TYPICAL_SAMPLE) -> float:
    """The RMS distance within which the share q of training images have their nearest other training image.

    Measured on all images of a set of at most `sample`, else on `sample` drawn with a fixed seed (against
    all the others); kept per images tensor. NaN for a set of one image.
    """
    n = images.shape[0]
    if n < 2:
        return float("nan")
    with _TYPICAL_LOCK:
        ref, known = _TYPICAL.get(id(images), (None, {}))
        if ref is not None and ref() is images and (q, sample) in known:
            return known[(q, sample)]
    flat = images.detach().flatten(1).float()
    picks = torch.arange(n) if n <= sample else torch.randperm(n, generator=torch.Generator().manual_seed(0))[:sample]
    dims = flat.shape[1]
    out = []
    for start in range(0, len(picks), 256):
        rows = picks[start:start + 256]
        d = torch.cdist(flat[rows.to(flat.device)], flat, compute_mode="donot_use_mm_for_euclid_dist")
        d[torch.arange(len(rows)), rows.to(flat.device)] = math.inf  # leave the image itself out
        out.append(d.min(1).values / math.sqrt(dims))
    value = float(torch.quantile(torch.cat(out).cpu(), q))
    with _TYPICAL_LOCK:
        ref, known = _TYPICAL.get(id(images), (None, {}))
        if ref is None or ref() is not images:
            ref, known = weakref.ref(images), {}
            weakref.finalize(images, _forget, id(images))
            _TYPICAL[id(images)] = (ref, known)
        known[(q, sample)] = value
    return value


def novelty_claim(images: torch.Tensor, img: torch.Tensor, *, noun: str = "image", typical: float | None = None,
                  who: str = "It") -> Claim:
    """Whether img [C, H, W] is a training image: a copy (within COPY_RMS of one), new but as close to a
    training image as training images are to each other (within typical_distance: it reads as one of the
    set by this measure), or new and unlike every training image.

    numbers: nearest (index), distance, typical. who: the sentence's subject ('It', 'ELS's output')."""
    idx, d = nearest(images, img)
    typ = typical_distance(images) if typical is None else typical
    numbers = {"nearest": idx, "distance": d, "typical": typ}
    nouns = plural(noun)
    if d <= COPY_RMS:
        return Claim("copy", f"{who} is a copy of training {noun} **#{idx}** (RMS distance **{amount(d)}** on the "
                             f"-1..1 scale; 0 = identical)", numbers)
    if typ == typ and d <= typ:
        return Claim("new-like", f"{who} is new, not a copy of any training {noun} (the closest, #{idx}, is "
                                 f"**{amount(d)}** away, RMS on the -1..1 scale), yet as close to one as "
                                 f"{TYPICAL_Q:.0%} of the training {nouns} are to their nearest neighbour "
                                 f"(within {amount(typ)}): by that measure it looks like a {noun} of this set",
                     numbers)
    return Claim("new-unlike", f"{who} is new, not a copy of any training {noun} (the closest, #{idx}, is "
                               f"**{amount(d)}** away, RMS on the -1..1 scale), but also unlike every one of them: "
                               f"{TYPICAL_Q:.0%} of the training {nouns} have another within {amount(typ)}, and it "
                               "has none: by "
                               f"that measure it does not look like a {noun} of this set",
                 numbers)


def short_novelty(claim: Claim, detail: bool = True, noun: str = "image") -> str:
    """A few words for a caption: 'a copy of #12', 'new (nearest #4 at 0.21)', 'unlike any (nearest #4 at 0.71)';
    without detail 'a copy', 'new, digit-like', 'new, unlike any' (noun: 'digit')."""
    n = claim.numbers
    if claim.kind == "copy":
        return f"a copy of #{n['nearest']}" if detail else "a copy"
    if detail:
        word = "new" if claim.kind == "new-like" else "unlike any"
        return f"{word} (nearest #{n['nearest']} at {amount(n['distance'])})"
    return f"new, {noun}-like" if claim.kind == "new-like" else "new, unlike any"


def sweep_claim(ks: list[int], claims: list[Claim], *, noun: str = "image") -> Claim:
    """What a k-sweep shows, from each k's novelty_claim: the closest training image's distance at each k,
    and which k give back a training image."""
    copies = [k for k, c in zip(ks, claims) if c.kind == "copy"]
    unlike = [k for k, c in zip(ks, claims) if c.kind == "new-unlike"]
    dist = ", ".join(f"k = {k}: {amount(c.numbers['distance'])}" for k, c in zip(ks, claims))
    numbers = {"copies": copies, "unlike": unlike, "distances": [c.numbers["distance"] for c in claims]}
    parts = [f"Distance to the closest training {noun} (0 = a copy): {dist}."]
    if copies:
        parts.append(f"{'Only k = ' if len(copies) == 1 else 'k = '}{', '.join(map(str, copies))} "
                     f"{'gives' if len(copies) == 1 else 'give'} back a training {noun}.")
    else:
        parts.append(f"None of these is a copy of a training {noun}.")
    if unlike:
        parts.append(f"Unlike every training {noun} (further than {TYPICAL_Q:.0%} of them are from their nearest "
                     f"neighbour): k = {', '.join(map(str, unlike))}.")
    kind = "copies" if copies else "new"
    return Claim(kind, " ".join(parts), numbers)


# -- where the keys sit ------------------------------------------------------------------------------------
def same_place_claim(fraction: float, *, machine: str = "ls") -> Claim:
    """From lesson.same_place_fraction: the share of attributed pixels whose heaviest key is centred
    where the pixel sits. machine 'ls' words it as staying, the others as moving."""
    numbers = {"fraction": fraction}
    if fraction != fraction:
        return Claim("none", "every pixel is shared by identical patches, so no position can be named", numbers)
    if machine == "ls":
        kind = "all" if fraction >= 1 else "some"
        return Claim(kind, f"the heaviest patch of **{percent(fraction)}** of its pixels is centred exactly where the "
                           "pixel sits", numbers)
    moved = 1 - fraction
    kind = "none" if moved <= 0 else "some"
    return Claim(kind, f"the heaviest patch of **{percent(moved)}** of its pixels sits at another place", numbers)


def border_claim(kept_bb: float, kept_els: float) -> Claim:
    """From lesson.border_kept_fraction of a bbELS and an ELS run: who keeps border pixels' rows and columns."""
    numbers = {"bbels": kept_bb, "els": kept_els}
    if kept_bb != kept_bb or kept_els != kept_els:
        return Claim("undecided", "no pixel near the border names a single patch here (all shared, or k = 1), so "
                                  "the two cannot be compared on this run", numbers)
    if kept_bb > kept_els:
        kind, how = "bbels", "against"
    elif kept_bb == kept_els:
        kind, how = "same", "the same share as"
    else:
        kind, how = "els", "fewer than"
    return Claim(kind, f"**{percent(kept_bb)}** of its border pixels keep their row or column, {how} "
                       f"**{percent(kept_els)}** for ELS", numbers)


def changed_claim(a: torch.Tensor, b: torch.Tensor, tol: float = CHANGED_TOL) -> Claim:
    """How much of a picture changed between two images [C, H, W] (provenance.changed_fraction)."""
    frac = float(((a.detach().cpu() - b.detach().cpu()).abs().amax(0) > tol).float().mean())
    return Claim("changed", f"{percent(frac)} of the pixels changed (by more than {tol} on the -1..1 scale).",
                 {"fraction": frac})
