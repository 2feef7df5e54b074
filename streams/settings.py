"""One settings object per process, read from the environment (prefix ``METACART_``, nested with ``__``).

Example: ``METACART_KAFKA__BOOTSTRAP=127.0.0.1:9092 METACART_ADS__ATTRIBUTION_WINDOW_S=600``.
Built once in ``metacart.cli`` and passed down; nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap: str = Field("127.0.0.1:9092", description="broker list, host:port[,host:port]")
    topic_prefix: str = Field("metacart", description="prefix of every topic name")
    segment_partitions: int = Field(8, ge=1, description="partitions of segment-keyed topics")
    user_partitions: int = Field(8, ge=1, description="partitions of user-keyed topics")
    session_timeout_s: float = Field(
        10.0, gt=0, description="a worker silent this long is considered dead and its partitions move")
    heartbeat_interval_s: float = Field(3.0, gt=0, description="consumer group heartbeat interval")
    sasl_username: str | None = Field(None, description="SASL/PLAIN user, if the cluster needs one")
    sasl_password: SecretStr | None = Field(None, description="SASL/PLAIN password")


class StoreSettings(BaseModel):
    data_dir: Path = Field(Path("var/worker"), description="Faust data dir (RocksDB tables live here)")
    driver: Literal["rocksdict"] = Field("rocksdict", description="RocksDB binding, named explicitly")
    state_flush_interval_s: float = Field(
        0.5, ge=0.0, description="how often changed segment posteriors are written to the table")
    changelog_buffer_max: int = Field(
        5000, ge=100, description="table changes queued for the changelog before Faust pauses consuming")


class PolicySettings(BaseModel):
    artifact: Path = Field(Path("artifacts/ads-policy"), description="policy artifact directory")
    eps: float = Field(0.02, ge=0.0, le=1.0, description="uniform exploration mixed into Thompson sampling")
    n_draws: int = Field(64, ge=1, le=4096, description="Thompson draws per decision (propensity estimate)")
    scale: float = Field(1.0, gt=0.0, description="posterior variance multiplier for Thompson sampling")
    forget: float = Field(1.0, gt=0.0, le=1.0, description="forgetting factor per update (1 = none)")
    on_swap: Literal["keep", "reset"] = Field("keep", description="posteriors on hot-swap: keep or reset")
    seed: int = Field(0, description="seed of the decision random stream")


class AdsSettings(BaseModel):
    attribution_window_s: float = Field(600.0, gt=0, description="event-time window for clicks/purchases")
    value_weight: float = Field(0.0, ge=0.0, description="reward = click + value_weight * purchase value")
    batch_max: int = Field(512, ge=1, description="most requests decided in one kernel call")
    batch_within_s: float = Field(0.005, gt=0, description="longest wait to fill a batch")
    max_message_bytes: int = Field(64 * 1024, ge=1024, description="larger messages are dead-lettered")
    max_open_decisions: int = Field(
        1_000_000, ge=1, description="open attribution windows kept; beyond it the oldest close early")


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


class Settings(BaseSettings):
    """Everything a metacart process can be told; every CLI option maps onto one of these fields."""

    model_config = SettingsConfigDict(env_prefix="METACART_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = KafkaSettings()
    store: StoreSettings = StoreSettings()
    policy: PolicySettings = PolicySettings()
    ads: AdsSettings = AdsSettings()
    retention: RetentionSettings = RetentionSettings()
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


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables that give a child process exactly ``settings`` (over ``base``)."""
    env = {k: v for k, v in (base or {}).items() if not k.startswith("METACART_")}

    def walk(prefix: str, model: BaseModel) -> None:
        for name, value in model:
            key = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                walk(key + "__", value)
            elif value is not None:
                env[key] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)

    walk("METACART_", settings)
    return env
