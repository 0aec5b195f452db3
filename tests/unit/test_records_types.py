"""The generated record types (streams/avro_types.py) agree with the Avro schemas: the committed module is
what `lensflow schemas --generate` makes of schemas/ now, every type writes the very bytes its dict
does, and a record built from its type survives the codec's round trip."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import io
import json
import sys
from datetime import datetime, timezone

import fastavro
import pytest
from fastavro.utils import generate_many

from lensflow.streams import avro_types as T
from lensflow.streams import recordgen
from lensflow.streams.codec import Codec, CodecError, default_schemas
from lensflow.streams.evolution import TOPIC_RECORDS
from lensflow.streams.records import ImageStatus, Status

TOP_LEVEL = sorted(default_schemas().current)


def test_the_committed_module_is_what_the_schemas_generate():
    assert recordgen.MODULE.read_text() == recordgen.generate(), \
        "streams/avro_types.py disagrees with schemas/: run `lensflow schemas --generate` and commit it"


def test_a_schema_change_shows_in_the_generated_module(tmp_path):
    for f in recordgen.schemas_dir().glob("lensflow.v1.*.avsc"):
        (tmp_path / f.name).write_text(f.read_text())
    box = tmp_path / "lensflow.v1.Box.avsc"
    schema = json.loads(box.read_text())
    schema["fields"].append({"name": "label", "type": ["null", "string"], "default": None})
    box.write_text(json.dumps(schema))
    changed = tmp_path / "avro_types.py"
    changed.write_text(recordgen.generate(tmp_path))
    assert recordgen.stale(tmp_path, recordgen.MODULE)
    assert not recordgen.stale(tmp_path, changed)
    assert "    label: str | None = None" in changed.read_text()


def test_every_named_schema_has_a_type_of_its_name():
    gen = recordgen.Generator()
    for full, named in gen.named.items():
        table = T.RECORDS if named.kind == "record" else T.ENUMS
        assert table[full].__name__ == full.rsplit(".", 1)[-1]
        if named.kind == "record":
            assert T.RECORDS[full].AVRO_FIELDS == tuple(f["name"] for f in named.schema["fields"])
    # every schema file is a type; nested records (Detection, Face, TextLine, DeadLetterInput) too
    assert set(TOP_LEVEL) <= set(T.RECORDS)
    assert {"lensflow.v1.Detection", "lensflow.v1.Face", "lensflow.v1.TextLine", "lensflow.v1.DeadLetterInput"} <= set(T.RECORDS)
    assert T.record_type("ObjectsResult") is T.ObjectsResult is T.record_type("lensflow.v1.ObjectsResult")


def test_the_generated_module_imports_nothing_of_lensflow():
    tree = ast.parse(recordgen.MODULE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("lensflow"), ast.dump(node)
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("lensflow") for a in node.names)


def test_types_follow_the_schema():
    fields = {f.name: f for f in dataclasses.fields(T.ObjectsResult)}
    assert fields["model"].type == "ModelRef | None" and fields["model"].default is None  # ["null", ModelRef]
    assert fields["status"].type == "StageStatus" and fields["status"].default is dataclasses.MISSING
    assert fields["produced_at"].type == "datetime"  # timestamp-millis
    assert fields["detections"].type == "list[Detection]" and fields["detections"].default_factory is list
    assert fields["duration_ms"].default == 0.0
    assert {f.name: f.type for f in dataclasses.fields(T.ImageUploaded)}["attributes"] == "dict[str, str]"  # map
    assert {f.name: f.type for f in dataclasses.fields(T.ImageUploaded)}["stages"] == "list[str] | None"
    assert T.SafetyResult.__dataclass_fields__["threshold"].default == 0.5
    assert T.ImagePrepared.__dataclass_fields__["mode"].default == "full"
    assert [m.value for m in T.StageStatus] == ["ok", "failed", "skipped"] and T.StageStatus.OK == "ok"
    assert Status is T.StageStatus and ImageStatus is T.AnalysisStatus


def test_a_misspelt_or_missing_field_fails_where_the_record_is_built():
    with pytest.raises(TypeError):
        T.Box(x1=0.0, y1=0.0, x2=1.0, y_2=1.0)
    with pytest.raises(TypeError):
        T.Box(x1=0.0, y1=0.0, x2=1.0)
    with pytest.raises(TypeError):
        T.Box(0.0, 0.0, 1.0, 1.0)  # keyword-only


def test_a_record_reads_like_its_decoded_dict():
    box = T.Box(x1=1.0, y1=2.0, x2=3.0, y2=4.0)
    assert box["x2"] == 3.0 and box.get("y1") == 2.0 and box.get("nope", 7) == 7 and "x1" in box and "nope" not in box
    with pytest.raises(KeyError):
        box["nope"]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_type_writes_the_bytes_its_dict_writes(name):
    """Sampled records of every schema (fastavro's generator: every branch of every union, nested records,
    arrays, maps): the type built from one (``from_avro``) encodes to the very bytes of the dict, and what
    decodes from them builds the same record again."""
    codec = Codec()
    cls = T.RECORDS[name]
    for sample in generate_many(codec.schemas.get(name).parsed, 8):
        typed = cls.from_avro(sample)
        data = codec.encode(name, typed)
        assert data == codec.encode(name, sample)
        _, back = codec.decode(data)
        assert codec.encode(name, cls.from_avro(back)) == data


def _envelope(stage: str) -> dict:
    return dict(image_id="img", user_id="u", run_id="r1", stage=stage, status=Status.OK,
                model=T.ModelRef(name="m", version="1", sha256=None), duration_ms=12.5,
                produced_at=datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=timezone.utc))


BOX = T.Box(x1=1.0, y1=2.0, x2=30.5, y2=40.25)
ERROR = T.StageError(code="timeout", message="no result", retryable=True, attempts=2)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)

#: One instance of every record that travels on a topic, with sample values as the stages build them.
SAMPLES = {
    "ImageUploaded": T.ImageUploaded(image_id="img", user_id="u", run_id="r1", uri="file:///x.jpg", content_type=None,
                                     size_bytes=123, uploaded_at=T0, stages=["objects"], source="test",
                                     attributes={"file": "x.jpg"}),
    "ImagePrepared": T.ImagePrepared(**_envelope("preprocess"), source_uri="file:///x.jpg", uri="file:///d.jpg",
                                     format="JPEG", mime_type="image/jpeg", size_bytes=10, sha256="ab", original_width=4,
                                     original_height=3, width=4, height=3, derivative_sha256="cd",
                                     expected_stages=["objects", "text"], derived_stages=["describe"], uploaded_at=T0),
    "MetadataResult": T.MetadataResult(**_envelope("metadata"), taken_at=T0, camera_make="Canon", iso=100,
                                       gps=T.GeoPoint(lat=1.5, lon=2.5, alt_m=None), keywords=["a"],
                                       place=T.Place(city="X", region=None, country="Y", country_code="YY", distance_km=1.5),
                                       warnings=["w"]),
    "ObjectsResult": T.ObjectsResult(**_envelope("objects"), detections=[T.Detection(label="dog", class_id=16,
                                                                                     confidence=0.75, box=BOX)]),
    "SceneResult": T.SceneResult(**_envelope("scene"), environment=T.Label(label="outdoor", score=0.5),
                                 places=[T.Label(label="beach", score=0.25)], classes=[T.Label(label="sand", score=0.125)]),
    "TextResult": T.TextResult(**_envelope("text"), text="hello", language="en", script="Latn",
                               lines=[T.TextLine(text="hello", confidence=0.5, box=BOX)]),
    "FacesResult": T.FacesResult(**_envelope("faces"), faces=[T.Face(face_id="f0", box=BOX, confidence=1.0,
                                                                     landmarks=[T.Point(x=1.0, y=2.0)], encoding=[0.5, 0.25],
                                                                     person_id="p", person_name=None, match_distance=0.25)]),
    "EmbeddingResult": T.EmbeddingResult(**_envelope("embedding"), dim=3, vector=[0.5, 0.25, 0.125]),
    "SafetyResult": T.SafetyResult(**_envelope("safety"), nsfw_score=0.25, unsafe=False, threshold=0.5),
    "ImageDescribed": T.ImageDescribed(**_envelope("describe"), caption="a dog", text_model=T.ModelRef(name="t", version="1"),
                                       semantic_vector=[0.5]),
    "ImageAggregated": T.ImageAggregated(image_id="img", user_id="u", run_id="r1", status=ImageStatus.PARTIAL,
                                         stages=[T.StageSummary(stage="objects", status=Status.FAILED, error=ERROR)],
                                         aggregated_at=T0),
    "ImageAnalyzed": T.ImageAnalyzed(image_id="img", user_id="u", run_id="r1", analysis_version=2,
                                     status=ImageStatus.COMPLETE, stages=[T.StageSummary(stage="text", status=Status.OK)],
                                     tags=[T.Tag(kind="object", tag="dog", score=0.75)], uploaded_at=T0, analyzed_at=T0,
                                     summary=T.AnalysisSummary(objects=1, people=["Ann"], nsfw_score=0.25)),
    "CacheInvalidation": T.CacheInvalidation(image_id="img", user_id="u", keys=["image:img"], reason="analyzed",
                                             analysis_version=2, produced_at=T0),
    "DeadLetter": T.DeadLetter(stage="join", topic="images.prepared", partition=1, offset=7, key=b"img", value=b"\x00",
                               image_id="img", error=ERROR, failed_at=T0,
                               inputs=[T.DeadLetterInput(topic="analysis.text", key=None, value=b"v")]),
    "JoinTick": T.JoinTick(image_id="img", reason="timeout", produced_at=T0),
}
SAMPLES["ImageAggregated"].prepared = SAMPLES["ImagePrepared"]
SAMPLES["ImageAggregated"].objects = SAMPLES["ObjectsResult"]


def test_there_is_a_sample_of_every_record_on_a_topic():
    assert sorted(f"lensflow.v1.{n}" for n in SAMPLES) == TOPIC_RECORDS


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_through_the_codec(name):
    codec = Codec()
    record = SAMPLES[name]
    data = codec.encode(name, record)
    got_name, back = codec.decode(data, expect=name)
    assert got_name == f"lensflow.v1.{name}"
    assert T.RECORDS[got_name].from_avro(back) == record
    assert codec.encode(name, record.to_avro()) == data  # the dict path writes the same bytes


def test_a_nested_record_may_be_the_dict_the_join_decoded():
    codec = Codec()
    _, prepared = codec.decode(codec.encode("ImagePrepared", SAMPLES["ImagePrepared"]))
    agg = dataclasses.replace(SAMPLES["ImageAggregated"], prepared=prepared)
    assert codec.encode("ImageAggregated", agg) == codec.encode("ImageAggregated", SAMPLES["ImageAggregated"])


def test_a_type_is_encoded_only_as_its_own_record():
    with pytest.raises(CodecError, match="ObjectsResult cannot be encoded as lensflow.v1.TextResult"):
        Codec().encode("TextResult", SAMPLES["ObjectsResult"])


EVERYTHING = {
    "type": "record", "name": "Everything", "namespace": "lensflow.v1", "doc": "Every kind of Avro type.",
    "fields": [
        {"name": "mode", "type": {"type": "enum", "name": "Mode", "symbols": ["fast", "slow"]}, "default": "slow"},
        {"name": "point", "type": {"type": "record", "name": "XY", "fields": [{"name": "x", "type": "int"}]},
         "default": {"x": 3}},
        {"name": "by_name", "type": {"type": "map", "values": "XY"}, "default": {}},
        {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "XY"}}, "default": []},
        {"name": "maybe_modes", "type": ["null", {"type": "array", "items": "Mode"}], "default": None},
        {"name": "either", "type": ["null", "string", "XY"], "default": None},
        {"name": "blob", "type": "bytes", "default": "\u00ff\u0000"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 2}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "ratio", "type": "float", "default": 1},
    ],
}


def test_the_generator_covers_every_kind_of_avro_type(tmp_path):
    """Beyond lensflow's own schemas: enums with defaults, record defaults, maps and nested arrays of
    records, a union of several types, bytes and fixed, a date."""
    (tmp_path / "lensflow.v1.Everything.avsc").write_text(json.dumps(EVERYTHING))
    module = tmp_path / "everything_types.py"
    module.write_text(recordgen.generate(tmp_path))
    spec = importlib.util.spec_from_file_location("everything_types", module)
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m  # dataclasses look their module up
    try:
        spec.loader.exec_module(m)
        built = m.Everything(digest=b"ab", day=datetime(2024, 1, 2).date())
        assert built.mode is m.Mode.SLOW and built.point == m.XY(x=3) and built.blob == b"\xff\x00" and built.ratio == 1.0
        assert built.point is not m.Everything(digest=b"ab", day=built.day).point  # a default record is not shared
        parsed = fastavro.parse_schema(EVERYTHING)
        for sample in [built.to_avro(), *generate_many(parsed, 20)]:
            assert _avro_bytes(parsed, m.Everything.from_avro(sample).to_avro()) == _avro_bytes(parsed, sample)
    finally:
        del sys.modules[spec.name]


def _avro_bytes(parsed, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record, strict_allow_default=True)
    return buf.getvalue()
