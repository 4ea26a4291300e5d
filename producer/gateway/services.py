"""What one gateway process holds: connections to Redis, storage and Celery, built once from Settings.

Nothing here is state of its own: every replica reads and writes the same Redis,
so any number of them can run behind a load balancer.
"""
from __future__ import annotations

import asyncio
from functools import cached_property

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff

from producer.gateway.events import READS_AT_ONCE, AsyncJobs, EventHub, StreamSlots
from producer.gateway.files import FileLinks
from producer.gateway.keys import KeyStore
from producer.gateway.ratelimit import RateLimiter
from producer.gateway.tenants import TenantJobs
from tasks.app import make_celery
from tasks.deliveries import DeliveryStore, EventPublisher
from tasks.redis_connect import async_client_for, client_for
from tasks.settings import Settings
from tasks.storage import Storage, open_storage
from tasks.store import JobStore


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = client_for(settings)
        prefix = settings.redis_prefix
        self.store = JobStore(self.redis, ttl_s=settings.job_ttl_s, prefix=prefix)
        self.deliveries = DeliveryStore(self.redis, prefix=prefix, ttl_s=settings.job_ttl_s)
        self.keys = KeyStore(self.redis, prefix)
        self.tenant_jobs = TenantJobs(self.redis, prefix=prefix, ttl_s=settings.job_ttl_s)
        self.rate_limiter = RateLimiter(self.redis, prefix)
        self.celery = make_celery(settings)
        self.async_jobs: AsyncJobs | None = None
        self.stream_slots = StreamSlots(settings.gateway_streams_per_tenant, settings.gateway_streams)
        self.events = EventPublisher(self.store, self.deliveries, self.celery)  # the cancel of a queued job

    async def open_async(self) -> None:
        """For the routes that wait (server-sent events, `Prefer: wait`): no thread is held while
        they do, and they share one pub/sub connection (producer/gateway/events.py). Made on the
        server's event loop (at start-up), which its connections belong to. It only reads and
        subscribes, which is safe to send twice: a command that finds its pooled connection closed
        by Redis (a restart; the pool's own check misses some) is sent again on a new one, where
        each such connection answered one 503."""
        client = async_client_for(self.settings, retry=redis.asyncio.retry.Retry(NoBackoff(), 1),
                                  max_connections=READS_AT_ONCE + 16)  # the reads, the hub's and a new one's
        self.async_jobs = AsyncJobs(client, self.settings.redis_prefix, EventHub(client, self.settings.redis_prefix))
        self._loop = asyncio.get_running_loop()

    def stop_following(self) -> None:
        """From the server's signal handler (any thread): end every event stream and wait."""
        if self.async_jobs is not None:
            self._loop.call_soon_threadsafe(self.async_jobs.hub.stop)

    async def close_async(self) -> None:
        if self.async_jobs is not None:
            await self.async_jobs.hub.close()
            await self.async_jobs.redis.aclose()

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.settings.storage_url, presign_expiry_s=self.settings.presign_expiry_s)

    @cached_property
    def file_links(self) -> FileLinks:
        return FileLinks.for_deployment(self.settings, self.storage, self.redis)
