"""Page 2: where each pixel was copied from: source overlay with seams, a pixel's top keys, the mosaic."""
import streamlit as st

from elsviz import export, figures
from elsviz.runs import distinct_sources, mosaic, pixel_from_click, shared_mask, source_shares
from elsviz.ui import derived, explain, main_result, show
from elsviz.ui.clickable import clickable_image
from elsviz.ui.links import write_link

st.title("Patch provenance")
st.markdown(
    "Each pixel of the picture is (in the end) **copied from one training patch**: the one whose window "
    "matches best. Here each pixel is coloured by the **training image** it comes from, and white lines "
    "mark the **seams** where one copied piece meets another. **Click a pixel** to see the patches it "
    "chose from. Grey hatched pixels are *shared*: their window (flat background, say) matches many "
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
               f"{'' if window is None else f', k = {window}'}. One colour per training image; grey hatched: "
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
    r, c = pixel
    count = int(frame.source_count[0, r, c])
    src = int(frame.source_index[0, r, c])
    entropy = float(frame.entropy[0, r, c])
    if count > 1:
        st.markdown(f"**Pixel ({r}, {c}) is shared:** its window is matched equally by **{count:,} identical "
                    f"patches** (flat background, say), so no single training image is named. "
                    f"Entropy {entropy:.2f} nats.")
    else:
        label = "" if train.labels is None else f" (a {train.class_name(int(train.labels[src]))})"
        u, v = (int(p) for p in frame.source_pos[0, r, c])
        verb = "is copied from" if step == steps[-1] else "so far leans most towards"
        st.markdown(f"**Pixel ({r}, {c})** {verb} **training image #{src}**{label}, patch centred at ({u}, {v}), "
                    f"weight {figures.weight_text(float(frame.source_weight[0, r, c]))}. Entropy {entropy:.2f} nats "
                    "(0 = decided).")
    keys = explain(result, step, pixel, top=8)
    if window is None:
        st.markdown("**Its top keys** at this step: IS compares whole images, so each key is a whole training "
                    "image (the pixel in red). All pixels share these weights.")
    else:
        st.markdown(f"**Its top keys** at this step: each {window}x{window} patch (left) and the training image "
                    "it sits in (patch outlined, centre pixel in red). Near the end one patch takes all the weight; "
                    "move the step slider left to watch the candidates compete.")
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
cols[0].metric("Distinct training images in this picture", n_sources)
cols[1].metric("Shared pixels", f"{float(shared_mask(cnt).float().mean()):.0%}")
cols[2].metric("Training images available", f"{len(train):,}")
rebuilt = mosaic(train.images, frame.source_index, frame.source_pos)[0]
show(derived(result, f"mosaic-{step}", lambda: figures.strip(
    [frame.mean[0], rebuilt, figures.provenance_picture(frame.mean[0], idx, pos, cnt, target=160, alpha=1.0)],
    ["estimate at this step", "rebuilt from winning keys' centres", "sources alone"], target=160)))
st.caption("Middle: each pixel replaced by the centre pixel of its heaviest key. At the last step it equals the "
           "output: the picture *is* a patch mosaic. At earlier steps the estimate is still an average of many "
           "patches, so the two differ.")
shares = source_shares(idx, cnt)[:8]
if shares:
    st.markdown("**The training images that supply the most pixels**")
    show(derived(result, f"sources-{step}", lambda: figures.strip(
        [train.images[i] for i, _ in shares], [f"#{i}: {n} px" for i, n in shares], target=96)))
