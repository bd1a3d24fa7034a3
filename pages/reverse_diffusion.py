"""Page 1: the run as an animation: noisy image, denoised estimate and entropy map, step by step."""
import streamlit as st

from elsviz import figures
from elsviz.runs import distinct_sources, shared_mask
from elsviz.ui import derived, main_result

st.title("Reverse diffusion")
st.markdown(
    "The machine starts from pure noise and removes it in steps. At each step every pixel looks at the "
    "**k x k window** around it and averages the centre pixels of the training patches that look most "
    "like that window: the *denoised estimate*. Step by step the choice narrows until each pixel is "
    "copied from one patch: the picture is a **mosaic of training patches**."
)

result = main_result()
traj, spec = result.traj, result.spec
last = traj.frames[-1]

left, right = st.columns([3, 2], vertical_alignment="center")
with left:
    gif = derived(result, "gif", lambda: figures.animation_gif(traj))
    st.image(gif, caption="Looping: the noisy image x_t (left) and the estimate (right), step by step.")
with right:
    st.markdown(f"**{spec.describe()}** on *{result.train.name}*")
    if last.source_index is not None:
        cols = st.columns(2)
        cols[0].metric("Source images", distinct_sources(last.source_index[0], last.source_count[0]),
                       help="How many distinct training images supply at least one pixel of the output (shared "
                            "pixels not counted). See the Patch provenance page.")
        cols[1].metric("Shared pixels", f"{float(shared_mask(last.source_count[0]).float().mean()):.0%}",
                       help="Pixels whose window matches many identical patches (flat background): no single source.")
    st.caption(f"Computed in {result.seconds:.2f} s on {result.engine.device}. Change k, the machine or the seed "
               "in the sidebar and watch what changes.")

st.subheader("Step through the run")
st.caption("Press ▶ Play or drag the slider. Left: the noisy input x_t of the step. Middle: the machine's guess "
           "of the clean image (the posterior mean); at the last step it is the output. Right: the entropy "
           "of each pixel's patch weights, how undecided it still is: bright = many patches still in play, "
           "dark = settled on one patch (or on identical ones, as on flat background).")
fig = derived(result, "animation", lambda: figures.animation_figure(traj))
st.plotly_chart(fig, key="animation", config={"displayModeBar": False})
