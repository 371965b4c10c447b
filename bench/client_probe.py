"""One client process of bench/client.py: waiters that report when they woke up.

    python -m bench.client_probe raw MODE COUNT CHANNEL      # raw pub/sub fan-out
    python -m bench.client_probe fleet MODE COUNT TENANT STALE

MODE is ``threads`` or ``asyncio``. The process prints ``ready`` once every waiter is in
place, waits for ``go`` on stdin (fleet) or for the message (raw), then prints one JSON
line: ``{"versions": [...], "woke": [unix time, ...], "entered": [...]}`` (fleet mode
records when each caller entered ``rotate``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

import redis

from tokenfleet.client import TokenClient


def raw(mode: str, count: int, channel: str) -> dict[str, Any]:
    """Baseline: one subscriber per process hands a pub/sub message to COUNT waiters."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    while pubsub.get_message(timeout=0.1) is not None:
        pass
    woke: list[float] = []
    if mode == "threads":
        event = threading.Event()

        def waiter() -> None:
            event.wait()
            woke.append(time.time())

        pool = [threading.Thread(target=waiter) for _ in range(count)]
        for t in pool:
            t.start()
        print("ready", flush=True)
        while pubsub.get_message(timeout=1.0) is None:
            pass
        event.set()
        for t in pool:
            t.join()
    else:

        async def main() -> None:
            loop = asyncio.get_running_loop()
            event = asyncio.Event()

            async def waiter() -> None:
                await event.wait()
                woke.append(time.time())

            tasks = [asyncio.create_task(waiter()) for _ in range(count)]
            await asyncio.sleep(0)
            print("ready", flush=True)

            def listen() -> None:
                while pubsub.get_message(timeout=1.0) is None:
                    pass
                loop.call_soon_threadsafe(event.set)

            threading.Thread(target=listen, daemon=True).start()
            await asyncio.gather(*tasks)

        asyncio.run(main())
    return {"versions": [], "woke": woke}


def fleet(mode: str, count: int, tenant: str, stale: int) -> dict[str, Any]:
    """COUNT callers that all saw a 401 for version STALE, in threads or asyncio tasks."""
    client = TokenClient.from_settings(
        cooldown=0, recheck=float(os.environ.get("BENCH_RECHECK", "0.5"))
    )
    client.get("bench", tenant)  # a running app: listener subscribed, copy in memory
    versions: list[Any] = []
    woke: list[float] = []
    entered: list[float] = []
    # Every caller is parked before "go", as the raw baseline's waiters are: thread or task
    # start-up is not part of the wake-up.
    if mode == "threads":
        go = threading.Event()

        def caller() -> None:
            go.wait()
            called = time.time()
            token = client.rotate("bench", tenant, stale_version=stale, wait=60)
            woke.append(time.time())
            entered.append(called)
            versions.append(token.version)

        pool = [threading.Thread(target=caller) for _ in range(count)]
        for t in pool:
            t.start()
        print("ready", flush=True)
        sys.stdin.readline()
        go.set()
        for t in pool:
            t.join()
    else:

        async def main() -> None:
            loop = asyncio.get_running_loop()
            go = asyncio.Event()

            async def caller() -> None:
                await go.wait()
                called = time.time()
                token = await client.arotate("bench", tenant, stale_version=stale, wait=60)
                woke.append(time.time())
                entered.append(called)
                versions.append(token.version)

            tasks = [asyncio.create_task(caller()) for _ in range(count)]
            await asyncio.sleep(0)
            print("ready", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            go.set()
            await asyncio.gather(*tasks)

        asyncio.run(main())
    client.close()
    return {"versions": versions, "woke": woke, "entered": entered}


if __name__ == "__main__":
    kind, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "raw":
        result = raw(mode, count, sys.argv[4])
    else:
        result = fleet(mode, count, sys.argv[4], int(sys.argv[5]))
    print(json.dumps(result), flush=True)
