"""The error policy's verdicts on faults of a whole store, the registry and storage (issue: the promise
under the faults that are left), and the runner's steps that must be safe to retry. Pure logic: the
exceptions are the client libraries' own classes; the integration tests stage the real faults."""

from __future__ import annotations

import asyncio
import errno

import pytest
from cassandra import InvalidRequest, OperationTimedOut, Unauthorized
from confluent_kafka.schema_registry.error import SchemaRegistryError
from qdrant_client.http.exceptions import UnexpectedResponse

from lensflow.streams.codec import Codec, CodecError
from lensflow.streams.errors import (ErrorCode, RetryPolicy, StoreRejected, classify, is_store_rejection, is_transient,
                                     record_fault)
from lensflow.streams.runner import Output, Runner


def qdrant(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "x", b"{}", None)


@pytest.mark.parametrize("exc", [
    Unauthorized("User lensflow has no MODIFY permission on <table lensflow.images>"),
    InvalidRequest("Keyspace 't_1' does not exist"),
    InvalidRequest("unconfigured table analysis_results"),
    qdrant(401), qdrant(403), qdrant(404), qdrant(503), qdrant(429),
    ValueError("Collection images not found").with_traceback(None),
    SchemaRegistryError(503, 50301, "unavailable"), SchemaRegistryError(401, 40101, "unauthorized"),
    OperationTimedOut("timed out"), OSError(errno.EIO, "I/O error"), ConnectionRefusedError(),
])
def test_a_store_that_refuses_everyone_or_is_down_is_an_outage(exc):
    if isinstance(exc, ValueError):  # qdrant-client local mode's own ValueError
        exc = type("ValueError", (ValueError,), {"__module__": "qdrant_client.local.qdrant_local"})(str(exc))
    assert is_transient(exc), exc
    assert not is_store_rejection(exc)
    assert classify(exc).code == ErrorCode.TRANSIENT


@pytest.mark.parametrize("exc", [
    InvalidRequest("Invalid vector literal for visual of type vector<float, 1280>; expected 1280 elements, but given 3"),
    qdrant(400), StoreRejected("visual vector has 3 values"),
])
def test_a_store_that_refuses_one_write_fails_that_image(exc):
    assert not is_transient(exc)
    assert classify(exc).code == ErrorCode.STORE_REJECTED


def test_an_unknown_schema_id_is_poison_but_an_unreachable_registry_is_not():
    assert not is_transient(SchemaRegistryError(404, 40403, "Schema not found"))
    assert is_transient(SchemaRegistryError(-1, -1, "no answer"))


class Registry:
    """The registry client's ``get_schema`` as the codec sees it: answers scripted per call."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def get_schema(self, schema_id):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def framed(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + b"\x02\x02"


def test_a_registry_outage_raises_from_prefetch_and_a_404_is_asked_once():
    import httpx

    registry = Registry(httpx.ConnectError("connection refused"), SchemaRegistryError(404, 40403, "Schema not found"))
    codec = Codec(registry=registry)
    with pytest.raises(httpx.ConnectError) as raised:
        codec.prefetch([framed(7)])
    assert is_transient(raised.value)
    codec.prefetch([framed(7), framed(7)])  # 404: remembered, not raised
    assert registry.calls == 2
    with pytest.raises(CodecError, match="not in the schema registry"):
        codec.decode(framed(7))
    codec.prefetch([framed(7)])
    assert registry.calls == 2, "an id the registry does not know is not asked for again"


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_a_storage_fault_holds_the_batch_unless_the_deadline_passed_with_on_outage_deadletter():
    fault = OSError(errno.EIO, "NFS server not responding")
    with pytest.raises(OSError):
        record_fault(fault, 3, "reading the original")
    assert record_fault(FileNotFoundError("gone"), 1, "reading").__class__ is FileNotFoundError

    async def sleep(_):
        pass

    async def attempt(seen):
        try:
            return record_fault(fault, 3, "reading the original")
        except OSError:
            seen.append("raised")
            raise

    for on_outage, expected in (("wait", None), ("deadletter", ErrorCode.FETCH_FAILED)):
        seen: list[str] = []
        policy = RetryPolicy(base_s=0.001, max_s=0.001, deadline_s=0.0, on_outage=on_outage)
        if on_outage == "wait":
            calls = {"n": 0}

            async def flaky():
                calls["n"] += 1
                if calls["n"] < 4:
                    return await attempt(seen)
                return "storage back"

            assert run(policy.call(flaky, what="t", sleep=sleep)) == "storage back"
            assert seen == ["raised"] * 3
        else:
            got = run(policy.call(attempt, seen, what="t", sleep=sleep))
            assert got.code == expected and seen == ["raised"]


class Ctx:
    """The runner's view of the broker: ``produce`` returns the delivery report's future."""

    def __init__(self, fail: set[int]):
        self.fail = fail
        self.sent: list[str] = []

    async def produce(self, topic, image_id, record_name, record):
        fut = asyncio.get_running_loop().create_future()
        n = len(self.sent)
        self.sent.append(image_id)
        if n in self.fail:
            from aiokafka.errors import KafkaTimeoutError

            fut.set_exception(KafkaTimeoutError())
        else:
            fut.set_result(None)
        return fut


def test_a_failed_delivery_is_retried_alone():
    runner = Runner.__new__(Runner)
    runner.ctx = Ctx(fail={1})

    class Metric:
        def labels(self, *_):
            return self

        def inc(self, *_):
            pass

    runner.metrics = type("M", (), {"delivery_failures": Metric()})()
    runner.stage = type("S", (), {"name": "join"})()
    outputs = [Output("images.analyzed", f"img{i}", "ImageAnalyzed", {}) for i in range(3)]
    policy = RetryPolicy(base_s=0.001, max_s=0.001, deadline_s=5)
    run(policy.call(runner.publish, outputs, what="delivery"))
    assert runner.ctx.sent == ["img0", "img1", "img2", "img1"], "only the record that failed is sent again"
    assert outputs == []


def test_each_consumer_group_keeps_its_own_local_state(tmp_path):
    from lensflow.streams.app import faust_datadir
    from lensflow.streams.settings import Settings

    s = Settings(data_dir=tmp_path)
    a, b = faust_datadir(s, "lensflow"), faust_datadir(s, "lensflow-sink")
    assert a != b and a.parent == b.parent == tmp_path.resolve() / "faust"
    with pytest.raises(ValueError):
        faust_datadir(s, "../x")
