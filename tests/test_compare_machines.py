"""Every machine against a trained network, both ways (elsviz.analysis.compare): along each machine's own
trajectory from the network's noise ("own") and one step at a time on the network's own x_t ("network"),
per step and at the end; calibrate for every machine with a k; `elsviz compare --machines all`.

On 8x8 digits (40 images), a ResNet of a few thousand weights trained for 4 steps, 2 seeds and 4 steps:
what is checked is the bookkeeping against a direct restatement, not how good the network is.
"""
import csv
import io
import json

import numpy as np
import pytest
import torch

from elsviz import ElsvizError, Engine, compare, load_dataset, load_network, sample
from elsviz.analysis.compare import LOCAL_MACHINES, calibrate, calibration, machine_keys, score
from elsviz.cli.commands import main
from elsviz.machines import BY_KEY, MACHINE_NAMES, MACHINES, k_limit
from elsviz.networks import train_network

SMALL = {"size": 8, "limit": 40}
STEPS = 4
KS = [3, 1, 5, 3]  # k[i] at step i (k[0] unused): a different k at each step, so a step's k cannot be mixed up


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("digits", **SMALL)


@pytest.fixture(scope="module")
def net_dir(digits8, tmp_path_factory):
    folder = tmp_path_factory.mktemp("net") / "tiny"
    train_network(digits8, folder, width=8, layers=1, batch=8, steps=4, save_every=4, source="digits", options=SMALL)
    return folder


@pytest.fixture(scope="module")
def every(net_dir, digits8):
    """All nine machines, both modes, 2 seeds, the schedule KS."""
    return compare(load_network(net_dir), digits8, seeds=[3, 8], k=KS, steps=STEPS, network_steps=(STEPS,),
                   machines="all")


class Counting:
    """A network that counts its denoise calls (and their batch sizes)."""

    def __init__(self, net):
        self.net, self.calls = net, []
        self.train, self.device, self.schedule = net.train, net.device, net.schedule

    def denoise(self, x, t, k=None, label=None):
        self.calls.append(x.shape[0])
        return self.net.denoise(x, t, k, label=label)


class MachineAsNetwork:
    """A "network" that is itself a machine with one k (or none): what compare needs of a network."""

    schedule = None  # never calibrated

    def __init__(self, engine, k=None):
        self.engine, self.k = engine, k
        self.train, self.device = engine.train, engine.device

    def denoise(self, x, t, k=None, label=None):
        return self.engine.denoise(x, t, self.k, label=label)


def by_hand_agreement(u, v) -> float:
    a, b = (np.asarray(w, dtype=np.float64).ravel() for w in (u, v))
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def by_hand_r2(target, prediction) -> float:
    y, p = (np.asarray(w, dtype=np.float64).ravel() for w in (target, prediction))
    return 1.0 - float(((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum())


# -- every machine, both modes ---------------------------------------------------------------------------
def test_all_means_every_machine_in_the_machines_order(every):
    assert machine_keys("all") == machine_keys(["bbels", "all"]) == list(MACHINES) == every.machines
    assert len(every.machines) == 9 and every.modes == ["own", "network"]
    assert machine_keys("bbels,pca") == machine_keys(["bbels", "pca", "bbels"]) == ["bbels", "pca"]
    steps = list(range(STEPS - 1, 0, -1))
    for m in MACHINES:
        assert every.outputs[m].shape == (2, 1, 8, 8)
        for table in (every.step_agreement, every.step_r2, every.network_path_agreement, every.network_path_r2):
            assert sorted(table[m], reverse=True) == steps and all(len(v) == 2 for v in table[m].values())
        for mode in ("own", "network"):
            for metric in ("agreement", "r2"):
                curve = every.curve(m, mode, metric)
                assert [i for i, _ in curve] == steps  # noisiest first, as step_medians
                table = every.per_step(mode, metric)[m]
                assert [v for _, v in curve] == pytest.approx([float(np.median(table[i])) for i in steps])
    assert every.curve("bbels") == every.step_medians("bbels")


def test_own_mode_restated_by_hand(every, net_dir, digits8):
    net = load_network(net_dir)
    for m in ("pspc", "wiener", "cfdm"):
        engine = Engine(digits8, m, "cpu")
        k = KS if BY_KEY[m].local else 1
        for s, seed in enumerate(every.seeds):
            mine = sample(engine, seed=seed, steps=STEPS, k=k)
            theirs = sample(net, seed=seed, steps=STEPS)
            assert torch.allclose(every.outputs[m][s], mine.final[0], atol=1e-5)
            for i in (3, 1):
                assert every.step_r2[m][i][s] == pytest.approx(
                    by_hand_r2(theirs.frame(i).mean, mine.frame(i).mean), abs=1e-4)
                assert every.step_agreement[m][i][s] == pytest.approx(
                    by_hand_agreement(theirs.frame(i).mean, mine.frame(i).mean), abs=1e-4)
            assert every.r2["network"][m][s] == pytest.approx(by_hand_r2(theirs.final, mine.final), abs=1e-4)


def test_network_mode_is_the_machine_on_the_networks_own_x_t(every, net_dir, digits8):
    """Mode "network" restated: each seed's network run alone, the machine's denoise at each of its frames."""
    net = load_network(net_dir)
    for m in MACHINES:
        engine = Engine(digits8, m, "cpu")
        for s, seed in enumerate(every.seeds):
            for f in sample(net, seed=seed, steps=STEPS).frames:
                mean = engine.denoise(f.x, f.t, KS[f.i] if BY_KEY[m].local else None).mean
                assert torch.allclose(every.network_path_means[m][f.i][s], mean[0], atol=1e-4)
                assert every.network_path_agreement[m][f.i][s] == pytest.approx(by_hand_agreement(f.mean, mean),
                                                                               abs=1e-4)
                assert every.network_path_r2[m][f.i][s] == pytest.approx(by_hand_r2(f.mean, mean), abs=1e-4)
        # at the noisiest step both modes hold the machine against the same x (the noise): the same numbers
        first = STEPS - 1
        assert torch.allclose(every.network_path_means[m][first], every.means[m][first], atol=1e-6)
        assert every.network_path_agreement[m][first] == pytest.approx(every.step_agreement[m][first], abs=1e-6)


def test_network_mode_reuses_the_networks_trajectory(net_dir, digits8):
    counting = Counting(load_network(net_dir))
    result = compare(counting, digits8, seeds=[0, 1, 2], k=3, steps=STEPS, network_steps=(STEPS,),
                     machines=["bbels", "wiener"], modes="network")
    assert counting.calls == [3] * (STEPS - 1)  # one run of the network, all seeds at once; never again
    assert result.modes == ["network"] and result.machines == ["bbels", "wiener"]
    assert result.agreement["network"] == {} and result.step_agreement == {} and result.step_r2 == {}
    assert result.curve("wiener", "own") == [] and len(result.curve("wiener", "network", "r2")) == STEPS - 1
    only_own = compare(load_network(net_dir), digits8, seeds=1, k=3, steps=STEPS, network_steps=(STEPS,),
                       machines="is", modes=["own"])
    assert only_own.network_path_agreement == {} and only_own.network_path_r2 == {} and only_own.modes == ["own"]


def test_a_machine_against_itself_agrees_at_one_both_ways(digits8):
    bbels = Engine(digits8, "bbels", "cpu")
    result = compare(MachineAsNetwork(bbels, 3), digits8, seeds=2, k=3, steps=STEPS, network_steps=(STEPS,),
                     machines=["bbels", "is"], engines={"bbels": bbels})
    # no calibrated schedule and no k: machines without a window need none
    wiener = Engine(digits8, "wiener", "cpu")
    plain = compare(MachineAsNetwork(wiener), digits8, seeds=2, steps=STEPS, network_steps=(STEPS,),
                    machines=["wiener", "nearest"], engines={"wiener": wiener})
    assert plain.schedule == []
    for res, m in ((result, "bbels"), (plain, "wiener")):
        for table in (res.step_agreement, res.step_r2, res.network_path_agreement, res.network_path_r2):
            assert all(v == pytest.approx(1.0, abs=1e-6) for per in table[m].values() for v in per)
        assert res.r2["network"][m] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert result.curve("is", "network", "r2")[-1][1] < 0.999  # another machine does not
    with pytest.raises(ElsvizError, match="no calibrated schedule yet, and bbELS takes a window k"):
        compare(MachineAsNetwork(wiener), digits8, seeds=1, steps=STEPS, machines=["wiener", "bbels"])


def test_k_is_clamped_to_what_each_machine_takes(digits8):
    wiener = Engine(digits8, "wiener", "cpu")
    result = compare(MachineAsNetwork(wiener), digits8, seeds=1, k=9, steps=3, network_steps=(3,),
                     machines=["els", "pspc", "bbels", "is"], modes="network")
    assert result.schedule == [9, 9, 9]
    net = sample(MachineAsNetwork(wiener), seed=0, steps=3)
    for m, k in (("els", 7), ("pspc", 7), ("bbels", 9), ("is", None)):  # no 9x9 window lies inside 8x8 images
        assert k == k_limit(m, (8, 8)) or m in ("bbels", "is")
        mean = Engine(digits8, m, "cpu").denoise(net.frame(2).x, net.frame(2).t, k).mean
        assert torch.allclose(result.network_path_means[m][2], mean, atol=1e-5)


def test_options_reach_the_engines_and_are_recorded(digits8):
    wiener = Engine(digits8, "wiener", "cpu")
    result = compare(MachineAsNetwork(wiener), digits8, seeds=[4], steps=STEPS, network_steps=(STEPS,),
                     machines=["pca", "cfdm"], options={"pca": {"threshold": 0.5}, "cfdm": {"samples": 2, "sigma": 0.3},
                                                        "is": {}},
                     modes="own")
    assert result.options == {"pca": {"threshold": 0.5}, "cfdm": {"samples": 2, "sigma": 0.3, "seed": 0}}
    assert torch.allclose(result.outputs["pca"][0],
                          sample(Engine(digits8, "pca", "cpu", threshold=0.5), seed=4, steps=STEPS).final[0], atol=1e-5)
    assert not torch.allclose(result.outputs["pca"][0],
                              sample(Engine(digits8, "pca", "cpu"), seed=4, steps=STEPS).final[0], atol=1e-3)
    with pytest.raises(ElsvizError, match="PCA locality has no setting 'samples': its settings are threshold"):
        compare(MachineAsNetwork(wiener), digits8, seeds=1, steps=STEPS, machines="pca", options={"pca": {"samples": 3}})
    with pytest.raises(ElsvizError, match="options name an unknown machine 'pcb'"):
        compare(MachineAsNetwork(wiener), digits8, seeds=1, steps=STEPS, machines="pca", options={"pcb": {}})
    with pytest.raises(ElsvizError, match="threshold"):
        compare(MachineAsNetwork(wiener), digits8, seeds=1, steps=STEPS, machines="pca",
                options={"pca": {"threshold": 2}})


def test_unknown_machines_and_modes_are_refused_with_the_valid_ones(digits8):
    net = MachineAsNetwork(Engine(digits8, "wiener", "cpu"))
    with pytest.raises(ElsvizError, match="Unknown machine 'bbel'; the machines are is, ls, els, bbels, nearest, "
                                          "wiener, pca, pspc, cfdm"):
        compare(net, digits8, seeds=1, machines=["bbel"])
    with pytest.raises(ElsvizError, match="Unknown mode 'both'"):
        compare(net, digits8, seeds=1, machines="wiener", modes="both")
    with pytest.raises(ElsvizError, match="at least one machine"):
        machine_keys([])


def test_json_table_and_summary_carry_both_modes(every):
    data = json.loads(json.dumps(every.to_json()))
    assert data["machines"] == list(MACHINES) and data["modes"] == ["own", "network"]
    assert data["machine_names"]["pca"] == "PCA locality"
    for m in MACHINES:
        assert data["network_path_agreement_median"][m]["1"] == pytest.approx(np.median(every.network_path_agreement[m][1]))
        assert data["network_path_r2_median"][m]["2"] == pytest.approx(np.median(every.network_path_r2[m][2]))
        assert data["step_r2_median"][m]["3"] == pytest.approx(np.median(every.step_r2[m][3]))
        assert data["network_path_final_median"]["r2"][m] == pytest.approx(np.median(every.network_path_r2[m][1]))
    row = every.table()[1]
    assert row["seed"] == 8
    assert row["network_path_r2_cfdm_1"] == pytest.approx(every.network_path_r2["cfdm"][1][1], abs=1e-4)
    assert row["step_r2_wiener_2"] == pytest.approx(every.step_r2["wiener"][2][1], abs=1e-4)
    assert row["network_path_agreement_pspc_3"] == pytest.approx(every.network_path_agreement["pspc"][3][1], abs=1e-4)
    summary = every.summary()
    assert summary.startswith("2 seeds, median agreement")
    for m in MACHINES:
        assert f"{MACHINE_NAMES[m]} " in summary
    assert f"on the {STEPS}-step network's own x_t, step 1:" in summary
    with pytest.raises(ElsvizError, match="mode must be one of own, network"):
        every.curve("bbels", mode="path")
    with pytest.raises(ElsvizError, match="metric must be one of agreement, r2"):
        every.curve("bbels", metric="r^2")


def test_score_takes_the_network_path_of_finished_runs():
    g = torch.Generator().manual_seed(0)
    net_means = {i: torch.randn(2, 1, 5, 5, generator=g) for i in (2, 1)}
    theirs = {i: v + 0.3 * torch.randn(v.shape, generator=g) for i, v in net_means.items()}
    result = score([0, 1], 3, [3, 3, 3], [3], {"network": net_means[1]}, {"network": net_means},
                   network_path={"ls": theirs})
    assert result.machines == ["ls"] and result.modes == ["network"]
    assert result.network_path_r2["ls"][2][1] == pytest.approx(by_hand_r2(net_means[2][1], theirs[2][1]))
    with pytest.raises(ElsvizError, match="needs the network's posterior means"):
        score([0], 3, [3] * 3, [3], {"network": net_means[1][:1]}, {}, network_path={"ls": theirs})


# -- calibration for every machine with a k ---------------------------------------------------------------
class KnownSchedule(MachineAsNetwork):
    """A "network" that is a machine with its own k at every step."""

    def __init__(self, engine, ks):
        super().__init__(engine)
        self.ks = ks

    def denoise(self, x, t, k=None, label=None):
        return self.engine.denoise(x, t, self.ks[round(t * len(self.ks))], label=label)


def test_calibrating_pspc_recovers_its_schedule_within_its_limit(digits8):
    assert LOCAL_MACHINES == ("ls", "els", "bbels", "pspc")
    pspc = Engine(digits8, "pspc", "cpu")
    known = [1, 1, 3, 5, 3, 1]
    cal = calibration(KnownSchedule(pspc, known), pspc, seeds=2, steps=6)
    assert cal.machine == "pspc" and cal.ks == [1, 3, 5, 7]  # odd, up to PSPC's limit on 8x8 (7)
    assert cal.schedule[1:] == known[1:] and all(k % 2 == 1 and k <= k_limit("pspc", (8, 8)) for k in cal.schedule)
    clamped = calibration(KnownSchedule(pspc, known), pspc, seeds=1, steps=6, ks=[3, 9, 15, 5])
    assert clamped.ks == [3, 7, 5]  # 9 and 15 do not fit: PSPC's largest k instead
    ks = calibrate(KnownSchedule(pspc, known), Engine(digits8, "els", "cpu"), seeds=1, steps=6)
    assert all(k % 2 == 1 and k <= 7 for k in ks)


def test_calibrating_a_machine_without_k_names_those_with_one(digits8):
    net = MachineAsNetwork(Engine(digits8, "bbels", "cpu"), 3)
    for m in ("wiener", "is", "cfdm"):
        with pytest.raises(ElsvizError, match=f"{MACHINE_NAMES[m]} has no window k to calibrate; calibrate one of "
                                              "the machines with a k: ls, els, bbels, pspc"):
            calibration(net, Engine(digits8, m, "cpu"), seeds=1, steps=4)


# -- the command line -----------------------------------------------------------------------------------
def test_compare_all_machines_on_the_command_line(net_dir, tmp_path, capsys):
    out_json, out_csv = tmp_path / "all.json", tmp_path / "all.csv"
    assert main(["compare", str(net_dir), "--seeds", "1", "--steps", "3", "--network-steps", "3", "--k", "3",
                 "--machines", "all", "-M", "pca.threshold=0.1", "--json", str(out_json), "--csv", str(out_csv)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("1 seed, median agreement")
    for m in MACHINES:  # a table per machine: final numbers and both modes step by step
        block = captured.err.split(f"\n{MACHINE_NAMES[m]} (medians over 1 seed)\n")[1]
        assert block.startswith("  final, own trajectory: network 3 steps: agreement ")
        assert "final, on the network's x_t (step 1): agreement" in block.split("\n\n")[0]
        assert "own agr" in block and "net x_t r^2" in block
    data = json.loads(out_json.read_text())
    assert data["machines"] == list(MACHINES) and data["options"]["pca"] == {"threshold": 0.1}
    assert set(data["network_path_r2_median"]) == set(MACHINES) and data["schedule"] == [3, 3, 3]
    header = next(csv.reader(io.StringIO(out_csv.read_text())))
    assert {"network_path_agreement_cfdm_1", "step_r2_is_2", "r2_network_wiener"} <= set(header)
    assert not (net_dir / "compare.json").exists()  # with --k: not the network's calibrated record

    assert main(["compare", str(net_dir), "--seeds", "1", "--steps", "3", "--network-steps", "3", "--k", "3",
                 "--machines", "bbels,pca", "--modes", "network", "--json", str(out_json), "--force"]) == 0
    data = json.loads(out_json.read_text())
    assert data["machines"] == ["bbels", "pca"] and data["modes"] == ["network"]
    assert data["median_agreement"]["network"] == {} and "own agr" not in capsys.readouterr().err

    assert main(["compare", str(net_dir), "--machines", "bbels,foo"]) == 1
    assert "Unknown machine 'foo'; the machines are is, ls, els" in capsys.readouterr().err
    assert main(["compare", str(net_dir), "--modes", "network", "--figure", str(tmp_path / "g.png")]) == 1
    assert "add own to --modes" in capsys.readouterr().err
    assert main(["compare", str(net_dir), "-M", "pca=1"]) == 1
    assert "MACHINE.NAME=VALUE" in capsys.readouterr().err


def test_calibrate_pspc_on_the_command_line(net_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "net"
    shutil.copytree(net_dir, copy)
    assert main(["calibrate", str(copy), "--machine", "pspc", "--seeds", "1", "--steps", "3"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("pspc schedule k[0..2] =")
    saved = json.loads((copy / "schedule.json").read_text())
    assert saved["machine"] == "pspc" and all(k % 2 == 1 and k <= 7 for k in saved["schedule"])
    assert main(["calibrate", str(copy), "--machine", "wiener"]) == 2  # argparse: not a machine with a k
    assert "invalid choice: 'wiener'" in capsys.readouterr().err


def test_every_new_flag_has_help(capsys):
    assert main(["compare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--machines M", "--modes MODES", "--machine-option MACHINE.NAME=VALUE", "--csv CSV"):
        assert flag in text
    assert "or all for every one" in text and "pca.threshold" in text and "cfdm.samples" in text
    assert main(["calibrate", "--help"]) == 0
    assert "ls, els, bbels, pspc" in " ".join(capsys.readouterr().out.split())
