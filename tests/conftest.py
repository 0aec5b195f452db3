from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "samples" / "photos"


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS
