"""facegate.training.spiking_resformer: LIF dynamics and surrogate gradient, forward shapes,
binary spikes, one optimiser step, firing-rate and operation/energy reporting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facegate.models.spiking_resformer import (
    MultiStepLIF,
    SpikingResformer,
    count_parameters,
    estimate_ops,
    firing_rates,
    spike,
)


@pytest.fixture(scope="module")
def model() -> SpikingResformer:
    torch.manual_seed(0)
    return SpikingResformer(time_steps=2)


def _chips(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 112, 112, generator=g) * 255.0


def test_lif_constant_input_by_hand():
    # tau=2, v_th=1, v += (1.5 - v) / 2: 0.75 (no), 1.125 (spike, reset 0), 0.75, 1.125 (spike).
    lif = MultiStepLIF(tau=2.0, v_threshold=1.0)
    out = lif(torch.full((4, 1, 1), 1.5))
    assert out.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert lif.last_firing_rate is not None
    assert float(lif.last_firing_rate) == pytest.approx(0.5)


def test_surrogate_gradient_is_sigmoid_derivative():
    x = torch.tensor([-0.5, 0.0, 0.25], requires_grad=True)
    spike(x, 4.0).sum().backward()
    sg = torch.sigmoid(4.0 * x.detach())
    torch.testing.assert_close(x.grad, 4.0 * sg * (1 - sg))


def test_forward_shape_and_binary_spikes(model):
    seen: list[torch.Tensor] = []
    lif = model.stages[1].lif_up
    handle = lif.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        model.train()
        out = model(_chips())
    finally:
        handle.remove()
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()
    assert seen and seen[0].shape[:2] == (2, 2)
    assert set(seen[0].unique().tolist()) <= {0.0, 1.0}


def test_backward_reaches_first_conv(model):
    model.train()
    model.zero_grad()
    model(_chips()).pow(2).mean().backward()
    grad = model.prologue[0].weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_optimiser_step_changes_weights(model):
    model.train()
    target = F.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(2)), dim=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss = 1 - F.cosine_similarity(model(_chips()), target).mean()
    loss.backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert changed[0]
    assert sum(changed) > len(changed) // 2


def test_firing_rates_and_ops(model):
    model.train()
    with torch.no_grad():
        model(_chips())
    rates = firing_rates(model)
    assert len(rates) == (1 + 2 + 3) * 6 + 2  # 3 LIFs per DSSA, 3 per FFN, 1 per downsample
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    ops = estimate_ops(model)
    assert model.training  # mode restored
    assert ops["ann_macs"] > 0
    assert 0 < ops["snn_macs"] < ops["ann_macs"]
    assert 0 <= ops["sops"] < ops["spike_layer_macs"] * ops["time_steps"]
    assert 0.0 <= ops["mean_firing_rate"] <= 1.0
    assert ops["energy_ratio"] > 0
    assert ops["energy_ann_mj"] > 0 and ops["energy_snn_mj"] > 0


def test_parameter_count_in_ti_ballpark(model):
    assert 2_000_000 < count_parameters(model) < 20_000_000
