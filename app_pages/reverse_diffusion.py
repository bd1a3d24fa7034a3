"""Page 1: the output first, then the run as an animation: noisy image, denoised estimate and entropy map, step by step."""
import streamlit as st

from elsviz.analysis import claims
from elsviz import export, figures
from elsviz.errors import ElsvizError
from elsviz.analysis.provenance import distinct_sources, shared_mask
from elsviz.ui import derived, derived_later, main_result, show

st.title("Reverse diffusion")
st.markdown(
    "The machine starts from pure noise and removes it in steps. At each step every pixel looks at the "
    "**k x k window** around it and averages the centre pixels of training patches, each weighted by how much "
    "its window looks like that one: the *denoised estimate*. Step by step the weights narrow onto fewer "
    "patches: at the end a pixel may be copied from one patch, or still be an average of many. The picture is a "
    "**mosaic of training patches** and of such averages."
)
st.caption(claims.JARGON["k"])

result = main_result()
traj, spec = result.traj, result.spec
last = traj.frames[-1]
if last.source_index is not None:  # what this run's last step says: how many pixels are copies, how many averages
    st.markdown(f"**In this run.** {claims.settled_claim(last, machine=spec.machine).text}")
st.caption(claims.JARGON["entropy"])

left, right = st.columns([1, 1], gap="large")
with left:  # the result first: the output of this run, large and still
    show(derived(result, "output", lambda: figures.picture(traj.final[0], target=448)))
    ahead = " (ahead, in the background)" if result.background else ""
    st.caption(f"The output (step 1): **{spec.describe()}** on *{result.train.name}*, computed in "
               f"{result.seconds:.2f} s on {result.engine.device}{ahead}.")
with right:
    gif = derived(result, "gif", lambda: figures.animation_gif(traj))
    st.image(gif, caption="Looping: the noisy image x_t (left) and the estimate (right), step by step.")
    if last.source_index is not None:
        cols = st.columns(2)
        cols[0].metric("Source images", distinct_sources(last.source_index[0], last.source_count[0]),
                       help="How many distinct training images hold the heaviest patch of at least one pixel of the "
                            "output (shared pixels not counted). See the Patch provenance page.")
        cols[1].metric("Shared pixels", claims.percent(float(shared_mask(last.source_count[0]).float().mean())),
                       help="Pixels whose window matches many identical patches (flat background): no single source.")
    st.caption("Change k, the machine or the seed in the sidebar and watch what changes.")

    def name(what: str, ext: str) -> str:  # unique per run: set, machine, k, steps, seed
        return export.download_name(what, ext, train=result.train, spec=spec)

    try:
        export.video_codec()
        no_video = None
    except ElsvizError as exc:  # no PyAV here: the GIF still is
        no_video = str(exc)
    row = st.container(horizontal=True)  # the four side by side, wrapping where the column is narrow
    row.download_button("GIF", derived_later(result, "gif-slides", lambda: export.run_gif(traj)),
                        file_name=name("run", "gif"), mime="image/gif", key="dl_gif", icon=":material/download:",
                        on_click="ignore",
                        help="The run for slides: x_t beside the estimate, one frame per step.")
    row.download_button("MP4", derived_later(result, "mp4", lambda: export.run_mp4(traj)), file_name=name("run", "mp4"),
                        mime="video/mp4", key="dl_mp4", icon=":material/download:", on_click="ignore",
                        disabled=no_video is not None,
                        help=no_video or "The run as a video for slides (H.264, made when you click): x_t beside "
                                         "the estimate, about 480 pixels tall, the output held at the end.")
    row.download_button("PNG", derived(result, "output-png", lambda: export.png_bytes(
        figures.picture(traj.final[0], target=640))), file_name=name("output", "png"), mime="image/png", key="dl_png",
        icon=":material/download:", help="The output, large, each pixel a sharp square.")
    row.download_button("Numbers", derived(result, "npz", lambda: export.npz_bytes(
        traj, spec=spec, dataset=result.train.name)), file_name=name("run", "npz"), mime="application/octet-stream",
        key="dl_npz", icon=":material/download:",
        help="Every step as arrays (.npz): x_t, estimate, entropy, provenance; its README entry says what each is.")
    if no_video is not None:
        st.caption(no_video)

st.subheader("Step through the run")
st.caption("It opens on the last step (the output). Press ▶ Play to run it from the noise, or drag the slider. "
           f"Left: the noisy input x_t of the step. Middle: the posterior mean. {claims.JARGON['posterior']} At the "
           f"last step it is the output. Right: the entropy of each pixel's patch weights, how undecided it still is; "
           "the scale is fixed for the machine and set (0 to the log of the number of "
           "keys) so runs compare: bright = many patches still in play, dark = settled on one patch (or on "
           "identical ones, as on flat background).")
fig = derived(result, "animation", lambda: figures.animation_figure(
    traj, entropy_max=export.max_entropy(spec.machine, len(result.train), result.train.shape),
    show_k=spec.machine != "is"))
st.plotly_chart(fig, key="animation", config={"displayModeBar": False})
