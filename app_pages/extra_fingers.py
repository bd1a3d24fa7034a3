"""Page 5: extra fingers: how often a local machine grows them, on which seeds, and for one hand where,
when and from which training hands the extra finger came."""
import numpy as np
import streamlit as st
import torch

from elsviz import export, figures
from elsviz.errors import ElsvizError
from elsviz.analysis.fingers import DEFAULT_STUDY, HAND, commitment_map, count_fingers, explain_extra_finger, extra_finger, region_sources, seam_map
from elsviz.app.fingers import cell_at, hand_record, parse_ks, patch_caption, patches_sentence, piece_patches, pieces, study_settings, timeline
from elsviz.machines import k_limit, MACHINE_NAMES
from elsviz.app.runs import pixel_from_click
from elsviz.schedule import locality_schedule
from elsviz.ui import fingers as fui
from elsviz.ui import settings, show, status_slot
from elsviz.ui.clickable import clickable_image
from elsviz.ui.links import write_link

st.title("Extra fingers")
st.markdown(
    "With a **local** score, pixels further apart than the window never see each other: each finger-sized "
    "region is settled by patches that agree with their neighbours, not with the whole hand, and a hand can "
    "come out with a finger too many. Here: **how often** that happens as the window k grows (IS, which "
    "copies whole hands, is the reference), **which seeds** do it, and for one of them **where, when and from "
    "which training hands** the extra finger was assembled."
)

s = settings()
hs = fui.hands(s)
if hs is None:
    st.stop()
ss = st.session_state
machine, train = hs.engine.machine, hs.train
train_hw = tuple(train.shape[1:])
check = fui.training_check(hs.dataset_key, train)
st.caption(f"**{train.name}**, {len(train):,} images, {MACHINE_NAMES[machine]} (the sidebar's machine). "
           f"{check.describe()}")
if machine == "is":
    st.info("IS memorises whole training hands, so it never grows a finger: pick LS, ELS or bbELS in the sidebar "
            "to study what locality does (IS stays in the study as the reference).")
    st.stop()

# -- the study -------------------------------------------------------------------------------------------
st.subheader("How often: finger counts against the window size")
ss.setdefault("fing_seeds", DEFAULT_STUDY.n_seeds)
ss.setdefault("fing_ks", " ".join(str(k) for k in DEFAULT_STUDY.ks))
ss.setdefault("fing_steps", DEFAULT_STUDY.steps)
cols = st.columns([1, 2, 1])
cols[0].number_input("Seeds", 0, 512, step=4, key="fing_seeds", help="Hands generated per setting, from the sidebar's "
                     "seed on. More seeds, a steadier rate.")
cols[1].text_input("Window sizes k (or schedules)", key="fing_ks",
                   help=f"Odd window sizes up to {k_limit(machine, train_hw)}, or paper schedules such as mnist-resnet, "
                        "separated by spaces or commas.")
if ss["fing_steps"] not in fui.STUDY_STEPS:
    ss["fing_steps"] = DEFAULT_STUDY.steps
cols[2].select_slider("Steps", fui.STUDY_STEPS, key="fing_steps",
                      help="Reverse-diffusion steps per hand (the study's own, not the sidebar's).")
n_seeds, steps = int(ss["fing_seeds"]), int(ss["fing_steps"])
try:
    ks = parse_ks(ss["fing_ks"], machine, train_hw)
    if n_seeds < 1:
        raise ElsvizError("Choose at least one seed: the study counts the fingers of that many generated hands.")
except ElsvizError as err:
    st.error(str(err))
    st.stop()
seeds = list(range(int(s.spec.seed), int(s.spec.seed) + n_seeds))
st.caption(f"**The study:** {study_settings(machine, seeds, ks, steps)} These are its own settings, above: the "
           f"sidebar's locality ({fui.sidebar_locality(s.spec)}) and steps ({s.spec.steps}) do not apply here, nor "
           "to the hand opened below. A study compares fixed window sizes, and its cost grows with seeds x window "
           "sizes x steps. The sidebar's training set, machine, class and seed (the first of the seeds) do apply.")
linked = ss.pop("_link_fing_pick", None)  # a shared link's hand: opened below, with or without the study
if linked is not None:
    if linked[0] in ks and linked[1] in seeds:
        ss["fing_pick"] = linked
    else:
        st.warning(f"The link's hand (seed {linked[1]}, k = {linked[0]}) is not one of this study's (seeds "
                   f"{seeds[0]} to {seeds[-1]}, k = {', '.join(map(str, ks))}): it is not opened.",
                   icon=":material/link_off:")

study = fui.cached_study(hs, seeds, ks, steps)
slot = status_slot()  # the button, then the progress bar; an empty place once the study is there
pick = ss.get("fing_pick")
if pick and (pick[0] not in ks or pick[1] not in seeds):
    pick = ss["fing_pick"] = None
if study is None:
    seconds = fui.estimate(hs, n_seeds, ks, steps)
    with slot.container():
        go = st.button(f"Run the study: {n_seeds} seeds x {len(ks)} window sizes, and IS (about {seconds:.0f} s)",
                       type="primary", key="fing_go")
        st.caption(f"Estimated from this engine's measured speed on {len(train):,} training images. "
                   + ("A smaller training set (Resize / subset in the sidebar) or fewer seeds is faster. "
                      if seconds > 300 else "")
                   + (f"The hand the link names (seed {pick[1]}, k = {pick[0]}) is opened below without it." if pick
                      else ""))
    if go:
        slot.empty()
        try:
            study = fui.run_study(hs, seeds, ks, steps, slot)
        except ElsvizError as err:
            st.error(str(err))
            st.stop()
    elif not pick:
        write_link(study_seeds=n_seeds, study_k=",".join(map(str, ks)), study_steps=steps)
        st.stop()

if study is not None:
    name = export.slug(f"{train.name} fingers {machine} seeds {seeds[0]}-{seeds[-1]} k {' '.join(map(str, ks))} "
                       f"{steps} steps")
    left, right = st.columns(2)
    left.plotly_chart(figures.finger_histogram(study.distributions()), key="fing_hist",
                      config={"displayModeBar": False})
    left.caption("How many fingers each generated hand has, per window size (grey: IS). 'no hand': the picture is "
                 "not a hand at all.")
    right.plotly_chart(figures.extra_rate_figure(study.rates(), reference=study.ideal_rate), key="fing_rate",
                       config={"displayModeBar": False})
    right.caption(study.sentence())
    dl = st.container(horizontal=True)
    dl.download_button("Study per seed (CSV)", export.csv_bytes(study.table()), file_name=export.download_name(f"{name}", "csv"),
                       mime="text/csv", key="fing_dl_csv", icon=":material/download:", on_click="ignore",
                       help="One row per seed and window size (IS last): the fingers counted, whether more than five.")
    dl.download_button("Study (JSON)", export.json_bytes(study.to_json()), file_name=export.download_name(f"{name}", "json"),
                       mime="application/json", key="fing_dl_json", icon=":material/download:", on_click="ignore",
                       help="The settings, the rates per window size and every seed's count.")

    # -- the gallery -----------------------------------------------------------------------------------------
    st.subheader("Which seeds: the gallery")
    shown_ks = [k for k in ks]
    if ss.get("fing_gallery_k") not in shown_ks:
        ss["fing_gallery_k"] = study.worst()
    cols = st.columns([3, 1])
    cols[0].segmented_control("Window size", shown_ks, key="fing_gallery_k", format_func=lambda k: f"k = {k}")
    only_odd = cols[1].toggle("Only the odd ones", key="fing_only_odd", help=f"Hands without exactly {HAND} fingers.")
    gk = ss["fing_gallery_k"] or shown_ks[0]
    entries = study.entries(gk, only_odd)
    if not entries:
        st.success(f"k = {gk}: every one of the {len(seeds)} hands has {HAND} fingers.")
    else:
        columns = min(8, len(entries))
        pick = ss.get("fing_pick")
        selected = next((n for n, e in enumerate(entries) if pick == (gk, e["seed"])), None)
        pic = figures.gallery([e["image"] for e in entries], [f"seed {e['seed']}: {e['count']}" for e in entries],
                              [e["count"] != HAND for e in entries], columns=columns, target=96, selected=selected)
        click = clickable_image(pic, key="fing_gallery_click", cursor="pointer")
        if click and click.get("unix_time") != ss.get("_fing_click_seen"):
            ss["_fing_click_seen"] = click.get("unix_time")
            n = cell_at(click, len(entries), columns)
            if n is not None:
                ss["fing_pick"] = (gk, entries[n]["seed"])
                st.rerun()
        st.caption(f"k = {gk}: each hand with its finger count; red: not {HAND} fingers. **Click a hand** to open it below.")
        dl = st.container(horizontal=True)
        dl.download_button("Gallery (PNG)", export.png_bytes(pic), file_name=export.download_name(f"{name}-gallery-k{gk}", "png"), mime="image/png",
                           key="fing_dl_gallery", icon=":material/download:", on_click="ignore",
                           help="The hands above, with their finger counts.")

# -- one hand --------------------------------------------------------------------------------------------
pick = ss.get("fing_pick")
if not pick or pick[0] not in ks or pick[1] not in seeds:
    odd = study.first_odd()
    pick = ss["fing_pick"] = odd or (ks[0], seeds[0])
pk, pseed = pick
study_link = dict(study_seeds=n_seeds, study_k=",".join(map(str, ks)), study_steps=steps, hand=f"{pk}:{pseed}")
write_link(**study_link)
st.divider()
st.subheader(f"One hand: seed {pseed}, k = {pk}, {steps} steps")
st.caption("The study's settings (above), so this is the hand its gallery shows for that seed.")
summary = st.empty()  # the sentence in plain words, filled in at the end (after the branch test, if run)
result = fui.hand_run(hs, pk, steps, pseed)
traj, frame = result.traj, result.traj.frames[-1]
out = traj.final[0]
fc = count_fingers(out)
hand = fc.hand if fc.hand is not None else (out[0] > 0).numpy()
fresh = ss.get("_fing_hand") != pick  # another hand opened: its own defaults below
ss["_fing_hand"] = pick
born = None if fresh else fui.cached_birth(result, ss.get("fing_k_fix"), not ss.get("fing_every", False))
extra = extra_finger(traj, born)  # the one finger the branch test's fixing branch drops (None: none singled out)
if fc.count > HAND and extra:
    about = f"; finger {extra} (outlined) is the extra one: the branch that fixes the hand drops it (see above)"
elif fc.count > HAND and born is None:
    about = f": one more than {HAND}. Which one is extra, the branch test below decides" if fc.count == HAND + 1 \
        else f": {fc.count - HAND} more than {HAND}. Which are extra, the branch test below decides"
elif fc.count > HAND:
    about = ": the branch test singles out no one finger as the extra one (see above)"
else:
    about = ""

opts = st.columns(4)
style = opts[0].radio("Sources as", ["tint", "outlines"], key="fing_style", horizontal=True,
                      help="Tint: each pixel coloured by the training image of its heaviest patch. Outlines: the "
                           "picture as it is, each piece (neighbours whose heaviest patches come from one image at "
                           "one offset) outlined in that image's colour.")
alpha = opts[1].slider("Colour strength", 0.0, 1.0, 0.6, 0.05, key="fing_alpha")
on_hand = opts[2].toggle("On the hand only", value=True, key="fing_on_hand")
threshold = opts[3].slider("Decided below (nats)", 0.05, 2.0, 0.5, 0.05, key="fing_entropy",
                           help="The commitment map shows the step at which each pixel's entropy first fell below this.")

cols = st.columns(4)
with cols[0]:
    show(figures.fingers_picture(out, fc.regions, fc.tips if fc.count else None, target=256, highlight=extra),
         caption=f"{fc.count} fingers found, numbered from the wrist{about}" if fc.count else f"not a hand: {fc.reason}")
with cols[1]:
    prov = figures.provenance_picture(frame.mean[0], frame.source_index[0], frame.source_pos[0], frame.source_count[0],
                                      target=256, alpha=alpha, style="edges" if style == "outlines" else "tint",
                                      outline=True, within=hand if on_hand else None)
    prov_click = clickable_image(prov, key="fing_prov_click", cursor="crosshair")
    st.caption("Which training hand weighs most in each pixel, one colour per training hand (white: the hand's outline). "
               "**Click** a piece to inspect it below.")
with cols[2]:
    seamy = seam_map(frame).numpy()
    share = float(seamy[hand].mean()) if hand.any() else 0.0
    show(figures.seam_picture(out, frame.source_index[0], frame.source_pos[0], frame.source_count[0], target=256,
                              within=hand if on_hand else None),
         caption=f"Seams (red): neighbours whose heaviest patches come from different hands, or from one hand at other offsets. "
                 f"{share:.0%} of the hand's pixels touch one.")
with cols[3]:
    show(figures.commitment_picture(commitment_map(traj, threshold), out, steps, target=256),
         caption=f"The step at which each pixel decided (its entropy fell below {threshold:.2f} nats): dark = early, "
                 "while still noisy; grey = never.")

# -- where each finger came from ---------------------------------------------------------------------------
if fc.count:
    st.markdown("**The training hands whose patches weigh most in each finger**")
    found = [region_sources(frame, fc.finger(label), top=5) for label in range(1, fc.count + 1)]
    show(figures.finger_sources_grid([[train.images[src["image"]] for src in srcs] or [-torch.ones(train.shape)]
                                      for srcs in found],
                                     [[f"#{src['image']}: {src['pixels']} px" for src in srcs] or ["shared only"]
                                      for srcs in found], target=64))
    st.caption("Each finger's pixels, by the training hand of their heaviest patch at the last step (the index is the "
               "hand's number in the training set; the sentence above counts the steps in which the finger was born "
               "instead). Shared pixels (windows many hands have alike) are left out.")

# -- a whole piece ----------------------------------------------------------------------------------
st.markdown("**A piece of the mosaic (one training image at one offset), and its story across the steps**")
h, w = out.shape[-2:]
if prov_click and prov_click.get("unix_time") != ss.get("_fing_prov_seen"):
    ss["_fing_prov_seen"] = prov_click.get("unix_time")
    ss["fing_pixel"] = pixel_from_click(prov_click, (h, w))
    ss["fing_region"] = "the piece I clicked" if ss.get("fing_region") != "the pixel I clicked" else "the pixel I clicked"
choices = [f"finger {n}" for n in range(1, fc.count + 1)] + ["the piece I clicked", "the pixel I clicked"]
if ss.get("fing_region") not in choices or fresh or (extra and ss.get("_fing_extra_seen") != (pick, extra)):
    ss["fing_region"] = f"finger {extra}" if extra else choices[0]  # the extra finger, once the branch test names it
ss["_fing_extra_seen"] = (pick, extra)
region_name = st.radio("Inspect", choices, key="fing_region", horizontal=True)
labels = pieces(frame.source_index[0], frame.source_pos[0], frame.source_count[0])
r, c = ss.get("fing_pixel") or (h // 2, w // 2)
if region_name.startswith("finger"):
    mask = fc.finger(int(region_name.split()[1]))
elif region_name == "the piece I clicked" and labels[r, c]:
    mask = labels == labels[r, c]
else:  # one pixel (a shared pixel belongs to no piece: it is its own region)
    mask = np.zeros((h, w), bool)
    mask[r, c] = True
patches, shared = piece_patches(frame, mask)
left, right = st.columns([2, 3])
with left:
    where = f" ({r}, {c})" if region_name.endswith("clicked") else ""
    show(figures.fingers_picture(out, mask.astype(int), target=224),
         caption=f"{region_name}{where}: {int(mask.sum())} pixel{'s' if mask.sum() > 1 else ''}")
    st.caption(patches_sentence(patches, shared))
    if patches:
        show(figures.strip([figures.box_in_image(train.images[p["image"]], p["box"], target=128) for p in patches[:6]],
                           [patch_caption(p) for p in patches[:6]], target=128, font_size=12))
with right:
    st.plotly_chart(figures.timeline_figure(timeline(traj, mask)), key="fing_timeline",
                    config={"displayModeBar": False})
    st.caption("Across the steps: the training hand the region leans towards (label), its winning weight, and the "
               "entropy (how undecided). A dashed line: it switched to another training hand.")

# -- when it was born --------------------------------------------------------------------------------------
st.markdown("**When the extra finger is born: the branch test**")
kmax = k_limit(machine, train_hw)
run_k = pk if isinstance(pk, int) else max(locality_schedule(pk, steps)[1:])
larger = list(range(run_k + 2, kmax + 1, 2))
if not larger:
    st.caption(f"k = {run_k} already covers the whole image here: no larger window to branch with.")
    sentence = explain_extra_finger(traj, None, train=train)
    summary.info(sentence)
    fui.hand_downloads(result, None, pk, train.name, sentence, figures.fingers_picture(
        out, fc.regions, fc.tips if fc.count else None, target=512, highlight=extra))
    st.stop()
default = next((k for k in ks if isinstance(k, int) and k > run_k), min(run_k + 8, kmax))
if ss.get("fing_k_fix") not in larger or fresh:
    ss["fing_k_fix"] = default
linked_fix = ss.pop("_link_fing_fix", None)  # a shared link's larger window
if linked_fix in larger:
    ss["fing_k_fix"] = linked_fix
cols = st.columns([3, 2, 2], vertical_alignment="bottom")
cols[0].caption(f"Finish the run from step s with a larger window and count the fingers. The steps count down: "
                f"step {steps - 1} is the run's first (the most noise), step 1 its last. Branching early (a large s) "
                "redoes most of the run and gives a normal hand; branching late keeps what was decided. Where the count "
                "changes, the extra finger was born; the finger the fixing branch drops is the extra one. A window "
                "much larger than the run's redraws the whole hand even at the last step: pick one near it.")
k_fix = cols[1].select_slider("Larger window for the branches", larger, key="fing_k_fix")
every = cols[2].toggle("Every step (slower)", key="fing_every",
                       help="Branch from every step; off: a binary search over the steps (about log2(steps) branches).")
born = fui.cached_birth(result, k_fix, not every)
slot = status_slot()  # the button, then the progress bar; an empty place once the test is there
if born is None:
    seconds = fui.birth_seconds(hs, steps, k_fix, not every)
    if slot.button(f"Run the branch test ({'under a second' if seconds < 1 else f'about {seconds:.0f} s'})",
                   key="fing_birth_go"):
        slot.empty()
        try:
            fui.birth(result, k_fix, not every, slot)
            st.rerun()  # the whole hand again, with the branch test: the sentence, the extra finger outlined
        except ElsvizError as err:
            st.error(str(err))
if born is not None:
    st.plotly_chart(figures.birth_steps_figure(born.points, steps, born=born.window, normal=HAND), key="fing_birth",
                    config={"displayModeBar": False})
sentence = explain_extra_finger(traj, born, train=train)
summary.info(sentence)
write_link(**study_link, fix=k_fix)
fui.hand_downloads(result, born, pk, train.name, sentence, figures.fingers_picture(
    out, fc.regions, fc.tips if fc.count else None, target=512, highlight=extra))
