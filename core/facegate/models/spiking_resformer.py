"""SpikingResformer-Ti face-embedding backbone in plain torch (Shi et al., CVPR 2024).

Why a spiking backbone: the energy argument. A spiking network passes binary spikes between
layers, so a weight layer whose input is a spike map needs no multiplications: each spike adds
the weights it reaches into the outputs (an *accumulate*, AC). Only layers fed real values (the
encoding convolution on the image, the embedding head) still multiply-accumulate (MAC). On a
45 nm process a 32-bit float AC costs about 0.9 pJ against 4.6 pJ for a MAC (Horowitz, ISSCC
2014), and spikes are sparse, so a network that fires rarely can need far less energy than a ReLU
network of the same shapes, on neuromorphic or event-driven hardware. ``estimate_ops`` gives the
numbers behind that argument for this model:

- ``ann_macs``: MACs of a ReLU network with the same layer shapes, one pass per inference.
- ``sops``: synaptic operations, ``sum over spike-fed layers of (MACs per time step x firing
  rate of the layer's spike input x T)``; an operation fed by spikes on one side only (the
  attention products) counts the rate of its spike operand.
- ``snn_macs``: MACs the spiking network still does (layers fed real values, counted once when
  their input is shared by all time steps).
- ``energy_*_mj``: estimates, ``4.6 pJ x MACs + 0.9 pJ x SOPs``; they leave out memory traffic,
  the neuron updates, batch-norm (foldable into the convolutions) and the attention scaling.

Layout: the input chip ``(N, 3, 112, 112)`` RGB 0..255 is normalised inside (``(x - 127.5) /
128``), encoded once by a real-valued prologue (conv7x7/2 + BN + max-pool 3x3/2; its input is the
same at every time step so it runs once and is repeated over ``T``), then three stages of
[DSSA, group-wise spiking FFN] pairs at 28x28, 14x14 and 7x7. Stateless layers run on the
time-flattened ``(T*N, ...)`` tensor, neurons over the time dimension. The head averages over
space and time and maps to the embedding with BN1d -> dropout -> Linear -> BN1d (the usual face
recognition head); the embedding is returned unnormalised.

Where this follows the paper and where it simplifies it:

- Neurons: multi-step LIF as in spikingjelly (``decay_input``, ``tau=2``, ``v_threshold=1``,
  hard reset to 0, sigmoid surrogate with ``alpha=4``), re-implemented here, without the
  CuPy/Triton kernels, so it is a Python loop over time steps.
- DSSA follows the authors' reference code: LIF on the input; a patch-strided conv (kernel =
  stride = patch size) + BN of the spike map yields the two operands ``Y1`` and ``Y2``; the
  attention map is ``LIF(Y1^T X * c1)`` and the output ``LIF(Y2 A * c2)``, products of spike
  matrices with real ones and no softmax; the scales ``c1 = 1/sqrt(r_x d)`` and ``c2 =
  1/sqrt(r_a M)`` use running firing rates of the spike operands as in the reference. The rates
  are clamped away from zero so a silent layer does not divide by zero.
- The group-wise FFN follows the reference (one grouped conv3x3, groups = inner channels / 64,
  with its inner residual). Down-sampling is LIF -> conv3x3/2 -> BN as in the reference.
- Not reproduced: the ImageNet classifier head (replaced by the face embedding head), the
  reference's mixed-precision and fused kernels, and energy counting of anything but
  conv/linear/attention products.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DSSA",
    "MultiStepLIF",
    "SpikingFFN",
    "SpikingMatmul",
    "SpikingResformer",
    "count_parameters",
    "estimate_ops",
    "firing_rates",
]

#: Energy per 32-bit float operation on 45 nm (Horowitz 2014), in picojoules.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9


class _SigmoidSpike(torch.autograd.Function):
    """Heaviside step forward, sigmoid-derivative surrogate gradient backward."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * x)
        return grad_out * ctx.alpha * sg * (1.0 - sg), None


def spike(x: Tensor, alpha: float = 4.0) -> Tensor:
    """Binary spikes ``x >= 0`` with a sigmoid surrogate gradient of steepness ``alpha``."""
    return _SigmoidSpike.apply(x, alpha)


class MultiStepLIF(nn.Module):
    """Leaky integrate-and-fire neurons over a ``(T, N, ...)`` sequence.

    Each step: ``v <- v + (x_t - v) / tau``; spike ``s_t = H(v - v_threshold)``; hard reset
    ``v <- v * (1 - s_t)`` (to ``v_reset = 0``). The mean of the last forward's spikes is kept
    in ``last_firing_rate`` (with the element count in ``last_numel``) for reporting.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, alpha: float = 4.0) -> None:
        super().__init__()
        self.tau = tau
        self.v_threshold = v_threshold
        self.alpha = alpha
        self.last_firing_rate: Tensor | None = None
        self.last_numel = 0

    def forward(self, x: Tensor) -> Tensor:
        v = torch.zeros_like(x[0])
        spikes = []
        for t in range(x.shape[0]):
            v = v + (x[t] - v) / self.tau
            s = spike(v - self.v_threshold, self.alpha)
            v = v * (1.0 - s)
            spikes.append(s)
        out = torch.stack(spikes)
        self.last_firing_rate = out.detach().mean()
        self.last_numel = out.numel()
        return out

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, alpha={self.alpha}"


class SpikingMatmul(nn.Module):
    """``a @ b`` as a module, so ``estimate_ops`` can hook and count the attention products."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a @ b


def _seq(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a stateless module to a ``(T, N, ...)`` tensor by flattening time into batch."""
    y = module(x.flatten(0, 1))
    # -1 for the batch: an ONNX trace keeps it dynamic (a traced x.shape[1] is a constant).
    return y.unflatten(0, (x.shape[0], -1))


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class DSSA(nn.Module):
    """Dual Spike Self-Attention with residual, on ``(T, N, C, H, W)``.

    ``X = LIF(input)`` (``HW`` tokens); ``Y1, Y2 = BN(conv_p(X))`` with kernel = stride = patch
    size (``M = HW / p^2`` tokens); attention ``A = LIF(Y1^T X * c1)`` of shape ``(M, HW)`` per
    head; output ``LIF(Y2 A * c2)`` -> conv1x1 + BN, added to the input.
    """

    # Buffers (``register_buffer``), declared so that they type as tensors, not modules.
    rate_x: Tensor
    rate_attn: Tensor
    rates_initialised: Tensor

    def __init__(
        self, dim: int, num_heads: int, patch_size: int, num_patches: int, momentum: float = 0.999
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.num_patches = num_patches
        self.momentum = momentum
        self.lif_in = MultiStepLIF()
        self.patch = _conv_bn(dim, 2 * dim, patch_size, patch_size)
        self.matmul1 = SpikingMatmul()
        self.lif_attn = MultiStepLIF()
        self.matmul2 = SpikingMatmul()
        self.lif_out = MultiStepLIF()
        self.proj = _conv_bn(dim, dim, 1)
        self.register_buffer("rate_x", torch.ones(num_heads))
        self.register_buffer("rate_attn", torch.ones(num_heads))
        self.register_buffer("rates_initialised", torch.tensor(False))

    def _update_rate(self, buf: Tensor, current: Tensor) -> None:
        if bool(self.rates_initialised):
            buf.mul_(self.momentum).add_((1.0 - self.momentum) * current)
        else:
            buf.copy_(current)

    def forward(self, x: Tensor) -> Tensor:
        T, _, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        s = self.lif_in(x)
        # No reshape naming the batch: an ONNX trace would fix it (see _seq).
        y = _seq(self.patch, s).flatten(3).unflatten(2, (h, 2 * d))
        y1, y2 = y[:, :, :, :d], y[:, :, :, d:]
        xs = s.reshape(T, -1, h, d, H * W)
        if self.training:
            self._update_rate(self.rate_x, xs.detach().mean((0, 1, 3, 4)))
        scale1 = (self.rate_x.clamp_min(1e-3) * d).rsqrt().view(1, 1, h, 1, 1)
        attn = self.lif_attn(self.matmul1(y1.transpose(-1, -2), xs) * scale1)
        if self.training:
            self._update_rate(self.rate_attn, attn.detach().mean((0, 1, 3, 4)))
            self.rates_initialised.fill_(True)
        scale2 = (self.rate_attn.clamp_min(1e-3) * self.num_patches).rsqrt().view(1, 1, h, 1, 1)
        out = self.lif_out((self.matmul2(y2, attn) * scale2).reshape(T, -1, C, H, W))
        return x + _seq(self.proj, out)


class SpikingFFN(nn.Module):
    """Group-wise spiking FFN with residual, on ``(T, N, C, H, W)``.

    LIF -> conv1x1 (x ``ratio``) + BN -> [LIF -> grouped conv3x3 + BN, inner residual] -> LIF ->
    conv1x1 back + BN, added to the input. Groups = inner channels / ``group_size``.
    """

    def __init__(self, dim: int, ratio: int = 4, group_size: int = 64) -> None:
        super().__init__()
        inner = dim * ratio
        self.lif_up = MultiStepLIF()
        self.up = _conv_bn(dim, inner, 1)
        self.lif_conv = MultiStepLIF()
        self.conv = _conv_bn(inner, inner, 3, padding=1, groups=max(1, inner // group_size))
        self.lif_down = MultiStepLIF()
        self.down = _conv_bn(inner, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        u = _seq(self.up, self.lif_up(x))
        u = u + _seq(self.conv, self.lif_conv(u))
        return x + _seq(self.down, self.lif_down(u))


class Downsample(nn.Module):
    """LIF -> conv3x3 stride 2 + BN between stages."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.lif = MultiStepLIF()
        self.conv = _conv_bn(cin, cout, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return _seq(self.conv, self.lif(x))


class SpikingResformer(nn.Module):
    """SpikingResformer-Ti face embedder: ``(N, 3, 112, 112)`` RGB 0..255 -> ``(N, D)``."""

    def __init__(
        self,
        embedding_dim: int = 512,
        time_steps: int = 4,
        widths: Sequence[int] = (64, 192, 384),
        depths: Sequence[int] = (1, 2, 3),
        heads: Sequence[int] = (1, 3, 6),
        patch_sizes: Sequence[int] = (4, 2, 1),
        input_size: int = 112,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not len(widths) == len(depths) == len(heads) == len(patch_sizes):
            raise ValueError("widths, depths, heads and patch_sizes must have the same length")
        self.time_steps = time_steps
        self.prologue = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.MaxPool2d(3, 2, 1),
        )
        side = math.ceil(math.ceil(input_size / 2) / 2)
        layers: list[nn.Module] = []
        for i, (w, depth, h, p) in enumerate(zip(widths, depths, heads, patch_sizes, strict=True)):
            if i > 0:
                layers.append(Downsample(widths[i - 1], w))
                side = (side + 1) // 2
            if side % p:
                raise ValueError(f"stage {i}: feature side {side} not divisible by patch {p}")
            for _ in range(depth):
                layers.append(DSSA(w, h, p, (side // p) ** 2))
                layers.append(SpikingFFN(w))
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm1d(widths[-1]),
            nn.Dropout(dropout),
            nn.Linear(widths[-1], embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = (x - 127.5) / 128.0
        x = self.prologue(x)
        x = x.unsqueeze(0).expand(self.time_steps, *x.shape)
        x = self.stages(x)
        x = x.mean((3, 4)).mean(0)
        return self.head(x)


def firing_rates(model: nn.Module) -> dict[str, float]:
    """Mean firing rate of each LIF layer in the model's last forward, by module name."""
    return {
        name: float(m.last_firing_rate)
        for name, m in model.named_modules()
        if isinstance(m, MultiStepLIF) and m.last_firing_rate is not None
    }


def _is_binary(t: Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def _spike_rate(*operands: Tensor) -> float | None:
    """Firing rate of the first binary operand, or None when no operand is a spike map."""
    for t in operands:
        if _is_binary(t):
            return float(t.float().mean())
    return None


@torch.no_grad()
def estimate_ops(model: SpikingResformer, input_size: int = 112) -> dict[str, float]:
    """MACs, synaptic operations, firing rate and energy estimate for one inference.

    Runs one forward at batch 1 on a random chip (eval mode, restored afterwards) with hooks on
    every conv, linear and attention product. The first dimension of each hooked input is the
    number of time steps the layer ran for (1 for the prologue and the head, ``T`` otherwise).

    Returns ``ann_macs`` (MACs of a same-shape ReLU network, once per inference), ``snn_macs``
    (MACs on real-valued inputs the spiking network still does), ``sops`` (``sum of per-step
    MACs x input firing rate x T`` over spike-fed layers), ``spike_layer_macs`` (per-step MACs
    of those layers, so ``sops <= spike_layer_macs x T``), ``time_steps``, ``mean_firing_rate``
    (over all LIF outputs, weighted by size), and the energy *estimates* ``energy_ann_mj``,
    ``energy_snn_mj`` and ``energy_ratio`` (ANN / SNN) from 4.6 pJ per MAC and 0.9 pJ per SOP.
    """
    totals = {"ann_macs": 0.0, "snn_macs": 0.0, "sops": 0.0, "spike_layer_macs": 0.0}

    def record(macs_total: float, steps: int, rate: float | None) -> None:
        totals["ann_macs"] += macs_total / steps
        if rate is None:
            totals["snn_macs"] += macs_total
        else:
            totals["spike_layer_macs"] += macs_total / steps
            totals["sops"] += macs_total * rate

    def conv_hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        (x,) = inputs
        if isinstance(m, nn.Conv2d):
            per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            per_out = m.in_features
        else:  # registered on convolutions and linear layers only
            return
        record(float(out.numel() * per_out), x.shape[0], _spike_rate(x))

    def matmul_hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        a, b = inputs
        record(float(out.numel() * a.shape[-1]), a.shape[0], _spike_rate(b, a))

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, SpikingMatmul):
            handles.append(m.register_forward_hook(matmul_hook))
    was_training = model.training
    model.eval()
    try:
        x = torch.rand(1, 3, input_size, input_size) * 255.0
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    lifs = [m for m in model.modules() if isinstance(m, MultiStepLIF) and m.last_numel]
    n_spikes = sum(
        float(m.last_firing_rate) * m.last_numel for m in lifs if m.last_firing_rate is not None
    )
    n_total = sum(m.last_numel for m in lifs)
    energy_ann = totals["ann_macs"] * E_MAC_PJ * 1e-9
    energy_snn = (totals["snn_macs"] * E_MAC_PJ + totals["sops"] * E_AC_PJ) * 1e-9
    return {
        **totals,
        "time_steps": float(model.time_steps),
        "mean_firing_rate": n_spikes / n_total if n_total else 0.0,
        "energy_ann_mj": energy_ann,
        "energy_snn_mj": energy_snn,
        "energy_ratio": energy_ann / energy_snn if energy_snn else math.inf,
    }


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
