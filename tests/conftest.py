"""Shared test set-up: every test starts and ends with an empty gin config; ``one_thread`` on request."""

import gin
import pytest
import torch


@pytest.fixture(autouse=True)
def clean_gin_config():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models: as fast, and immune to a busy machine.

    Used by a module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
