"""Secrets (pydantic SecretStr settings) are never printed by `lensflow config`."""

import json

import pytest
from typer.testing import CliRunner

from lensflow.cli import app
from lensflow.streams.settings import get_settings

QDRANT_KEY = "qdrant-key-5f3a9c1e7b"
API_TOKEN = "api-token-d41d8cd98f"


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("LENSFLOW_QDRANT_API_KEY", QDRANT_KEY)
    monkeypatch.setenv("LENSFLOW_API_TOKEN", API_TOKEN)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("args", [["config"], ["config", "--json"], ["config", "--markdown"]])
def test_config_never_prints_secrets(secret_env, args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert QDRANT_KEY not in result.output and API_TOKEN not in result.output
    assert QDRANT_KEY[:10] not in result.output and API_TOKEN[:10] not in result.output


def test_config_json_masks_set_secrets_and_shows_unset_ones_as_null(secret_env, monkeypatch):
    values = json.loads(CliRunner().invoke(app, ["config", "--json"]).output)
    assert values["qdrant_api_key"] == "***" and values["api_token"] == "***"
    monkeypatch.delenv("LENSFLOW_API_TOKEN")
    get_settings.cache_clear()
    values = json.loads(CliRunner().invoke(app, ["config", "--json"]).output)
    assert values["qdrant_api_key"] == "***" and values["api_token"] is None


def test_settings_keep_the_secret_values(secret_env):
    s = get_settings()
    assert s.qdrant_api_key.get_secret_value() == QDRANT_KEY
    assert QDRANT_KEY not in repr(s) and API_TOKEN not in str(s)
