"""One connection config for every client: settings validation, librdkafka and Faust spellings, round trip."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import faust
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from metacart.cli import app
from streams.connection import faust_options, librdkafka_config
from streams.settings import KafkaSettings, Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("METACART_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def pem(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("not parsed by librdkafka_config\n")
    return path


def secured(pem, **extra) -> KafkaSettings:
    return KafkaSettings(security_protocol="SASL_SSL", sasl_username="worker", sasl_password="s3cret",
                         ssl_ca_file=pem, **extra)


def test_sasl_ssl_scram_for_librdkafka(pem):
    config = librdkafka_config(secured(pem, client_properties={"socket.keepalive.enable": "true"}))
    assert config == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "worker", "sasl.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "https", "ssl.ca.location": str(pem),
        "socket.keepalive.enable": "true"}
    off = librdkafka_config(secured(pem, ssl_check_hostname=False))
    assert off["ssl.endpoint.identification.algorithm"] == "none"


def test_plaintext_is_plain():
    assert librdkafka_config(KafkaSettings()) == {"bootstrap.servers": "127.0.0.1:9092",
                                                  "security.protocol": "plaintext"}
    assert faust_options(KafkaSettings()) == {}


def test_password_from_file(tmp_path, pem):
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_username="w", sasl_password_file=secret,
                          ssl_ca_file=pem)
    assert librdkafka_config(kafka)["sasl.password"] == "from-a-file"
    secret.write_text("")
    with pytest.raises(ValueError, match="sasl_password_file .* is empty"):
        librdkafka_config(kafka)


def test_pass_through_may_not_override_security(pem):
    kafka = secured(pem, client_properties={"security.protocol": "plaintext", "sasl.username": "x"})
    with pytest.raises(ValueError, match="may not set sasl.username, security.protocol"):
        librdkafka_config(kafka)


def test_faust_gets_the_same_credentials_and_a_verifying_context():
    ca = Path(ssl.get_default_verify_paths().openssl_cafile)  # SSLContext needs a real PEM bundle
    options = faust_options(KafkaSettings(security_protocol="SASL_SSL", sasl_username="worker",
                                          sasl_password="s3cret", sasl_mechanism="SCRAM-SHA-256",
                                          ssl_ca_file=ca))
    creds = options["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == (
        "worker", "s3cret", "SCRAM-SHA-256", "SASL_SSL")
    assert creds.ssl_context.check_hostname and creds.ssl_context.verify_mode == ssl.CERT_REQUIRED
    tls_only = faust_options(KafkaSettings(security_protocol="SSL", ssl_ca_file=ca, ssl_check_hostname=False))
    assert isinstance(tls_only["broker_credentials"], faust.SSLCredentials)
    assert not tls_only["broker_credentials"].context.check_hostname


@pytest.mark.parametrize("fields, message", [
    ({"sasl_username": "u"}, "SECURITY_PROTOCOL=SASL_SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_password": "p"}, "needs sasl_username"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, "needs sasl_password"),
    ({"ssl_cert_file": "c.pem"}, "go together"),
    ({"replication_factor": 1, "min_insync_replicas": 2}, "exceeds replication_factor"),
])
def test_inconsistent_settings_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**fields)


def _fed_back(output: str) -> dict[str, str]:
    lines = [line for line in output.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_settings_output_round_trips_defaults(clean_env):
    out = CliRunner().invoke(app, ["settings"])
    assert out.exit_code == 0, out.output
    env = _fed_back(out.output)
    assert env["METACART_KAFKA__SASL_USERNAME"] == ""
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert Settings().model_dump() == Settings.model_construct().model_dump() == Settings(_env_file=None).model_dump()
    assert librdkafka_config(Settings().kafka)["security.protocol"] == "plaintext"  # no SASL user 'None'


def test_settings_output_round_trips_a_secured_config(clean_env, pem, tmp_path):
    given = {
        "METACART_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "METACART_KAFKA__SASL_USERNAME": "worker",
        "METACART_KAFKA__SASL_PASSWORD": "pa=ss word", "METACART_KAFKA__SSL_CA_FILE": str(pem),
        "METACART_KAFKA__CLIENT_PROPERTIES": '{"socket.keepalive.enable": "true"}',
        "METACART_KAFKA__SSL_CHECK_HOSTNAME": "false", "METACART_KAFKA__REPLICATION_FACTOR": "3",
        "METACART_KAFKA__MIN_INSYNC_REPLICAS": "2", "METACART_RETENTION__NEVER_CONTACT_PATH": str(tmp_path),
        "METACART_PRIVACY__PSEUDONYM_KEY": "k" * 40, "METACART_AGENTS": "ads",
    }
    for key, value in given.items():
        clean_env.setenv(key, value)
    before = Settings()
    hidden = CliRunner().invoke(app, ["settings"]).output
    assert "pa=ss word" not in hidden and "k" * 40 not in hidden
    assert "# METACART_KAFKA__SASL_PASSWORD is set (hidden" in hidden
    shown = CliRunner().invoke(app, ["settings", "--show-secrets"]).output
    for key in given:
        clean_env.delenv(key)
    for key, value in _fed_back(shown).items():
        clean_env.setenv(key, value)
    after = Settings()
    assert after.kafka.password() == "pa=ss word"
    assert after.model_dump(mode="json") == before.model_dump(mode="json")
    assert after.kafka.sasl_password == before.kafka.sasl_password
    assert after.privacy.pseudonym_key == before.privacy.pseudonym_key
