from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real medical data (``CONFIDE_DATA`` or ../shared/data); tests using it skip when it is absent."""
    root = Path(os.environ.get("CONFIDE_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set CONFIDE_DATA to the shared data folder)")
    return root


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one torch thread is faster, and fair to other processes sharing the cores (use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
