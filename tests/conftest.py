from __future__ import annotations

import os
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
