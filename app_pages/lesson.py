"""The lesson: the theory in eight short steps, each one live run of the engine on the digits and a few sentences.

Every sentence about a run comes from elsviz.analysis.claims, computed from that run's numbers.
"""
import streamlit as st

from elsviz.analysis import claims
from elsviz import export, figures
from elsviz.datasets import BUILTINS
from elsviz.analysis.lesson import K_STEPS, LESSON_K, LESSON_SETS, border_kept_fraction, lesson_set, same_place_fraction, snapshot_steps
from elsviz.app.runs import RunSpec
from elsviz.analysis.provenance import mosaic, source_shares
from elsviz.ui import Settings, derived, settings, show, spec_run
from elsviz.ui.theories import LESSON_TITLE as THEORIES_TITLE, lesson_theories
from elsviz.ui import data
from elsviz.ui.links import write_link
from elsviz.ui.sidebar import draw_later

BIG = 256  # pixels per picture: readable from the back of a room on a projector

st.title("Lesson: how a diffusion model makes something new")
st.markdown(
    "A diffusion model trained perfectly would only give back its training images. Real ones make new "
    "images. Kamb and Ganguli showed why: each pixel only *sees* a small window (**locality**) and the "
    "same rule applies everywhere in the image (**equivariance**), so the model pastes together "
    "**patches** of training images. Read from top to bottom: every picture is computed live, on "
    "handwritten digits, from the same starting noise, and every number in the text is measured on it."
)

s = settings()
write_link(page="lesson")  # the lesson is served at "/": its links say so (elsviz/ui/nav.py)
if s.dataset_key[0] == "builtin" and s.dataset_key[1] in LESSON_SETS and s.dataset_key[1] in BUILTINS:
    lesson = s  # the sidebar's digits (and its subset, if one is chosen)
else:
    name = lesson_set(BUILTINS)
    size, limit = data.app_subset(name)  # the sidebar's starting subset (MNIST: 1,000 at 16x16), quick to run
    key, train = data.builtin(name, size or None, limit or None)
    lesson = Settings(key, train, data.engine(key, "bbels", train), s.spec)
    st.info(f"The lesson always runs on the **{train.name}**; the sidebar's set is used on the other pages.")
steps, seed = s.spec.steps, s.spec.seed
train = lesson.train
NOUN = claims.noun(train.name)  # "digit"
NOUNS = claims.plural(NOUN)
st.caption(f"{len(train):,} training {NOUNS}, {steps} steps, seed {seed} (change the seed in the sidebar "
           "for another example).")


def run(machine: str, k):
    return spec_run(lesson, RunSpec(machine=machine, k=k, steps=steps, seed=seed),
                    what=f"Lesson: {RunSpec(machine=machine, k=k).describe().split(', ')[0]}", confirm=False)


def picture(result, name: str, make, caption: str) -> None:
    """A picture made once per run, with a PNG download for slides (named after the run, so two seeds differ)."""
    pic = derived(result, f"lesson-{name}", make)
    show(pic)
    st.caption(caption)
    st.download_button("Download this picture (PNG)", derived(result, f"lesson-{name}-png", lambda: export.png_bytes(pic)),
                       file_name=export.download_name(f"lesson-{name}", "png", train=result.train, spec=result.spec),
                       mime="image/png", key=f"dl_{name}")


def last(result):
    return result.traj.frames[-1]


def novelty(result, who: str) -> claims.Claim:
    return derived(result, f"lesson-novelty-{who}",
                   lambda: claims.novelty_claim(train.images, result.traj.final[0], noun=NOUN, who=who))


# 1 ----------------------------------------------------------------------------------------------
st.header("1. Noise, then the reverse process")
main = run("bbels", "mnist-resnet")
picks = snapshot_steps(steps)
st.markdown(
    "Generation starts from **pure noise** and removes a little of it at each step. At every step the "
    "model guesses the clean image from the noisy one (the *denoised estimate*) and moves towards that "
    "guess. Early guesses are blurry averages of many training images; the guess of the last step is "
    "the picture."
)
picture(main, "reverse", lambda: figures.grid(
    [[main.traj.frame(i).x[0].clamp(-1, 1) for i in picks], [main.traj.frame(i).mean[0] for i in picks]],
    [f"step {i}" for i in picks[:-1]] + ["step 1: the output"], ["noisy image", "the guess"],
    target=BIG * 2 // 3, font_size=18),
    "From left to right: steps spread over the run, from pure noise to the output (bottom right).")
draw_later()  # the sidebar's "Copy link", now that the first picture is on the page

# 2 ----------------------------------------------------------------------------------------------
st.header("2. The ideal model memorises")
ideal = run("is", LESSON_K)
is_claim = novelty(ideal, "its output")
near = is_claim.numbers["nearest"]
st.markdown(
    "The **ideal score (IS)** is the best possible denoiser for this training set, assuming nothing about "
    f"images. ({claims.JARGON['score']}) It compares the noisy picture with *whole* training images, so once "
    f"the noise is gone all it can return is one of them. Here: {is_claim.text}."
    + (" Perfect training means no creativity." if is_claim.kind == "copy" else
       f" After {steps} steps it has not settled on one training {NOUN} yet: its last step still weighs more than one.")
)
picture(ideal, "ideal", lambda: figures.strip(
    [ideal.traj.final[0], train.images[near], figures.difference_picture(ideal.traj.final[0], train.images[near], BIG)],
    ["IS output", f"closest training {NOUN} #{near}", "difference (black = none)"], target=BIG, font_size=18),
    f"The ideal score's output beside the training {NOUN} closest to it.")

# 3 ----------------------------------------------------------------------------------------------
st.header("3. Locality alone copies from the same place")
local = run("ls", LESSON_K)
f = last(local)
ls_claim = claims.same_place_claim(same_place_fraction(f.source_pos[0], f.source_count[0]), machine="ls")
st.markdown(
    f"The **local score (LS)** lets each pixel see only the **{LESSON_K}x{LESSON_K} window** around it. "
    f"{claims.JARGON['k']} Each pixel now weighs patches of every training {NOUN}, but only the patch **at "
    f"the same place** in each: {ls_claim.text}."
    + (f" The picture mixes {NOUNS}, but every stroke stays where it was in some training {NOUN}."
       if ls_claim.kind == "all" else "")
)
picture(local, "local", lambda: figures.strip(
    [local.traj.final[0], figures.provenance_picture(f.mean[0], f.source_index[0], f.source_pos[0], f.source_count[0],
                                                      target=BIG)],
    ["LS output", f"coloured by the {NOUN} of each pixel's heaviest patch"], target=BIG, font_size=18),
    f"Right: one colour per training {NOUN}; white lines are seams between pieces; grey hatched "
    "pixels are shared (flat background matches many identical patches).")

# 4 ----------------------------------------------------------------------------------------------
st.header("4. Locality plus equivariance creates")
els = run("els", LESSON_K)
f = last(els)
moved = claims.same_place_claim(same_place_fraction(f.source_pos[0], f.source_count[0]), machine="els")
els_claim = novelty(els, "The result")
near_e = els_claim.numbers["nearest"]
follow = {
    "new-like": f" A {NOUN} that is in no training set, assembled from pieces of many.",
    "new-unlike": f" Locality and equivariance are enough to make something new; making it look like a {NOUN} "
                  "takes more: the border (section 5) and windows that shrink as the noise goes (section 1).",
    "copy": " On this seed the pieces happen to line up into one training image: try another seed.",
}[els_claim.kind]
st.markdown(
    "The **equivariant local score (ELS)** adds the rule that a pattern means the same wherever it is: "
    f"a pixel may weigh matching patches **from anywhere** in any training {NOUN}. Now {moved.text}. "
    f"{els_claim.text}; the ideal score's output was {claims.amount(is_claim.numbers['distance'])} from its "
    f"closest.{follow}"
)
picture(els, "els", lambda: figures.strip(
    [els.traj.final[0], train.images[near_e],
     figures.provenance_picture(f.mean[0], f.source_index[0], f.source_pos[0], f.source_count[0], target=BIG)],
    [f"ELS output: {claims.short_novelty(els_claim, detail=False, noun=NOUN)}", f"closest training {NOUN} #{near_e}",
     "where its pixels' heaviest patches are"], target=BIG, font_size=18),
    f"The closest training {NOUN} is {claims.amount(els_claim.numbers['distance'])} away (RMS on the -1..1 scale; "
    f"{claims.TYPICAL_Q:.0%} of the training {NOUNS} have another within "
    f"{claims.amount(els_claim.numbers['typical'])}).")

# 5 ----------------------------------------------------------------------------------------------
st.header("5. The border: bbELS")
bb = run("bbels", LESSON_K)
fb, fe = last(bb), last(els)
border = claims.border_claim(border_kept_fraction(fb.source_pos[0], fb.source_count[0], LESSON_K),
                             border_kept_fraction(fe.source_pos[0], fe.source_count[0], LESSON_K))
st.markdown(
    "ELS wraps around the edges, as if the image were painted on a donut. Real networks pad the image "
    "with zeros instead, so a window hanging over the **border** knows it is at the border. The "
    "**boundary-broken ELS (bbELS)** takes such windows only from the same place relative to the "
    f"border: {border.text}. This is the machine that best matches trained networks (the paper's finding)."
)
picture(bb, "border", lambda: figures.strip(
    [els.traj.final[0], bb.traj.final[0],
     figures.provenance_picture(fb.mean[0], fb.source_index[0], fb.source_pos[0], fb.source_count[0], target=BIG)],
    ["ELS (wraps around)", "bbELS (knows the border)", "bbELS: its pixels' heaviest patches"], target=BIG,
    font_size=18),
    f"Same noise, same k = {LESSON_K}.")

# 6 ----------------------------------------------------------------------------------------------
st.header("6. The patch mosaic")
fm = last(main)
idx, pos, cnt = fm.source_index[0], fm.source_pos[0], fm.source_count[0]
rebuilt = mosaic(train.images, fm.source_index, fm.source_pos)[0]
settled = claims.settled_claim(fm)
mosaic_claim = claims.mosaic_claim(main.traj.final[0], rebuilt)
sources = claims.sources_claim(idx, cnt, noun=NOUN)
top = source_shares(idx, cnt)[:1]
st.markdown(
    "Back to the run of section 1 (bbELS with the paper's schedule of window sizes). Each pixel of the "
    "output is an average of the centre pixels of training patches, each weighted by how well its window "
    f"matches. {claims.JARGON['weight']} {settled.text} "
    f"{mosaic_claim.text} Colour each pixel by the training {NOUN} of its heaviest patch: {sources.text}; the "
    "pieces meet at the white seams."
)
st.caption(claims.JARGON["entropy"])
picture(main, "mosaic", lambda: figures.strip(
    [main.traj.final[0], figures.provenance_picture(main.traj.final[0], idx, pos, cnt, target=BIG), rebuilt],
    ["output", f"one colour per training {NOUN}", "rebuilt from the heaviest patches"],
    target=BIG, font_size=18),
    (f"Training {NOUN} #{top[0][0]} holds the heaviest patch of the most pixels: {top[0][1]}. " if top else "")
    + "The Patch provenance page shows any pixel's patches and weights.")

# 7 ----------------------------------------------------------------------------------------------
st.header("7. What k does")
sweep = [run("bbels", k) for k in K_STEPS]
sweep_claims = [novelty(r, f"k = {k}") for k, r in zip(K_STEPS, sweep)]
sweep_claim = claims.sweep_claim(list(K_STEPS), sweep_claims, noun=NOUN)
st.markdown(
    "**k** is the size of the window. Small windows match almost anywhere: the picture is stitched from "
    "many tiny pieces. Large windows must match a large part of one training image: the picture copies "
    "bigger pieces, and a window that covers the whole image can only match whole training images. The paper's "
    "schedule (section 1) uses large windows while the noise is strong and small ones at the end. "
    f"Here, for {train.shape[1]}x{train.shape[2]} {NOUNS}: {sweep_claim.text}"
)
picture(sweep[-1], "k", lambda: figures.strip(
    [r.traj.final[0] for r in sweep],
    [f"k = {k}: {claims.short_novelty(c, detail=False, noun=NOUN)}" for k, c in zip(K_STEPS, sweep_claims)],
    target=BIG * 3 // 4, font_size=18),
    "bbELS with one k for every step; the same noise in each.")

# 8 ----------------------------------------------------------------------------------------------
lesson_theories(lesson, steps, seed, title=f"8. {THEORIES_TITLE}")
st.caption("Next: the Reverse diffusion page plays any run step by step; Patch provenance explains any pixel; "
           "Locality explorer compares machines and k on your own settings; Theories side by side puts all nine "
           "machines beside a trained network.")
