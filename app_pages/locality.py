"""Page 3: what locality decides: now vs before, four machines, a k-sweep, branching at a step."""
from dataclasses import replace

import streamlit as st

from elsviz.analysis import claims
from elsviz import export, figures
from elsviz.errors import ElsvizError
from elsviz.machines import k_limit, k_sweep, MACHINE_NAMES, PAPER_MACHINES
from elsviz.ui import branch_run, derived, estimate_seconds, main_result, previous_result, settings, show, spec_run
from elsviz.ui.links import write_link

AUTO_S = 8.0  # comparisons estimated under this run at once; longer ones wait for a button

st.title("Locality explorer")
st.markdown(
    f"**k** is the window size. {claims.JARGON['k']} Small k: pixels agree only with close neighbours, and "
    "the picture is stitched from many small patches (creative, sometimes incoherent). Large k: whole "
    "regions must match one training image (closer to copying). Change k in the sidebar and compare."
)

s = settings()
result = main_result()
ss = st.session_state

# -- now vs before -----------------------------------------------------------------------------------
old = previous_result()
st.subheader("Now and before")
if old is None:
    show(figures.strip([result.traj.final[0]], [result.spec.describe()], target=224))
    st.caption("Change k (or anything else) in the sidebar: the previous result stays here beside the new one.")
else:
    a, b = old.traj.final[0], result.traj.final[0]
    pictures, captions = [a, b], ["before: " + old.differences(result), "now: " + result.differences(old)]
    if a.shape == b.shape:
        pictures.append(figures.difference_picture(a, b, target=224))
        captions.append("difference")
    show(figures.strip(pictures, captions, target=224))
    changed = f" {claims.changed_claim(a, b).text}" if a.shape == b.shape else ""
    st.caption(f"Now: {result.spec.describe()}.{changed}")


def run_all(specs, what, button_label):
    """Results of specs (an ElsvizError in place of a refused one); waits for a button when long."""
    todo = estimate_seconds(s, specs)
    slot = st.empty()
    if todo > AUTO_S and not slot.button(f"{button_label} (about {todo:.0f} s)"):
        st.caption("These runs are not computed yet.")
        return None
    slot.empty()
    out = []
    for spec in specs:
        try:
            out.append(spec_run(s, spec, what=what(spec), confirm=False))
        except ElsvizError as err:
            out.append(err)
    return out


def novelty(r) -> claims.Claim:
    """Whether a result's output is a copy of a training image, or new (elsviz.analysis.claims), computed once per run."""
    return derived(r, "novelty", lambda: claims.novelty_claim(s.train.images, r.traj.final[0],
                                                             noun=claims.noun(s.train.name)))


def novelties(specs, results) -> list[tuple]:
    """(spec, novelty claim) of the results that ran at the training size (a copy needs the same size)."""
    return [(sp, novelty(r)) for sp, r in zip(specs, results)
            if not isinstance(r, ElsvizError) and tuple(r.traj.final.shape[1:]) == tuple(s.train.shape)]


def download_png(picture, name: str, spec, key: str) -> None:
    """A PNG download of a strip on this page (for slides), named by the run it starts from."""
    st.download_button("Download this strip (PNG)", export.png_bytes(picture),
                       file_name=export.download_name(f"locality-{name}", "png", train=s.train, spec=spec),
                       mime="image/png", key=key, icon=":material/download:")


def show_strip(specs, results, caption, target=128, name="strip"):
    good = [(sp, r) for sp, r in zip(specs, results) if not isinstance(r, ElsvizError)]
    if good:
        pic = figures.strip([r.traj.final[0] for _, r in good], [caption(sp) for sp, _ in good], target=target)
        show(pic)
        download_png(pic, export.slug(name), good[0][0], key=f"dl_{export.slug(name)}")
    for sp, r in zip(specs, results):
        if isinstance(r, ElsvizError):
            st.caption(f"{caption(sp)}: not run. {r}")


st.divider()
view = st.segmented_control("Compare", ["four machines", "k-sweep", "branch at a step"], default="four machines",
                            key="loc_view")
write_link(view=view)
spec = result.spec
train_hw = tuple(s.train.shape[1:])

if view == "four machines":
    st.markdown("The same seed and k through all four machines. **IS** weighs whole training images (once the "
                "noise is gone it can only give one back); **LS** weighs patches from the same place only; **ELS** "
                "from anywhere; **bbELS** from anywhere, except at the border, the paper's model of a "
                "convolutional network.")
    specs = [replace(spec, machine=m, size=None) for m in PAPER_MACHINES]
    results = run_all(specs, lambda sp: MACHINE_NAMES[sp.machine], "Run the four machines")
    if results:
        show_strip(specs, results, lambda sp: MACHINE_NAMES[sp.machine], target=160, name="four machines")
        found = novelties(specs, results)
        if found:
            st.caption("Closest training image (RMS distance on the -1..1 scale; *unlike any*: further than "
                       f"{claims.TYPICAL_Q:.0%} of the training images are from their nearest neighbour): "
                       + "; ".join(f"{MACHINE_NAMES[sp.machine]}: {claims.short_novelty(c)}" for sp, c in found) + ".")
        if spec.size is not None:
            st.caption("All four at the training size (IS and LS cannot make other sizes).")

elif spec.machine == "is":
    st.info("IS has no window, so k changes nothing. Pick LS, ELS or bbELS in the sidebar.")

elif view == "k-sweep":
    ks = k_sweep(spec.machine, train_hw, spec.size)
    st.markdown(f"The same seed through **{MACHINE_NAMES[spec.machine]}** with one k for every step, "
                f"k = {ks[0]} to {ks[-1]}: small windows stitch many small pieces, large ones copy large parts "
                "of one training image.")
    specs = [replace(spec, k=k) for k in ks]
    results = run_all(specs, lambda sp: f"k-sweep, k = {sp.k}", "Run the k-sweep")
    if results:
        show_strip(specs, results, lambda sp: f"k = {sp.k}", target=112, name="k-sweep")
        found = novelties(specs, results)
        if found:
            st.caption(claims.sweep_claim([sp.k for sp, _ in found], [c for _, c in found],
                                          noun=claims.noun(s.train.name)).text)

elif view == "branch at a step":
    st.markdown("Keep the run as it was down to step s+1, then finish it from step s with another k. Try an "
                "early step (large s, much noise) and a late one, and compare how much of the picture changes.")
    cols = st.columns(2)
    steps = list(range(spec.steps - 1, 0, -1))
    if ss.get("branch_step") not in steps:
        ss["branch_step"] = steps[len(steps) // 2]
    at = cols[0].select_slider("Branch at step s", options=steps, key="branch_step")
    kmax = k_limit(spec.machine, train_hw, spec.size)
    ss["branch_k"] = min(int(ss.get("branch_k", 3)), kmax)
    k2 = cols[1].slider("New k from step s on", 1, kmax, step=2, key="branch_k")
    try:
        other = branch_run(result, at, k2)
    except ElsvizError as err:
        st.error(str(err))
    else:
        a, b = result.traj.final[0], other.traj.final[0]
        pic = derived(other, f"branch-{at}-{k2}", lambda: figures.strip(
            [result.traj.frame(at).mean[0], a, b, figures.difference_picture(a, b, target=160)],
            [f"estimate at step {at}", "as run", f"k = {k2} from step {at}", "difference"], target=160))
        show(pic)
        download_png(pic, f"branch-at-{at}-k{k2}", spec, key="dl_branch")
        st.caption(f"{claims.changed_claim(a, b).text} Left: what the machine believed when the branch started.")
