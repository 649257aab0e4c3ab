"""Pictures: images quantised to uint8 from [-1, 1] in either layout."""

from __future__ import annotations

import torch

from realuid.pictures import quantize


def test_quantize_layouts():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    as_uint8 = quantize(x)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (4, 3, 32, 32)
    assert torch.equal(quantize(as_uint8.permute(0, 2, 3, 1)), as_uint8)       # NHWC -> NCHW
    assert torch.equal(quantize(torch.full((1, 3, 2, 2), -1.0)), torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    assert torch.equal(quantize(torch.full((1, 3, 2, 2), 1.0)), torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
