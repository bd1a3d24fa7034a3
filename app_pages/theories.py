"""Theories side by side: the same noise through every machine and a trained network; their outputs, how
they agree with the network step by step (two ways), what each copied at a clicked pixel, what each assumes."""
import streamlit as st

from elsviz import export, figures
from elsviz.app import theories as th
from elsviz.errors import ElsvizError
from elsviz.machines import MACHINE_NAMES, MACHINE_SENTENCES
from elsviz.analysis import claims
from elsviz.ui import settings, show
from elsviz.ui import theories as ui
from elsviz.ui.clickable import clickable_image
from elsviz.ui.links import write_link

GRID_TARGET = 128  # pixels a side of each output in the grid: ten in two rows of five, 700 pixels wide
COLUMNS = 5

st.title("Theories side by side")
st.markdown(
    "Nine machines, each an exact formula for what a diffusion model computes, and a **trained network**, all "
    "from the **same starting noise**. Kamb & Ganguli's four (IS, LS, ELS, bbELS) and five rival theories differ "
    "in what they assume about images; here is what each makes of the noise, how closely each follows the "
    "network step by step, and, at any pixel you click, which training image each one copies from."
)

s = settings()
ss = st.session_state
try:
    v = ui.view(s)
except ElsvizError as err:
    st.error(str(err))
    st.stop()
st.markdown(v.sentence)
train = v.settings.train
noun = claims.noun(train.name)
notes = []
if s.spec.label is not None:
    notes.append("the class chosen in the sidebar is not used here (the network draws from every class)")
if s.spec.size is not None:
    notes.append("every machine here works at the training size, so the sidebar's output size is not used")
if notes:
    st.caption("Note: " + "; ".join(notes) + ".")


def _seed_to_sidebar():
    ss["seed"] = int(ss["th_seed"])


ss["th_seed"] = int(s.spec.seed)  # the sidebar's seed: one seed for every page
if ss.get("th_machines") is None or not set(ss["th_machines"]) <= set(th.MACHINES):
    ss["th_machines"] = list(th.MACHINES)
cols = st.columns([1, 4], vertical_alignment="bottom")
cols[0].number_input("Seed", 0, 2**31 - 1, step=1, key="th_seed", on_change=_seed_to_sidebar,
                     help="The starting noise, the same for the network and every machine (the sidebar's seed).")
cols[1].multiselect("Machines", list(th.MACHINES), key="th_machines", format_func=MACHINE_NAMES.get,
                    help="All nine by default; fewer run sooner.")
machines = [m for m in th.MACHINES if m in ss["th_machines"]]
if not machines:
    st.info("Choose at least one machine.")
    st.stop()
seed = int(s.spec.seed)
k_words = (f"schedule {s.spec.k}" if isinstance(s.spec.k, str) else
           f"k = {min(s.spec.k)} to {max(s.spec.k)} per step" if isinstance(s.spec.k, tuple) else f"k = {s.spec.k}")
st.caption(f"{s.spec.steps} steps for all; the machines with a window (LS, ELS, bbELS, PSPC) use the sidebar's "
           f"locality ({k_words}), clamped where a machine allows less.")

try:
    result = ui.theory_run(v, machines, seed)
except ElsvizError as err:
    st.error(str(err))
    st.stop()
if result is None:
    st.stop()
ss["_theories"] = result

# -- the grid, and the pixel clicked on it (read before drawing, so the mark follows at once) ---------------------
h, w = train.shape[1:]
titles = [f"network ({v.label.split(' (')[0]})"] + [MACHINE_NAMES[m] for m in machines]
captions = [""] + [f"{result.final(m):.2f}" for m in machines]
click = ss.get("th_click")
if click and click.get("unix_time") != ss.get("_th_click_seen"):
    ss["_th_click_seen"] = click.get("unix_time")
    cell = figures.theories_grid_cell(click, len(titles), (h, w), columns=COLUMNS, target=GRID_TARGET, captions=True)
    if cell is not None:
        ss["th_row"], ss["th_col"] = cell[1]
ss["th_row"] = min(int(ss.get("th_row", h // 2)), h - 1)
ss["th_col"] = min(int(ss.get("th_col", w // 2)), w - 1)
pixel = (ss["th_row"], ss["th_col"])
outputs = [result.network.final[0]] + [result.runs[m].final[0] for m in machines]

st.subheader(f"Same noise, {len(outputs)} outputs")
grid_pic = figures.theories_grid(outputs, titles, captions, columns=COLUMNS, target=GRID_TARGET, mark=pixel)
clickable_image(grid_pic, key="th_click", cursor="crosshair", alt="the outputs of the network and the machines")
st.caption(f"Each picture is one output from seed {seed}'s noise, all on one grey scale (-1 black, 1 white, beyond "
           "clipped). Under each machine: its agreement with the network's output (1 = the same picture up to "
           "brightness and contrast). **Click a pixel** of any picture: the red square marks it in all.")

st.subheader("What each machine copied there")
left, right = st.columns([3, 2], gap="large")
with left:
    cols = st.columns(2)
    cols[0].number_input("Pixel row", 0, h - 1, step=1, key="th_row")
    cols[1].number_input("Pixel column", 0, w - 1, step=1, key="th_col")
    sources = th.pixel_sources(result, pixel, machines)
    st.markdown(f"At pixel ({pixel[0]}, {pixel[1]}) of each output (its last step), each machine's heaviest "
                "key:\n\n" + "\n".join(f"- {th.source_sentence(src, noun)}" for src in sources))
need_pc = any(not src.copies for src in sources)
with right:
    show(figures.pixel_sources_strip(train.images, sources, component=ui.component(v) if need_pc else None,
                                     columns=3, target=96))
    st.caption(f"Each training {noun} with the key outlined in yellow (a k x k patch, or PSPC's crop) and its centre "
               f"pixel in red; for a whole-image key, the pixel itself. A weight is the key's part of the pixel's "
               "average (x n: n identical keys share it)."
               + (" Wiener copies nothing: shown instead is the first principal component of the training set, "
                  "the pattern its linear filter keeps most of." if need_pc else ""))

# -- step by step ------------------------------------------------------------------------------------------------
st.subheader("Step by step: how closely each follows the network")
if ss.get("th_mode") not in th.MODES:
    ss["th_mode"] = "own"
mode = st.radio("Compare", list(th.MODES), key="th_mode", horizontal=True, format_func=th.MODES.get,
                help="Own trajectory: each machine runs from the same noise on its own, and its guess at each step "
                     "is held against the network's. On the network's x_t: each machine is given the network's "
                     "own noisy image at each step, so both answer the same question.")
st.plotly_chart(figures.theory_curves_figure({m: result.curve(m, mode, "agreement") for m in machines},
                                             {m: result.curve(m, mode, "r2") for m in machines}),
                key="th_curves", config={"displayModeBar": False})
st.caption("Top: agreement of each machine's posterior mean (its guess of the clean picture) with the network's at "
           "each step; below: r², how much of the network's guess the machine's predicts (1 = all of it, 0 = no "
           "better than a flat grey at its mean; values under -1 drawn at -1). "
           + ("Here each machine follows its own trajectory, so the two may part as the steps go."
              if mode == "own" else "Here every machine denoises the network's own x_t, step by step."))

# -- what each assumes ---------------------------------------------------------------------------------------------
st.subheader("What each assumes")
st.markdown("\n".join(f"- **{MACHINE_NAMES[m]}**: {MACHINE_SENTENCES[m]}" for m in machines))

# -- downloads and the link ----------------------------------------------------------------------------------------
spec = ui.theories_spec(v, machines, seed)
net_name = v.label.split(" (")[0]
record = {**result.to_json(), "training_set": train.name, "images": len(train), "network_description": v.net.describe(),
          "assumes": {m: MACHINE_SENTENCES[m] for m in machines}}
dl = st.container(horizontal=True)
dl.download_button("Grid (PNG)", export.png_bytes(figures.theories_grid(outputs, titles, captions, columns=COLUMNS,
                                                                        target=GRID_TARGET)),
                   file_name=export.download_name(f"theories-grid-{net_name}", "png", train=train, spec=spec),
                   mime="image/png", key="th_dl_png", icon=":material/download:", on_click="ignore",
                   help="The outputs above, without the pixel's mark.")
dl.download_button("Curves (CSV)", export.csv_bytes(result.table()),
                   file_name=export.download_name(f"theories-curves-{net_name}", "csv", train=train, spec=spec),
                   mime="text/csv", key="th_dl_csv", icon=":material/download:", on_click="ignore",
                   help="One row per machine and step: agreement and r² in both modes.")
dl.download_button("Curves and finals (JSON)", export.json_bytes(record),
                   file_name=export.download_name(f"theories-{net_name}", "json", train=train, spec=spec),
                   mime="application/json", key="th_dl_json", icon=":material/download:", on_click="ignore",
                   help="The curves of both modes, each output's agreement and r² with the network's, the k used.")
write_link(th=None if machines == list(th.MACHINES) else ",".join(machines), th_mode=mode,
           th_row=pixel[0], th_col=pixel[1])
