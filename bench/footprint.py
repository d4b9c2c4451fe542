"""Memory and start-up time of ``nightbox run`` on the demo's site.

Run ``python -m bench.footprint`` for a table or ``--json`` for one JSON line.
A short ``nightbox demo --headless`` writes a demo site file (readers, the
economy, the camera studio with its simulated camera, the guest portal and
the asset cache). ``nightbox run --config site.toml`` then starts on it with
``$NOTIFY_SOCKET`` pointing at a datagram socket that this script binds, as
systemd's would be:

- ``ready_s``: seconds from spawning the process to its ``READY=1``, which
  the box sends once its broker, services, studio and portal run;
- ``rss_mb``: VmRSS of the ``nightbox run`` process, read from /proc
  ``--settle`` seconds after READY (MiB, 2**20 bytes); ``rss_peak_mb`` is its
  VmHWM at the same moment;
- ``children_rss_mb``: the VmRSS of its descendants (mosquitto, and ffmpeg
  when a push runs) summed, with each one listed in ``children``.

The ratios are measured over limit, so below 1 meets the target. The box is
then stopped with SIGTERM and waited for. The script exits 0 whether or not
the targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.config import SiteConfig, load_config

RSS_LIMIT_MB = 120.0
READY_LIMIT_S = 2.0
DEFAULT_SETTLE_S = 5.0
DEMO_COMMAND = ("demo", "--headless", "--minutes", "5", "--speed", "600")
TIMEOUT_S = 60.0
MIB = 1024 * 1024


def write_demo_site(data_dir: Path) -> Path:
    """Run a short headless demo into ``data_dir``; return its site file."""
    completed = subprocess.run(
        [sys.executable, "-m", "appliance", *DEMO_COMMAND, "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=300,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"nightbox demo exited with {completed.returncode}: "
            f"{completed.stderr.strip()[-2000:]}"
        )
    site_file = data_dir / "site.toml"
    if not site_file.is_file():
        raise RuntimeError(f"the demo wrote no site file at {site_file}")
    return site_file


def read_status_kib(pid: int, field: str) -> int:
    """Return a ``kB`` field of /proc/PID/status, such as VmRSS, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise RuntimeError(f"/proc/{pid}/status has no {field} line")


def descendants(pid: int) -> list[int]:
    """Return the pids of every process below ``pid``, found by parent pid."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces, so the fields
        # are counted from the closing bracket.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found.extend(children)
        pending.extend(children)
    return sorted(found)


def child_memory(pid: int) -> list[dict[str, Any]]:
    """Return the name and VmRSS (MiB) of each descendant of ``pid``."""
    children = []
    for child in descendants(pid):
        try:
            name = Path(f"/proc/{child}/comm").read_text().strip()
            rss_kib = read_status_kib(child, "VmRSS")
        except (OSError, RuntimeError):
            continue
        children.append(
            {"pid": child, "name": name, "rss_mb": round(rss_kib / 1024, 1)}
        )
    return children


def services_of(config: SiteConfig, run_log: str) -> list[str]:
    """Return the services that ``nightbox run`` started for ``config``.

    The broker's kind comes from the ``Broker:`` line of ``run_log``,
    because the default mode picks mosquitto or the embedded broker.
    """
    broker: str = config.broker.mode
    for line in run_log.splitlines():
        if line.startswith("Broker: "):
            broker = line.removeprefix("Broker: ").split(" on ")[0]
    services = [f"broker ({broker})", "checkout", "kits", "wallet"]
    if config.commerce.drops:
        services.append("drops")
    if config.readers:
        services.append(f"readers ({len(config.readers)})")
    if config.scanner != "none":
        services.append(f"scanner ({config.scanner})")
    if config.studio is not None:
        services.append(f"studio ({config.studio.camera} camera)")
    if config.portal is not None:
        services.append("portal")
    services.append("assets")
    if config.sync is not None:
        services.append("sync")
    if config.fleet.operator_keys:
        services.append("fleet commands and bundles")
    return services


def wait_for_ready(receiver: socket.socket, process: subprocess.Popen[bytes]) -> None:
    """Wait for a datagram with ``READY=1``; raise if the process ends first."""
    deadline = time.monotonic() + TIMEOUT_S
    receiver.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            message = receiver.recv(4096).decode()
        except TimeoutError:
            if process.poll() is not None:
                raise RuntimeError(
                    f"nightbox run exited with {process.returncode} before READY=1"
                ) from None
            continue
        if "READY=1" in message.splitlines():
            return
    raise RuntimeError(f"nightbox run sent no READY=1 within {TIMEOUT_S} s")


def stop(process: subprocess.Popen[bytes]) -> int:
    """Stop ``process`` with SIGTERM and return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(TIMEOUT_S)


def run_benchmark(settle_s: float) -> dict[str, Any]:
    """Start the box on a demo site, measure it, stop it; return the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as folder:
        data_dir = Path(folder) / "demo"
        site_file = write_demo_site(data_dir)
        config = load_config(site_file)
        socket_path = Path(folder) / "notify.sock"
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = str(socket_path)
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(str(socket_path))
            log_path = Path(folder) / "run.log"
            with log_path.open("wb") as log:
                started = time.perf_counter()
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "appliance",
                        "run",
                        "--config",
                        str(site_file),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            try:
                wait_for_ready(receiver, process)
                ready_s = time.perf_counter() - started
                time.sleep(settle_s)
                rss_kib = read_status_kib(process.pid, "VmRSS")
                peak_kib = read_status_kib(process.pid, "VmHWM")
                children = child_memory(process.pid)
            finally:
                exit_code = stop(process)
            run_log = log_path.read_text(errors="replace")
    rss_mb = rss_kib / 1024
    children_rss_mb = sum(child["rss_mb"] for child in children)
    return {
        "benchmark": "footprint",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "settle_s": settle_s,
        "ready_s": round(ready_s, 3),
        "ready_limit_s": READY_LIMIT_S,
        "ready_ratio": round(ready_s / READY_LIMIT_S, 3),
        "rss_mb": round(rss_mb, 1),
        "rss_peak_mb": round(peak_kib / 1024, 1),
        "rss_unit": "MiB",
        "rss_limit_mb": RSS_LIMIT_MB,
        "rss_ratio": round(rss_mb / RSS_LIMIT_MB, 3),
        "children_rss_mb": round(children_rss_mb, 1),
        "children": children,
        "services": services_of(config, run_log),
        "exit_code": exit_code,
        "targets_met": rss_mb <= RSS_LIMIT_MB and ready_s <= READY_LIMIT_S,
    }


def print_table(result: dict[str, Any]) -> None:
    """Print the figures as a short table."""
    print(f"services        {', '.join(result['services'])}")
    print(
        f"ready           {result['ready_s']:>7.3f} s   "
        f"(limit {result['ready_limit_s']} s, ratio {result['ready_ratio']:.3f})"
    )
    print(
        f"RSS             {result['rss_mb']:>7.1f} MiB "
        f"(limit {result['rss_limit_mb']:.0f} MiB, ratio {result['rss_ratio']:.3f};"
        f" peak {result['rss_peak_mb']:.1f} MiB)"
    )
    for child in result["children"]:
        print(f"  child {child['name']:<9} {child['rss_mb']:>7.1f} MiB")
    print(f"targets met     {result['targets_met']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.footprint", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE_S,
        help=f"seconds to wait after READY=1 before reading memory "
        f"(default {DEFAULT_SETTLE_S})",
    )
    args = parser.parse_args(argv)
    if args.settle < 0:
        parser.error(f"--settle must be 0 or more seconds, not {args.settle}")
    result = run_benchmark(args.settle)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
