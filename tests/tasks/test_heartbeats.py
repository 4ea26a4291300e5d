"""Listing the workers against a real Redis: through their index, never by walking the keyspace."""
from __future__ import annotations

import json

import pytest
import redis

from tasks import heartbeats
from tasks.heartbeats import announce, list_workers, withdraw, worker_key, workers_index_key

pytestmark = pytest.mark.integration  # a real redis-server


def beat(client: redis.Redis, prefix: str, name: str, state: str = "ready") -> None:
    announce(client, prefix, name, json.dumps({"name": name, "state": state}))


def test_workers_are_listed_from_their_index_without_a_scan(
    redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    beat(redis_client, key_prefix, "b@host")
    beat(redis_client, key_prefix, "a@host", "busy")
    scanned: list[object] = []
    monkeypatch.setattr(redis_client, "scan_iter", lambda *a, **k: scanned.append(a) or iter(()))
    assert [w["name"] for w in list_workers(redis_client, key_prefix)] == ["a@host", "b@host"]
    assert scanned == []
    withdraw(redis_client, key_prefix, "a@host")
    assert [w["name"] for w in list_workers(redis_client, key_prefix)] == ["b@host"]


def test_a_worker_whose_key_expired_is_not_listed(redis_client: redis.Redis, key_prefix: str) -> None:
    beat(redis_client, key_prefix, "gone@host")
    beat(redis_client, key_prefix, "live@host")
    redis_client.delete(worker_key(key_prefix, "gone@host"))  # what its TTL does when it stops beating
    assert [w["name"] for w in list_workers(redis_client, key_prefix)] == ["live@host"]


def test_names_not_beating_for_long_leave_the_index(
    redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    beat(redis_client, key_prefix, "old@host")
    monkeypatch.setattr(heartbeats, "INDEX_KEEP_S", -1.0)  # its last beat is now "long ago"
    list_workers(redis_client, key_prefix)
    assert redis_client.zrange(workers_index_key(key_prefix), 0, -1) == []


def test_workers_of_an_earlier_version_without_the_index_are_still_found(
    redis_client: redis.Redis, key_prefix: str,
) -> None:
    redis_client.set(worker_key(key_prefix, "older@host"), json.dumps({"name": "older@host"}), ex=15)
    assert [w["name"] for w in list_workers(redis_client, key_prefix)] == ["older@host"]


def test_a_fleet_scaled_to_zero_is_listed_without_a_scan(
    redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    beat(redis_client, key_prefix, "only@host")
    withdraw(redis_client, key_prefix, "only@host")  # the last worker stops: its index is empty, gone
    scanned: list[object] = []
    monkeypatch.setattr(redis_client, "scan_iter", lambda *a, **k: scanned.append(a) or iter(()))
    assert list_workers(redis_client, key_prefix) == []
    assert scanned == []
