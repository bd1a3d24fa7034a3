"""The eps-networks: a convolutional ResNet (what the ELS machine models) and a UNet with self-attention,
their time and class embedding, build_model and the ResNet's receptive field."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ElsvizError

ARCHS = {
    "resnet": "convolutional ResNet: zero padding, no attention, no normalisation (what the ELS machine models)",
    "unet": "UNet with one self-attention block (every pixel can see the whole image)",
}


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t [B] in (0, 1) -> [B, dim] (frequencies 1 .. 1000 per unit of 1000 t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))  # [half]
    arg = 1000.0 * t[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class Embedding(nn.Module):
    """t (and an optional class label) -> one vector [B, emb]: sinusoidal features, an MLP, plus a
    learned vector per class. Class `num_classes` means "any class" (labels are dropped to it in
    training, so a conditional network also generates unconditionally)."""

    def __init__(self, emb: int, num_classes: int | None):
        super().__init__()
        self.emb = emb
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.classes = None if num_classes is None else nn.Embedding(num_classes + 1, emb)
        self.num_classes = num_classes

    def forward(self, t: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        e = self.mlp(time_features(t, self.emb))  # [B, emb]
        if self.classes is not None:
            if label is None:
                label = torch.full_like(t, self.num_classes, dtype=torch.int64)
            e = e + self.classes(label)
        return e


class ResNetDenoiser(nn.Module):
    """eps(x_t, t): up-projection, `layers` residual blocks h <- h + relu(conv(h + e_l)), down-projection.

    All 3x3 convolutions with zero padding; nothing mixes distant pixels, so each output pixel
    depends on a (2 * layers + 5)-wide square of x only.
    """

    def __init__(self, shape, width: int = 64, layers: int = 6, emb: int = 128, num_classes: int | None = None):
        super().__init__()
        c = shape[0]
        self.register_buffer("image_shape", torch.tensor(list(shape)))  # [C, H, W]: the weights know their data
        self.embed = Embedding(emb, num_classes)
        self.up = nn.Conv2d(c, width, 3, padding=1)
        self.shifts = nn.ModuleList([nn.Linear(emb, width) for _ in range(layers + 1)])
        self.convs = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(layers)])
        self.down = nn.Conv2d(width, c, 3, padding=1)
        nn.init.zeros_(self.down.weight)  # start by predicting eps = 0: the loss starts at 1, not far above
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        e = F.silu(self.embed(t, label))  # [B, emb]
        h = self.up(x)  # [B, width, H, W]
        for conv, shift in zip(self.convs, self.shifts):
            h = h + F.relu(conv(h + shift(e)[:, :, None, None]))
        return self.down(h + self.shifts[-1](e)[:, :, None, None])  # [B, C, H, W]


class _Block(nn.Module):
    """Two 3x3 convolutions with a time shift, GroupNorm and SiLU, plus a 1x1 skip."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.shift = nn.Linear(emb, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = F.silu(self.norm1(self.conv1(x) + self.shift(e)[:, :, None, None]))
        h = F.silu(self.norm2(self.conv2(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Self-attention over all pixels of a feature map [B, C, H, W] (4 heads), residual."""

    def __init__(self, c: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(8, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)  # [B, 3, heads, d, HW]
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # [B, heads, HW, d] each
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, d]
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class UNetDenoiser(nn.Module):
    """eps(x_t, t): blocks at H x W (width), H/2 (2 width) and H/4 (2 width, with self-attention), and back up."""

    def __init__(self, shape, width: int = 32, layers: int = 1, emb: int = 128, num_classes: int | None = None):
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ElsvizError(f"The UNet halves the image twice: it needs a height and width divisible by 4, got "
                              f"{h}x{w}. Resize the training set (size=...) or use the ResNet.")
        if width % 8:
            raise ElsvizError(f"The UNet's width must be a multiple of 8 (GroupNorm of 8 groups), got {width}.")
        self.register_buffer("image_shape", torch.tensor(list(shape)))
        self.embed = Embedding(emb, num_classes)
        w1, w2 = width, 2 * width
        self.inp = nn.Conv2d(c, w1, 3, padding=1)
        self.down1 = nn.ModuleList([_Block(w1, w1, emb) for _ in range(layers)])
        self.down2 = nn.ModuleList([_Block(w1 if i == 0 else w2, w2, emb) for i in range(layers)])
        self.mid = _Block(w2, w2, emb)
        self.attn = _Attention(w2)
        self.mid2 = _Block(w2, w2, emb)
        self.up2 = nn.ModuleList([_Block(2 * w2 if i == 0 else w2, w2, emb) for i in range(layers)])
        self.up1 = nn.ModuleList([_Block(w2 + w1 if i == 0 else w1, w1, emb) for i in range(layers)])
        self.outp = nn.Sequential(nn.GroupNorm(8, w1), nn.SiLU(), nn.Conv2d(w1, c, 3, padding=1))

    def forward(self, x, t, label=None):
        e = F.silu(self.embed(t, label))
        h1 = self.inp(x)  # [B, w1, H, W]
        for blk in self.down1:
            h1 = blk(h1, e)
        h2 = F.avg_pool2d(h1, 2)  # [B, w1, H/2, W/2]
        for blk in self.down2:
            h2 = blk(h2, e)  # [B, w2, H/2, W/2]
        m = self.mid(F.avg_pool2d(h2, 2), e)  # [B, w2, H/4, W/4]
        m = self.mid2(self.attn(m), e)
        u = torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), h2], 1)  # [B, 2 w2, H/2, W/2]
        for blk in self.up2:
            u = blk(u, e)
        u = torch.cat([F.interpolate(u, scale_factor=2.0, mode="nearest"), h1], 1)  # [B, w2 + w1, H, W]
        for blk in self.up1:
            u = blk(u, e)
        return self.outp(u)  # [B, C, H, W]


DEFAULTS = {"resnet": {"width": 48, "layers": 6, "emb": 128}, "unet": {"width": 32, "layers": 1, "emb": 128}}


def model_sizes(arch: str, width: int | None = None, layers: int | None = None, emb: int | None = None) -> dict:
    """{"width", "layers", "emb"} of an architecture: those given, DEFAULTS for the others (0 or None), checked."""
    if arch not in ARCHS:
        raise ElsvizError(f"Unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}.")
    d = DEFAULTS[arch]
    width, layers, emb = int(width or d["width"]), int(layers or d["layers"]), int(emb or d["emb"])
    if width < 1 or layers < 1 or emb < 2 or emb % 2:
        raise ElsvizError(f"width and layers must be positive and emb an even number >= 2, got "
                          f"width={width}, layers={layers}, emb={emb}.")
    return {"width": width, "layers": layers, "emb": emb}


def build_model(arch: str, shape, width: int | None = None, layers: int | None = None, emb: int | None = None,
                num_classes: int | None = None) -> nn.Module:
    """The eps-network of an architecture for images of shape (C, H, W)."""
    sizes = model_sizes(arch, width, layers, emb)
    cls = ResNetDenoiser if arch == "resnet" else UNetDenoiser
    return cls(tuple(int(v) for v in shape), **sizes, num_classes=num_classes)


def receptive_field(config: dict) -> int | None:
    """Side of the square of input pixels one output pixel of a ResNet depends on (None for the UNet, whose
    attention sees the whole image)."""
    if config["arch"] != "resnet":
        return None
    return 2 * (int(config["layers"]) + 2) + 1
