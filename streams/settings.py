"""One settings object per process, read from the environment (prefix ``METACART_``, nested with ``__``).

Example: ``METACART_KAFKA__BOOTSTRAP=127.0.0.1:9092 METACART_ADS__ATTRIBUTION_WINDOW_S=600``.
Built once in ``metacart.cli`` and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(BaseModel):
    """Where the cluster is and how every client (Faust/aiokafka, confluent-kafka) connects to it.

    ``streams.connection`` turns these into the settings of each client library; nothing else reads them.
    Secrets are ``SecretStr`` (never printed) and can instead be read from files (mounted secrets).
    """

    bootstrap: str = Field("127.0.0.1:9092", description="broker list, host:port[,host:port]")
    topic_prefix: str = Field("metacart", description="prefix of every topic name")
    segment_partitions: int = Field(8, ge=1, description="partitions of segment-keyed topics")
    user_partitions: int = Field(8, ge=1, description="partitions of user-keyed topics")
    replication_factor: int = Field(1, ge=1, description="replicas of every topic metacart creates")
    min_insync_replicas: int = Field(
        1, ge=1, description="min.insync.replicas of every topic metacart creates (<= replication_factor)")
    declare_topics: bool = Field(
        True, description="create missing topics (false where an administrator creates them)")
    session_timeout_s: float = Field(
        10.0, gt=0, description="a worker silent this long is considered dead and its partitions move")
    heartbeat_interval_s: float = Field(3.0, gt=0, description="consumer group heartbeat interval")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL")
    sasl_mechanism: SaslMechanism = Field("SCRAM-SHA-512", description="PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512")
    sasl_username: str = Field("", description="SASL user (SASL_* protocols only)")
    sasl_password: SecretStr = Field(SecretStr(""), description="SASL password")
    sasl_password_file: Path | None = Field(None, description="file holding the SASL password (instead of it)")
    ssl_ca_file: Path | None = Field(None, description="PEM CA bundle the broker certificate must chain to")
    ssl_cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_key_file: Path | None = Field(None, description="PEM private key of the client certificate")
    ssl_key_password: SecretStr = Field(SecretStr(""), description="password of the client key, if any")
    ssl_check_hostname: bool = Field(True, description="verify that the broker certificate names its host")
    client_properties: dict[str, str] = Field(
        default_factory=dict, description="extra librdkafka properties for confluent-kafka clients (JSON)")

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaSettings":
        sasl = self.security_protocol.startswith("SASL")
        if sasl and not self.sasl_username:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username "
                             "(METACART_KAFKA__SASL_USERNAME)")
        if sasl and not (self.sasl_password.get_secret_value() or self.sasl_password_file):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_password or "
                             "sasl_password_file (METACART_KAFKA__SASL_PASSWORD[_FILE])")
        if not sasl and self.sasl_username:
            raise ValueError(f"sasl_username is set but security_protocol is {self.security_protocol}: "
                             "set METACART_KAFKA__SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)")
        if self.sasl_password.get_secret_value() and self.sasl_password_file:
            raise ValueError("give sasl_password or sasl_password_file, not both")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together (mutual TLS)")
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas {self.min_insync_replicas} exceeds replication_factor "
                             f"{self.replication_factor}: no write could ever succeed")
        return self

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def password(self) -> str:
        """The SASL password, read from ``sasl_password_file`` when that is set."""
        if self.sasl_password_file is not None:
            return read_secret_file(self.sasl_password_file, "sasl_password_file")
        return self.sasl_password.get_secret_value()


def read_secret_file(path: Path, what: str) -> str:
    """A secret kept in a file (one line; surrounding whitespace dropped), with an error naming the setting."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{what} {path} is empty")
    return value


class StoreSettings(BaseModel):
    data_dir: Path = Field(Path("var/worker"), description="Faust data dir (RocksDB tables live here)")
    driver: Literal["rocksdict"] = Field("rocksdict", description="RocksDB binding, named explicitly")
    state_flush_interval_s: float = Field(
        0.5, ge=0.0, description="how often changed segment posteriors are written to the table")
    changelog_buffer_max: int = Field(
        5000, ge=100, description="table changes queued for the changelog before Faust pauses consuming")
    max_event_time_skew_s: float = Field(
        86400.0, gt=0, description="an event time further ahead than this of both its partition's watermark "
        "and the wall clock does not move the watermark: it is dead-lettered (event_time_skew)")


class FaustSettings(BaseModel):
    """How the Faust app reads, writes changelogs and commits (``streams.app``): what amortises its
    per-event cost. ``metacart bench stream`` measures each against the values before tuning."""

    max_poll_records: int | None = Field(
        None, ge=1, description="most records one consumer poll returns (unset: no limit, aiokafka's default)")
    max_fetch_size_bytes: int = Field(
        1024 ** 2, ge=64 * 1024, description="most bytes one fetch returns per partition")
    stream_buffer_maxsize: int = Field(
        16384, ge=1, description="events buffered per topic partition before Faust pauses fetching")
    commit_interval_s: float = Field(1.0, gt=0, description="how often acknowledged offsets are committed")
    commit_every: int = Field(5000, ge=1, description="commit after this many acknowledged events at the latest")
    producer_linger_s: float = Field(
        0.002, ge=0, description="how long Faust's producer (table changelogs) waits to fill a batch")
    producer_max_batch_bytes: int = Field(
        256 * 1024, ge=16 * 1024, le=900 * 1024,
        description="largest changelog batch per partition (below aiokafka's 1 MB request limit)")
    changelog_producer: Literal["librdkafka", "faust"] = Field(
        "librdkafka", description="who sends the tables' changelog writes: a librdkafka producer per table "
        "(its I/O off the event loop), or Faust's aiokafka producer (the design before session 8)")


class PolicySettings(BaseModel):
    artifact: Path = Field(Path("artifacts/ads-policy"), description="policy artifact directory")
    eps: float | None = Field(None, ge=0.0, le=1.0, description="uniform exploration mixed into Thompson "
                              "sampling; unset: what the artifact's training chose (meta.serving.eps)")
    n_draws: int = Field(64, ge=1, le=4096, description="Thompson draws per decision (propensity estimate)")
    scale: float | None = Field(None, ge=0.0, description="posterior variance multiplier for Thompson sampling "
                                "(0 = greedy); unset: what the artifact's training chose (meta.serving.scale)")
    forget: float = Field(1.0, gt=0.0, le=1.0, description="forgetting factor per update (1 = none)")
    on_swap: Literal["keep", "reset"] = Field("keep", description="posteriors on hot-swap: keep or reset")
    seed: int = Field(0, description="seed of the decision random stream")


class AdsSettings(BaseModel):
    attribution_window_s: float = Field(600.0, gt=0, description="event-time window for clicks/purchases")
    value_weight: float = Field(0.0, ge=0.0, description="reward = click + value_weight * purchase value")
    batch_max: int = Field(1024, ge=1, description="most requests decided in one kernel call")
    batch_within_s: float = Field(
        0.01, gt=0, description="longest wait for a message when none is queued; a batch is what the "
        "consumer holds, up to batch_max, taken without waiting (bench stream at saturation: batches of 786-826 "
        "requests, 79-83 µs CPU per decision, against 660-892 and 82-91 µs when every fetch waited this long "
        "to fill a batch; at 1,000/s request to decided_at p50 2.1-4.5 ms against 10.4-13.4 ms, but the "
        "decisions then wait for the commit in flight: end to end not faster, see README, Stream, session 6)")
    max_message_bytes: int = Field(64 * 1024, ge=1024, description="larger messages are dead-lettered")
    max_open_decisions: int = Field(
        1_000_000, ge=1, description="open attribution windows kept; beyond it the oldest close early")
    delivery: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once", description="exactly_once: decisions, dead letters and input offsets commit in one "
        "Kafka transaction (readers use isolation.level=read_committed); at_least_once: an idempotent producer")
    commit_interval_s: float = Field(
        0.01, gt=0, description="longest time between commits (state, outputs, offsets): bounds decision latency "
        "(exactly-once: a decision is visible when its transaction commits; bench stream at 1,000/s, p50 "
        "80-94 ms at 0.1 s, 25-38 ms at 0.01 s, under load 2-4.7)")
    transaction_timeout_s: float = Field(
        10.0, ge=1, description="a dead worker's open transaction is aborted by the broker after this long")
    transaction_retry_backoff_ms: int = Field(
        5, ge=1, le=1000, description="the decision producer's retry.backoff.ms: a transaction begun right after "
        "a commit is refused with CONCURRENT_TRANSACTIONS until the broker has written the last one's markers, and "
        "librdkafka retries after this wait (its default 100 ms gave commits of 95-125 ms at 1,000 requests/s; "
        "the Java client uses 20 ms for this case, KAFKA-5477)")
    instance_id: str = Field(
        "", description="stable name of this worker process in its app (transactional.id); empty: host-pid")
    max_cached_segments: int = Field(
        4096, ge=1, description="segments whose posterior stays in memory; beyond it the least recently used "
        "are evicted (their head is in the table) and reloaded from it when next seen")
    data_path: Literal["direct", "faust"] = Field(
        "direct", description="direct: a librdkafka consumer reads requests and feedback from the ledger "
        "offsets while Faust keeps membership, tables and recovery (streams.agents.datapath); faust: a Faust "
        "agent reads them (take_events)")
    max_head_feedback: int = Field(
        2048, ge=2, description="open decisions with feedback one segment head may hold; beyond it the segment's "
        "oldest windows close early (counted as windows_forced_by_head), so the head stays far below 1 MB")
    segment_idle_ttl_s: float = Field(
        30 * 86400.0, ge=0, description="a segment with no request or feedback for this long of its partition's "
        "event time (at least attribution_window_s: then none of its windows is open), and no decision a replay "
        "could need, has its stored head deleted (segments_expired); seen again it starts from the prior. 0: never "
        "(streams.segment_expiry)")


class RetentionSettings(BaseModel):
    artifact: Path = Field(Path("artifacts/retention-policy"), description="retention artifact directory")
    risk_threshold: float = Field(0.5, ge=0, le=1, description="decide when churn risk crosses this")
    outcome_window_s: float = Field(7 * 86400.0, gt=0, description="event-time outcome window")
    idle_horizon_s: float = Field(60 * 86400.0, gt=0, description="users idle longer are evicted")
    budget_per_period: float = Field(1000.0, ge=0, description="total spend cap per period")
    segment_budget_per_period: float = Field(100.0, ge=0, description="spend cap per segment per period")
    period_s: float = Field(86400.0, gt=0, description="budget period")
    max_contacts_per_user: int = Field(2, ge=0, description="frequency cap per user per period")
    review_interval_s: float = Field(
        86400.0, gt=0, description="users are reviewed when event time crosses a multiple of this")
    outcome_grace_s: float = Field(
        3600.0, ge=0, description="allowed lateness of an outcome after its window ends (event time)")
    pacing_lead: float = Field(
        1.0, ge=0, le=1, description="share of a period's caps available at its start (1 = no pacing)")
    never_contact_path: Path | None = Field(
        None, description="file with one user id per line: users never contacted")
    batch_max: int = Field(1024, ge=1, description="most messages handled in one engine call")
    batch_within_s: float = Field(0.05, gt=0, description="longest wait to fill a batch")
    max_message_bytes: int = Field(64 * 1024, ge=1024, description="larger messages are dead-lettered")
    max_cached_actions: int = Field(
        4096, ge=1, description="open retention actions kept decoded in memory (least recently used); the others "
        "are read back from the actions table when their outcome arrives or their window ends")
    max_cached_segments: int = Field(
        512, ge=1, description="segment posteriors and risk offsets (per partition and segment) kept in memory; "
        "beyond it the least recently used ones already written are evicted and reloaded from the table when "
        "next used (a segment of a partition whose review is under way stays)")
    review_step: int = Field(
        64, ge=1, description="a review pauses after this many actions so the worker's other agents run "
        "(the same decisions; bounds how long a review holds the event loop)")
    max_block_bytes: int = Field(
        256 * 1024, ge=4096, le=768 * 1024, description="retention state is written in blocks of at most this "
        "many bytes (one changelog record each), below the producer's 1 MB request limit")
    stall_exit_s: float = Field(
        60.0, ge=0, description="the worker exits (status 76, for its supervisor to restart it) when the retention "
        "agent processed nothing for this long while its input partitions hold messages (streams.agents.stall); "
        "0 turns it off")
    segment_idle_ttl_s: float = Field(
        30 * 86400.0, ge=0, description="a (partition, segment) with no decision and no outcome for this long of its "
        "partition's event time (at least outcome_window_s + outcome_grace_s: then none of its actions is open) "
        "has its stored record deleted (retention_segments_expired); used again it starts from the prior. "
        "0: never (streams.segment_expiry)")


class PrivacySettings(BaseModel):
    """How user ids are pseudonymised at the edge (``streams.pseudonyms``)."""

    pseudonymise: bool = Field(True, description="replace user ids by keyed HMAC-SHA-256 pseudonyms at the edge")
    pseudonym_key: SecretStr = Field(SecretStr(""), description="HMAC key (at least 32 characters)")
    pseudonym_key_file: Path | None = Field(None, description="file holding the HMAC key (instead of it)")
    key_id: str = Field("k1", pattern=r"^[a-z0-9]{1,8}$",
                        description="names the key inside every pseudonym (change it when the key rotates)")

    @model_validator(mode="after")
    def _one_key(self) -> "PrivacySettings":
        if self.pseudonym_key.get_secret_value() and self.pseudonym_key_file:
            raise ValueError("give pseudonym_key or pseudonym_key_file, not both")
        return self

    def key(self) -> bytes:
        """The HMAC key; a clear error when pseudonymisation is on and no usable key is configured."""
        if self.pseudonym_key_file is not None:
            value = read_secret_file(self.pseudonym_key_file, "pseudonym_key_file")
        else:
            value = self.pseudonym_key.get_secret_value()
        if not value:
            raise ValueError("user ids are pseudonymised but no key is set: put a random secret of 32+ "
                             "characters in METACART_PRIVACY__PSEUDONYM_KEY_FILE (or _KEY), e.g. "
                             "`openssl rand -hex 32`")
        if len(value) < 32:
            raise ValueError(f"the pseudonym key has {len(value)} characters; use at least 32 "
                             "(`openssl rand -hex 32`)")
        return value.encode()


class Settings(BaseSettings):
    """Everything a metacart process can be told; every CLI option maps onto one of these fields."""

    model_config = SettingsConfigDict(env_prefix="METACART_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = KafkaSettings()
    store: StoreSettings = StoreSettings()
    policy: PolicySettings = PolicySettings()
    ads: AdsSettings = AdsSettings()
    retention: RetentionSettings = RetentionSettings()
    privacy: PrivacySettings = PrivacySettings()
    faust: FaustSettings = FaustSettings()
    worker_id: str = Field("metacart-worker", description="Faust app id (consumer group)")
    agents: str = Field("ads,retention", description="agents this worker runs: ads, retention, or both")
    web_port: int = Field(
        6066, ge=0, le=65535,
        description="HTTP port of /metrics, /healthz and /readyz (Faust's web server; 0 turns it off)")
    stats_interval_s: float = Field(1.0, gt=0, description="how often a worker publishes its counters")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="worker log level")
    log_format: Literal["json", "text"] = Field("json", description="worker logs: one JSON object per line, or text")
    log_rate_limit: int = Field(
        20, ge=0, description="most log records of one message template per 10 s (0 = no limit)")
    broker_wait_s: float = Field(
        10.0, gt=0, description="how long a command or worker waits for the broker before giving up")


def settings_items(settings: BaseModel, show_secrets: bool = False) -> list[tuple[str, str | None, bool]]:
    """Every field as (environment variable, value as the environment must spell it, hidden secret?).

    The value is None for an unset optional field and for a hidden secret: such variables must be left
    out of an environment, not set to a placeholder (``METACART_KAFKA__SASL_USERNAME=None`` would be a
    user named "None"). Dicts are JSON, booleans ``true``/``false``.
    """
    items: list[tuple[str, str | None, bool]] = []

    def walk(prefix: str, model: BaseModel) -> None:
        for name, value in model:
            key = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                walk(key + "__", value)
            elif value is None:
                items.append((key, None, False))
            elif isinstance(value, SecretStr):
                secret = value.get_secret_value()
                hidden = bool(secret) and not show_secrets
                items.append((key, None if hidden else secret, hidden))
            elif isinstance(value, bool):
                items.append((key, "true" if value else "false", False))
            elif isinstance(value, (dict, list)):
                items.append((key, json.dumps(value, sort_keys=True), False))
            else:
                items.append((key, str(value), False))

    walk("METACART_", settings)
    return items


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables that give a child process exactly ``settings`` (over ``base``)."""
    env = {k: v for k, v in (base or {}).items() if not k.startswith("METACART_")}
    env.update({k: v for k, v, _ in settings_items(settings, show_secrets=True) if v is not None})
    return env
