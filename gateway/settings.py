"""The only place that reads configuration.

Three layers, later ones winning: `config/default.toml`, environment variables
named `GATEWAY_<KEY>`, and the overrides handed to `create_app` (tests use these,
so no test ever mutates shared configuration). Values are read once, when the app
is created, never at import time.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_FILE = PROJECT_DIR / "config" / "default.toml"
ENV_PREFIX = "GATEWAY_"


@dataclass(frozen=True)
class Settings:
    data_dir: str
    database_url: str
    upstream_url: str
    base_url: str
    auto_migrate: bool
    max_body_bytes: int
    max_json_depth: int
    max_attachment_bytes: int
    oms_check_digit: bool
    serve_workers: int
    serve_threads: int
    log_level: str
    embedded_worker: bool
    signing_alg: str
    signing_kid: str
    sender_id: str
    delivery_batch_size: int
    delivery_max_attempts: int
    delivery_backoff_base: float
    delivery_backoff_max: float
    delivery_timeout: float
    delivery_poll_interval: float
    delivery_idle: float
    circuit_failures: int
    circuit_open_seconds: float
    mock_clarification_rate: float
    mock_processing_delay: float
    search_cursor_secret: str
    # --- bulk export
    export_dir: str
    export_retention_hours: float
    export_file_max_resources: int
    export_poll_seconds: int
    # --- encryption at rest (gateway.store.encryption)
    encryption_keys: str = dataclasses.field(repr=False)   # kid:base64key,...; empty: off
    encryption_active_key: str                             # empty: the first listed
    # --- limits and protection (gateway.api.protection, README "Limits and protection")
    log_format: str                      # json | text
    max_json_elements: int
    max_xml_depth: int
    max_bundle_entries: int
    max_page_size: int
    max_includes: int
    request_timeout_seconds: int
    rate_limit_per_minute: int           # 0: off
    rate_limit_burst: int
    redis_url: str                       # empty: limits kept in this process's memory
    redis_key_prefix: str
    auth_failures_limit: int             # 0: off
    auth_failures_window_seconds: int
    # --- OAuth 2.0 (SMART Backend Services; gateway.oauth)
    oauth_token_seconds: int             # lifetime of an access token
    oauth_assertion_max_seconds: int     # furthest exp a client assertion may have

    @property
    def keys_path(self) -> Path:
        """Signing keys live in the data directory, never in the repository."""
        return self.data_path / "keys"

    @property
    def data_path(self) -> Path:
        path = Path(self.data_dir)
        return path if path.is_absolute() else (Path.cwd() / path)

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_path / 'gateway.sqlite3'}"


def load_settings(overrides: dict | None = None, environ: dict | None = None,
                  config_file: Path | None = None) -> Settings:
    """Settings from the defaults file, then the environment, then `overrides`."""
    environ = os.environ if environ is None else environ
    config_file = Path(environ.get("GATEWAY_CONFIG", config_file or DEFAULT_FILE))
    with open(config_file, "rb") as fh:
        values = dict(tomllib.load(fh)["gateway"])
    for field in dataclasses.fields(Settings):
        env_value = environ.get(ENV_PREFIX + field.name.upper())
        if env_value is not None:
            values[field.name] = _convert(env_value, type(values[field.name]), field.name)
    values.update(overrides or {})
    unknown = set(values) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ValueError(f"Unknown settings: {', '.join(sorted(unknown))}")
    return Settings(**values)


def _convert(raw: str, kind: type, name: str):
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be true or false, not {raw!r}")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw
