"""ImageSet: a training set of images in [-1, 1], with optional labels and its credits."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ElsvizError
from .validate import as_label, as_text, is_int


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A training set.

    images: float32 tensor [N, C, H, W] with values in [-1, 1] (numpy arrays are converted).
    labels: int64 tensor [N] or None.
    class_names: one name per label value (index = label), or None.
    name, description (one line), source (where the images come from, with credit and licence).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None
    name: str = "custom"
    description: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        images = self.images
        if isinstance(images, np.ndarray):
            if not (np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_) or np.iscomplexobj(images):
                raise ElsvizError(f"ImageSet images must be real numbers, got an array of {images.dtype}.")
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise ElsvizError(f"ImageSet images must be a tensor or array [N, C, H, W], got {type(images).__name__}.")
        if images.is_complex():
            raise ElsvizError(f"ImageSet images must be real numbers, got a tensor of {images.dtype}.")
        if images.ndim != 4:
            raise ElsvizError(
                f"ImageSet images must have shape [N, C, H, W], got shape {tuple(images.shape)}. "
                "Add a channel axis for grayscale images (e.g. images[:, None])."
            )
        if images.shape[0] == 0:
            raise ElsvizError("The training set is empty: give at least one image.")
        if images.shape[1] not in (1, 3):
            raise ElsvizError(f"Images must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)}).")
        images = images.detach().to(dtype=torch.float32).contiguous()
        if not torch.isfinite(images).all():
            raise ElsvizError("The training images contain NaN or inf values; clean or drop those images first.")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.0 - 1e-5 or hi > 1.0 + 1e-5:
            raise ElsvizError(
                f"Training images must lie in [-1, 1], found values in [{lo:.3g}, {hi:.3g}]. "
                "Rescale them, e.g. images / 127.5 - 1 for 8-bit pixels."
            )
        labels = self.labels
        if labels is not None:
            try:
                if isinstance(labels, np.ndarray):
                    labels = torch.from_numpy(np.ascontiguousarray(labels))
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                raise ElsvizError(f"labels must be integers, one class index per image; got {type(labels).__name__} "
                                  "that is not an array of numbers.") from None
            if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
                raise ElsvizError(
                    f"labels must have shape [N] = [{images.shape[0]}], got {tuple(labels.shape)}."
                )
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ElsvizError("labels must be integers (one class index per image).")
            labels = labels.to(torch.int64).contiguous()
            if int(labels.min()) < 0:
                raise ElsvizError("labels must be non-negative class indices.")
        class_names = self.class_names
        if class_names is not None:
            if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
                raise ElsvizError(f"class_names must be a list of names (index = label), got {class_names!r}.")
            class_names = tuple(str(c) for c in class_names)
        for what in ("name", "description", "source"):
            as_text(what, getattr(self, what))
        if not isinstance(self.meta, dict):
            raise ElsvizError(f"meta must be a dict, got {type(self.meta).__name__}.")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", class_names)

    # -- shape -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def classes(self) -> list[int]:
        """The label values present, sorted ([] for an unlabelled set)."""
        return [] if self.labels is None else sorted(set(self.labels.tolist()))

    def class_name(self, label: int) -> str:
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def indices_for(self, label: int | None) -> torch.Tensor | None:
        """Indices of the images with this label (None: all images). Refuses impossible labels."""
        label = as_label(label)
        if label is None:
            return None
        if self.labels is None:
            raise ElsvizError(
                f"label={label} was given but the training set {self.name!r} has no labels; "
                "drop the label for unconditional generation."
            )
        idx = torch.nonzero(self.labels == int(label)).flatten()
        if idx.numel() == 0:
            raise ElsvizError(
                f"No training image has label {label} in {self.name!r}; labels present: {self.classes}."
            )
        return idx

    def subset(self, idx) -> "ImageSet":
        """The images at idx, with their labels and per-image meta data (meta["per_image"] keys)."""
        n = len(self)
        try:
            idx = torch.as_tensor(idx)
        except (TypeError, ValueError, RuntimeError):
            idx = None
        if idx is None or idx.ndim != 1 or not (idx.numel() == 0 or is_int(idx[0])):
            raise ElsvizError(f"subset() takes a list of image indices (integers from 0 to {n - 1}).")
        if idx.numel() == 0 or int(idx.min()) < -n or int(idx.max()) >= n:
            raise ElsvizError(f"subset() needs at least one index, each from 0 to {n - 1} (the set has {n} images).")
        idx = idx.to(torch.int64)
        meta = dict(self.meta)
        for key in meta.get("per_image", ()):
            meta[key] = meta[key][idx]
        return ImageSet(
            self.images[idx],
            None if self.labels is None else self.labels[idx],
            self.class_names,
            self.name,
            self.description,
            self.source,
            meta,
        )
