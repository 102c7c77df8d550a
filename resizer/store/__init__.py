"""All of resizer's Redis access.

- ``keys``: every key name, and the partitions of the keyspace;
- ``lua/``: one script per state change, ``lua/includes/`` the functions they share;
- ``core``: ``Store``, the one Python face of Redis (tasks, the reliable queue, statistics);
- ``completions``: the pub/sub fan-in that wakes long-polls and idle workers;
- ``connection``: clients for one Redis, a Sentinel-watched one or a Redis Cluster (from
  ``REDIS_URL``), and what Redis's errors mean to the service.
"""

from resizer.store.completions import Completions
from resizer.store.connection import (
    POOL_SIZE,
    REDIS_DOWN,
    REDIS_FULL,
    client_for,
    outage_event,
    unavailable,
)
from resizer.store.core import Store, open_store

__all__ = [
    "POOL_SIZE",
    "REDIS_DOWN",
    "REDIS_FULL",
    "Completions",
    "Store",
    "client_for",
    "open_store",
    "outage_event",
    "unavailable",
]
