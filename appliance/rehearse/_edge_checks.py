"""Checks of the edge: broker and ACLs, readers, the box's scanner, time, sync.

Each one reads the box through its broker only, with the terminal
console's account, so the same checks run against ``nightbox run`` and the
demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from typing import Any

import aiomqtt

from appliance.rehearse._checks import Context, Outcome, failed, passed
from appliance.rehearse._link import ReaderTraffic
from appliance.tokens import CLOCK_SKEW_S
from provisioning.site_access import reader_username

_CONNECT_TIMEOUT_S = 5.0
# How long a probe that the broker must drop is given to arrive anyway.
_PROBE_WAIT_S = 1.5
# The box publishes its status every second, and this wait allows for a busy
# box.
_STATUS_WAIT_S = 5.0


async def wait_for_box_status(context: Context) -> dict[str, Any] | None:
    """Return the box's retained status, waiting a few seconds for it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_STATUS_WAIT_S):
            await context.link.status_arrived.wait()
    return context.link.box_status


async def check_broker(context: Context) -> Outcome:
    """Check logins and that a reader account cannot publish where it must not."""
    target = context.target
    link = context.link
    problems: list[str] = []
    status = await wait_for_box_status(context)
    if status is None:
        problems.append(
            f"the box's retained status on {link.bus.topics.status('box', link.box_id)}"
            f" did not arrive within {_STATUS_WAIT_S:.0f} s; is the box running?"
        )
    reader = _probe_reader(context)
    if reader is None:
        problems.append("the site lists no readers, so no reader account was probed")
        return failed("; ".join(problems))
    username = reader_username(reader)
    if await _login_accepted(context, username, secrets.token_urlsafe(12)):
        problems.append(
            f"the broker accepted account {username} with a wrong password; "
            "run the box's own broker (broker.mode 'auto' or 'mosquitto') with "
            "its generated password file"
        )
    if await _login_accepted(context, None, None):
        problems.append(
            "the broker accepted an anonymous login; set allow_anonymous false"
        )
    delivered = await _forbidden_publishes(context, username, target.password(username))
    if delivered:
        problems.append(
            f"reader account {username} could publish on {' and '.join(delivered)}: "
            f"the broker does not enforce the site's ACL; {_acl_fix(context)}"
        )
    facts = {"probed_account": username, "delivered_probes": delivered}
    if problems:
        return failed("; ".join(problems), **facts)
    return passed(
        f"broker at {target.host}:{target.port} refused a wrong password and an "
        f"anonymous login, and dropped {username}'s publishes outside its topics",
        **facts,
    )


def _acl_fix(context: Context) -> str:
    if context.target.config.broker.mode == "external":
        return "give the external broker the site's ACL"
    if context.target.config.broker.mode == "system":
        return (
            "run 'nightbox broker files --config SITE' so the system mosquitto "
            "reloads the ACL the box writes"
        )
    return "restart the box, whose own broker reads the ACL file it writes"


def _probe_reader(context: Context) -> str | None:
    readers = context.target.config.readers
    return readers[0].id if readers else None


def _client(
    context: Context, username: str | None, password: str | None
) -> aiomqtt.Client:
    config = context.target.config
    return aiomqtt.Client(
        context.target.host,
        context.target.port,
        username=username,
        password=password,
        # A client id of its own, so the real reader stays connected.
        identifier=f"{config.site_id}-rehearsal-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=_CONNECT_TIMEOUT_S,
    )


async def _login_accepted(
    context: Context, username: str | None, password: str | None
) -> bool:
    try:
        async with _client(context, username, password):
            return True
    except aiomqtt.MqttError:
        return False


async def _forbidden_publishes(
    context: Context, username: str, password: str
) -> list[str]:
    """Publish probes as ``username`` where it must not, and return those delivered.

    The console reads both probe topics, so a probe the broker let through
    reaches the rehearsal's own subscription.
    """
    link = context.link
    before = len(link.probes)
    async with _client(context, username, password) as client:
        for topic in link.probe_topics():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topic, b"rehearsal probe", qos=1)
        await asyncio.sleep(_PROBE_WAIT_S)
    return sorted(set(link.probes[before:]))


async def wait_for_window(context: Context) -> float:
    """Wait until the listening window has passed and return its length in seconds."""
    end = context.link.started_at + context.window_s
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    return time.monotonic() - context.link.started_at


def judge_traffic(
    name: str,
    traffic: ReaderTraffic,
    started_at: float,
    window_s: float,
    silence_s: float,
) -> str | None:
    """Return why a reader's traffic shows a fault, or None when it is healthy.

    A reader is silent when no batch arrived or two batches (or the window's
    ends) lie more than ``silence_s`` apart, and stalled when its batches
    report no adverts at all, because a venue is never radio-silent.
    """
    batches = traffic.batches
    if not batches:
        seen = traffic.availability or "unknown"
        return (
            f"{name} sent no batch in {window_s:.0f} s (availability {seen}); check "
            "its power, Wi-Fi and broker login"
        )
    moments = [started_at, *(batch.received_at for batch in batches), time.monotonic()]
    gap = max(later - earlier for earlier, later in itertools.pairwise(moments))
    if gap > silence_s:
        return (
            f"{name} went {gap:.1f} s without a batch, more than checkout.silence_s "
            f"({silence_s:.0f} s); check its Wi-Fi signal"
        )
    if sum(batch.heard for batch in batches) == 0:
        return (
            f"{name} sent {len(batches)} batches but heard no advert in "
            f"{window_s:.0f} s: its BLE scan has stalled; restart the reader"
        )
    return None


def _open_faults(status: dict[str, Any] | None, reader_id: str) -> list[str]:
    faults = [] if status is None else status.get("faults", [])
    return [
        str(fault.get("kind"))
        for fault in faults
        if isinstance(fault, dict) and fault.get("reader") == reader_id
    ]


async def check_readers(context: Context) -> Outcome:
    """Check that every configured reader sends batches and hears adverts."""
    config = context.target.config
    window = await wait_for_window(context)
    # The box's own scanner is listed as a reader too, and check_scanner judges it.
    readers = [reader for reader in config.readers if reader.id != config.box_id]
    if not readers:
        return failed("the site lists no readers; add [[readers]] to the site file")
    status = context.link.box_status
    problems: list[str] = []
    facts: dict[str, Any] = {}
    for reader in readers:
        traffic = context.link.traffic(reader.id)
        problem = judge_traffic(
            f"reader {reader.id}",
            traffic,
            context.link.started_at,
            window,
            config.checkout.silence_s,
        )
        faults = _open_faults(status, reader.id)
        if problem is None and faults:
            problem = f"reader {reader.id} has open faults: {', '.join(faults)}"
        if problem is not None:
            problems.append(problem)
        facts[reader.id] = {
            "batches": len(traffic.batches),
            "heard": sum(batch.heard for batch in traffic.batches),
            "availability": traffic.availability,
            "faults": faults,
        }
    if problems:
        return failed("; ".join(problems), readers=facts)
    return passed(
        f"{len(readers)} readers sent batches and heard adverts over {window:.0f} s",
        readers=facts,
    )


async def check_scanner(context: Context) -> Outcome:
    """Check the box's own BLE scanner, which reports as a reader named after it."""
    config = context.target.config
    window = await wait_for_window(context)
    if config.scanner == "none":
        return Outcome(
            True,
            "box.scanner is 'none': the box does not scan itself",
            {"scanner": "none"},
            required=False,
        )
    traffic = context.link.traffic(config.box_id)
    if config.reader(config.box_id) is None:
        return failed(
            f"the box rejects its own scanner's batches because the site lists no "
            f"reader {config.box_id!r}; add [[readers]] id = {config.box_id!r}, "
            'role = "exit" to the site file',
            scanner=config.scanner,
            batches=len(traffic.batches),
        )
    problem = judge_traffic(
        f"the box's {config.scanner} scanner",
        traffic,
        context.link.started_at,
        window,
        config.checkout.silence_s,
    )
    facts = {
        "scanner": config.scanner,
        "batches": len(traffic.batches),
        "heard": sum(batch.heard for batch in traffic.batches),
    }
    if problem is not None:
        return failed(problem, **facts)
    return passed(
        f"the {config.scanner} scanner sent {facts['batches']} batches with "
        f"{facts['heard']} adverts over {window:.0f} s",
        **facts,
    )


async def check_time(context: Context) -> Outcome:
    """Check that the box's clock is trusted and agrees with this host."""
    status = await wait_for_box_status(context)
    if status is None:
        return failed("the box published no status, so its clock is unknown")
    clock = status.get("clock") or {}
    source = str(clock.get("source", "unknown"))
    box_now = status.get("now")
    offset = None
    if isinstance(box_now, int | float):
        offset = round(float(box_now) - time.time(), 1)
    facts: dict[str, Any] = {
        "trusted": clock.get("trusted") is True,
        "source": source,
        "offset_s": offset,
    }
    if clock.get("trusted") is not True:
        return failed(
            f"the box's clock is untrusted (source {source!r}): request deadlines "
            "are not enforced and tokens count their lifetime from first use; set "
            "box.clock_trusted = true once NTP or a real-time clock keeps it right",
            **facts,
        )
    # The status is published once a second, so it lags by up to a second.
    if offset is not None and source != "simulated" and abs(offset) > CLOCK_SKEW_S:
        return failed(
            f"the box's clock is {offset:+.0f} s off this host's; set the clock "
            "right before the night",
            **facts,
        )
    return passed(f"trusted (source {source})", **facts)


async def check_sync(context: Context) -> Outcome:
    """Report whether the upstream sync link is up. The night runs without it."""
    status = await wait_for_box_status(context)
    if status is None:
        return failed("the box published no status, so its sync link is unknown")
    sync = status.get("sync")
    if not isinstance(sync, dict):
        return passed(
            "no [sync] table: the box keeps every event in its outbox until one is "
            "configured",
            configured=False,
        )
    backlog = sync.get("backlog")
    facts: dict[str, Any] = {
        "configured": True,
        "connected": sync.get("connected") is True,
        "backlog": backlog,
    }
    if sync.get("connected") is not True:
        return failed(
            f"offline: the upstream broker {sync.get('broker')} is not connected "
            f"({sync.get('last_error') or 'no error reported'}); {backlog} events "
            "wait in the outbox and go up once the link is back",
            **facts,
        )
    return passed(
        f"connected to {sync.get('broker')}, {backlog} events waiting", **facts
    )
