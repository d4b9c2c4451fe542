"""Load generator of the economy benchmarks: POS terminals in their own process.

Terminals are separate devices at a venue, so the benchmarks run them in
this process, apart from the box's, and the box's process does only the
box's work. The parent writes a JSON job to stdin; this process connects
one bus client per terminal, sends the job's requests and prints one JSON
line with the outcome of each request and its latency.

Job fields: ``host``, ``port``, ``site``, ``terminals`` (a list of ``id``,
``username``, ``password`` and ``token``), ``service``, ``action``,
``requests`` (the data of each request, sent round-robin across terminals),
and either ``in_flight`` (requests waiting per terminal, as fast as replies
come) or ``rate`` (requests per second in all, evenly paced).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

from appliance.bus.client import Bus, BusSettings
from appliance.errors import RequestError


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Send every request of ``job`` and return the outcomes."""
    async with contextlib.AsyncExitStack() as stack:
        terminals: list[tuple[Bus, str]] = []
        for terminal in job["terminals"]:
            bus = Bus(
                BusSettings(
                    job["host"],
                    job["port"],
                    terminal["username"],
                    terminal["password"],
                    "terminal",
                    terminal["id"],
                    job["site"],
                ),
                announce=False,
            )
            await stack.enter_async_context(bus)
            terminals.append((bus, terminal["token"]))
        await asyncio.wait_for(
            asyncio.gather(*(bus.connected.wait() for bus, _ in terminals)), 15
        )
        return await _send(job, terminals)


async def _send(
    job: dict[str, Any], terminals: list[tuple[Bus, str]]
) -> dict[str, Any]:
    requests: list[dict[str, Any]] = job["requests"]
    outcomes: Counter[str] = Counter()
    latencies: list[float] = [0.0] * len(requests)
    replies: list[dict[str, Any] | None] = [None] * len(requests)
    topic = terminals[0][0].topics.api(job["service"], job["action"])

    async def one(index: int) -> None:
        bus, token = terminals[index % len(terminals)]
        data = dict(requests[index])
        data.setdefault("idempotency_key", uuid.uuid4().hex)
        started = time.perf_counter()
        try:
            replies[index] = await bus.request(topic, data, timeout_s=60.0, token=token)
            outcomes["ok"] += 1
        except RequestError as err:
            outcomes[err.code] += 1
        latencies[index] = (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    cpu_started = time.process_time()
    if "rate" in job:
        interval = 1.0 / job["rate"]
        tasks = []
        for index in range(len(requests)):
            delay = started + index * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    else:
        pending = iter(range(len(requests)))

        async def worker() -> None:
            for index in pending:
                await one(index)

        workers = job["in_flight"] * len(terminals)
        await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": elapsed,
        "cpu_s": time.process_time() - cpu_started,
        "outcomes": dict(outcomes),
        "latencies_ms": latencies,
        "replies": replies if job.get("keep_replies") else [],
    }


def main() -> int:
    """Read a job from stdin, run it and print its result as one JSON line."""
    job = json.loads(sys.stdin.read())
    result = asyncio.run(run_job(job))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
