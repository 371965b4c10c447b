"""The composition root: build the engine and its parts from one Settings object.

Workers build one :class:`Runtime` per process (after fork: database and Redis
connections must not be shared across processes); tests build their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import redis
import requests

from providers import BUILTIN
from providers.registry import Registry

from . import fleetfile
from .clock import Clock, SystemClock
from .crypto import Cipher, load_or_create_key_file
from .db import make_engine, migrate
from .engine import Engine, EngineConfig
from .hot import HotCache
from .settings import Settings
from .store import SqlStore

log = logging.getLogger(__name__)


def build_cipher(settings: Settings) -> Cipher:
    keys = [key.get_secret_value() for key in settings.encryption_keys]
    if not keys:
        keys = load_or_create_key_file(settings.key_path)
    return Cipher(keys)


def build_registry(settings: Settings) -> Registry:
    return BUILTIN.with_extra(settings.extra_providers) if settings.extra_providers else BUILTIN


@dataclass
class Runtime:
    """Everything one process needs, built lazily from ``settings``."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)

    @cached_property
    def cipher(self) -> Cipher:
        return build_cipher(self.settings)

    @cached_property
    def registry(self) -> Registry:
        return build_registry(self.settings)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )

    @cached_property
    def db(self):  # type: ignore[no-untyped-def]
        return make_engine(self.settings.database_url)

    @cached_property
    def store(self) -> SqlStore:
        return SqlStore(self.db, self.cipher)

    @cached_property
    def hot(self) -> HotCache:
        return HotCache(
            self.redis, self.cipher, prefix=self.settings.key_prefix, ttl=self.settings.redis_ttl
        )

    @cached_property
    def engine(self) -> Engine:
        s = self.settings
        return Engine(
            store=self.store,
            hot=self.hot,
            registry=self.registry,
            clock=self.clock,
            config=EngineConfig(
                timezone=s.timezone,
                env=s.env,
                lock_wait=s.lock_wait,
                circuit_cooldown=s.circuit_cooldown,
                retry_cap=s.retry_cap,
                sweep_batch=s.sweep_batch,
            ),
            session=requests.Session(),
        )

    def migrate(self) -> None:
        migrate(self.db)

    def load_fleet_file(self) -> dict[str, int]:
        """Validate the fleet file and upsert its credentials; a bad file changes nothing.

        Credentials whose declaration changed get their current version written to their
        sinks at once, so a newly declared sink does not wait for the next rotation.
        """
        specs = fleetfile.load_file(self.settings.fleet_file, self.registry)
        results = fleetfile.apply(specs, self.store, self.clock.now())
        counts = {"created": 0, "updated": 0, "unchanged": 0}
        for result in results.values():
            counts[result] += 1
        for spec in specs:
            if spec.sinks and results[(spec.provider, spec.tenant)] != "unchanged":
                outcome = self.engine.sync_sinks(spec.provider, spec.tenant)
                if outcome.status == "failed":
                    log.warning(
                        "%s/%s: %s; retried at the next promotion or 'tokenfleet sinks sync'",
                        spec.provider,
                        spec.tenant,
                        outcome.error,
                    )
        if specs:
            log.info(
                "fleet file %s: %d created, %d updated, %d unchanged",
                self.settings.fleet_file,
                counts["created"],
                counts["updated"],
                counts["unchanged"],
            )
        return counts

    def close(self) -> None:
        if "engine" in self.__dict__:
            # Closes kept providers first: destroys browser sessions while Redis and the
            # database are still there for anything they log.
            self.engine.close()
        if "db" in self.__dict__:
            self.db.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
