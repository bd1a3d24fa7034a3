"""Datasets from files: every format round-trips from files the tests write; every bad input is refused."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elsviz import ElsvizError, load_dataset

RNG = np.random.default_rng(7)


def as_u8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] on 8-bit levels -> the uint8 pixels, exactly."""
    u = (images.numpy().astype(np.float64) + 1.0) * 127.5
    assert np.abs(u - np.rint(u)).max() < 1e-3, "not on 8-bit levels"
    return np.rint(u).astype(np.uint8)


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# -- writers -----------------------------------------------------------------------------------------
def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx_pair(folder: Path, n=12, h=28, w=28, gz=True, prefix="train"):
    images = RNG.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    labels = RNG.integers(0, 10, size=n, dtype=np.uint8)
    labels[:10] = np.arange(10)
    suffix = ".gz" if gz else ""
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
    write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
    return images, labels.astype(np.int64), folder / f"{prefix}-images-idx3-ubyte{suffix}"


def cifar_batch(n: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    return {b"batch_label": b"test", b"labels": labels, b"data": data,
            b"filenames": [b"x.png"] * n}, data.reshape(n, 3, 32, 32), np.asarray(labels)


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(folder: Path, per_batch=6):
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        batch, x, y = cifar_batch(per_batch, i)
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        train_x.append(x)
        train_y.append(y)
    test, tx, ty = cifar_batch(per_batch, 99)
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(train_x), np.concatenate(train_y), tx, ty


def write_png(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# -- IDX -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trips_raw_and_gz(tmp_path, gz):
    images, labels, path = write_idx_pair(tmp_path, gz=gz)
    for source in (path, tmp_path):  # the images file (labels found beside it), or the folder
        ims = load_dataset(source)
        assert np.array_equal(as_u8(ims.images)[:, 0], images)
        assert ims.labels.tolist() == labels.tolist() and ims.class_names == tuple("0123456789")
        assert ims.name == "mnist"


def test_idx_test_split_and_fashion_names(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_idx_pair(folder)
    images, labels, _ = write_idx_pair(folder, n=10, prefix="t10k")
    ims = load_dataset(folder, split="test")
    assert np.array_equal(as_u8(ims.images)[:, 0], images)
    assert ims.class_names[0] == "T-shirt/top" and ims.name == "fashion-mnist"
    assert "Zalando" in ims.source


def test_idx_without_labels_and_with_explicit_labels(tmp_path):
    images = RNG.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    (tmp_path / "pics.idx3").write_bytes(idx_bytes(images))
    ims = load_dataset(tmp_path / "pics.idx3")
    assert ims.labels is None and np.array_equal(as_u8(ims.images)[:, 0], images)
    (tmp_path / "tags.idx1").write_bytes(idx_bytes(np.array([1, 2, 3, 4, 5], np.uint8)))
    ims = load_dataset(tmp_path / "pics.idx3", labels=tmp_path / "tags.idx1")
    assert ims.labels.tolist() == [1, 2, 3, 4, 5]


def test_idx_options_size_limit_classes(tmp_path):
    images, labels, path = write_idx_pair(tmp_path, n=40)
    ims = load_dataset(path, size=16, limit=10, seed=1, channels=3)
    assert tuple(ims.images.shape) == (10, 3, 16, 16)
    as_u8(ims.images)  # still on 8-bit levels after resizing
    sub = load_dataset(path, classes=[2, 5])
    assert set(sub.labels.tolist()) == {2, 5} and len(sub) == int(np.isin(labels, [2, 5]).sum())


@pytest.mark.parametrize("cut", [5, 16 + 100, -1])
def test_truncated_idx_is_refused(tmp_path, cut):
    images, _, _ = write_idx_pair(tmp_path / "ok", gz=False)
    raw = idx_bytes(images)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(raw[:cut])
    with pytest.raises(ElsvizError, match=r"train-images-idx3-ubyte.*truncated"):
        load_dataset(bad)
    bad.write_bytes(gzip.compress(raw)[:len(gzip.compress(raw)) // 2])  # a cut-off .gz download
    with pytest.raises(ElsvizError, match="truncated|corrupt"):
        load_dataset(bad)


def test_corrupt_gzip_idx_is_refused(tmp_path):
    images, _, _ = write_idx_pair(tmp_path / "ok")
    data = bytearray(gzip.compress(idx_bytes(images)))
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ElsvizError, match="train-images-idx3-ubyte.gz.*(corrupt|truncated)"):
        load_dataset(bad)


def test_idx_with_trailing_bytes_is_refused(tmp_path):
    images, _, _ = write_idx_pair(tmp_path / "ok")
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(idx_bytes(images) + b"\x00" * 7)
    with pytest.raises(ElsvizError, match="longer than its header"):
        load_dataset(bad)


def test_wrong_magic_number_is_refused(tmp_path):
    images, _, _ = write_idx_pair(tmp_path / "ok")
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + idx_bytes(images)[4:])
    with pytest.raises(ElsvizError, match="train-images-idx3-ubyte: wrong magic number 0x12345678"):
        load_dataset(bad)


def test_swapped_images_and_labels_are_refused(tmp_path):
    images, labels, _ = write_idx_pair(tmp_path / "ok", gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(labels.astype(np.uint8)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(images))
    with pytest.raises(ElsvizError, match="wrong magic number.*swap"):
        load_dataset(tmp_path)


def test_labels_count_mismatch_is_refused(tmp_path):
    _, _, path = write_idx_pair(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ElsvizError, match="3 labels for 12 images"):
        load_dataset(path)


# -- CIFAR-10 ---------------------------------------------------------------------------------------------------
def test_cifar_folder_round_trips(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    x, y, tx, ty = write_cifar(folder)
    for source in (folder, tmp_path):  # the batches folder or the folder above it
        ims = load_dataset(source)
        assert np.array_equal(as_u8(ims.images), x) and ims.labels.tolist() == y.tolist()
        assert ims.class_names == tuple(CIFAR_NAMES) and ims.name == "cifar10"
    test = load_dataset(folder, split="test")
    assert np.array_equal(as_u8(test.images), tx) and test.labels.tolist() == ty.tolist()
    one = load_dataset(folder / "data_batch_2")
    assert np.array_equal(as_u8(one.images), x[6:12])


def test_cifar_tar_gz_round_trips_without_extracting(tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    x, y, _, _ = write_cifar(folder)
    tar_path = tmp_path / "dl" / "cifar-10-python.tar.gz"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    ims = load_dataset(tar_path, classes=["cat", "ship"], channels=1, size=16)
    keep = np.isin(y, [3, 8])
    assert len(ims) == int(keep.sum()) and set(ims.labels.tolist()) <= {3, 8}
    assert tuple(ims.images.shape[1:]) == (1, 16, 16)
    assert files_under(tar_path.parent) == {"cifar-10-python.tar.gz"}  # nothing written beside it


def test_truncated_cifar_batch_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ElsvizError, match="data_batch_3.*corrupt or truncated"):
        load_dataset(folder)


def test_cifar_batch_with_wrong_shape_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    batch = {b"labels": [1, 2], b"data": np.zeros((2, 100), np.uint8)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ElsvizError, match=r"data_batch_1.*uint8 \[N, 3072\]"):
        load_dataset(folder)


def test_truncated_cifar_tar_is_refused(tmp_path):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar(folder)
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    raw = tar_path.read_bytes()
    tar_path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ElsvizError, match="cifar-10-python.tar.gz.*(corrupt|truncated)"):
        load_dataset(tar_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(ElsvizError, match="refused to load posix.system|refused to load os.system"):
        load_dataset(folder)


# -- folders and zips of images -----------------------------------------------------------------------------------
def make_class_folder(root: Path, size=(10, 12), per_class=3, mode="RGB"):
    pix = {}
    for cls in ("cats", "dogs", "owls"):
        for i in range(per_class):
            shape = (*size, 3) if mode == "RGB" else size
            arr = RNG.integers(0, 256, size=shape, dtype=np.uint8)
            write_png(root / cls / f"{i}.png", arr)
            pix[(cls, i)] = arr
    return pix


def test_folder_with_class_subfolders_round_trips(tmp_path):
    pix = make_class_folder(tmp_path / "animals")
    (tmp_path / "animals" / "README.txt").write_text("not an image, ignored")
    (tmp_path / "animals" / ".hidden.png").write_bytes(b"ignored")
    ims = load_dataset(tmp_path / "animals")
    assert ims.class_names == ("cats", "dogs", "owls") and ims.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expect = np.stack([pix[(c, i)].transpose(2, 0, 1) for c in ("cats", "dogs", "owls") for i in range(3)])
    assert np.array_equal(as_u8(ims.images), expect) and ims.name == "animals"


def test_flat_gray_folder_is_unlabelled_and_one_channel(tmp_path):
    arrs = [RNG.integers(0, 256, size=(9, 9), dtype=np.uint8) for _ in range(4)]
    for i, a in enumerate(arrs):
        write_png(tmp_path / f"img{i}.png", a)
    ims = load_dataset(tmp_path)
    assert ims.labels is None and ims.channels == 1
    assert np.array_equal(as_u8(ims.images)[:, 0], np.stack(arrs))


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    write_png(tmp_path / "a.png", rgba)
    ims = load_dataset(tmp_path)
    u = as_u8(ims.images)[0]
    assert (u[:, :2] == 200).all() and (u[:, 2:] == 0).all()


def test_mixed_sizes_need_a_size(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((10, 10), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((20, 16), np.uint8))
    with pytest.raises(ElsvizError, match=r"different sizes.*a.png is 10x10.*b.png is 20x16.*size="):
        load_dataset(tmp_path)
    ims = load_dataset(tmp_path, size=8)
    assert tuple(ims.images.shape) == (2, 1, 8, 8)


def test_resize_keeps_aspect_by_centre_crop(tmp_path):
    arr = np.zeros((10, 30), np.uint8)
    arr[:, 10:20] = 255  # a white centre square between black side bands
    write_png(tmp_path / "wide.png", arr)
    ims = load_dataset(tmp_path, size=10)
    assert (as_u8(ims.images) == 255).all()  # the crop keeps the centre, nothing is squashed


def test_image_that_does_not_decode_is_named(tmp_path):
    make_class_folder(tmp_path)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ElsvizError, match=r"dogs/broken.png: this image does not decode"):
        load_dataset(tmp_path)


def test_loose_images_beside_class_folders_are_refused(tmp_path):
    make_class_folder(tmp_path)
    write_png(tmp_path / "stray.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ElsvizError, match="both at the top level"):
        load_dataset(tmp_path)


def test_single_image_file(tmp_path):
    arr = RNG.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "one.png", arr)
    ims = load_dataset(tmp_path / "one.png")
    assert len(ims) == 1 and np.array_equal(as_u8(ims.images)[0], arr.transpose(2, 0, 1))


def write_zip(path: Path, entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def test_zip_of_a_class_folder_round_trips_in_memory(tmp_path):
    arrs = {f"shapes/{c}/{i}.png": RNG.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
            for c in ("circle", "square") for i in range(3)}
    zpath = tmp_path / "shapes.zip"
    write_zip(zpath, {"shapes/": b"", **{k: png_bytes(v) for k, v in arrs.items()},
                      "__MACOSX/shapes/._0.png": b"junk"})
    ims = load_dataset(zpath)
    assert ims.class_names == ("circle", "square") and ims.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(as_u8(ims.images), np.stack([a.transpose(2, 0, 1) for a in arrs.values()]))
    assert files_under(tmp_path) == {"shapes.zip"}  # nothing extracted


def test_zip_of_a_flat_folder(tmp_path):
    zpath = tmp_path / "flat.zip"
    write_zip(zpath, {f"pics/{i}.png": png_bytes(np.full((4, 4), i * 10, np.uint8)) for i in range(5)})
    ims = load_dataset(zpath)
    assert ims.labels is None and len(ims) == 5 and as_u8(ims.images)[3].max() == 30


@pytest.mark.parametrize("evil", ["../escape.png", "a/../../escape.png", "/etc/escape.png", "C:\\escape.png",
                                  "..\\escape.png"])
def test_zip_entries_that_climb_out_are_refused(tmp_path, evil):
    inner = tmp_path / "inner"
    inner.mkdir()
    zpath = inner / "evil.zip"
    write_zip(zpath, {"ok/a.png": png_bytes(np.zeros((4, 4), np.uint8)),
                      evil: png_bytes(np.zeros((4, 4), np.uint8))})
    with pytest.raises(ElsvizError, match=r"refused: entry .*escape.png.*Nothing was extracted"):
        load_dataset(zpath)
    assert files_under(tmp_path) == {"inner", "inner/evil.zip"}


def test_zip_bomb_total_size_is_refused(tmp_path):
    zpath = tmp_path / "bomb.zip"
    write_zip(zpath, {"a.png": png_bytes(np.zeros((4, 4), np.uint8)), "b.bin": b"\0" * 3_000_000})
    assert zpath.stat().st_size < 50_000
    with pytest.raises(ElsvizError, match="unpacks to 3,000,.* bytes, more than max_total_bytes=1,000,000"):
        load_dataset(zpath, max_total_bytes=1_000_000)
    assert len(load_dataset(zpath)) == 1  # the default cap (1 GB) lets it through


def test_zip_with_too_many_files_is_refused(tmp_path):
    zpath = tmp_path / "many.zip"
    write_zip(zpath, {f"{i}.png": png_bytes(np.zeros((2, 2), np.uint8)) for i in range(12)})
    with pytest.raises(ElsvizError, match="12 entries, more than max_files=10"):
        load_dataset(zpath, max_files=10)


def test_zip_with_an_image_that_does_not_decode(tmp_path):
    zpath = tmp_path / "bad.zip"
    write_zip(zpath, {"a.png": png_bytes(np.zeros((4, 4), np.uint8)), "b.png": b"garbage"})
    with pytest.raises(ElsvizError, match=r"bad.zip:b.png: this image does not decode"):
        load_dataset(zpath)


def test_corrupt_zip_is_refused(tmp_path):
    zpath = tmp_path / "broken.zip"
    zpath.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ElsvizError, match="broken.zip: not a readable zip"):
        load_dataset(zpath)


# -- .npz / .npy ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_uint8_layouts_round_trip(tmp_path, layout):
    base = RNG.integers(0, 256, size=(6, 3, 8, 10), dtype=np.uint8)  # [N, C, H, W]
    arr = {"NHW": base[:, 0], "NHWC": base.transpose(0, 2, 3, 1), "NCHW": base}[layout]
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "set.npz", images=arr, labels=labels, class_names=np.array(["a", "b", "c"]))
    ims = load_dataset(tmp_path / "set.npz")
    want = base[:, :1] if layout == "NHW" else base
    assert np.array_equal(as_u8(ims.images), want)
    assert ims.labels.tolist() == labels.tolist() and ims.class_names == ("a", "b", "c")
    assert f"layout {layout}" in ims.description and "8-bit" in ims.meta["inferred"]


@pytest.mark.parametrize("scale, offset, word", [(1 / 255, 0.0, "[0, 1]"), (2 / 255, -1.0, "[-1, 1]")])
def test_npy_float_ranges_are_inferred(tmp_path, scale, offset, word):
    u8 = RNG.integers(0, 256, size=(4, 5, 5), dtype=np.uint8)
    u8[0, 0, 0], u8[0, 0, 1] = 0, 255  # use the whole range so the guess is unambiguous
    np.save(tmp_path / "f.npy", (u8 * scale + offset).astype(np.float32))
    ims = load_dataset(tmp_path / "f.npy")
    assert torch.allclose(ims.images[:, 0], torch.from_numpy(u8 / 127.5 - 1).float(), atol=1e-5)
    assert word in ims.meta["inferred"] and ims.labels is None


def test_keras_style_npz_with_split(tmp_path):
    xtr = RNG.integers(0, 256, size=(5, 6, 6), dtype=np.uint8)
    xte = RNG.integers(0, 256, size=(3, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=np.arange(5), x_test=xte, y_test=np.arange(3))
    assert np.array_equal(as_u8(load_dataset(tmp_path / "mnist.npz").images)[:, 0], xtr)
    test = load_dataset(tmp_path / "mnist.npz", split="test")
    assert np.array_equal(as_u8(test.images)[:, 0], xte) and test.labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize("arrays, match", [
    (dict(pictures=np.zeros((2, 4, 4), np.uint8), tags=np.zeros(2)), r"no images array.*\['pictures', 'tags'\]"),
    (dict(images=np.full((2, 4, 4), 300, np.int32)), "8-bit"),
    (dict(images=np.full((2, 4, 4), 7.5, np.float32) * np.arange(2)[:, None, None] - 400), "float pixels"),
    (dict(images=np.zeros((2, 3, 4, 3), np.uint8)), "layout="),
    (dict(images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0.5, 1.5])), "labels must be integers"),
    (dict(images=np.zeros((4,), np.uint8)), r"\[N, H, W\]"),
])
def test_bad_arrays_are_refused(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ElsvizError, match=match):
        load_dataset(tmp_path / "bad.npz")


def test_npz_with_python_objects_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", images=np.array([np.zeros((2, 2)), "x"], dtype=object))
    with pytest.raises(ElsvizError, match="Python objects"):
        load_dataset(tmp_path / "obj.npz")


def test_truncated_npy_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 8, 8), np.uint8))
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(raw[:200])
    with pytest.raises(ElsvizError, match="a.npy"):
        load_dataset(tmp_path / "a.npy")


def test_layout_option_resolves_ambiguity(tmp_path):
    arr = RNG.integers(0, 256, size=(2, 3, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "amb.npy", arr)
    ims = load_dataset(tmp_path / "amb.npy", layout="NHWC")
    assert tuple(ims.images.shape) == (2, 3, 3, 4)


# -- the memory cap, for files -----------------------------------------------------------------------------------------
def test_set_larger_than_the_memory_cap_is_refused_before_decoding(tmp_path):
    _, _, path = write_idx_pair(tmp_path, n=20)
    need = 20 * 28 * 28 * 4
    with pytest.raises(ElsvizError, match=r"memory cap.*limit=.*size="):
        load_dataset(path, max_bytes=need - 1)
    assert len(load_dataset(path, max_bytes=need)) == 20
    assert len(load_dataset(path, max_bytes=need - 1, size=14)) == 20  # smaller images fit
    make_class_folder(tmp_path / "f", size=(30, 30))
    with pytest.raises(ElsvizError, match="memory cap"):
        load_dataset(tmp_path / "f", max_bytes=1000)
    np.save(tmp_path / "big.npy", np.zeros((50, 16, 16), np.uint8))
    with pytest.raises(ElsvizError, match="memory cap"):
        load_dataset(tmp_path / "big.npy", max_bytes=1000)


def test_unknown_file_kind_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ElsvizError, match="cannot tell what this file holds"):
        load_dataset(tmp_path / "notes.txt")


def test_source_options_that_do_not_apply_are_refused(tmp_path):
    make_class_folder(tmp_path)
    with pytest.raises(ElsvizError, match=r"unknown option\(s\) \['split'\]"):
        load_dataset(tmp_path, split="test")


def test_names_win_over_same_named_folders(tmp_path, monkeypatch):
    write_png(tmp_path / "digits" / "a.png", np.zeros((5, 5), np.uint8))
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset("digits")) == 1797  # the built-in, as the app expects
    assert len(load_dataset(Path("digits"))) == 1 == len(load_dataset("./digits"))


def test_idx_header_claiming_huge_dimensions_is_a_truncated_file(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 4_000_000_000, 28, 28) + b"\0" * 100))
    with pytest.raises(ElsvizError, match="truncated"):
        load_dataset(bad)


@pytest.mark.parametrize("data", [
    b"garbage",  # not an image at all
    b"\x89PNG\r\n\x1a\n not really",  # a PNG's signature, then nonsense
    "truncated",  # a real PNG cut short
])
def test_an_image_that_does_not_decode_is_named_plainly_without_python_reprs(tmp_path, data):
    """The message names the file as the user knows it and says why in words: no `<_io.BufferedReader ...>`."""
    if data == "truncated":
        whole = png_bytes(RNG.integers(0, 256, size=(64, 64), dtype=np.uint8))
        data = whole[: len(whole) // 2]
    folder = tmp_path / "pictures"
    folder.mkdir()
    write_png(folder / "fine.png", np.zeros((64, 64), np.uint8))  # the size of the truncated one's header
    (folder / "corrupt.png").write_bytes(data)
    zpath = tmp_path / "pictures.zip"
    write_zip(zpath, {"fine.png": png_bytes(np.zeros((64, 64), np.uint8)), "corrupt.png": data})
    for source, shown in ((folder, f"{folder}/corrupt.png"), (zpath, f"{zpath}:corrupt.png")):
        with pytest.raises(ElsvizError) as err:
            load_dataset(source)
        text = str(err.value)
        assert text.startswith(f"{shown}: this image does not decode (") and text.endswith("remove or replace the file.")
        assert "<" not in text and ">" not in text and "BufferedReader" not in text and "_io" not in text, text


def test_a_corrupt_upload_is_named_by_its_own_name():
    """In the app, the upload's name and nothing of the temporary folder or of Python."""
    pytest.importorskip("streamlit")
    from elsviz.ui import data

    class Upload:  # Streamlit's UploadedFile: name, size, getvalue()
        def __init__(self, name, content):
            self.name, self._content, self.size = name, content, len(content)

        def getvalue(self):
            return self._content

    fine = png_bytes(np.zeros((8, 8), np.uint8))
    for files in ([Upload("corrupt.png", b"garbage")], [Upload("fine.png", fine), Upload("corrupt.png", b"garbage")]):
        with pytest.raises(ElsvizError) as err:
            data.from_upload(files)
        assert str(err.value) == ("corrupt.png: this image does not decode (its bytes are not a PNG, JPEG, GIF, "
                                  "BMP, TIFF or WebP image); remove or replace the file.")
