"""What one image costs the Cassandra sink, in requests, against the real Cassandra (issue 19).

The join calls ``current`` (the stored row), ``same_bytes`` (the duplicate lookup), ``write`` and,
once its events are on the broker, ``mark_notified``. These tests make those calls on a real
``CassandraStore`` in a keyspace of their own and pin how many CQL requests each makes, by statement,
for a first write, a rewrite by a new run and a replay of a stored run: a change that adds a request
per tag (or per image) fails here and shows in review. The requests are counted twice: by a counting
wrapper around the session's ``execute_async`` (which statement), and by Cassandra itself
(``system_views.clients.request_count`` of the session's connection, read from another connection).
Every test also reads back what was stored, so a write that does less than it should fails too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timezone

import pytest
from cassandra.query import ValueSequence

from lensflow.streams.store import CassandraStore, connect_cassandra, cql_statements

pytestmark = pytest.mark.integration


def _table(query_string: str) -> str:
    words = query_string.replace("(", " ").split()
    verb = words[0].upper()
    after = {"INSERT": "INTO", "DELETE": "FROM", "SELECT": "FROM", "UPDATE": "UPDATE"}.get(verb)
    if after is None:
        return " ".join(words[:2])
    table = words[[w.upper() for w in words].index(after) + 1].split(".")[-1]
    return f"{verb} {table}"


class Requests:
    """Counts the requests a session sends (wrapping its ``execute_async``), by statement; a batch is
    counted once, with the statements it carries in its label."""

    def __init__(self, session, statements: dict[bytes, str]):
        self.counts: Counter = Counter()
        self._statements = statements  # prepared query id -> "VERB table"
        original = session.execute_async

        def counted(query, *args, **kwargs):
            self.counts[self.label(query)] += 1
            return original(query, *args, **kwargs)

        session.execute_async = counted

    def label(self, query) -> str:
        from cassandra.query import BatchStatement, BoundStatement

        if isinstance(query, BatchStatement):
            inner = Counter(self._statements.get(s, "?") if prepared else _table(s)
                            for prepared, s, _ in query._statements_and_parameters)
            return "BATCH " + " + ".join(f"{n} {name}" for name, n in sorted(inner.items()))
        if isinstance(query, BoundStatement):
            query = query.prepared_statement
        return _table(getattr(query, "query_string", str(query)))

    def take(self) -> dict[str, int]:
        out, self.counts = dict(self.counts), Counter()
        return out


class Sink:
    def __init__(self, env: dict):
        port = int(env.get("LENSFLOW_CASSANDRA_PORT", 9042))
        self.keyspace = f"t_sink_{uuid.uuid4().hex[:8]}"
        # the worker's connection settings; no heartbeats, so that Cassandra's request count is ours alone
        self.cluster, self.session = connect_cassandra(["127.0.0.1"], port, idle_heartbeat_interval=0)
        for statement in cql_statements(self.keyspace, 1):
            self.session.execute(statement, timeout=60)
        self.store = CassandraStore(["127.0.0.1"], port, self.keyspace, session=self.session)
        statements = {v.query_id: _table(v.query_string) for v in vars(self.store).values() if hasattr(v, "query_id")}
        self.requests = Requests(self.session, statements)
        self.checker_cluster, self.checker = connect_cassandra(["127.0.0.1"], port)

    def server_count(self) -> int:
        """Requests Cassandra counted on the store's connection(s)."""
        ports = {pool._connection._socket.getsockname()[1] for pool in self.session._pools.values()}
        return sum(r.request_count for r in self.checker.execute("SELECT port, request_count FROM system_views.clients")
                   if r.port in ports)

    def join(self, row: dict, analysis: dict, tags: list[dict]) -> dict[str, int]:
        """The join's calls for one image, as ``agents/join.py`` makes them; the requests they sent."""
        async def calls():
            stored = await self.store.current(row["image_id"])
            await self.store.same_bytes(row["user_id"], row["sha256"])
            await self.store.write(row, analysis, tags, stored is None)
            await self.store.mark_notified(row["image_id"], row["run_id"])

        return self.measure(calls)

    def measure(self, calls) -> dict[str, int]:
        self.requests.take()
        before = self.server_count()
        asyncio.run(calls())
        counted = self.requests.take()
        assert self.server_count() - before == sum(counted.values()), f"Cassandra counted otherwise than the wrapper: {counted}"
        return counted

    def close(self):
        try:
            self.checker.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}", timeout=60)
        finally:
            self.cluster.shutdown()
            self.checker_cluster.shutdown()


@pytest.fixture(scope="module")
def sink(stack):
    s = Sink(stack)
    yield s
    s.close()


def image(image_id: str, run: str, version: int, sha: str = "ab" * 32, **extra) -> tuple[dict, dict]:
    now = datetime.now(timezone.utc)
    row = {"image_id": image_id, "user_id": "alice", "uri": f"file:///data/{image_id}.jpg", "format": "JPEG",
           "sha256": sha, "width": 1600, "height": 1200, "camera_make": "BenchCam", "camera_model": "B-1",
           "taken_at": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc), "gps_lat": 48.857, "gps_lon": 2.351,
           "status": "complete", "run_id": run, "analysis_version": version, "uploaded_at": now, "last_analyzed": now,
           "place_city": "Paris", **extra}
    analysis = {"image_id": image_id, "run_id": run, "analysis_version": version, "status": "complete",
                "stage_status": {"preprocess": "ok", "metadata": "ok"}, "stage_ms": {"preprocess": 30.0, "metadata": 1.0},
                "stage_records": {"preprocess": b"\x01" * 300, "metadata": b"\x02" * 200},
                "result_json": '{"status": "complete"}', "uploaded_at": now, "completed_at": now}
    return row, analysis


#: the spine's tags of a photo with EXIF and GPS: camera, year, three places
TAGS = [{"kind": "camera", "tag": "benchcam b-1", "score": 1.0}, {"kind": "year", "tag": "2024", "score": 1.0},
        {"kind": "place", "tag": "paris", "score": 1.0}, {"kind": "place", "tag": "ile-de-france", "score": 1.0},
        {"kind": "place", "tag": "france", "score": 1.0}]
SPINE_INDEX_BATCH = "BATCH 1 INSERT images_by_sha + 1 INSERT images_by_user + 5 INSERT user_images_by_tag"
SPINE_IMAGE_BATCH = "BATCH 1 INSERT analysis_results + 5 INSERT image_tags + 1 INSERT images"


def check(requests: dict[str, int], expected: dict[str, int], what: str) -> None:
    assert requests == expected, (f"{what}: {sum(requests.values())} CQL requests where {sum(expected.values())} were expected; "
                                  f"sent {dict(sorted(requests.items()))}")


def tagged(sink: Sink, tag: str) -> dict[str, float]:
    return {r.image_id: round(r.score, 4) for r in sink.store.images_tagged("alice", tag)}


def test_first_write_is_two_requests_whatever_the_tags(sink):
    row, analysis = image("first", "r1", 1)
    check(sink.join(row, analysis, TAGS), {
        "SELECT images": 1, "SELECT images_by_sha": 1,  # the join's reads
        SPINE_INDEX_BATCH: 1,  # the index: one partition per tag, the user's and the SHA-256's
        SPINE_IMAGE_BATCH: 1,  # the image's partition: its row, its run, its tags
        "UPDATE images": 1,  # notified
    }, "first write of an image with 5 tags")
    shown = sink.store.image("first")
    assert {(t["kind"], t["tag"]) for t in shown["tags"]} == {(t["kind"], t["tag"]) for t in TAGS}
    assert shown["notified_run"] == "r1" and shown["camera_make"] == "BenchCam"
    assert all(tagged(sink, t["tag"]) == {"first": 1.0} for t in TAGS)
    assert [r.image_id for r in sink.store.images_of("alice")] == ["first"]

    # twelve tags (objects, scenes, places, year, camera): the index takes two batches of at most ten partitions
    many = TAGS + [{"kind": "object", "tag": f"thing {i}", "score": 0.5} for i in range(7)]
    row, analysis = image("many", "r1", 1, sha="cd" * 32)
    check(sink.join(row, analysis, many), {
        "SELECT images": 1, "SELECT images_by_sha": 1,
        "BATCH 10 INSERT user_images_by_tag": 1, "BATCH 1 INSERT images_by_sha + 1 INSERT images_by_user + 2 INSERT user_images_by_tag": 1,
        "BATCH 1 INSERT analysis_results + 12 INSERT image_tags + 1 INSERT images": 1,
        "UPDATE images": 1,
    }, "first write of an image with 12 tags")
    assert tagged(sink, "thing 6") == {"many": 0.5}


def test_rewrite_writes_only_what_changed(sink):
    row, analysis = image("re", "r1", 1, sha="ef" * 32)
    sink.join(row, analysis, TAGS)
    def written_at(tag):
        return sink.checker.execute(f"SELECT WRITETIME(score) AS t FROM {sink.keyspace}.user_images_by_tag "
                                    "WHERE user_id = 'alice' AND tag = %s AND image_id = 're'", (tag,)).one().t
    kept = written_at("paris")

    # a new run: "2024" dropped, "france" rescored, "louvre" added
    tags = [t for t in TAGS if t["tag"] != "2024"]
    tags = [{**t, "score": 0.75} if t["tag"] == "france" else t for t in tags] + [{"kind": "place", "tag": "louvre", "score": 0.5}]
    row, analysis = image("re", "r2", 2, sha="ef" * 32)
    check(sink.join(row, analysis, tags), {
        "SELECT images": 1, "SELECT images_by_sha": 1,
        "BATCH 1 INSERT images_by_user + 2 INSERT user_images_by_tag": 1,  # the changed entries and the new run
        "BATCH 1 DELETE image_tags + 1 INSERT analysis_results + 2 INSERT image_tags + 1 INSERT images": 1,
        "DELETE user_images_by_tag": 1,  # after the row: the dropped tag's entry
        "UPDATE images": 1,
    }, "rewrite by a new run (a tag dropped, one added, one rescored)")
    assert tagged(sink, "2024").get("re") is None
    assert tagged(sink, "france")["re"] == 0.75 and tagged(sink, "louvre")["re"] == 0.5
    assert written_at("paris") == kept  # an unchanged entry is not written again
    shown = sink.store.image("re")
    assert {(t["tag"], t["score"]) for t in shown["tags"]} == {(t["tag"], t["score"]) for t in tags}
    assert shown["run_id"] == "r2" and shown["analysis_version"] == 2

    # the same run again (inputs redelivered before its notification): only the image's partition
    check(sink.join(row, analysis, tags), {
        "SELECT images": 1, "SELECT images_by_sha": 1,
        "BATCH 1 INSERT analysis_results + 1 INSERT images": 1,
        "UPDATE images": 1,
    }, "replay of a stored run")
    assert sink.store.image("re")["run_id"] == "r2"


def test_rewrite_clears_what_the_new_run_lacks(sink):
    row, analysis = image("clear", "r1", 1, sha="12" * 32, caption="a street")
    sink.join(row, analysis, TAGS)
    row, analysis = image("clear", "r2", 2, sha="34" * 32)  # no caption now, other bytes
    row["camera_make"] = None
    check(sink.join(row, analysis, []), {
        "SELECT images": 1, "SELECT images_by_sha": 1,
        "BATCH 1 INSERT images_by_sha + 1 INSERT images_by_user": 1,
        "BATCH 5 DELETE image_tags + 1 INSERT analysis_results + 1 INSERT images": 1,
        "BATCH 1 DELETE images_by_sha + 5 DELETE user_images_by_tag": 1,  # after the row
        "UPDATE images": 1,
    }, "rewrite that drops every tag and replaces the bytes")
    shown = sink.store.image("clear")
    assert shown["caption"] is None and shown["camera_make"] is None and shown["tags"] == []
    assert all("clear" not in tagged(sink, t["tag"]) for t in TAGS)
    assert asyncio.run(sink.store.same_bytes("alice", "12" * 32)) == []  # the replaced bytes' entry is gone
    assert asyncio.run(sink.store.same_bytes("alice", "34" * 32)) == ["clear"]


def test_a_row_from_before_the_tags_column_is_rewritten_from_image_tags(sink):
    """A keyspace migrated from the old model: the row has no ``tags``, its tags are in image_tags."""
    ks = sink.keyspace
    sink.checker.execute(f"INSERT INTO {ks}.images (image_id, user_id, run_id, analysis_version, sha256) "
                         "VALUES ('old', 'alice', 'r1', 1, %s)", ("56" * 32,))
    for t in TAGS:
        sink.checker.execute(f"INSERT INTO {ks}.image_tags (image_id, kind, tag, score) VALUES ('old', %s, %s, 1.0)", (t["kind"], t["tag"]))
        sink.checker.execute(f"INSERT INTO {ks}.user_images_by_tag (user_id, tag, image_id, kind, score) "
                             "VALUES ('alice', %s, 'old', %s, 1.0)", (t["tag"], t["kind"]))
    assert {t["tag"] for t in sink.store.image("old")["tags"]} == {t["tag"] for t in TAGS}
    row, analysis = image("old", "r2", 2, sha="56" * 32)
    requests = sink.join(row, analysis, TAGS[:2])
    assert requests["SELECT image_tags"] == 1  # read once, as before the migration
    assert {t["tag"] for t in sink.store.image("old")["tags"]} == {t["tag"] for t in TAGS[:2]}
    assert tagged(sink, "paris").get("old") is None and tagged(sink, "2024")["old"] == 1.0


def test_a_row_rewritten_by_an_older_writer_is_not_trusted(sink):
    """During a rolling upgrade a worker that predates images.tags may rewrite a row: it leaves the row's
    tags behind (their write time then differs from the row's), so they no longer say what the index
    holds, and the next write reads image_tags instead."""
    ks = sink.keyspace
    row, analysis = image("mixed", "r1", 1, sha="9a" * 32)
    sink.join(row, analysis, TAGS)
    # what the older writer does for a run that drops "paris": its row (without tags), image_tags, the index
    sink.checker.execute(f"INSERT INTO {ks}.images (image_id, user_id, run_id, analysis_version, sha256) "
                         "VALUES ('mixed', 'alice', 'r2', 2, %s)", ("9a" * 32,))
    sink.checker.execute(f"DELETE FROM {ks}.image_tags WHERE image_id = 'mixed' AND kind = 'place' AND tag = 'paris'")
    sink.checker.execute(f"DELETE FROM {ks}.user_images_by_tag WHERE user_id = 'alice' AND tag = 'paris' AND image_id = 'mixed'")
    row, analysis = image("mixed", "r3", 3, sha="9a" * 32)
    requests = sink.join(row, analysis, TAGS)  # "paris" is back
    assert requests["SELECT image_tags"] == 1, requests
    assert tagged(sink, "paris")["mixed"] == 1.0  # written again, though the row's stale tags had it


def test_a_large_image_partition_is_one_request(sink):
    """The image's partition goes as one batch whatever its size: Cassandra's batch size limits
    (warn 5 KiB, fail 50 KiB) apply to batches of several partitions, not to this one."""
    row, analysis = image("large", "r1", 1, sha="78" * 32, visual=[0.5] * 1280)
    analysis["stage_records"] = {f"stage{i}": bytes(40_000) for i in range(5)}  # 200 KB
    check(sink.join(row, analysis, TAGS), {"SELECT images": 1, "SELECT images_by_sha": 1, SPINE_INDEX_BATCH: 1,
                                           SPINE_IMAGE_BATCH: 1, "UPDATE images": 1}, "first write of a 200 KB image partition")
    stored = sink.checker.execute(f"SELECT stage_records FROM {sink.keyspace}.analysis_results "
                                  "WHERE image_id = 'large' AND run_id = 'r1'").one()
    assert sum(map(len, stored.stage_records.values())) == 200_000


def test_lookups_and_notifications_of_a_batch_go_together(sink):
    """The join gathers its duplicate lookups and its notifications of a batch: 25 images, one lookup
    request, and notifications in batches of ten."""
    ids = [f"n{i}" for i in range(25)]

    async def calls():
        await asyncio.gather(*(sink.store.same_bytes("alice", f"{i:064x}") for i in range(25)))
        await asyncio.gather(*(sink.store.mark_notified(i, "r9") for i in ids))

    check(sink.measure(calls), {"SELECT images_by_sha": 1, "BATCH 10 UPDATE images": 2, "BATCH 5 UPDATE images": 1},
          "25 gathered duplicate lookups and notifications")
    rows = sink.checker.execute(f"SELECT image_id, notified_run FROM {sink.keyspace}.images WHERE image_id IN %s", (ValueSequence(ids),))
    assert {r.image_id: r.notified_run for r in rows} == {i: "r9" for i in ids}
