"""The one stage runner: the batch loop and the delivery contract that every stage runs on
(preprocess, the pixel stages, describe, the join).

A stage declares what it reads and three steps; the runner does the rest:

    class MyStage(Stage):
        name = "mystage"; reads = ("images.prepared",); expects = "ImagePrepared"
        def load(self): ...                                 # optional: models, once, before consuming
        async def process(self, items) -> list[Outcome]: ... # one Outcome (outputs + verdict) per item
        def failed(self, item, verdict) -> list[Output]: ... # the failed result(s) an item publishes
        async def delivered(self, items, outcomes): ...      # optional: after every output is on the broker

The contract the runner owns:

* **Decode** every record with lensflow's codec inside try/except: garbage bytes, an unknown schema
  fingerprint or id, or a key that does not match the record's image id is a *poison* record: it goes
  to ``images.deadletter`` (code ``poison``) and the batch goes on. A schema registry that cannot be
  reached (or refuses our credentials) is an outage, not poison: the batch is retried un-acked. The
  registry is asked off the event loop, once per unknown schema id per batch.
* **Process** the batch once. A *transient* fault escaping ``process`` (a store or the broker down)
  retries the whole batch under the ``RetryPolicy`` (capped exponential backoff with jitter, bounded
  by ``retry_deadline_s``; past it the worker waits un-acked and reports not ready, or exits 75).
  Any other exception fails each item of the batch with its code (``internal`` for a bug) and
  dead-letters it with the whole original record: a bug never stops a partition.
* **Publish, then ack.** Every output of the batch (results, failed results, dead letters) is
  produced and its *delivery report awaited* before the batch body returns, because Faust's
  ``take()`` acks a batch as soon as its body returns (or raises), and commits acked offsets.
  Only then does ``delivered`` run (the join deletes its table state there). A failed delivery is
  transient: the outputs not yet acknowledged are produced again (only those: one failed record
  does not repeat the batch's other events). ``delivered`` is retried too, so it must be idempotent.
* **Stopping mid-batch.** When Faust cancels the agent (shutdown), ``take()`` would ack the batch
  in hand: the runner finishes the batch first (``STOP_GRACE_S``), and if it cannot, exits the
  process before the ack can be committed (the batch is redelivered to the next owner).
* **Metrics**: batch time and size, per-stage images by status (``lensflow_images_total``),
  dead letters by stage and code, failed deliveries.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from faust.streams import _current_event

from .avro_types import AvroRecord, DeadLetter, DeadLetterInput
from .errors import EXIT_BUG, ErrorCode, RetryPolicy, StageFailure, Verdict, classify, fatal, is_transient
from .records import now
from .topology import DEADLETTER, TOPICS

#: Seconds a stopping agent may take to finish (deliver) the batch in hand before the process exits.
STOP_GRACE_S = 30.0


@dataclass
class Output:
    """One record to produce: ``record`` (the generated type of the Avro record ``record_name``, see
    ``avro_types.py``) on ``topic`` (a topology name), keyed by ``image_id``."""

    topic: str
    image_id: str
    record_name: str
    record: AvroRecord


@dataclass
class Item:
    """One decoded input record of a batch."""

    event: Any
    record_name: str  # short Avro record name, e.g. "ImagePrepared"
    record: dict  # as decoded (fastavro's dict)

    @property
    def image_id(self) -> str:
        return self.record["image_id"]


@dataclass
class Outcome:
    """What a stage made of one item: the records to publish, and when the item failed in a way
    that must be dead-lettered, the verdict (with attempts and the other records it held)."""

    outputs: list[Output] = field(default_factory=list)
    dead_letter: Verdict | None = None
    attempts: int = 1
    first_failed_at: datetime | None = None
    inputs: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # (topic, key, value) held for it


class Stage:
    """Base of every stage. Subclasses set the class attributes and implement ``process``/``failed``."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    expects: ClassVar[str | None] = None  # record name every input must be; None: any record of the topics

    def __init__(self, ctx):
        self.ctx = ctx
        self.settings = ctx.settings
        self.log = ctx.log.bind(stage=self.name)

    # --- what a stage declares ------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def within_s(self) -> float:
        return self.settings.batch_within_s

    def load(self) -> None:
        """Load and warm up models (runs once in a thread before the agent consumes). An exception
        here is the stage's to handle: ``start`` records it and the stage fails items with it."""

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.load)

    async def process(self, items: list[Item]) -> list[Outcome]:
        raise NotImplementedError

    def failed(self, item: Item, verdict: Verdict) -> list[Output]:
        """The failed result(s) ``item`` publishes when processing it raised."""
        return []

    async def delivered(self, items: list[Item], outcomes: list[Outcome]) -> None:
        """Runs after every output of the batch is acknowledged by the broker, before the ack."""


class Runner:
    """Runs one ``Stage`` as a Faust agent under the delivery contract (see the module docstring)."""

    def __init__(self, ctx, stage: Stage):
        self.ctx = ctx
        self.stage = stage
        self.policy = RetryPolicy.from_settings(ctx.settings)
        self.started = asyncio.Event()
        self.outage = False
        self.metrics = ctx.metrics
        self.log = ctx.log.bind(stage=stage.name)

    def register(self) -> None:
        ctx, stage = self.ctx, self.stage
        ctx.ready_checks.append((f"{stage.name}_started", self.started.is_set))
        ctx.ready_checks.append((f"{stage.name}_no_outage", lambda: not self.outage))

        @ctx.app.task
        async def start() -> None:
            try:
                await stage.start()
            except Exception as exc:  # the stage decides what a failed start means; never crash the worker here
                self.log.error("stage_start_failed", error=f"{type(exc).__name__}: {exc}")
            self.started.set()

        @ctx.app.agent(ctx.topic(*stage.reads), name=stage.name)
        async def agent(stream):
            await self.started.wait()
            if ctx.stores.wanted:
                await ctx.stores.ready.wait()
            async for events in stream.take_events(stage.batch_size, within=stage.within_s):
                with self.metrics.batch(stage.name, len(events)):
                    await self._guarded(events)

        self.agent = agent

    async def _guarded(self, events: list) -> None:
        """Run one batch to its end (outputs delivered) before take() may ack it."""
        task = asyncio.ensure_future(self.run_batch(events))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # Faust is stopping this agent, and take() acks the batch as soon as we return: finish it first
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_S)
            except BaseException as exc:
                fatal(f"{self.stage.name}: stopped before the batch in hand was delivered (it will be redelivered)",
                      exc if isinstance(exc, Exception) else None, code=EXIT_BUG)
            raise
        except BaseException as exc:  # a bug in the runner itself: exit rather than ack what was not delivered
            fatal(f"{self.stage.name}: batch failed", exc if isinstance(exc, Exception) else None, code=EXIT_BUG)

    # --- one batch --------------------------------------------------------------------------------
    def decode(self, event) -> Item:
        msg = event.message
        try:
            name, rec = self.ctx.codec.decode(msg.value or b"", expect=self.stage.expects)
        except Exception as exc:
            if is_transient(exc):
                raise  # the schema registry is down or refuses us: an outage, not a poison record
            raise StageFailure(ErrorCode.POISON, f"undecodable record: {type(exc).__name__}: {exc}") from None
        key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
        if "image_id" in rec and key != rec["image_id"]:
            raise StageFailure(ErrorCode.POISON, f"record key {key!r} does not match image_id {rec['image_id']!r}")
        return Item(event, name.rsplit(".", 1)[-1], rec)

    async def _decode_all(self, events: list) -> tuple[list[Item], list[Output]]:
        """The batch's records decoded, and a dead letter for each poison record. The writer schemas of
        Confluent-framed records are fetched from the registry first, off the event loop; a registry
        that is down raises (transient: the caller retries the batch, un-acked) instead of turning
        every record whose schema id is not cached yet into poison."""
        await asyncio.get_running_loop().run_in_executor(
            None, self.ctx.codec.prefetch, [e.message.value for e in events])
        items: list[Item] = []
        poison: list[Output] = []
        for event in events:
            try:
                items.append(self.decode(event))
            except StageFailure as exc:
                poison.append(self.dead_letter(event, classify(exc)))
        return items, poison

    async def run_batch(self, events: list) -> None:
        items, poison = await self.policy.call(self._decode_all, events, what=f"{self.stage.name} decode",
                                               on_wait=self._on_outage)
        outcomes = await self.policy.call(self._process, items, what=f"{self.stage.name} batch",
                                          on_wait=self._on_outage) if items else []
        outputs = poison + [o for oc in outcomes for o in oc.outputs]
        for item, oc in zip(items, outcomes):
            if oc.dead_letter is not None:
                outputs.append(self.dead_letter(item.event, oc.dead_letter, oc.attempts, item, oc.first_failed_at, oc.inputs))
        if outputs:
            # publish() drops what the broker acknowledged from ``outputs``: a retry sends only the rest, so
            # one failed delivery does not repeat the batch's other events (images.analyzed among them)
            await self.policy.call(self.publish, outputs, what=f"{self.stage.name} delivery", on_wait=self._on_outage)
        if items:
            await self.policy.call(self.stage.delivered, items, outcomes, what=f"{self.stage.name} after delivery",
                                   on_wait=self._on_outage)

    async def _process(self, items: list[Item]) -> list[Outcome]:
        try:
            outcomes = await self.stage.process(items)
            assert len(outcomes) == len(items), f"{self.stage.name}.process returned {len(outcomes)} outcomes for {len(items)} items"
            return outcomes
        except Exception as exc:
            verdict = classify(exc)
            if verdict.retryable:
                raise  # the policy retries the whole batch
            self.log.error("batch_failed", code=verdict.code, error=verdict.message)
            return [self.failure(item, verdict) for item in items]

    def failure(self, item: Item, verdict: Verdict, attempts: int = 1) -> Outcome:
        """The outcome of an item that failed with ``verdict``: its failed result(s) and, when the code
        says so, a dead letter."""
        self.log.warning("image_failed", image_id=item.record.get("image_id"), code=verdict.code, reason=verdict.message)
        return Outcome(self.stage.failed(item, verdict), verdict if verdict.dead_letter else None, attempts)

    def _on_outage(self, waiting: bool) -> None:
        self.outage = waiting
        self.log.error("outage" if waiting else "outage_over")

    async def publish(self, outputs: list[Output]) -> None:
        """Produce every output and wait for the broker to acknowledge each one. Outputs the broker
        acknowledged are removed from ``outputs`` (in place), so that when this raises, a retry with
        the same list sends only the ones still undelivered."""
        futures: list[Any] = []
        for o in outputs:
            try:  # encoding can fail alone (the registry down while a schema is registered): keep going
                futures.append(await self.ctx.produce(o.topic, o.image_id, o.record_name, o.record))
            except Exception as exc:
                futures.append(exc)
        results = await asyncio.gather(*(f for f in futures if not isinstance(f, BaseException)), return_exceptions=True)
        it = iter(results)
        results = [f if isinstance(f, BaseException) else next(it) for f in futures]
        errors = [r for r in results if isinstance(r, BaseException)]
        outputs[:] = [o for o, r in zip(outputs, results) if isinstance(r, BaseException)]
        if errors:
            self.metrics.delivery_failures.labels(self.stage.name).inc(len(errors))
            raise errors[0]

    def dead_letter(self, event, verdict: Verdict, attempts: int = 1, item: Item | None = None,
                    first_failed_at: datetime | None = None, inputs=()) -> Output:
        msg = event.message
        rec = item.record if item is not None else {}
        image_id = rec.get("image_id") or (msg.key.decode("utf-8", "replace") if msg.key else None)
        record = DeadLetter(stage=self.stage.name, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                            key=msg.key, value=msg.value or b"", image_id=image_id, user_id=rec.get("user_id"),
                            run_id=rec.get("run_id"), record=f"lensflow.v1.{item.record_name}" if item else None,
                            error=verdict.as_error(attempts), failed_at=now(), first_failed_at=first_failed_at,
                            inputs=[DeadLetterInput(topic=t, key=k, value=v) for t, k, v in inputs])
        self.metrics.deadletters.labels(self.stage.name, verdict.code).inc()
        self.log.error("dead_letter", image_id=image_id, code=verdict.code, reason=verdict.message[:300],
                       topic=msg.topic, partition=msg.partition, offset=msg.offset)
        return Output(DEADLETTER, image_id or f"{msg.topic}/{msg.partition}/{msg.offset}", TOPICS[DEADLETTER].record, record)


def run(ctx, stage: Stage) -> Runner:
    """Register ``stage`` on the context's Faust app, under the runner."""
    runner = Runner(ctx, stage)
    stage.runner = runner
    runner.register()
    return runner


def use_event(event) -> None:
    """Make ``event`` Faust's *current event* for this task, so a table write inside a take() batch lands
    in that event's partition store (the rocksdb store picks its partition from the current event).

    Only the context variable is set. ``Stream._set_current_event`` would also overwrite the stream's
    ``current_event`` attribute, which take()'s background buffer-filler reads to record each new
    event: setting it from the batch body races with that filler and silently swaps events out of
    the batch (seen as lost records before this helper existed).
    """
    _current_event.set(weakref.ref(event))
