"""Engine(compile=True) fuses the softmax statistics with torch.compile; it must give the same
numbers as the eager path (compiling takes a while, so this is one small case per machine)."""
import pytest
import torch

from elsviz import Engine, ImageSet


@pytest.mark.slow
def test_compiled_engine_matches_eager():
    torch.manual_seed(0)
    train = ImageSet(torch.rand(23, 3, 7, 9) * 2 - 1, torch.arange(23) % 3)
    x = torch.randn(2, 3, 7, 9)
    for machine in ("ls", "els", "bbels"):
        for k in (3, 7):
            eager = Engine(train, machine, "cpu").denoise(x, 0.3, k, label=1)
            engine = Engine(train, machine, "cpu", compile=True)
            fused = engine.denoise(x, 0.3, k, label=1)
            if not engine.compile:
                pytest.skip("torch.compile is not available here (no C compiler?)")
            assert torch.allclose(eager.mean, fused.mean, atol=1e-5, rtol=0)
            assert torch.allclose(eager.entropy, fused.entropy, atol=1e-4, rtol=0)
            assert torch.allclose(eager.source_weight, fused.source_weight, atol=1e-5, rtol=1e-4)
            assert torch.equal(eager.source_count, fused.source_count)
