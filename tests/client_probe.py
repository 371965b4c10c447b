"""Run N concurrent 401 callers in one process; print their versions as JSON (for tests).

python -m tests.client_probe PROVIDER STALE_VERSION THREADS WAIT
"""

from __future__ import annotations

import json
import sys
import threading

from tokenfleet.client import TokenClient


def main() -> None:
    provider, stale, threads, wait = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    client = TokenClient.from_settings()
    client.get(provider)  # warm: listener subscribed, like a long-running app
    barrier = threading.Barrier(threads)
    versions: list[object] = []

    def caller() -> None:
        barrier.wait()
        try:
            versions.append(client.rotate(provider, stale_version=stale, wait=wait).version)
        except Exception as exc:
            versions.append(type(exc).__name__)

    pool = [threading.Thread(target=caller) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    client.close()
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
