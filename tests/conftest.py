"""Shared fixtures. tests/reference.py holds the float64 reference and the small test-data makers."""
import os

import numpy as np
import pytest
import torch

from tests.reference import Reference

# Triton's interpreter (tests/test_triton_kernel.py) must be on before anything imports triton
# (torch.compile does): triton.jit reads it when triton's own functions are decorated. Without a
# GPU no Triton kernel can run compiled anyway; with one, the kernel is tested compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=["kernel", "torch"])
def make_pair(request, monkeypatch):
    """make_pair(machine, images, labels=None, **engine_kwargs) -> (Engine, Reference) on the same set.

    images: float32 numpy [N, C, H, W] in [-1, 1]; labels: int array [N] or None.
    Every test that uses it runs twice: with the compiled CPU kernel (elsviz/cpu_kernel.py) and
    with the torch path (ELSVIZ_KERNEL=torch), so that both answer as the reference does.
    """
    if request.param == "torch":
        monkeypatch.setenv("ELSVIZ_KERNEL", "torch")
    else:
        monkeypatch.delenv("ELSVIZ_KERNEL", raising=False)

    def make(machine, images, labels=None, **kwargs):
        from elsviz import Engine, ImageSet

        lab = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        train = ImageSet(torch.from_numpy(np.ascontiguousarray(images)), lab)
        kwargs.setdefault("device", "cpu")
        return Engine(train, machine=machine, **kwargs), Reference(images, labels)

    return make
