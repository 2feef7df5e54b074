"""One Kafka connection config, spelled for each client library metacart uses.

``KafkaSettings`` says how to reach the cluster (protocol, SASL mechanism and credentials, TLS files,
hostname verification). This module is the only place that turns it into client settings:

- ``librdkafka_config``: confluent-kafka producers, consumers and admin clients (simulator, CLI,
  benchmarks, the worker's output producer and policy watcher), plus ``client_properties`` passed
  through verbatim;
- ``faust_options``: the Faust app's ``broker_credentials`` (aiokafka), with an ``ssl.SSLContext``
  built from the same files.

Both verify the broker certificate against ``ssl_ca_file`` (the system store when unset) and its host
name unless ``ssl_check_hostname`` is false.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import faust

from streams.settings import KafkaSettings

# librdkafka properties a pass-through may not override: they would bypass the settings above.
_OWNED = ("bootstrap.servers", "security.protocol", "sasl.", "ssl.")


def librdkafka_config(kafka: KafkaSettings) -> dict[str, object]:
    """Connection properties common to every confluent-kafka client."""
    clashes = sorted(k for k in kafka.client_properties if k.startswith(_OWNED))
    if clashes:
        raise ValueError(f"client_properties may not set {', '.join(clashes)}: use the matching "
                         "METACART_KAFKA__* setting")
    config: dict[str, object] = {"bootstrap.servers": kafka.bootstrap,
                                 "security.protocol": kafka.security_protocol.lower()}
    if kafka.security_protocol.startswith("SASL"):
        config.update({"sasl.mechanism": kafka.sasl_mechanism, "sasl.username": kafka.sasl_username,
                       "sasl.password": kafka.password()})
    if kafka.tls:
        config["ssl.endpoint.identification.algorithm"] = "https" if kafka.ssl_check_hostname else "none"
        if kafka.ssl_ca_file is not None:
            config["ssl.ca.location"] = str(_readable(kafka.ssl_ca_file, "ssl_ca_file"))
        if kafka.ssl_cert_file is not None and kafka.ssl_key_file is not None:
            config["ssl.certificate.location"] = str(_readable(kafka.ssl_cert_file, "ssl_cert_file"))
            config["ssl.key.location"] = str(_readable(kafka.ssl_key_file, "ssl_key_file"))
            if kafka.ssl_key_password.get_secret_value():
                config["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    return config | dict(kafka.client_properties)


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2+, the broker certificate verified (and its host name, by default)."""
    cafile = str(_readable(kafka.ssl_ca_file, "ssl_ca_file")) if kafka.ssl_ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_cert_file is not None and kafka.ssl_key_file is not None:
        context.load_cert_chain(str(_readable(kafka.ssl_cert_file, "ssl_cert_file")),
                                str(_readable(kafka.ssl_key_file, "ssl_key_file")),
                                password=kafka.ssl_key_password.get_secret_value() or None)
    return context


def faust_options(kafka: KafkaSettings) -> dict[str, object]:
    """``faust.App`` keyword arguments that make its aiokafka clients connect like the others."""
    context = ssl_context(kafka) if kafka.tls else None
    if kafka.security_protocol.startswith("SASL"):
        credentials: faust.auth.Credentials = faust.SASLCredentials(
            username=kafka.sasl_username, password=kafka.password(), ssl_context=context,
            mechanism=kafka.sasl_mechanism)
        return {"broker_credentials": credentials}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def _readable(path: Path, what: str) -> Path:
    if not Path(path).is_file():
        raise ValueError(f"{what} {path} is not a readable file")
    return Path(path)
