"""Schema evolution: every topic record is frozen, and every version reads every other one's data, both ways
(Apache Avro's own SchemaCompatibility, run in Java)."""

import json
import shutil

from lensflow.streams import evolution
from lensflow.streams.codec import SchemaSet, schemas_dir


def test_repository_schemas_are_frozen_and_backward_compatible():
    assert evolution.check() == []


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
    assert findings and all("cannot read" in f.problem and f.record == "lensflow.v1.JoinTick" for f in findings)


def test_dropping_a_required_field_breaks_older_readers(tmp_path):
    """Backward compatible (the new reader ignores the field), but a consumer still on the old schema
    cannot read the new data: full transitive compatibility refuses it (sampling let it through)."""
    d = _copy(tmp_path)
    _edit(d / "lensflow.v1.ImageAnalyzed.avsc",
          lambda s: s.__setitem__("fields", [f for f in s["fields"] if f["name"] != "analysis_version"]))
    findings = evolution.check(SchemaSet(d))
    assert findings and {f.record for f in findings} == {"lensflow.v1.ImageAnalyzed"}, findings
    # every frozen version is an older reader that now fails
    assert all("cannot read the current schema's data" in f.problem and "analysis_version" in f.problem for f in findings)


def test_every_pair_of_versions_is_checked_not_only_neighbours(tmp_path):
    """v1 -> v2 adds a field with a default, v2 -> v3 drops that default: each step is fine one way,
    but v1's data cannot be read by v3."""
    d = _copy(tmp_path)
    _edit(d / "lensflow.v1.JoinTick.avsc", lambda s: s["fields"].append({"name": "note", "type": "string", "default": ""}))
    evolution.freeze(SchemaSet(d))

    def no_default(s):
        for f in s["fields"]:
            if f["name"] == "note":
                f.pop("default")
    _edit(d / "lensflow.v1.JoinTick.avsc", no_default)
    problems = [f.problem for f in evolution.check(SchemaSet(d))]
    assert any("cannot read frozen version 1" in p for p in problems), problems
