"""The config of stored chat completions: where they live, which are kept, and for how long.

[store]
enabled = true
path = "/var/lib/capibara-facade"          # SQLite: a file in this directory (the default backend)
url = "postgresql://facade@db/capibara"    # Postgres instead: every replica shares one store
retention_days = 30                        # then a stored completion is deleted; none: kept until deleted
models = ["capibara6"]                     # every completion of these public models is stored, `store` or not
callers = ["frontend-team"]                # and every completion of these callers
"""

from __future__ import annotations

from .base import Base, PositiveInt

__all__ = ["SQLITE_FILE", "StoreConfig"]

SQLITE_FILE = "stored-completions.sqlite3"


class StoreConfig(Base, frozen=True):
    """Chat completions created with `store: true` (or by `models` / `callers`), served back through
    `GET /v1/chat/completions` and its sub-routes to the caller that created them."""

    # Off: `store` is accepted and ignored (as vLLM and llama.cpp do), and the stored routes answer 404.
    enabled: bool = False
    # SQLite: the directory of its file (created if missing). Fit for one host; its workers share the file.
    path: str = "/var/lib/capibara-facade"
    # `postgresql://user:password@host:port/db`: the store is this Postgres (several replicas), not SQLite.
    url: str | None = None
    retention_days: PositiveInt | None = None
    models: tuple[str, ...] = ()
    callers: tuple[str, ...] = ()
    # Completions waiting to be written; when full, new ones are dropped (counted), never waited for.
    queue_size: PositiveInt = 1000
