"""Comparing Avro records at wire precision, shared by the codec's unit tests and the registry test."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def normalise(value):
    """Compare at wire precision: timestamp-millis decode to datetimes (ms), 'float' fields are 32-bit."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, float):
        return struct.unpack("<f", struct.pack("<f", value))[0]
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    return value
