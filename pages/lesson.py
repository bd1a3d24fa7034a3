"""The lesson: the theory in seven short steps, each one live run of the engine on the digits and a few sentences."""
import streamlit as st

from elsviz import export, figures
from elsviz.lesson import K_STEPS, LESSON_K, border_kept_fraction, nearest_image, same_place_fraction, snapshot_steps
from elsviz.runs import RunSpec, distinct_sources, mosaic, source_shares
from elsviz.ui import Settings, derived, settings, show, spec_run
from elsviz.ui import data

BIG = 256  # pixels per picture: readable from the back of a room on a projector

st.title("Lesson: how a diffusion model makes something new")
st.markdown(
    "A diffusion model trained perfectly would only give back its training images. Real ones make new "
    "images. Kamb and Ganguli showed why: each pixel only *sees* a small window (**locality**) and the "
    "same rule applies everywhere in the image (**equivariance**), so the model pastes together "
    "**patches** of training images. Read from top to bottom: every picture is computed live, on "
    "the handwritten digits, from the same starting noise."
)

s = settings()
if s.dataset_key[:2] == ("builtin", "digits"):
    lesson = s  # the sidebar's digits (and its subset, if one is chosen)
else:
    key, train = data.builtin("digits")
    lesson = Settings(key, train, data.engine(key, "bbels", train), s.spec)
    st.info("The lesson always runs on the **digits**; the sidebar's set is used on the other pages.")
steps, seed = s.spec.steps, s.spec.seed
st.caption(f"{len(lesson.train):,} training digits, {steps} steps, seed {seed} (change the seed in the sidebar "
           "for another example).")


def run(machine: str, k):
    return spec_run(lesson, RunSpec(machine=machine, k=k, steps=steps, seed=seed),
                    what=f"Lesson: {RunSpec(machine=machine, k=k).describe().split(', ')[0]}", confirm=False)


def picture(result, name: str, make, caption: str) -> None:
    """A picture made once per run, with a PNG download for slides."""
    pic = derived(result, f"lesson-{name}", make)
    show(pic)
    st.caption(caption)
    st.download_button("Download this picture (PNG)", derived(result, f"lesson-{name}-png", lambda: export.png_bytes(pic)),
                       file_name=export.download_name(f"lesson-{name}", "png", train=result.train, spec=result.spec),
                       mime="image/png", key=f"dl_{name}")


def last(result):
    return result.traj.frames[-1]


train = lesson.train

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

# 2 ----------------------------------------------------------------------------------------------
st.header("2. The ideal model memorises")
ideal = run("is", LESSON_K)
near, dist = nearest_image(train.images, ideal.traj.final[0])
st.markdown(
    "The **ideal score (IS)** is the best possible denoiser for this training set, assuming nothing about "
    "images. It compares the noisy picture with *whole* training images, so all it can ever return is "
    f"one of them. Here it returned training digit **#{near}**: the distance between the two is "
    f"**{dist:.3f}** (0 = identical). Perfect training means no creativity."
)
picture(ideal, "ideal", lambda: figures.strip(
    [ideal.traj.final[0], train.images[near], figures.difference_picture(ideal.traj.final[0], train.images[near], BIG)],
    ["IS output", f"training image #{near}", "difference (black = none)"], target=BIG, font_size=18),
    "The ideal score's output beside the training image it gives back.")

# 3 ----------------------------------------------------------------------------------------------
st.header("3. Locality alone copies from the same place")
local = run("ls", LESSON_K)
f = last(local)
here = same_place_fraction(f.source_pos[0], f.source_count[0])
st.markdown(
    f"The **local score (LS)** lets each pixel see only the **{LESSON_K}x{LESSON_K} window** around it. "
    "Each pixel now picks its own training image, but only the patch **at the same place**: "
    f"**{here:.0%}** of its pixels copy a patch centred exactly where they sit. The picture mixes "
    "digits, but every stroke stays where it was in some training image."
)
picture(local, "local", lambda: figures.strip(
    [local.traj.final[0], figures.provenance_picture(f.mean[0], f.source_index[0], f.source_pos[0], f.source_count[0],
                                                      target=BIG)],
    ["LS output", "coloured by the training image each pixel copies"], target=BIG, font_size=18),
    "Right: one colour per training image; white lines are seams between copied pieces; grey hatched "
    "pixels are shared (flat background matches many identical patches).")

# 4 ----------------------------------------------------------------------------------------------
st.header("4. Locality plus equivariance creates")
els = run("els", LESSON_K)
f = last(els)
near_e, dist_e = nearest_image(train.images, els.traj.final[0])
moved = 1 - same_place_fraction(f.source_pos[0], f.source_count[0])
st.markdown(
    "The **equivariant local score (ELS)** adds the rule that a pattern means the same wherever it is: "
    "a pixel may copy a matching patch **from anywhere** in any training image. Now "
    f"**{moved:.0%}** of the pixels copy a patch from another place, and the result is a **new digit**: "
    f"the closest training image (#{near_e}) is **{dist_e:.2f}** away, where the ideal score's was {dist:.3f}."
)
picture(els, "els", lambda: figures.strip(
    [els.traj.final[0], train.images[near_e],
     figures.provenance_picture(f.mean[0], f.source_index[0], f.source_pos[0], f.source_count[0], target=BIG)],
    ["ELS output: new", f"closest training image #{near_e}", "where its pixels come from"], target=BIG, font_size=18),
    "A digit that is in no training set, assembled from pieces of many.")

# 5 ----------------------------------------------------------------------------------------------
st.header("5. The border: bbELS")
bb = run("bbels", LESSON_K)
fb, fe = last(bb), last(els)
kept_bb = border_kept_fraction(fb.source_pos[0], fb.source_count[0], LESSON_K)
kept_els = border_kept_fraction(fe.source_pos[0], fe.source_count[0], LESSON_K)
st.markdown(
    "ELS wraps around the edges, as if the image were painted on a donut. Real networks pad the image "
    "with zeros instead, so a window hanging over the **border** knows it is at the border. The "
    "**boundary-broken ELS (bbELS)** copies such windows only from the same place relative to the "
    f"border: **{kept_bb:.0%}** of its border pixels keep their row or column, against "
    f"**{kept_els:.0%}** for ELS. This is the machine that best matches trained networks."
)
picture(bb, "border", lambda: figures.strip(
    [els.traj.final[0], bb.traj.final[0],
     figures.provenance_picture(fb.mean[0], fb.source_index[0], fb.source_pos[0], fb.source_count[0], target=BIG)],
    ["ELS (wraps around)", "bbELS (knows the border)", "bbELS: where its pixels come from"], target=BIG, font_size=18),
    f"Same noise, same k = {LESSON_K}.")

# 6 ----------------------------------------------------------------------------------------------
st.header("6. The patch mosaic")
fm = last(main)
idx, pos, cnt = fm.source_index[0], fm.source_pos[0], fm.source_count[0]
rebuilt = mosaic(train.images, fm.source_index, fm.source_pos)[0]
n_src = distinct_sources(idx, cnt)
top = source_shares(idx, cnt)[:1]
st.markdown(
    "Back to the run of section 1 (bbELS with the paper's schedule of window sizes). At the end every "
    "pixel is the centre pixel of **one training patch**: rebuild the picture from those centres and "
    f"you get it back exactly. This digit is a mosaic of pieces from **{n_src} training images**; the "
    "pieces meet at the white seams."
)
picture(main, "mosaic", lambda: figures.strip(
    [main.traj.final[0], figures.provenance_picture(main.traj.final[0], idx, pos, cnt, target=BIG), rebuilt],
    ["output", "its pieces, one colour per training image", "rebuilt from the pieces' centres"],
    target=BIG, font_size=18),
    f"The most pixels any one training image supplies: {top[0][1] if top else 0} (image #{top[0][0] if top else '-'}). "
    "The Patch provenance page shows any pixel's candidates.")

# 7 ----------------------------------------------------------------------------------------------
st.header("7. What k does")
sweep = [run("bbels", k) for k in K_STEPS]
st.markdown(
    "**k** is the size of the window. Small windows match almost anywhere: the picture is stitched from "
    "many tiny pieces, new but often not a digit. Large windows must match a large part of one training "
    f"image: the picture copies bigger pieces, until it is a copy. The paper's schedule (section 1) uses "
    f"large windows while the noise is strong and small ones at the end. Up to k = {max(K_STEPS)} here, "
    f"for {train.shape[1]}x{train.shape[2]} digits."
)
picture(sweep[-1], "k", lambda: figures.strip(
    [r.traj.final[0] for r in sweep],
    [f"k = {k}: {distinct_sources(last(r).source_index[0], last(r).source_count[0])} source images"
     for k, r in zip(K_STEPS, sweep)], target=BIG * 3 // 4, font_size=18),
    "bbELS with one k for every step; the same noise in each.")
st.caption("Next: the Reverse diffusion page plays any run step by step; Patch provenance explains any pixel; "
           "Locality explorer compares machines and k on your own settings.")
