"""The values the Cassandra sink binds: nulls are tombstones only where they must clear something."""

from cassandra.query import UNSET_VALUE

from lensflow.streams.store import IMAGE_COLUMNS, bind_values


def test_first_write_leaves_nulls_unset():
    row = {"image_id": "a", "user_id": "u", "caption": None, "width": 0}
    values = bind_values(row, IMAGE_COLUMNS, first_write=True)
    by_column = dict(zip(IMAGE_COLUMNS, values))
    assert by_column["image_id"] == "a" and by_column["width"] == 0  # falsy values are still written
    assert by_column["caption"] is UNSET_VALUE and by_column["camera_make"] is UNSET_VALUE


def test_rewrite_binds_nulls_to_clear_an_earlier_runs_values():
    row = {"image_id": "a", "user_id": "u", "caption": None}
    by_column = dict(zip(IMAGE_COLUMNS, bind_values(row, IMAGE_COLUMNS, first_write=False)))
    assert by_column["caption"] is None and by_column["camera_make"] is None
    assert UNSET_VALUE not in by_column.values()
