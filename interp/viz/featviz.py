"""Feature visualisation: grow images from seeds that maximise a layer's activation.

Default recipe (the `robustness` library's, used for the paper's Figure 1): normalised-gradient L2
ascent in pixel space, ``x <- clamp(x + step * g / ||g||_2, 0, 1)`` projected onto a (very large)
L2 ball around the seed, for ``iterations`` steps; optionally a "fake ReLU" so gradients pass the
last ReLU where its input is negative, and keep-best. Option ``lucid=True``: Lucid-style
regularisation for natural models (Fourier parameterisation with colour decorrelation, random
jitter / scale / rotation, Adam).

All (objective, seed) pairs are optimised as one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from interp.device import model_device
from interp.errors import InterpError


@dataclass
class FeatVizConfig:
    """Settings of one feature-visualisation run."""

    layer: str | None = field(
        default=None,
        metadata={
            "help": "module whose output is maximised; default: the penultimate representation (the classifier's input)"
        },
    )
    iterations: int = field(default=200, metadata={"help": "ascent steps"})
    step_size: float = field(
        default=1.0, metadata={"help": "L2 step in pixel space (robustness recipe) or Adam learning rate / 20 (lucid)"}
    )
    eps: float = field(
        default=1000.0, metadata={"help": "L2 radius around the seed (large: effectively unconstrained)"}
    )
    fake_relu: bool = field(
        default=False, metadata={"help": "let gradients pass the last ReLU (robustness library's fake_relu)"}
    )
    keep_best: bool = field(default=False, metadata={"help": "return each image's best iterate"})
    lucid: bool = field(
        default=False,
        metadata={"help": "Lucid-style: Fourier parameterisation, colour decorrelation, jitter/scale/rotate, Adam"},
    )

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise InterpError(f"iterations must be an integer >= 1, got {self.iterations!r}")
        for name in ("step_size", "eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InterpError(f"{name} must be a finite number > 0, got {value!r}")


def noise_seeds(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``clamp(N(0, 1) / 20 + 0.5, 0, 1)`` images ``(n, 3, size, size)``, reproducible for ``seed``."""
    if n < 1 or size < 1:
        raise InterpError(f"noise seeds need n >= 1 images of size >= 1, got n={n}, size={size}")
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g) / 20 + 0.5).clamp(0, 1)


def grey_seed(size: int) -> torch.Tensor:
    return torch.full((1, 3, size, size), 0.5)


def image_seed(path: str, size: int) -> torch.Tensor:
    """An image file resized to ``size x size``, RGB in [0, 1], ``(1, 3, size, size)``."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor, resize

    try:
        img = Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise InterpError(f"cannot read seed image {path}: {exc}") from None
    return resize(pil_to_tensor(img).float() / 255, [size, size], antialias=True).unsqueeze(0)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels per image, ``(B,)``: lower is smoother."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return (dh + dw) / 2


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def penultimate_layer(model: nn.Module) -> str:
    """The last ``nn.Linear``: its *input* is the penultimate representation."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InterpError("the model has no nn.Linear; name a --layer")
    return linears[-1]


class _FakeReLUBlock(nn.Module):
    """A torchvision residual block whose final ReLU passes gradients everywhere (forward unchanged).

    Written out because torchvision blocks reuse one ``relu`` module three times, so no hook can
    single out the last call.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        b = self.block
        out = b.relu(b.bn1(b.conv1(x)))
        if isinstance(b, Bottleneck):
            out = b.bn3(b.conv3(b.relu(b.bn2(b.conv2(out)))))
        else:
            out = b.bn2(b.conv2(out))
        out = out + (b.downsample(x) if b.downsample is not None else x)
        return out + (out.clamp(min=0) - out).detach()  # value relu(out), gradient identity


def _with_fake_relu(model: nn.Module) -> nn.Module:
    import copy

    model = copy.deepcopy(model)
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            last = name
    if last is None:
        raise InterpError("fake_relu needs a torchvision-style ResNet (BasicBlock / Bottleneck blocks)")
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, _FakeReLUBlock(getattr(parent, child)))
    return model


class _Capture:
    """Forward hook keeping a module's input (for the penultimate layer) or output."""

    def __init__(self, module: nn.Module, use_input: bool):
        self.use_input, self.value = use_input, None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.value = inputs[0] if self.use_input else output


@dataclass
class FeatVizResult:
    """Images ``(B, 3, H, W)`` and per-image numbers, ``B = len(objectives) * len(seeds)``, objective-major."""

    images: torch.Tensor
    objective: list[int]
    seed_index: list[int]
    start: np.ndarray  # activation at the seed
    end: np.ndarray  # activation reached
    tv_seed: np.ndarray
    tv: np.ndarray

    def rows(self) -> list[dict]:
        return [
            {
                "objective": o,
                "seed": s,
                "activation_seed": float(a),
                "activation": float(b),
                "rise": float(b - a),
                "tv_seed": float(t0),
                "tv": float(t),
            }
            for o, s, a, b, t0, t in zip(
                self.objective, self.seed_index, self.start, self.end, self.tv_seed, self.tv, strict=True
            )
        ]


def _objective_fn(model: nn.Module, layer: str | None, directions: torch.Tensor | None):
    """``x, idx -> (B,)`` activation of unit ``idx[b]`` (or projection on ``directions[idx[b]]``)."""
    names = layer_names(model)
    target = layer or penultimate_layer(model)
    if target not in names:
        raise InterpError(f"no layer named {target!r}; valid names: {', '.join(names)}")
    module = model.get_submodule(target)
    capture = _Capture(module, use_input=layer is None)

    def objective(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        model(x)
        act = capture.value
        act = act.flatten(2).mean(2) if act.dim() == 4 else act.flatten(1)  # channels of a conv map: spatial mean
        if directions is not None:
            return (act * directions[idx]).sum(1)
        if int(idx.max()) >= act.shape[1]:
            raise InterpError(f"feature {int(idx.max())} out of range: layer {target!r} has {act.shape[1]} units")
        return act.gather(1, idx.unsqueeze(1)).squeeze(1)

    return objective, capture


def visualize(
    model: nn.Module,
    seeds: torch.Tensor,
    features: list[int],
    cfg: FeatVizConfig | None = None,
    directions: torch.Tensor | None = None,
) -> FeatVizResult:
    """Maximise each of ``features`` (unit indices of ``cfg.layer``, or rows of ``directions``) from each seed.

    With ``cfg.layer=None`` the units are the penultimate features (the last ``nn.Linear``'s input);
    naming that linear layer (``"model.fc"``) maximises class logits; a convolutional layer's units
    are its channels, averaged over space.

    ``seeds`` ``(S, 3, H, W)`` in [0, 1]. Returns images in [0, 1], objective-major: image
    ``f * S + s`` maximises ``features[f]`` from seed ``s``. Deterministic for fixed seeds
    (``lucid`` draws its transforms from a generator seeded by 0). The model is put in eval mode
    and its parameters' ``requires_grad`` flags are restored on return.
    """
    cfg = cfg or FeatVizConfig()
    if not features or any(isinstance(f, bool) or not isinstance(f, int) or f < 0 for f in features):
        raise InterpError(f"features must be a non-empty list of unit indices >= 0, got {features!r}")
    if seeds.dim() != 4 or len(seeds) == 0:
        raise InterpError(f"seeds must be a non-empty (S, 3, H, W) batch, got shape {tuple(seeds.shape)}")
    device = model_device(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model = _with_fake_relu(model) if cfg.fake_relu else model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    objective, capture = _objective_fn(model, cfg.layer, directions)
    try:
        s = len(seeds)
        x0 = seeds.to(device).repeat(len(features), 1, 1, 1)
        idx = torch.tensor(features, device=device).repeat_interleave(s)
        with torch.no_grad():
            start = objective(x0, idx)
        images = _lucid(objective, x0, idx, cfg) if cfg.lucid else _pgd_ascent(objective, x0, idx, cfg)
        with torch.no_grad():
            end = objective(images, idx)
    finally:
        capture.handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return FeatVizResult(
        images=images.detach().cpu(),
        objective=[features[i // s] for i in range(len(x0))],
        seed_index=[i % s for i in range(len(x0))],
        start=start.cpu().numpy(),
        end=end.cpu().numpy(),
        tv_seed=total_variation(x0).cpu().numpy(),
        tv=total_variation(images).detach().cpu().numpy(),
    )


def _pgd_ascent(objective, x0: torch.Tensor, idx: torch.Tensor, cfg: FeatVizConfig) -> torch.Tensor:
    """Normalised-gradient L2 ascent, projected on the eps-ball around ``x0`` and onto [0, 1]."""
    x = x0.clone()
    # the running best value in the objective's own dtype (a float32 seed into a float64 model gives float64)
    best, best_val = x0.clone(), None
    for _ in range(cfg.iterations):
        x.requires_grad_(True)
        val = objective(x, idx)
        (g,) = torch.autograd.grad(val.sum(), x)
        with torch.no_grad():
            if cfg.keep_best:
                best_val = torch.full_like(val, -math.inf) if best_val is None else best_val
                better = val > best_val
                best[better], best_val[better] = x[better].detach(), val[better].detach()
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = x.detach() + cfg.step_size * g / norm
            delta = x - x0
            dnorm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x = (x0 + delta * (cfg.eps / dnorm.clamp_min(cfg.eps))).clamp(0, 1)
    if cfg.keep_best:
        with torch.no_grad():
            val = objective(x, idx)
            better = val > best_val if best_val is not None else torch.ones_like(val, dtype=torch.bool)
            best[better] = x[better]
        return best
    return x.detach()


# Lucid's colour correlation square root (ImageNet statistics), for decorrelated colour.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def _lucid(objective, x0: torch.Tensor, idx: torch.Tensor, cfg: FeatVizConfig) -> torch.Tensor:
    """Lucid-style: scaled Fourier parameterisation, decorrelated colour, jitter/scale/rotate, Adam.

    The seed is ignored except for its shape (Lucid starts from its own low-amplitude spectrum).
    """
    b, c, h, w = x0.shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    scale = (1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))).to(x0.device)
    spectrum = (torch.randn(b, c, h, w // 2 + 1, 2, generator=gen) * 0.01).to(x0.device).requires_grad_(True)
    color = (_COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()).to(x0.device)

    def render(spec):
        img = torch.fft.irfft2(torch.view_as_complex(spec) * scale, s=(h, w), norm="ortho")
        img = torch.einsum("bchw,dc->bdhw", img, color)
        return torch.sigmoid(img)

    opt = torch.optim.Adam([spectrum], lr=0.05 * cfg.step_size)
    for _ in range(cfg.iterations):
        img = render(spectrum)
        pad = max(1, h // 16)
        img = F.pad(img, (pad, pad, pad, pad), mode="reflect")
        dy, dx = torch.randint(-pad, pad + 1, (2,), generator=gen).tolist()
        img = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
        angle = (torch.rand(1, generator=gen).item() - 0.5) * math.radians(10)
        zoom = 1 + (torch.rand(1, generator=gen).item() - 0.5) * 0.1
        theta = torch.tensor(
            [
                [math.cos(angle) / zoom, -math.sin(angle) / zoom, 0.0],
                [math.sin(angle) / zoom, math.cos(angle) / zoom, 0.0],
            ],
            device=x0.device,
        )
        grid = F.affine_grid(theta.expand(b, 2, 3), (b, c, h, w), align_corners=False)
        img = F.grid_sample(img, grid, align_corners=False)
        loss = -objective(img, idx).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return render(spectrum).detach()
