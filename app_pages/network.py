"""Network vs machine: a trained network against the machines, from the same noise: agreement, calibration."""
from pathlib import Path

import streamlit as st

from elsviz import export, figures
from elsviz.analysis.compare import BASELINES, NAMES, median, resample, scale_sentence, spread
from elsviz.errors import ElsvizError
from elsviz.networks import ARCHS, catalogue, default_network_dir, receptive_field
from elsviz.schedule import PRESETS
from elsviz.ui import network as nets
from elsviz.ui import settings, show
from elsviz.ui.data import engine as engine_of
from elsviz.ui.links import write_link
from elsviz.ui.network import CALIBRATED, SIDEBAR

PATH = "a local path ..."

st.title("Network vs machine")
st.markdown(
    "The theory says a trained **convolutional** network makes, from the same noise, the picture the **bbELS "
    "machine** makes: a mosaic of training patches. Here a real network, trained on the same images, and the "
    "machines start from the **same noise**. Each picture's **agreement** with the network is the paper's score: "
    "centre both pictures, scale them to unit length, take the dot product: 1 = the same picture (up to brightness "
    "and contrast). Unrelated pictures of the same kind score well above 0, so every number here stands beside "
    "what the network scores against **another seed's output, a random training image and the nearest one**."
)

s = settings()
ss = st.session_state

# -- the network -------------------------------------------------------------------------------------
finished = nets.train_pending(s)  # a Train / Resume button asked for it in the previous rerun
networks = catalogue()
if finished is not None:
    label = next((lb for lb, f in networks.items() if f == finished), None)
    if label:
        ss["net_choice"] = label
options = [*networks, PATH]
linked = ss.pop("_link_net_choice", None)  # a shared link's network, by its name in the list
if linked in networks:
    ss["net_choice"] = linked
nets.choose(networks, options, s.train.name, s.train.shape)  # the network trained on the sidebar's set and size,
# unless one was chosen
if linked is not None and linked not in networks:
    st.warning(f"The link names the network `{linked}`, which this server does not have: showing "
               f"{ss['net_choice']} instead.", icon=":material/link_off:")
st.selectbox("Network", options, key="net_choice",
             help="Bundled with elsviz, trained here (the form below), or any folder `elsviz train --out` wrote.")
folder = networks.get(ss["net_choice"])
if ss["net_choice"] == PATH:
    typed = st.text_input("Folder of a network", key="net_path", placeholder="nets/digits-resnet")
    folder = Path(typed).expanduser() if typed.strip() else None

net = None
if folder is not None:
    try:
        net = nets.network(folder)
    except ElsvizError as err:
        st.error(str(err))

with st.expander("Train a network", expanded=not networks):
    source = nets.source_of(s.dataset_key)
    if net is not None and not net.finished:
        st.markdown(f"**{net.path.name}** stopped after {net.steps_done:,} of {net.steps_total:,} steps.")
        st.button("Resume its training", on_click=nets.request_training,
                  kwargs=dict(folder=str(net.path), steps=net.steps_total, resume=True))
    if source is None:
        st.caption("Training here needs a set the app can read again: a built-in or a local path, not an upload.")
    else:
        c, h, w = s.train.shape
        st.caption(f"On the sidebar's training set: **{s.train.name}**, {len(s.train):,} images, {h}x{w}. The network "
                   f"is saved in {default_network_dir()} (set ELSVIZ_NETWORKS to change it).")
        cols = st.columns(3)
        cols[0].text_input("Name", value=f"{s.train.name}-resnet", key="net_name")
        cols[1].radio("Architecture", list(ARCHS), key="net_arch", horizontal=True,
                      format_func={"resnet": "ResNet", "unet": "UNet + attention"}.get,
                      help="ResNet: convolutions only, what the ELS machine models. UNet: one self-attention "
                           "block lets every pixel see the whole image, the paper's contrast case.")
        cols[2].select_slider("Training steps", [100, 250, 500, 1000, 2000, 5000], value=2000, key="net_steps",
                              help="2,000 steps of 64 images: about 6 CPU-minutes for 16x16 digits "
                                   "(longer on a busy machine).")
        target = default_network_dir() / ss["net_name"].strip()
        if not ss["net_name"].strip() or "/" in ss["net_name"]:
            st.caption("Give the network a name (no slashes).")
        elif (target / "config.json").exists():
            st.caption(f"A network called {ss['net_name']} exists already; pick another name.")
        else:
            st.button(f"Train on {s.train.name}", type="primary", on_click=nets.request_training,
                      kwargs=dict(folder=str(target), arch=ss["net_arch"], steps=ss["net_steps"]))

if net is None:
    st.info("Choose a network, or train one above (`elsviz train --dataset digits --out DIR` does the same).")
    st.stop()

try:
    key, train = nets.training_set(net)
except ElsvizError as err:
    st.error(str(err))
    st.stop()
rf = receptive_field(net.config)
st.caption(f"**{net.describe()}**. " + (f"Each output pixel sees a {rf}x{rf} square of the input." if rf else
                                        "Its attention lets every pixel see the whole image.")
           + (f" {own}" if (own := nets.set_sentence(net, s.train)) else ""))

# -- the machines' locality schedule -------------------------------------------------------------------
st.subheader("The locality schedule")
calibrated = net.schedule
sidebar_ks = None
if s.spec.machine != "is":
    sidebar_ks = resample(s.spec.schedule(), 20)
if calibrated is None:
    st.info("This network has no calibrated schedule yet. Calibration runs the network and, at every step, finds "
            "the window size k whose bbELS score points most nearly where the network's does (as the paper did). "
            "Until then the machines use the sidebar's locality.")
    cols = st.columns([1, 2])
    n_cal = cols[0].slider("Samples to calibrate on", 2, 10, 4, key="net_cal_seeds")
    if cols[1].button(f"Calibrate bbELS on {n_cal} samples (a few minutes)", key="net_calibrate"):
        nets.calibrate_here(net, engine_of(key, "bbels", train), list(range(1000, 1000 + n_cal)))
        st.rerun()
    mode = SIDEBAR
else:
    mode = st.radio("The machines use", [CALIBRATED, SIDEBAR], key="net_sched", horizontal=True)
if mode == SIDEBAR and sidebar_ks is None:
    st.warning("The sidebar's machine is IS, which has no window: pick another machine there, or calibrate.")
    st.stop()
ks = resample(calibrated, 20) if mode == CALIBRATED else sidebar_ks
cal_name = f"calibrated: {net.path.name}"
side_name, side_kind, side_source = nets.sidebar_locality(s.spec)
same = side_kind == "calibrated" and side_source == net.path.name and calibrated is not None  # the one schedule
used = cal_name if mode == CALIBRATED or same else f"the sidebar's: {side_name}"
lines = {cal_name: resample(calibrated, 20)} if calibrated else {}
if sidebar_ks is not None and not same:
    lines[f"the sidebar's: {side_name}"] = sidebar_ks
lines.update({p: list(v) for p, v in PRESETS.items() if "circular" not in p and p != side_name})
left, right = st.columns([3, 2])
left.plotly_chart(figures.schedules_figure(lines, highlight=[used]), key="net_schedules",
                  config={"displayModeBar": False})
right.markdown(f"**The machines use {used}**. k per step (step 19 to 1): {' '.join(str(ks[i]) for i in range(19, 0, -1))}")
right.caption("Bold: the schedule the machines use below. Grey: the others, among them the paper's, fitted on "
              "32x32 images to networks trained on MNIST, FashionMNIST, CIFAR-10 and CelebA. "
              + ("The calibrated schedule is also offered in the sidebar (paper schedule)." if calibrated else ""))
note = None if used == cal_name else nets.locality_note(side_kind, side_name, side_source, net, calibrated is not None)
if note:
    st.info(note, icon=":material/info:")
if calibrated and net.calibration.get("stale"):
    right.warning("This schedule was calibrated for earlier weights (training went on since); "
                  "run elsviz calibrate again.")

# -- the grid ----------------------------------------------------------------------------------------------
st.subheader("Same noise, network and machines")
cols = st.columns(2)
n_seeds = cols[0].slider("Seeds", 1, 8, 4, key="net_seeds", help="From the sidebar's seed on.")
net_steps = cols[1].radio("Network steps", [150, 20], key="net_steps_shown", horizontal=True,
                          format_func=lambda n: f"{n} (as the paper)" if n == 150 else f"{n} (as the machines)")
seeds = list(range(int(s.spec.seed), int(s.spec.seed) + n_seeds))
try:
    result = nets.comparison(net, key, train, seeds, ks, (20, 150))
except ElsvizError as err:
    st.error(str(err))
    st.stop()
if result is None:
    st.stop()
main = result.network_key(net_steps, 20)
row = result.agreement[main]
left, right = st.columns([3, 2], gap="large")
grid_pic = figures.network_grid(result, [main, *nets.MACHINES], target=112)
show(grid_pic, where=left)
with right:
    cols = st.columns(2)
    for n, m in enumerate(nets.MACHINES):
        q1, med, q3 = spread(row[m])
        cols[n % 2].metric(f"median agreement, {NAMES[m]}", f"{med:.2f}",
                           help=f"Over the {len(seeds)} seeds; the middle half lies between {q1:.2f} and {q3:.2f}.")
    wins = sum(b > i for b, i in zip(row["bbels"], row["is"]))
    cols[1].metric("seeds where bbELS beats IS", f"{wins} of {len(seeds)}")
    st.caption(f"Each row starts from one seed's noise. Under each machine's picture: its agreement with the network "
               f"({net_steps} steps). The machines take 20 steps with the schedule above. **IS** can only give back "
               "a training image; **ELS** matches patches anywhere, with wrap-around edges; **bbELS** also knows "
               "where the border is, as a zero-padded network does.")

# -- beside the baselines ------------------------------------------------------------------------------------
st.subheader("How high is high? Agreement beside its baselines")
rows = {NAMES[m]: row[m] for m in nets.MACHINES}
rows.update({BASELINES[b]: v for b, v in result.baselines[main].items()})
left, right = st.columns([3, 2])
left.plotly_chart(figures.agreement_spread_figure(rows, seeds, baselines=list(BASELINES.values())),
                  key="net_baselines", config={"displayModeBar": False})
with right:
    st.markdown(scale_sentence(result, main, list(nets.MACHINES)))
    quartiles = result.spreads(main)
    st.markdown("| agreement with the network | median | middle half of the seeds |\n|---|---|---|\n" + "\n".join(
        f"| {label} | {quartiles[key][1]:.2f} | {quartiles[key][0]:.2f} .. {quartiles[key][2]:.2f} |"
        for key, label in [*((m, NAMES[m]) for m in nets.MACHINES), *BASELINES.items()]
        if quartiles[key][1] == quartiles[key][1]))
    left.caption(f"Each dot is one seed, the diamond the median, the bar the middle half of the seeds (lower to "
                 f"upper quartile). Grey rows: what the network's output ({net_steps} steps) scores against pictures "
                 "not made from the same noise: the network's own output for the next seed (the last seed: the "
                 "first), a training image drawn at random with the seed, and the training image that agrees with it "
                 "most (the best that copying one whole training image can reach). A machine above the nearest "
                 "training image agrees with the network better than any whole training image does.")

# -- downloads and the link ------------------------------------------------------------------------------------
name = export.slug(f"{net.path.name} vs machines seeds {seeds[0]}-{seeds[-1]} "
                   f"{'calibrated' if mode == CALIBRATED else side_name}")
record = {**result.to_json(), "network": net.describe(), "network_folder": net.path.name,
          "machines_use": used, "shown_network_steps": net_steps}
dl = st.container(horizontal=True)
dl.download_button("Grid (PNG)", export.png_bytes(grid_pic), file_name=export.download_name(f"{name}-grid", "png"), mime="image/png",
                   key="net_dl_png", icon=":material/download:", on_click="ignore",
                   help="The pictures above: each seed's network output and the machines', with their agreement.")
dl.download_button("Per seed (CSV)", export.csv_bytes(result.table()), file_name=export.download_name(f"{name}", "csv"), mime="text/csv",
                   key="net_dl_csv", icon=":material/download:", on_click="ignore",
                   help="One row per seed: each machine's and each baseline's agreement (and r²) with the network "
                        "at 20 and 150 steps, the other seed and the training images used.")
dl.download_button("All numbers (JSON)", export.json_bytes(record), file_name=export.download_name(f"{name}", "json"),
                   mime="application/json", key="net_dl_json", icon=":material/download:", on_click="ignore",
                   help="Per seed, medians, quartiles, step by step, the schedule the machines used.")
if ss.get("net_seed_pick") not in seeds:
    ss.pop("net_seed_pick", None)  # a seed no longer compared (or a link's): the first one
write_link(net=ss["net_choice"] if ss["net_choice"] in networks else None,
           net_k={v: k for k, v in nets.SCHEDULE_MODES.items()}[mode], net_seeds=n_seeds, net_steps=net_steps,
           net_seed=ss.get("net_seed_pick") if len(seeds) > 1 else None)

# -- the scatter ---------------------------------------------------------------------------------------------
st.subheader("Seed by seed: bbELS against IS")
left, right = st.columns(2)
left.plotly_chart(figures.agreement_scatter(row["is"], row["bbels"], seeds, title=f"these {len(seeds)} seeds"),
                  key="net_scatter", config={"displayModeBar": False})
saved = nets.saved_comparison(net)
if saved:
    per = saved["per_seed"]
    net_key = max((k for k in saved["median_agreement"] if k.startswith("network")),
                  key=lambda k: 20 if k == "network" else int(k.split("-")[1]))
    xs = [r.get(f"agreement_{net_key}_is") for r in per]
    ys = [r.get(f"agreement_{net_key}_bbels") for r in per]
    if None not in xs and None not in ys:
        right.plotly_chart(figures.agreement_scatter(xs, ys, [r["seed"] for r in per],
                                                     title=f"{len(per)} seeds, from elsviz compare"),
                           key="net_scatter_saved", config={"displayModeBar": False})
else:
    right.caption(f"`elsviz compare {net.path}` scores 32 seeds (and LS, and the network at 20 and 150 steps); "
                  "its scatter then appears here.")
left.caption("Each point is one seed. Above the orange diagonal, bbELS predicts the network better than IS does, "
             "which can only give back training images.")

# -- step by step ----------------------------------------------------------------------------------------------
st.subheader("Step by step: where the two runs part")
pick = st.select_slider("Seed", seeds, key="net_seed_pick") if len(seeds) > 1 else seeds[0]
idx = seeds.index(pick)
show(figures.trajectory_pair(result, "bbels", idx, every=2, target=80))
st.caption("The posterior mean (the current guess of the clean image) of the network (top) and bbELS (below), both "
           "with 20 steps from the same noise, every other step; under each, their agreement. The curves below "
           "have every step.")
st.plotly_chart(figures.step_agreement_figure({
    f"bbELS, seed {pick}": [(i, v[idx]) for i, v in sorted(result.step_agreement["bbels"].items(), reverse=True)],
    f"bbELS, median of {len(seeds)} seeds": result.step_medians("bbels"),
    f"IS, median of {len(seeds)} seeds": result.step_medians("is"),
}), key="net_steps_plot", config={"displayModeBar": False})
