import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write splits/features into the user's ~/.cache: one cache per test session."""
    root = tmp_path_factory.getbasetemp() / "finessl_cache"
    monkeypatch.setenv("FINESSL_LAB_CACHE", str(root))
    yield
