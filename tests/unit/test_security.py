"""Every security setting reaches its client: Kafka (Faust/aiokafka and confluent-kafka), Cassandra,
the schema registry; and no secret is printed by `lensflow config`."""

import json
import ssl

import faust
import pytest
from typer.testing import CliRunner

from lensflow.streams import security
from lensflow.streams.settings import Settings, get_settings
from lensflow.streams.store import replication_map


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_plaintext_kafka_adds_nothing():
    s = settings()
    assert security.confluent_conf(s) == {} and security.faust_credentials(s) is None


def test_sasl_ssl_reaches_both_kafka_clients():
    s = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="lf",
                 kafka_sasl_password="pw", kafka_tls_cafile=None)
    conf = security.confluent_conf(s)
    assert conf == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "lf",
                    "sasl.password": "pw"}
    creds = security.faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "lf" and creds.password == "pw" and creds.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(creds.ssl_context, ssl.SSLContext) and creds.protocol.value == "SASL_SSL"


def test_tls_only_kafka():
    s = settings(kafka_security_protocol="SSL", kafka_tls_cafile="/etc/ca.pem")
    assert security.confluent_conf(s) == {"security.protocol": "SSL", "ssl.ca.location": "/etc/ca.pem"}


def test_the_producer_and_admin_configs_carry_the_security_settings():
    from lensflow.streams.kafka import kafka_conf

    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p")
    conf = kafka_conf(s, **{"group.id": "g"})
    assert conf["security.protocol"] == "SASL_PLAINTEXT" and conf["sasl.mechanism"] == "PLAIN"
    assert conf["bootstrap.servers"] == s.kafka_bootstrap and conf["group.id"] == "g"


def test_cassandra_auth_and_tls():
    from cassandra.auth import PlainTextAuthProvider

    assert security.cassandra_options(settings()) == {}
    opts = security.cassandra_options(settings(cassandra_username="cu", cassandra_password="cp", cassandra_tls=True))
    assert isinstance(opts["auth_provider"], PlainTextAuthProvider)
    assert opts["auth_provider"].username == "cu" and opts["auth_provider"].password == "cp"
    assert isinstance(opts["ssl_context"], ssl.SSLContext)


def test_schema_registry_basic_auth():
    from lensflow.streams.codec import Codec

    assert "basic.auth.user.info" not in security.registry_conf(settings())
    s = settings(schema_registry_url="mock://x", schema_registry_username="ru", schema_registry_password="rp")
    assert Codec.for_settings(s).registry_conf["basic.auth.user.info"] == "ru:rp"


def test_schema_registry_requests_have_a_timeout():
    """confluent-kafka's client has no request timeout unless told (httpx timeout=None): a frozen
    registry would hold the decode for ever instead of raising an outage the runner retries."""
    conf = security.registry_conf(settings())
    assert 0 < conf["timeout"] <= 30


def test_keyspace_replication_strategy():
    assert replication_map(3) == "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    assert replication_map(1, {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 2}) == \
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
    with pytest.raises(ValueError):
        replication_map(1, {"class": "x'; DROP KEYSPACE y; --"})


def test_no_security_secret_is_printed(monkeypatch):
    from lensflow.cli import app

    secrets = {"LENSFLOW_KAFKA_SASL_PASSWORD": "kafka-secret-1", "LENSFLOW_KAFKA_TLS_KEY_PASSWORD": "key-secret-2",
               "LENSFLOW_CASSANDRA_PASSWORD": "cass-secret-3", "LENSFLOW_SCHEMA_REGISTRY_PASSWORD": "reg-secret-4"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        for args in (["config"], ["config", "--json"]):
            out = CliRunner().invoke(app, args).output
            assert not any(v in out for v in secrets.values()), args
        values = json.loads(CliRunner().invoke(app, ["config", "--json"]).output)
        assert values["cassandra_password"] == "***"
    finally:
        get_settings.cache_clear()
