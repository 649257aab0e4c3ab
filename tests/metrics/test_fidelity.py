"""The torch-fidelity FID bridge never downloads: without Inception weights it says how to supply them."""

from __future__ import annotations

import pytest

from realuid.errors import UserError
from realuid.metrics.fidelity import INCEPTION_WEIGHTS_NAME, TorchFidelityFID


def test_torch_fidelity_without_weights_explains_how_to_supply_them(no_network):
    with pytest.raises(UserError) as err:
        TorchFidelityFID()
    message = str(err.value)
    assert INCEPTION_WEIGHTS_NAME in message and "--inception-weights PATH" in message


def test_torch_fidelity_with_missing_weights_file(no_network, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TorchFidelityFID(inception_weights=str(tmp_path / INCEPTION_WEIGHTS_NAME))
