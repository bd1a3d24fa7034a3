"""Patch provenance: which training patch weighs most in each pixel (source overlay with seams), a
pixel's top keys and their weights, the mosaic of the heaviest patches."""
import streamlit as st

from elsviz.analysis import claims
from elsviz import export, figures
from elsviz.analysis.provenance import distinct_sources, mosaic, shared_mask, source_shares
from elsviz.app.runs import pixel_from_click
from elsviz.ui import derived, explain, main_result, show
from elsviz.ui.clickable import clickable_image
from elsviz.ui.links import write_link

st.title("Patch provenance")
st.markdown(
    "Each pixel of the picture is an **average of the centre pixels of training patches**, each weighted by how "
    "well its window matches: the better the match, the larger its **weight** (a pixel's weights add up to 1). "
    "Here each pixel is coloured by the **training image of its heaviest patch**, and white lines mark the "
    "**seams** where one piece meets another. **Click a pixel** to see its heaviest patches and their weights. "
    "Grey hatched pixels are *shared*: their heaviest window (flat background, say) is matched equally by many "
    "identical patches, so no single image can be named."
)

result = main_result()
traj, train = result.traj, result.train
if traj.frames[-1].source_index is None:
    st.info("This run has no provenance to show.")
    st.stop()

ss = st.session_state
steps = [f.i for f in traj.frames]  # steps-1 .. 1
if ss.get("prov_step") not in steps:
    ss["prov_step"] = steps[-1]
st.select_slider("Step (move left for earlier, noisier estimates; step 1 gives the output)", options=steps,
                 key="prov_step", format_func=lambda i: f"{i} (t = {i / traj.steps:.2f})")
step = ss["prov_step"]
frame = traj.frame(step)
h, w = frame.mean.shape[-2:]
window = None if result.spec.machine == "is" else frame.k  # IS compares whole images

# the pixel: a click on the picture (read before drawing, so the mark follows at once) or the inputs
click = ss.get("prov_click")
if click and click.get("unix_time") != ss.get("_click_seen"):
    ss["_click_seen"] = click.get("unix_time")
    ss["px_row"], ss["px_col"] = pixel_from_click(click, (h, w))
ss["px_row"] = min(int(ss.get("px_row", h // 2)), h - 1)
ss["px_col"] = min(int(ss.get("px_col", w // 2)), w - 1)
pixel = (ss["px_row"], ss["px_col"])
write_link(step=step, row=pixel[0], col=pixel[1])  # a shared link opens this step and pixel

left, right = st.columns([1, 1], gap="large")
with left:
    opts = st.columns(2)
    colour = opts[0].toggle("Colour by source image", value=True, key="prov_colour")
    seams_on = opts[1].toggle("Draw seams", value=True, key="prov_seams")
    pic = figures.provenance_picture(frame.mean[0], frame.source_index[0], frame.source_pos[0], frame.source_count[0],
                                     target=448, colour=colour, draw_seams=seams_on, mark=pixel)
    clickable_image(pic, key="prov_click", cursor="crosshair")
    st.caption(f"{result.spec.describe()}. Step {step}, t = {frame.t:.2f}"
               f"{'' if window is None else f', k = {window}'}. "
               f"{'' if window is None else claims.JARGON['k'] + ' '}One colour per training image; grey hatched: "
               "shared; white lines: seams; red square: the selected pixel.")
    dl = st.columns(2)
    dl[0].download_button("Picture (PNG)", derived(result, f"provenance-png-{step}-{colour}-{seams_on}", lambda: export.png_bytes(
        figures.provenance_picture(frame.mean[0], frame.source_index[0], frame.source_pos[0], frame.source_count[0],
                                   target=640, colour=colour, draw_seams=seams_on))),
        file_name=export.download_name("provenance", "png", train=train, spec=result.spec, step=step),
        mime="image/png", key="dl_provenance", icon=":material/download:",
        help="This picture, large, without the selected pixel's mark.")
    dl[1].download_button("Numbers (.npz)", derived(result, "npz", lambda: export.npz_bytes(
        traj, spec=result.spec, dataset=train.name)),
        file_name=export.download_name("run", "npz", train=train, spec=result.spec),
        mime="application/octet-stream", key="dl_npz", icon=":material/download:",
        help="Every step's provenance (source image, position, weight, count, entropy) and images as arrays; "
             "its README entry says what each is.")

with right:
    cols = st.columns(2)
    cols[0].number_input("Pixel row", 0, h - 1, step=1, key="px_row")
    cols[1].number_input("Pixel column", 0, w - 1, step=1, key="px_col")
    noun = claims.noun(train.name)
    class_name = None if train.labels is None else (lambda i: train.class_name(int(train.labels[i])))
    st.markdown(claims.pixel_claim(frame, pixel, train.images, final=step == steps[-1], machine=result.spec.machine,
                                   noun=noun, class_name=class_name).text)
    st.caption(claims.JARGON["entropy"])
    keys = explain(result, step, pixel, top=8)
    held = claims.top_keys_claim(keys, "whole training images" if window is None else "patches")
    if window is None:
        st.markdown("**Its top keys** at this step: IS compares whole images, so each key is a whole training "
                    f"image (the pixel in red). All pixels share these weights. {held.text}")
    else:
        st.markdown(f"**Its top keys** at this step: each {window}x{window} patch (left) and the training image "
                    f"it sits in (patch outlined, centre pixel in red). {held.text} Move the step slider to watch "
                    "the candidates compete.")
    grid = st.columns(2)
    for n, key in enumerate(keys):
        image = train.images[key["image"]]
        card = figures.key_card(image, key["row"], key["col"], window, target=120)
        name = "" if train.labels is None else f" ({train.class_name(int(train.labels[key['image']]))})"
        tie = f", x{key['count']:,} identical" if key.get("count", 1) > 1 else ""
        show(card, where=grid[n % 2], caption=f"#{key['image']}{name} at ({key['row']}, {key['col']}): "
                                              f"weight {figures.weight_text(key['weight'])}{tie}")

st.divider()
st.subheader("The mosaic")
idx, pos, cnt = frame.source_index[0], frame.source_pos[0], frame.source_count[0]
n_sources = distinct_sources(idx, cnt)
cols = st.columns(3)
cols[0].metric("Distinct training images in this picture", n_sources,
               help="Training images that hold the heaviest patch of at least one pixel (shared pixels not counted).")
cols[1].metric("Shared pixels", claims.percent(float(shared_mask(cnt).float().mean())),
               help="Pixels whose heaviest window is matched equally by identical patches (flat background, say).")
cols[2].metric("Training images available", f"{len(train):,}")
rebuilt = mosaic(train.images, frame.source_index, frame.source_pos)[0]
show(derived(result, f"mosaic-{step}", lambda: figures.strip(
    [frame.mean[0], rebuilt, figures.provenance_picture(frame.mean[0], idx, pos, cnt, target=160, alpha=1.0)],
    ["estimate at this step", "rebuilt from heaviest keys' centres", "sources alone"], target=160)))
final = step == steps[-1]
rebuilt_claim = claims.mosaic_claim(frame.mean[0], rebuilt, what="output" if final else "estimate at this step",
                                    machine=result.spec.machine)
settled = claims.settled_claim(frame, final=final, machine=result.spec.machine)
st.caption(f"Middle: each pixel replaced by the centre pixel of its heaviest key. {rebuilt_claim.text} {settled.text}")
shares = source_shares(idx, cnt)[:8]
if shares:
    st.markdown("**The training images that hold the heaviest patch of the most pixels**")
    show(derived(result, f"sources-{step}", lambda: figures.strip(
        [train.images[i] for i, _ in shares], [f"#{i}: {n} px" for i, n in shares], target=96)))
