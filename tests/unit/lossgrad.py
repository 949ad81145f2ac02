"""Two ways to compute one training loss must agree: the loss and every trainable parameter's gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def assert_same_loss_and_grads(model: Any, plain: Callable[[], Any], other: Callable[[], Any]) -> None:
    """Run `plain()` and `other()` (each returns the loss tensor of one forward), backward each from zeroed
    gradients, and compare: loss to 1e-5 relative, gradients to 1e-3 relative (fp32 models)."""
    import torch

    grads = []
    for loss_of in (plain, other):
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        grads.append((float(loss.detach()),
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (a, g_a), (b, g_b) = grads
    assert b == pytest.approx(a, rel=1e-5)
    assert g_a.keys() == g_b.keys() and g_a
    for name, g in g_a.items():
        assert torch.allclose(g, g_b[name], rtol=1e-3, atol=1e-6), name
