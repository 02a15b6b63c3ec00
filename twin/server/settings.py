"""Settings of the service: flags over ``TWIN_*`` environment variables over defaults, validated at start.

| setting | flag | environment | default |
|---|---|---|---|
| database URL | ``--database`` | ``TWIN_DATABASE`` | ``sqlite:///twin.db`` |
| listen address | ``--host`` / ``--port`` | ``TWIN_HOST`` / ``TWIN_PORT`` | ``127.0.0.1`` / ``8080`` |
| worker processes | ``--workers`` | ``TWIN_WORKERS`` | ``1`` |
| public base URL | ``--base-url`` | ``TWIN_BASE_URL`` | ``http://<host>:<port>`` |
| token signing secret | — | ``TWIN_SECRET`` | generated at start (shared with the workers) |
| max request body | — | ``TWIN_MAX_BODY_BYTES`` | 1 MiB |
| nightly missing-measurement job | — | ``TWIN_NIGHTLY_JOBS`` (1/0) | on |
| requests worked on at once, per worker | — | ``TWIN_MAX_INFLIGHT`` | 32 |
| longest wait for admission before a 503 | — | ``TWIN_MAX_WAIT_MS`` | 200 |
| longest admission queue, per worker | — | ``TWIN_MAX_QUEUE`` | 2000 |
| load shedding on/off (off: the overload benchmark's baseline) | — | ``TWIN_LOAD_SHEDDING`` (1/0) | on |

The last four are the load shedding of :mod:`twin.server.admission`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from twin.validation import ScenarioError


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


class SettingsError(ScenarioError):
    """A setting is wrong; the message names it and what is allowed."""


@dataclass(frozen=True)
class Settings:
    database: str = "sqlite:///twin.db"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    base_url: str = ""
    secret: str = ""
    max_body_bytes: int = 1_048_576
    nightly_jobs: bool = True
    max_inflight: int = 32  # a full SQLite group commit; 4x the PostgreSQL pool
    max_wait_ms: float = 200.0  # an admitted request starts within this; the p95 goal of reads is 300 ms
    max_queue: int = 2000
    load_shedding: bool = True

    def __post_init__(self) -> None:
        if not self.database.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise SettingsError(f"database {self.database!r}: use sqlite:///path.db or postgresql://user@host:port/db")
        if not 0 < self.port < 65536:
            raise SettingsError(f"port {self.port}: must be between 1 and 65535")
        if not 1 <= self.workers <= 64:
            raise SettingsError(f"workers {self.workers}: must be between 1 and 64")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"TWIN_MAX_BODY_BYTES {self.max_body_bytes}: must be at least 1024")
        if not 1 <= self.max_inflight <= 10_000:
            raise SettingsError(f"TWIN_MAX_INFLIGHT {self.max_inflight}: must be between 1 and 10000")
        if not 0 < self.max_wait_ms <= 600_000:
            raise SettingsError(f"TWIN_MAX_WAIT_MS {self.max_wait_ms}: must be above 0 and at most 600000")
        if not 0 <= self.max_queue <= 1_000_000:
            raise SettingsError(f"TWIN_MAX_QUEUE {self.max_queue}: must be between 0 and 1000000")
        if not self.base_url:
            object.__setattr__(self, "base_url", f"http://{self.host}:{self.port}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not self.secret:
            object.__setattr__(self, "secret", secrets.token_hex(32))
        if len(self.secret) < 32:
            raise SettingsError("TWIN_SECRET: must be at least 32 characters")

    @classmethod
    def from_env(cls, **flags) -> Settings:
        """Flags (not None) win over the environment, which wins over defaults."""
        env = os.environ

        def pick(name: str, env_name: str, convert=str):
            if flags.get(name) is not None:
                return flags[name]
            if env_name in env:
                try:
                    return convert(env[env_name])
                except ValueError:
                    raise SettingsError(f"{env_name}={env[env_name]!r}: expected {convert.__name__}") from None
            return cls.__dataclass_fields__[name].default

        return cls(database=pick("database", "TWIN_DATABASE"), host=pick("host", "TWIN_HOST"),
                   port=pick("port", "TWIN_PORT", int), workers=pick("workers", "TWIN_WORKERS", int),
                   base_url=pick("base_url", "TWIN_BASE_URL"), secret=pick("secret", "TWIN_SECRET"),
                   max_body_bytes=pick("max_body_bytes", "TWIN_MAX_BODY_BYTES", int),
                   nightly_jobs=pick("nightly_jobs", "TWIN_NIGHTLY_JOBS", _flag),
                   max_inflight=pick("max_inflight", "TWIN_MAX_INFLIGHT", int),
                   max_wait_ms=pick("max_wait_ms", "TWIN_MAX_WAIT_MS", float),
                   max_queue=pick("max_queue", "TWIN_MAX_QUEUE", int),
                   load_shedding=pick("load_shedding", "TWIN_LOAD_SHEDDING", _flag))

    def to_env(self) -> dict[str, str]:
        """What worker processes need to rebuild the same settings."""
        return {"TWIN_DATABASE": self.database, "TWIN_HOST": self.host, "TWIN_PORT": str(self.port),
                "TWIN_WORKERS": str(self.workers), "TWIN_BASE_URL": self.base_url, "TWIN_SECRET": self.secret,
                "TWIN_MAX_BODY_BYTES": str(self.max_body_bytes), "TWIN_NIGHTLY_JOBS": "1" if self.nightly_jobs else "0",
                "TWIN_MAX_INFLIGHT": str(self.max_inflight), "TWIN_MAX_WAIT_MS": str(self.max_wait_ms),
                "TWIN_MAX_QUEUE": str(self.max_queue), "TWIN_LOAD_SHEDDING": "1" if self.load_shedding else "0"}
