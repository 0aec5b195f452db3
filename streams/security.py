"""Credentials and TLS for every client lensflow opens, built from settings in one place:

* Kafka: the worker (Faust → aiokafka: ``faust_credentials``) and the CLI, the admin client and the
  benchmarks (confluent-kafka: ``confluent_conf``), from ``LENSFLOW_KAFKA_SECURITY_PROTOCOL``
  (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), ``…_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256,
  SCRAM-SHA-512), ``…_SASL_USERNAME``/``…_PASSWORD`` and ``…_TLS_CAFILE``/``CERTFILE``/``KEYFILE``;
* Cassandra: ``cassandra_options`` (a PlainTextAuthProvider for ``LENSFLOW_CASSANDRA_USERNAME``/
  ``…_PASSWORD``, an SSL context when ``LENSFLOW_CASSANDRA_TLS`` is on);
* the schema registry: ``registry_conf`` (``basic.auth.user.info``).

Secrets are ``SecretStr`` settings: they are unwrapped here, at the client, and nowhere else, so no
log line or ``lensflow config`` output can carry them.
"""

from __future__ import annotations

import ssl
from typing import Any


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def ssl_context(cafile: str | None, certfile: str | None = None, keyfile: str | None = None,
                key_password=None) -> ssl.SSLContext:
    """A client TLS context: system CAs plus ``cafile``; a client certificate when given."""
    ctx = ssl.create_default_context(cafile=cafile)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile, password=_secret(key_password))
    return ctx


def kafka_protocol(settings) -> str:
    return (settings.kafka_security_protocol or "PLAINTEXT").upper()


def faust_credentials(settings):
    """``broker_credentials`` for faust.App (None for PLAINTEXT)."""
    import faust  # lazy: ~1 s to import; the CLI's Kafka and registry clients use this module without Faust

    protocol = kafka_protocol(settings)
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl_context(settings.kafka_tls_cafile, settings.kafka_tls_certfile, settings.kafka_tls_keyfile,
                              settings.kafka_tls_key_password)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=_secret(settings.kafka_sasl_password),
                                 ssl_context=context, mechanism=settings.kafka_sasl_mechanism or "PLAIN")


def confluent_conf(settings) -> dict[str, Any]:
    """librdkafka security properties for confluent-kafka clients (empty for PLAINTEXT)."""
    protocol = kafka_protocol(settings)
    if protocol == "PLAINTEXT":
        return {}
    conf: dict[str, Any] = {"security.protocol": protocol}
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        conf.update({"sasl.mechanism": settings.kafka_sasl_mechanism or "PLAIN",
                     "sasl.username": settings.kafka_sasl_username or "",
                     "sasl.password": _secret(settings.kafka_sasl_password) or ""})
    if protocol in ("SSL", "SASL_SSL"):
        for key, value in (("ssl.ca.location", settings.kafka_tls_cafile),
                           ("ssl.certificate.location", settings.kafka_tls_certfile),
                           ("ssl.key.location", settings.kafka_tls_keyfile),
                           ("ssl.key.password", _secret(settings.kafka_tls_key_password))):
            if value:
                conf[key] = value
    return conf


def cassandra_options(settings) -> dict[str, Any]:
    """Keyword arguments for cassandra.cluster.Cluster: auth provider and TLS."""
    options: dict[str, Any] = {}
    if settings.cassandra_username:
        from cassandra.auth import PlainTextAuthProvider  # lazy: only with Cassandra credentials configured

        options["auth_provider"] = PlainTextAuthProvider(settings.cassandra_username,
                                                         _secret(settings.cassandra_password) or "")
    if settings.cassandra_tls:
        options["ssl_context"] = ssl_context(settings.cassandra_tls_cafile, settings.cassandra_tls_certfile,
                                             settings.cassandra_tls_keyfile)
    return options


#: Seconds one schema registry request may take. confluent-kafka's client passes ``timeout=None`` to
#: httpx (no limit) unless told: a registry frozen mid-answer then held the decode thread for ever.
REGISTRY_TIMEOUT_S = 10.0


def registry_conf(settings) -> dict[str, Any]:
    """Extra properties of the schema registry client: a request timeout, one in-client retry (the
    runner's error policy retries an unreachable registry under ``retry_deadline_s``), basic auth."""
    conf: dict[str, Any] = {"timeout": REGISTRY_TIMEOUT_S, "max.retries": 1}
    if settings.schema_registry_username:
        conf["basic.auth.user.info"] = f"{settings.schema_registry_username}:{_secret(settings.schema_registry_password) or ''}"
    return conf
