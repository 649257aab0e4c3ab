"""Shared test set-up: every test starts and ends with an empty gin config."""

import gin
import pytest


@pytest.fixture(autouse=True)
def clean_gin_config():
    gin.clear_config()
    yield
    gin.clear_config()
