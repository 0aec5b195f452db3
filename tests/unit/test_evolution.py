"""Schema evolution: every topic record is frozen and each version reads the one before it."""

import json
import shutil

from lensflow.streams import evolution
from lensflow.streams.codec import SchemaSet, schemas_dir


def test_repository_schemas_are_frozen_and_backward_compatible():
    assert evolution.check() == []


def test_each_frozen_version_reads_data_of_the_previous_one():
    sset = SchemaSet()
    for name in evolution.TOPIC_RECORDS:
        chain = sset.history[name] + [sset.current[name]]
        for older, newer in zip(chain, chain[1:]):
            assert evolution.backward_problem(older.schema, newer.schema) is None, name


def _copy(tmp_path):
    target = tmp_path / "schemas"
    shutil.copytree(schemas_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.cql"))
    return target


def _edit(path, fn):
    schema = json.loads(path.read_text())
    fn(schema)
    path.write_text(json.dumps(schema))


def test_added_field_with_default_is_compatible_but_must_be_frozen(tmp_path):
    d = _copy(tmp_path)
    _edit(d / "lensflow.v1.JoinTick.avsc", lambda s: s["fields"].append({"name": "note", "type": "string", "default": ""}))
    findings = evolution.check(SchemaSet(d))
    assert [str(f) for f in findings] == ["lensflow.v1.JoinTick: changed since version 1 (compatible): run `lensflow schemas --freeze`"]
    written = evolution.freeze(SchemaSet(d))
    assert written == [str(d / "history" / "JoinTick" / "2.avsc")]
    assert evolution.check(SchemaSet(d)) == []


def test_added_field_without_default_breaks_backward_compatibility(tmp_path):
    d = _copy(tmp_path)
    _edit(d / "lensflow.v1.JoinTick.avsc", lambda s: s["fields"].append({"name": "note", "type": "string"}))
    findings = evolution.check(SchemaSet(d))
    assert len(findings) == 1 and "cannot read frozen version 1" in findings[0].problem
    try:
        evolution.freeze(SchemaSet(d))
    except ValueError as exc:
        assert "incompatible" in str(exc)
    else:
        raise AssertionError("freeze accepted an incompatible schema")


def test_changed_field_type_breaks_backward_compatibility(tmp_path):
    d = _copy(tmp_path)

    def change(s):
        for f in s["fields"]:
            if f["name"] == "reason":
                f["type"] = "int"
    _edit(d / "lensflow.v1.JoinTick.avsc", change)
    findings = evolution.check(SchemaSet(d))
    assert len(findings) == 1 and "cannot read" in findings[0].problem
