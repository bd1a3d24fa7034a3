"""The networks that ship in assets/networks/: each loads, was trained on the built-in set its config.json
names (as that set loads today), has the weights its checksum says, a calibrated schedule for those
weights, and samples a finite image of its set's shape; the catalogue, `elsviz networks` and the
"Network vs machine" page find the one for a set. docs/AGREEMENT.md says how each was made."""
import pytest
import torch

from elsviz import load_dataset, load_network, sample
from elsviz.cli.commands import main
from elsviz.networks import BUNDLED, catalogue, file_sha256, network_for, read_config

SHIPPED = {  # folder -> (architecture, built-in set, image side)
    "digits-resnet": ("resnet", "digits", 16),
    "digits-unet": ("unet", "digits", 16),
    "mnist-resnet": ("resnet", "mnist", 28),
    "mnist-unet": ("unet", "mnist", 28),
}
MAX_WEIGHTS = 3_000_000  # bytes per network: the four together stay a few MB in the repository


@pytest.fixture(autouse=True)
def bundled_only(tmp_path, monkeypatch):
    """No networks trained on this machine: the catalogue is what the repository ships."""
    monkeypatch.setenv("ELSVIZ_NETWORKS", str(tmp_path / "none"))


def test_the_repository_ships_the_four_networks():
    assert sorted(p.parent.name for p in BUNDLED.glob("*/config.json")) == sorted(SHIPPED)
    assert list(catalogue()) == [f"{name} (bundled)" for name in sorted(SHIPPED)]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_bundled_network_is_whole_and_matches_its_set(name):
    arch, dataset, side = SHIPPED[name]
    folder = BUNDLED / name
    config = read_config(folder)
    weights = folder / config["weights"]
    shipped = {p.name for p in folder.iterdir()}
    assert {"config.json", "schedule.json", config["weights"]} <= shipped  # and no training state:
    assert shipped <= {"config.json", "schedule.json", "compare.json", config["weights"]}
    assert weights.stat().st_size < MAX_WEIGHTS
    assert file_sha256(weights) == config["weights_sha256"]
    assert config["arch"] == arch and config.get("num_classes") is None
    d = config["dataset"]
    assert (d["name"], d["source"], d["options"]) == (dataset, dataset, {})  # the whole built-in set, as it loads
    train = load_dataset(d["source"], **d["options"])
    assert (train.name, list(train.shape), len(train)) == (dataset, [1, side, side], d["n"])
    tr = config["training"]
    assert tr["steps_done"] == tr["steps"] and tr["device"] == "cpu"
    assert tr["seconds"] > 0 and 0 < tr["loss"] < 0.1  # a denoiser: far below the loss of 1 it starts from

    net = load_network(folder)
    assert net.finished and net.train.shape == (1, side, side)
    cal = net.calibration
    assert cal is not None and not cal.get("stale") and cal["weights_sha256"] == config["weights_sha256"]
    assert cal["machine"] == "bbels" and len(net.schedule) == 20
    assert all(k % 2 == 1 and 1 <= k <= side for k in net.schedule)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_bundled_network_samples_an_image_of_its_set(name):
    _, _, side = SHIPPED[name]
    net = load_network(BUNDLED / name)
    out = sample(net, seed=0, steps=4).final
    assert out.shape == (1, 1, side, side)
    assert torch.isfinite(out).all() and out.abs().max() < 3  # images live in [-1, 1]; a broken net explodes


def test_the_network_for_a_set_is_its_bundled_resnet():
    assert network_for("mnist") == "mnist-resnet (bundled)"
    assert network_for("digits") == "digits-resnet (bundled)"
    assert network_for("photos") is None
    unets = {label: folder for label, folder in catalogue().items() if "unet" in label}
    assert network_for("mnist", unets) == "mnist-unet (bundled)"


def test_the_command_line_lists_the_bundled_networks(capsys):
    assert main(["networks"]) == 0
    out = capsys.readouterr().out
    for name, (arch, dataset, side) in SHIPPED.items():
        line = out.split(f"{name} (bundled)", 1)[1].split("\n")[1]
        assert f"{arch}, " in line and f"on {dataset} {side}x{side}" in line and "calibrated, k from step 19" in line


def test_the_network_page_uses_the_network_of_the_sidebars_set():
    from tests.test_app import ok, open_page, text

    at = open_page("app_pages/network.py", 300, net_seeds=1)  # the app's default set: MNIST at 16x16, 1,000
    assert not at.error, [e.value for e in at.error]
    # no network was trained on MNIST at 16x16; mnist-resnet's own 5,000 at 28x28 would take minutes a seed on a
    # CPU, so the page takes the network of the sidebar's size and says whose set its machines use
    assert at.selectbox(key="net_choice").value == "digits-resnet (bundled)"
    said = text(at)
    assert "on digits 16x16" in said
    assert ("The machines here run on the network's own training set, digits at 16x16 (1,797 images), not on the "
            "sidebar's mnist at 16x16 (1,000 images).") in said
    at.session_state["dataset"] = "digits"  # the sidebar's set changes: the page's choice follows it
    at.session_state["resize"], at.session_state["limit"] = 0, 0
    ok(at.run())
    assert at.selectbox(key="net_choice").value == "digits-resnet (bundled)"
    assert "network's own training set" not in text(at)  # the sidebar's digits are the network's
    at.selectbox(key="net_choice").set_value("digits-unet (bundled)")  # a choice of the user's stays
    ok(at.run())
    at.session_state["dataset"] = "mnist"
    ok(at.run())
    assert at.selectbox(key="net_choice").value == "digits-unet (bundled)"


@pytest.mark.parametrize("set_name, shape, expected", [
    ("mnist", (1, 28, 28), "mnist-resnet (bundled)"),  # the set and size a network was trained on: that network
    ("mnist", (1, 16, 16), "digits-resnet (bundled)"),  # none at this size: the first network
    ("digits", (1, 16, 16), "digits-resnet (bundled)"),
    ("photos", (3, 32, 32), "digits-resnet (bundled)"),  # none of this size at all: the first network
])
def test_the_network_page_opens_on_a_network_of_the_sidebars_set_and_size(monkeypatch, set_name, shape, expected):
    from elsviz.ui import network as page

    state = {}
    monkeypatch.setattr(page.st, "session_state", state)
    networks = catalogue()
    page.choose(networks, list(networks), set_name, shape)
    assert state["net_choice"] == expected
