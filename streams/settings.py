"""Every setting of lensflow, in one place, read from the environment with one prefix: ``LENSFLOW_``.

``LENSFLOW_KAFKA_BOOTSTRAP=broker:9092 lensflow worker`` overrides a default; a ``.env`` file in the
working directory is read too. List settings take JSON (``LENSFLOW_STAGES='["metadata"]'``) or a
comma-separated string. ``lensflow config`` prints the effective values. The README's table is
generated from the field descriptions below, so documentation and code cannot drift.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .topology import AVAILABLE_STAGES, DEFAULT_STAGES


def _split(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LENSFLOW_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path(".lensflow"), description="Local state: stack data and logs, uploads, Faust tables, Qdrant local storage. Relative paths resolve against the working directory.")
    cache_dir: Path = Field(Path("~/.cache/lensflow"), description="Downloads kept between runs (Kafka and Cassandra jars, converted models).")
    models_dir: Path | None = Field(None, description="Model files (and their SHA-256 manifest). Unset: `<cache_dir>/models`. The container image sets it to the files it built at image build time (`/opt/lensflow-models/models`), so a worker needs no preparation, no npm and no network at start; its manifest is still verified when a model loads.")
    storage_url: str | None = Field(None, description="fsspec URL where `submit` stores originals and preprocess writes derivatives. Default: file://DATA_DIR/storage.")
    storage_roots: CsvList = Field(default_factory=list, description="URL prefixes an upload may reference; anything else is refused. Default: [storage_url].")

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    schema_registry_url: str | None = Field(None, description="Confluent schema registry URL. When set, records are written in Confluent framing; otherwise Avro single-object encoding.")
    schema_registry_username: str | None = Field(None, description="Schema registry basic-auth user.")
    schema_registry_password: SecretStr | None = Field(None, description="Schema registry basic-auth password (secret: never printed or logged).")
    kafka_security_protocol: str = Field("PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$", description="How every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (the worker's aiokafka and the CLI's confluent-kafka alike).")
    kafka_sasl_mechanism: str | None = Field(None, pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$", description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default PLAIN).")
    kafka_sasl_username: str | None = Field(None, description="SASL user.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret: never printed or logged).")
    kafka_tls_cafile: str | None = Field(None, description="CA bundle (PEM) for Kafka TLS; unset: the system's CAs.")
    kafka_tls_certfile: str | None = Field(None, description="Client certificate (PEM) for Kafka mutual TLS.")
    kafka_tls_keyfile: str | None = Field(None, description="Client key (PEM) for Kafka mutual TLS.")
    kafka_tls_key_password: SecretStr | None = Field(None, description="Password of the Kafka client key (secret: never printed or logged).")
    topic_prefix: str = Field("", description="Prefix for every topic name (e.g. 'prod.').")
    partitions: int = Field(6, ge=1, description="Partitions of every topic the join reads (they must all be equal).")
    replication_factor: int = Field(1, ge=1, description="Replication factor of created topics and Faust changelogs.")
    app_id: str = Field("lensflow", description="Faust application id: the consumer group and changelog topic prefix.")
    group: str | None = Field(None, description="Stage group of this worker (`lensflow worker --group`): its consumer group is `<app_id>-<group>`. Unset: derived from the stages (`lensflow topology`); the whole pipeline uses `app_id` itself.")
    producer_linger_ms: float = Field(5.0, ge=0, description="How long the worker's producer waits to fill a batch before sending (Kafka's linger.ms; 5 is librdkafka's default and what `lensflow submit` uses, aiokafka's is 0): records produced within it share one request. Every agent awaits its records' delivery before committing, so this adds at most this much to each batch. Measured with every stage on: 4.00 against 3.92 images/s (medians of 3, within run-to-run noise; bench/RESULTS.md).")
    session_timeout_s: float = Field(60.0, ge=10, le=90, description="Kafka consumer session timeout, seconds: how long a dead worker keeps its partitions before its group rebalances them to the other members (10-90: heartbeats go every 3 s and requests time out after 90 s).")
    group_instance_id: str | None = Field(None, description="Kafka static group membership (`group.instance.id`): a worker restarted with the same id takes its partitions back at once instead of waiting out the dead member's session. Unique per worker, e.g. the pod name of a StatefulSet.")

    # --- stages --------------------------------------------------------------------------------
    stages: CsvList = Field(default_factory=lambda: list(DEFAULT_STAGES), description="Stages an image goes through unless its upload event names its own (default: every available stage; `metadata` alone is EXIF only).")
    join_timeout_s: float = Field(120.0, gt=0, description="Seconds the join waits for the expected stages before writing a 'partial' result.")
    join_tick_interval_s: float = Field(2.0, gt=0, description="How often the join looks for images past their deadline.")
    batch_size: int = Field(32, ge=1, description="Max records per agent batch (stream.take_events).")
    batch_within_s: float = Field(0.05, gt=0, description="Max seconds an agent waits to fill a batch.")
    preprocess_threads: int = Field(0, ge=0, description="Threads decoding images inside a preprocess batch (0 = number of CPUs + 1: the extra thread keeps the cores busy while another holds the GIL).")

    # --- models ----------------------------------------------------------------------------------
    model_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads per model (1: two single-threaded workers beat one two-threaded one on small machines).")
    text_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads of the text stage alone (the other models take `model_threads`). Since OCR detects only around its gate's boxes, a second thread costs more CPU than it saves time on 2 cores: 1 thread 5.27/5.46 images/s, 2 threads 5.25/4.92 (bench/RESULTS.md); 2 can help a node with spare cores.")
    text_instances: int = Field(2, ge=1, description="OCR model instances in a worker, each in its own thread, splitting each batch of the text stage: OCR is the slowest model and finished each burst alone on one core; two let it use both. Paired runs on 2 cores: 4.99/5.26/5.59/5.42 images/s against 4.59/4.98/5.21/5.17 with one, for ~230 MB more RSS (bench/RESULTS.md).")
    malloc_arenas: int = Field(2, ge=0, description="glibc malloc arenas of a worker process (`mallopt(M_ARENA_MAX)`, set before its threads start; 0 keeps glibc's default of 8 per core; an environment with MALLOC_ARENA_MAX keeps that): per-thread arenas held freed memory, 1866 against 1671 MiB RSS with every stage on and 264 images (bench/RESULTS.md).")
    model_gpu: bool = Field(True, description="Use the CUDA execution provider when ONNX Runtime has it.")
    model_batch_size: int = Field(8, ge=1, description="Max images per model-stage batch: each holds its decoded images in memory (the models gain nothing from bigger batches on CPU).")
    text_det_max_side: int = Field(736, ge=320, description="OCR detection input, long side in pixels (960 reads smaller text, at ~1.7x the cost).")
    ocr_languages: CsvList = Field(default_factory=lambda: ["en", "fr", "de", "es", "pt", "it", "pl", "cs", "ru", "zh", "ja"], description="Languages (ISO 639-1) the text stage reads: Latin-script ones are always read (PP-OCRv6 has their accents); `zh`/`ja`/`ko` keep CJK characters (dropped otherwise as texture misread), `ru` reads Cyrillic lines with Tesseract (needs the `tesseract-rus` model file). The detected language goes to the result's `language`.")
    faces_detect_max_side: int = Field(640, ge=256, description="Face detection input, long side in pixels (dlib HOG, upsample 1): 800 finds smaller faces at ~1.5x the cost.")
    objects_min_score: float = Field(0.30, gt=0, lt=1, description="Detections scoring below this are dropped (objects stage).")
    objects_nms_iou: float = Field(0.5, gt=0, lt=1, description="Per-class non-maximum suppression IoU (objects stage).")
    captioner: str = Field("grounded", description="Captioner of the describe stage: 'grounded' (composed from the other stages' results) or 'onnx:/path/to/dir' (a generative image-to-text model exported to ONNX, see agents/captioner.py).")
    face_match_threshold: float = Field(0.6, gt=0, description="Face descriptor distance under which two faces are the same person. Unset: the faces model's own (yunet-sface 1.128, dlib 0.6); set, it overrides it.")
    faces_model: str = Field("yunet-sface", pattern="^(yunet-sface|dlib)$", description="Faces stage model (and enrolment's): 'yunet-sface' (YuNet detector + SFace descriptor on ONNX Runtime, `models prepare yunet-sface`) or 'dlib' (HOG + ResNet, `models prepare dlib-faces`). Each has its own match threshold (yunet-sface 1.128 = cosine 0.363, dlib 0.6; LENSFLOW_FACE_MATCH_THRESHOLD, when set, overrides it). Faces are only ever compared with faces of the same model: after a change, `lensflow reanalyze --stage faces` re-clusters.")
    prepare_models: bool = Field(True, description="`lensflow worker` prepares the missing model files of the stages it runs before it starts (progress on stderr; the same as `lensflow models prepare NAME…`, idempotent, under a second when every file is there). A model that cannot be prepared is reported with the command that fixes it, and its stages report `model_unavailable` while the others run.")
    near_duplicate_threshold: float = Field(0.85, gt=0, le=1, description="Cosine similarity of two of a user's images' visual vectors at or above which the later one is flagged a near-duplicate (`images.near_duplicates`, tag `near-duplicate`). Exact duplicates (same original bytes) are flagged `duplicate` (`images.duplicate_of`) whatever this is. On the samples (bench/RESULTS.md) distinct photos reach 0.66, copies resized to 60 % at JPEG q70 0.81–0.999 (median 0.92), 90 % crops 0.90–0.98, +20 % brightness 0.975–0.997.")
    safety_threshold: float = Field(0.5, ge=0, le=1, description="NSFW probability (open_nsfw, 0-1) at or above which an image is unsafe: tagged `safety:nsfw` and left out of `search --safe`, applied at search time to the stored score. Yahoo's guidance: < 0.2 very likely safe, > 0.8 very likely NSFW.")

    # --- image limits and normalisation --------------------------------------------------------
    max_bytes: int = Field(50 * 1024 * 1024, gt=0, description="Largest accepted original, in bytes.")
    max_pixels: int = Field(100_000_000, gt=0, description="Largest accepted pixel count (decompression-bomb guard).")
    max_side: int = Field(1600, ge=64, description="Long side of the normalised derivative, pixels.")
    jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality of derivatives.")
    formats: CsvList = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "HEIF", "AVIF"], description="Accepted formats (sniffed from magic bytes). HEIF/AVIF need their Pillow plugin installed.")
    fetch_retries: int = Field(3, ge=1, description="Attempts to read an original or a derivative on transient storage errors, in place, before the whole batch is retried as an outage (see `on_outage`).")
    decode_memory_mb: int = Field(1024, ge=64, description="Memory budget, in MiB, for images being decoded at once by one worker. Each decode is admitted against an estimate made from the header before decoding; one that can never fit fails with `over_memory_budget`.")
    max_frames: int = Field(10_000, ge=1, description="Most pages or frames an original may have (multi-page TIFF, animated GIF, APNG, WebP): they are counted from the file's structure, never past this + 1, before any decode; more fail with `too_many_frames`. Only the first frame is analysed.")
    decode_timeout_s: float = Field(30.0, gt=0, description="Wall-clock limit of one decode (preprocess's open, decode, resize and encode of an original; a model stage's decode of a derivative), waiting for the decode budget included: past it the image fails with `decode_timeout` and the batch goes on. Python cannot stop a decode running in C, so it finishes in the background and holds its part of `decode_memory_mb` until then.")
    per_user_storage: bool = Field(True, description="An upload's URI must lie under `<root>/uploads/<user_id>/` of a storage root (one user cannot point lensflow at another's files). Turn off only when producers lay storage out their own way and are trusted.")
    storage_allow_private_redirects: bool = Field(False, description="http(s) storage: follow redirects to loopback, link-local or private addresses (refused by default: an open redirect must not reach internal services).")

    # --- stores --------------------------------------------------------------------------------
    cassandra_hosts: CsvList = Field(default_factory=lambda: ["127.0.0.1"], description="Cassandra contact points.")
    cassandra_port: int = Field(9042, description="Cassandra CQL port.")
    cassandra_keyspace: str = Field("lensflow", description="Cassandra keyspace.")
    cassandra_replication: int = Field(1, ge=1, description="Replication factor of the keyspace created by `stack up` / `lensflow init` (SimpleStrategy).")
    cassandra_replication_strategy: dict[str, Any] | None = Field(None, description="The keyspace's replication map as JSON, used instead of `cassandra_replication`, e.g. `{\"class\": \"NetworkTopologyStrategy\", \"dc1\": 3}`.")
    cassandra_username: str | None = Field(None, description="Cassandra user (PasswordAuthenticator).")
    cassandra_password: SecretStr | None = Field(None, description="Cassandra password (secret: never printed or logged).")
    cassandra_tls: bool = Field(False, description="Connect to Cassandra with TLS.")
    cassandra_tls_cafile: str | None = Field(None, description="CA bundle (PEM) for Cassandra TLS; unset: the system's CAs.")
    cassandra_tls_certfile: str | None = Field(None, description="Client certificate (PEM) for Cassandra mutual TLS.")
    cassandra_tls_keyfile: str | None = Field(None, description="Client key (PEM) for Cassandra mutual TLS.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL. Unset: qdrant-client local mode in DATA_DIR/qdrant (owned by the worker that runs the join).")
    qdrant_api_key: SecretStr | None = Field(None, description="Qdrant API key, for a server (secret: never printed or logged).")

    # --- error policy (streams/errors.py) ------------------------------------------------------
    retry_base_s: float = Field(0.2, gt=0, description="First backoff of a transient fault (store, broker, storage); doubles each attempt, with full jitter.")
    retry_max_s: float = Field(10.0, gt=0, description="Longest single backoff between two attempts.")
    retry_deadline_s: float = Field(300.0, gt=0, description="How long a stage retries a transient fault of a whole batch (a store, the broker, the schema registry or storage down, or refusing everyone) before `on_outage` applies; nothing is acked meanwhile.")
    on_outage: str = Field("wait", pattern="^(wait|exit|deadletter)$", description="Past `retry_deadline_s`: `wait` keeps retrying at `retry_max_s` with the batch un-acked (the worker reports not ready); `exit` stops the worker with exit code 75 (EX_TEMPFAIL) so an orchestrator restarts it; `deadletter` fails the images whose original or derivative cannot be read with `fetch_failed` and dead-letters them (replayable), while a store, broker or registry fault still waits. Nothing is acked while waiting.")

    # --- local stack ---------------------------------------------------------------------------
    stack_dir: Path | None = Field(None, description="Data and logs of the local Kafka + Cassandra. Default: DATA_DIR/stack.")
    stack_timeout_s: int = Field(300, gt=0, description="Seconds `stack up` waits for Kafka and Cassandra to answer.")

    # --- worker --------------------------------------------------------------------------------
    web_host: str = Field("127.0.0.1", description="Address of the worker's HTTP endpoint (/metrics, /healthz, /readyz).")
    web_port: int = Field(6066, description="Port of the worker's HTTP endpoint.")
    # --- the read service (`lensflow api`, docs/api.md) ------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the read service (`lensflow api`, or the worker that owns Qdrant local mode) listens on.")
    api_port: int = Field(8080, ge=1, le=65535, description="Port of the read service.")
    api_in_worker: bool | None = Field(None, description="Serve the read service inside the worker that owns the stores, on a thread and event loop of its own. Unset: yes when Qdrant runs in local mode (it admits one process) and this worker opens it; no with a Qdrant server, where `lensflow api` runs on its own.")
    api_jwt_secret: SecretStr | None = Field(None, description="HS256 secret the read service verifies bearer tokens (JWTs) with, and `lensflow token issue` signs them with. Unset and no `api_jwks_url`: a secret is generated on first use into DATA_DIR/api/jwt-secret (secret: never printed or logged).")
    api_jwks_url: str | None = Field(None, description="An OIDC issuer's JWKS URL: verify bearer tokens (RS256/ES256) with its keys instead of a shared secret.")
    api_audience: str | None = Field(None, description="The `aud` a bearer token must carry (required with `api_jwks_url`).")
    api_issuer: str | None = Field(None, description="The `iss` a bearer token must carry, when set.")
    api_user_concurrency: int = Field(8, ge=1, description="Requests one user may have in flight at once on one API process (more answer 429).")
    api_user_rate: float = Field(20.0, gt=0, description="Requests a second one user may make on one API process, with bursts of twice that (more answer 429 with Retry-After).")
    api_sse_per_user: int = Field(4, ge=1, description="Open `/v1/events` streams one user may hold on one API process.")
    api_dev_user: str = Field("demo", description="The user of the gallery's one-click development login (offered only on a loopback address with the locally generated secret).")
    api_url: str | None = Field(None, description="Where the CLI reaches the read service. Unset: http://API_HOST:API_PORT (127.0.0.1 when API_HOST is 0.0.0.0).")
    api_token: SecretStr | None = Field(None, description="A bearer token (JWT) the CLI sends to the read service. Unset: the CLI mints a short-lived one for `--user` from the HS256 secret (secret: never printed or logged).")
    min_insync_replicas: int = Field(1, ge=1, description="`min.insync.replicas` of the topics lensflow creates (with producers using acks=all and idempotence, a write is acknowledged by this many replicas).")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_json: bool = Field(True, description="JSON logs (one object a line) instead of console-formatted ones.")

    @field_validator("storage_roots", "stages", "formats", "cassandra_hosts", "ocr_languages", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _split(v)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in AVAILABLE_STAGES]
        if unknown:
            raise ValueError(f"unknown or unavailable stage(s) {unknown}; available: {list(AVAILABLE_STAGES)}")
        return v

    @field_validator("formats")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [x.upper() for x in v]

    @field_validator("api_token", "api_jwt_secret")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        """Without surrounding whitespace (a token file's trailing newline is not part of it); blank is unset."""
        token = v.get_secret_value().strip() if v is not None else ""
        return SecretStr(token) if token else None

    # derived values -----------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir)).resolve()

    @property
    def cache_path(self) -> Path:
        return Path(os.path.expanduser(self.cache_dir)).resolve()

    @property
    def models_path(self) -> Path:
        """Where the model files are: ``models_dir``, else ``<cache_dir>/models``."""
        return Path(os.path.expanduser(self.models_dir)).resolve() if self.models_dir else self.cache_path / "models"

    @property
    def storage(self) -> str:
        return (self.storage_url or (self.data_path / "storage").as_uri()).rstrip("/")

    @property
    def roots(self) -> list[str]:
        return [r.rstrip("/") for r in (self.storage_roots or [self.storage])]

    @property
    def stack_path(self) -> Path:
        return Path(os.path.expanduser(self.stack_dir)).resolve() if self.stack_dir else self.data_path / "stack"

    @property
    def qdrant_path(self) -> Path:
        return self.data_path / "qdrant"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
