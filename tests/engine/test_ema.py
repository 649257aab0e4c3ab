"""The EMA of the generator's weights: its formula, and its update count restored from a checkpoint."""

from __future__ import annotations

import torch

from realuid.engine.ema import EMA


def test_ema_follows_its_formula_and_resumes_its_count_from_a_checkpoint():
    """theta_ema <- d theta_ema + (1 - d) theta with d = min(decay, (1 + n) / (10 + n)), n read from the state."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    assert all(torch.allclose(a, e, rtol=1e-12) for a, e in zip(ema.model.parameters(), expected))
    # a fresh EMA loaded from the state continues at n = 5, not at n = 0 (calibration: d differs at n = 0)
    resumed = EMA(model, decay=0.9)
    resumed.load_state_dict(ema.state_dict())
    resumed.update(model)
    ema.update(model)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), ema.model.parameters()))
    fresh = EMA(model, decay=0.9)
    fresh.load_state_dict({**ema.state_dict(), "updates": torch.tensor(0)})
    fresh.update(model)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.parameters(), ema.model.parameters()))