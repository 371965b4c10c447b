"""The application side: read tokens fast, and get a new one in milliseconds after a 401.

::

    from tokenfleet.client import TokenClient

    client = TokenClient.from_settings()
    token = client.get("chitai_gorod")                 # memory → Redis → SQL → env var
    ...                                                # the API answered 401:
    token = client.rotate("chitai_gorod", stale_version=token.version, wait=60)

Reads come from an in-process copy that a background listener drops on every promotion
message; misses go to Redis, then to SQL when Redis is unreachable, then to an
environment variable (``TOKENFLEET_TOKEN_<PROVIDER>_<TENANT>`` unless configured). Each
fallback is logged once, not per call.

``rotate`` never stampedes: across processes and hosts, one request per stale version
reaches the queue (a Redis ``SET NX`` key), and at most one per ``cooldown`` seconds per
credential; everyone else waits for the same promotion. Waiters are registered before the
request is sent and wake on the promotion message; they also re-read the version every
``recheck`` seconds, so a lost message can delay a waiter but never strand it. When the
fleet cannot deliver within ``wait``, the caller gets :class:`RotationFailed` or
:class:`~tokenfleet.errors.FleetTimeout`, both carrying ``last_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any
from uuid import uuid4

import redis

from .crypto import Cipher
from .errors import (
    FleetTimeout,
    GiveUp,
    StoreUnavailable,
    TokenfleetError,
    UnknownCredential,
)
from .hot import HotCache, Promotion
from .secret import Secret, fingerprint
from .store import SqlStore

log = logging.getLogger("tokenfleet.client")


class RotationFailed(GiveUp):
    """The fleet tried and could not rotate (provider down, circuit open, bad config).

    ``error_class`` is the fleet's error; ``last_token`` the newest token known, if any.
    """

    error_class: str | None = None
    last_token: Token | None = None


@dataclass(frozen=True, repr=False)
class Token:
    """One version of a credential, as an application uses it. Immutable."""

    provider: str
    tenant: str
    value: str
    version: int
    expires_at: datetime | None = None
    bound: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cookies: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Where this read came from: memory, redis, sql or env.
    source: str = "redis"

    @property
    def user_agent(self) -> str | None:
        return self.bound.get("user_agent")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def __repr__(self) -> str:
        return (
            f"Token({self.provider}/{self.tenant} v{self.version} "
            f"fp={self.fingerprint} from {self.source})"
        )

    __str__ = __repr__

    @classmethod
    def from_secret(
        cls, provider: str, tenant: str, version: int, secret: Secret, source: str
    ) -> Token:
        return cls(
            provider,
            tenant,
            secret.reveal(),
            version,
            secret.expires_at,
            secret.bound,
            secret.cookies,
            source,
        )


Key = tuple[str, str]

#: One round trip decides who sends the request for a stale version. Returns the task id
#: already requested for it, nil while the credential cools down, or "" when the caller
#: won and must send (its task id is stored, and the cooldown starts).
_CLAIM_REQUEST = """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
if tonumber(ARGV[3]) > 0 then
  if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3]) then return nil end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ''
"""


class _Waiters:
    """Per-credential wake-ups that promotion messages trigger, for threads and asyncio.

    Threads wait on one condition; asyncio callers share one event per (credential, loop),
    so a promotion costs one ``call_soon_threadsafe`` per event loop, not per caller.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._latest: dict[Key, int] = {}
        self._pokes: dict[Key, int] = {}
        self._blocked: dict[Key, int] = {}
        self._events: dict[Key, dict[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    def seen(self, key: Key) -> int:
        with self._lock:
            return self._latest.get(key, -1)

    def waiting(self, key: Key) -> bool:
        with self._lock:
            return bool(self._blocked.get(key) or self._events.get(key))

    def notify(self, key: Key, version: int) -> None:
        with self._cond:
            if version > self._latest.get(key, -1):
                self._latest[key] = version
            self._pokes[key] = self._pokes.get(key, 0) + 1
            self._cond.notify_all()
            events = self._events.pop(key, {})
        for loop, event in events.items():
            # An event may outlive its loop (an asyncio.run that finished): nobody waits
            # on it any more, and a closed loop refuses callbacks.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def event(self, key: Key, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """The event set (on ``loop``) at the next promotion of ``key``."""
        with self._lock:
            per_loop = self._events.setdefault(key, {})
            if loop not in per_loop:
                per_loop[loop] = asyncio.Event()
            return per_loop[loop]

    def wait(self, key: Key, above: int, timeout: float) -> bool:
        """Block until a promotion of ``key`` above ``above`` is seen, another notify of
        ``key`` (a found failure) comes, or ``timeout``; True unless it timed out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._blocked[key] = self._blocked.get(key, 0) + 1
            pokes = self._pokes.get(key, 0)
            try:
                while self._latest.get(key, -1) <= above and self._pokes.get(key, 0) == pokes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._blocked[key] -= 1


@dataclass
class _Flight:
    """One process's request for a rotation past one stale version."""

    task_id: str | None = None
    started: float = field(default_factory=time.monotonic)
    #: When the task's result was last looked at; one caller per recheck interval does it
    #: for the whole flight, so a thousand waiters cost one result-backend read, not 1,000.
    checked: float = 0.0
    failure: RotationFailed | None = None
    checking: threading.Lock = field(default_factory=threading.Lock)


class _Listener(threading.Thread):
    """Subscribes to the promotion channel; drops cached copies and wakes waiters."""

    def __init__(self, client: TokenClient) -> None:
        super().__init__(name="tokenfleet-listener", daemon=True)
        self.client = client
        self.subscribed = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        delay = 0.1
        while not self.stopping.is_set():
            pubsub = self.client.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.client.hot.channel)
                self.subscribed.set()
                delay = 0.1
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._handle(message["data"])
            except (redis.RedisError, OSError, ValueError, KeyError):
                # Unsubscribed: the in-process copy cannot be trusted until we are back.
                self.subscribed.clear()
                self.client._memory.clear()
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()

    def _handle(self, data: bytes) -> None:
        """One message; whatever goes wrong, the listener lives on (waiters rely on it)."""
        try:
            self.client._on_promotion(Promotion.from_json(data))
        except (ValueError, KeyError):
            # It may have announced a promotion we cannot tell apart: trust no copy.
            self.client._memory.clear()
            log.warning("malformed message on the promotion channel; in-process copies dropped")
        except Exception:
            self.client._memory.clear()
            log.exception("promotion handling failed; in-process copies dropped")


class TokenClient:
    """Reads tokens and asks for rotations; one per process is enough (thread-safe)."""

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        cipher: Cipher,
        key_prefix: str = "tokenfleet",
        store: SqlStore | None = None,
        send_task: Callable[..., Any] | None = None,
        result_of: Callable[[str], Any] | None = None,
        env: Mapping[str, str] | None = None,
        env_names: Mapping[Key, str] | None = None,
        cooldown: float = 5.0,
        recheck: float = 0.5,
    ) -> None:
        self.redis = redis_client
        self.hot = HotCache(redis_client, cipher, prefix=key_prefix, ttl=1)
        self.store = store
        self.prefix = key_prefix
        self._send_task = send_task
        self._result_of = result_of
        self.env = os.environ if env is None else env
        self.env_names = dict(env_names or {})
        self.cooldown = cooldown
        self.recheck = recheck
        self._memory: dict[Key, Token] = {}
        self._waiters = _Waiters()
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._fallbacks_logged: set[tuple[str, Key]] = set()
        self._claim_request = redis_client.register_script(_CLAIM_REQUEST)
        self._flights: dict[tuple[Key, int], _Flight] = {}
        self._flights_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any = None, **kwargs: Any) -> TokenClient:
        """Build from :class:`~tokenfleet.settings.Settings` (read from the environment)."""
        from .runtime import build_cipher
        from .settings import load_settings

        settings = settings or load_settings()
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        cipher = build_cipher(settings)
        store = None
        if "store" not in kwargs:
            from .db import make_engine

            store = SqlStore(make_engine(settings.database_url), cipher)
        kwargs.setdefault("store", store)
        if "send_task" not in kwargs:
            from tasks.app import app

            kwargs["send_task"] = app.send_task
            kwargs.setdefault("result_of", lambda task_id: app.AsyncResult(task_id))
        return cls(redis_client=client, cipher=cipher, key_prefix=settings.key_prefix, **kwargs)

    # -- reading ---------------------------------------------------------------------

    def get(self, provider: str, tenant: str = "default") -> Token:
        """The current token: memory, then Redis, then SQL, then the environment."""
        key = (provider, tenant)
        self._ensure_listener()
        cached = self._memory.get(key)
        if cached is not None:
            return cached
        token = self._read(key)
        if self._listener is not None and self._listener.subscribed.is_set():
            # Only while subscribed: otherwise a promotion could go unnoticed.
            self._memory[key] = replace(token, source="memory")
        return token

    def _read(self, key: Key, *, use_env: bool = True) -> Token:
        provider, tenant = key
        try:
            found = self.hot.get(provider, tenant)
            self._recovered("redis", key)
            if found is not None:
                return Token.from_secret(provider, tenant, found[0], found[1], "redis")
        except StoreUnavailable:
            self._fallback("redis", key, "Redis unreachable; reading from SQL")
        if self.store is not None:
            try:
                state = self.store.get(provider, tenant)
                current = self.store.current(state.id) if state else None
                self._recovered("sql", key)
                if current is not None:
                    return Token.from_secret(provider, tenant, current[0], current[1], "sql")
            except StoreUnavailable:
                self._fallback("sql", key, "database unreachable too")
        name = self.env_names.get(key) or env_name(provider, tenant)
        value = self.env.get(name) if use_env else None
        if value:
            self._fallback("env", key, f"using the environment variable {name}")
            return Token(provider, tenant, value, 0, source="env")
        raise UnknownCredential(
            f"no token for {provider}/{tenant} in Redis, SQL or ${name} "
            "(is it configured, and has it been rotated once?)"
        )

    def _fallback(self, source: str, key: Key, message: str) -> None:
        if (source, key) not in self._fallbacks_logged:
            self._fallbacks_logged.add((source, key))
            log.warning("%s/%s: %s", key[0], key[1], message)

    def _recovered(self, source: str, key: Key) -> None:
        if self._fallbacks_logged and (source, key) in self._fallbacks_logged:
            self._fallbacks_logged.discard((source, key))
            log.info("%s/%s: %s reachable again", key[0], key[1], source)

    # -- promotions ------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is not None and self._listener.is_alive():
            return
        with self._listener_lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = _Listener(self)
                self._listener.start()
                self._listener.subscribed.wait(2.0)

    def _on_promotion(self, promotion: Promotion) -> None:
        key = (promotion.provider, promotion.tenant)
        self._memory.pop(key, None)
        if self._waiters.waiting(key):
            # Fetch the new token once here, so a thousand woken waiters read memory
            # instead of making a thousand Redis round trips and decryptions.
            try:
                token = self._read(key, use_env=False)
            except TokenfleetError:
                token = None
            if token is not None and token.version >= promotion.version:
                self._memory[key] = replace(token, source="memory")
        self._waiters.notify(key, promotion.version)

    # -- rotating --------------------------------------------------------------------

    def rotate(
        self,
        provider: str,
        tenant: str = "default",
        stale_version: int | None = None,
        wait: float = 60.0,
    ) -> Token:
        """Return a token newer than ``stale_version``, asking the fleet for one if needed.

        Returns at once when the current version is already newer. Otherwise ensures one
        rotation is requested fleet-wide and waits for its promotion, at most ``wait``
        seconds; raises :class:`RotationFailed` or :class:`FleetTimeout` (with
        ``last_token``) when it does not come.
        """
        key = (provider, tenant)
        deadline = time.monotonic() + wait
        self._ensure_listener()  # subscribed before anything is sent: no missed wake-up
        flight, lead, last, stale = self._board(key, stale_version, wait)
        try:
            while True:
                left = deadline - time.monotonic()
                done = self._step(key, flight, lead, last, stale, left, wait)
                if done is not None:
                    return done
                self._waiters.wait(key, stale, min(left, self.recheck))
                last = self._newest(key, stale) or last
        finally:
            if lead:
                self._land(key, stale, flight)

    async def arotate(
        self,
        provider: str,
        tenant: str = "default",
        stale_version: int | None = None,
        wait: float = 60.0,
    ) -> Token:
        """:meth:`rotate` for asyncio: the same guarantees, waiting without a thread."""
        key = (provider, tenant)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        self._ensure_listener()
        flight, lead, last, stale = self._board(key, stale_version, wait)
        try:
            while True:
                # Taken before the request is sent, so its promotion cannot slip by.
                event = self._waiters.event(key, loop)
                left = deadline - loop.time()
                done = self._step(key, flight, lead, last, stale, left, wait)
                if done is not None:
                    return done
                if self._waiters.seen(key) <= stale:
                    # asyncio.timeout, not wait_for: no extra task per waiter, so a
                    # thousand waiters wake in one pass of the loop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(left, self.recheck)):
                            await event.wait()
                last = self._newest(key, stale) or last
        finally:
            if lead:
                self._land(key, stale, flight)

    def _board(
        self, key: Key, stale_version: int | None, wait: float
    ) -> tuple[_Flight, bool, Token | None, int]:
        """Join this process's request for (credential, stale version), or lead a new one.

        Only the leader reads Redis and asks the fleet; followers go straight to waiting,
        so a thousand callers in one process cost one read and one request.
        """
        if stale_version is None:
            current = self._current_or_none(key)
            stale_version = current.version if current is not None else 0
        with self._flights_lock:
            flight = self._flights.get((key, stale_version))
            lead = flight is None or time.monotonic() - flight.started > wait
            if lead:
                flight = self._flights[(key, stale_version)] = _Flight()
        assert flight is not None
        # The in-process copy is exact while the listener is subscribed (a promotion drops
        # it), so a running app pays no read here; a copy one message behind at worst
        # sends a request the worker answers "fresh", and that message then wakes us.
        last = self._memory.get(key)
        if last is None:
            last = self._current_or_none(key)
        return flight, lead, last, stale_version

    def _land(self, key: Key, stale: int, flight: _Flight) -> None:
        # Followers keep their reference; a caller arriving later leads a fresh flight,
        # whose first read finds the new version.
        with self._flights_lock:
            if self._flights.get((key, stale)) is flight:
                del self._flights[(key, stale)]

    def _step(
        self,
        key: Key,
        flight: _Flight,
        lead: bool,
        last: Token | None,
        stale: int,
        left: float,
        wait: float,
    ) -> Token | None:
        """One turn of a waiter: done, ask (leader), check for failure, or time out."""
        if last is not None and last.version > stale:
            return last
        if flight.task_id is None and lead:
            flight.task_id = self._request(key[0], key[1], stale, wait)
            flight.checked = time.monotonic()
        elif flight.task_id:
            self._check_flight(flight, key, last)
        if left <= 0:
            raise FleetTimeout(
                f"{key[0]}/{key[1]}: no version newer than {stale} within "
                f"{wait:g}s (is a worker running?)",
                last_token=last,
            )
        return None

    def _newest(self, key: Key, stale_version: int) -> Token | None:
        """After a wake-up: the copy the listener fetched, else a fresh read (lost message)."""
        cached = self._memory.get(key)
        if cached is not None and cached.version > stale_version:
            return cached
        return self._current_or_none(key)

    def _current_or_none(self, key: Key) -> Token | None:
        """A fresh read past the in-process copy (which only the listener invalidates)."""
        try:
            return self._read(key, use_env=False)
        except TokenfleetError:
            return None

    def _request(self, provider: str, tenant: str, stale_version: int, wait: float) -> str | None:
        """Send one rotation request per stale version fleet-wide; return its task id.

        The first caller wins ``SET NX`` on the version key and sends; everybody else gets
        the winner's task id from that key. While the credential's cooldown runs, nobody
        sends and ``None`` tells the caller to wait and ask again.
        """
        if self._send_task is None:
            raise FleetTimeout("this client cannot send tasks (no Celery app configured)")
        request_key = f"{self.prefix}:requested:{provider}:{tenant}:{stale_version}"
        cooldown_key = f"{self.prefix}:cooldown:{provider}:{tenant}"
        task_id = str(uuid4())
        try:
            answer = self._claim_request(
                keys=[request_key, cooldown_key],
                args=[task_id, int(wait) + 60, int(self.cooldown * 1000)],
            )
        except redis.RedisError as exc:
            raise FleetTimeout(
                f"{provider}/{tenant}: cannot request a rotation, Redis unavailable "
                f"({type(exc).__name__})"
            ) from None
        if answer is None:
            return None  # cooling down: nobody sends now; ask again after the recheck
        if answer != b"" and answer != "":
            return answer.decode() if isinstance(answer, bytes) else str(answer)
        self._send_task(
            "tokenfleet.rotate",
            kwargs={
                "provider": provider,
                "tenant": tenant,
                "stale_version": stale_version,
                "trigger": "on_demand",
            },
            task_id=task_id,
        )
        return task_id

    def _check_flight(self, flight: _Flight, key: Key, last: Token | None) -> None:
        """Raise :class:`RotationFailed` if the flight's task ended in failure.

        At most one caller per recheck interval reads the result backend; the others use
        what it found. A found failure wakes every waiter of the credential at once.
        """
        if flight.failure is None and time.monotonic() - flight.checked >= self.recheck:
            if flight.checking.acquire(blocking=False):
                try:
                    flight.checked = time.monotonic()
                    flight.failure = self._failure_of(flight.task_id or "", key)
                finally:
                    flight.checking.release()
                if flight.failure is not None:
                    self._waiters.notify(key, -1)
        if flight.failure is not None:
            failure = flight.failure
            raise RotationFailed(str(failure), error_class=failure.error_class, last_token=last)

    def _failure_of(self, task_id: str, key: Key) -> RotationFailed | None:
        if not task_id or self._result_of is None:
            return None
        try:
            result = self._result_of(task_id)
            if not result.ready():
                return None
            value = result.result
        except Exception:
            return None
        if isinstance(value, dict) and value.get("status") in ("failed", "rejected"):
            return RotationFailed(
                f"{key[0]}/{key[1]}: the fleet could not rotate: "
                f"{value.get('error_class')}: {value.get('error')}",
                error_class=value.get("error_class"),
            )
        return None

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stopping.set()
            self._listener.join(timeout=2)
        self.redis.close()


def env_name(provider: str, tenant: str) -> str:
    """Default environment fallback name: ``TOKENFLEET_TOKEN_<PROVIDER>_<TENANT>``."""
    clean = "".join(ch if ch.isalnum() else "_" for ch in f"{provider}_{tenant}")
    return f"TOKENFLEET_TOKEN_{clean.upper()}"
