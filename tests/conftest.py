"""Shared test fixtures (small image folders) and the gpu marker; helpers live in tests/_helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._helpers import write_image_folder

# Tests never reach a hub: a hub lookup fails at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when CUDA is not available."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A 2-class train/test image folder with 6 images per class and split."""
    return write_image_folder(tmp_path / "pets")
