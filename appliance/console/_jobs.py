"""Long console jobs: provisioning a reader board while the box keeps serving.

``provisioning.readers.provision_reader`` flashes and copies for a minute or
more, so it runs in a worker thread. Each stage is published on
``nightbox/<site>/box/<box>/console/jobs/<job>`` (QoS 1, not retained), and
the last message of every job is kept in the store, so a console that
reconnected, even after the box restarted, catches up with ``console/jobs``.
After a reader was provisioned the box restarts its services, and its
broker, to serve the new reader.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import orjson

from appliance._tasks import cancel_and_wait
from appliance.errors import NightboxError
from appliance.store import Transaction
from provisioning.readers import ReaderRequest, provision_reader

if TYPE_CHECKING:
    from appliance.runtime import Box

_LOGGER = logging.getLogger(__name__)

KIND_READER_PROVISION = "reader-provision"
# Jobs listed by console/jobs, newest first.
MAX_LISTED_JOBS = 20
# How long a stopping box waits for a running job to finish.
STOP_WAIT_S = 10.0
_PUBLISH_TIMEOUT_S = 5.0
# Percentages of a long stage are published in steps of this size.
_PERCENT_STEP = 10


class _JobProgress:
    """Receives provisioning's stages in the worker thread and posts them."""

    def __init__(self, jobs: ConsoleJobs, job_id: str) -> None:
        self._jobs = jobs
        self._job_id = job_id
        self._shown: dict[tuple[str, str], int] = {}

    def stage(self, name: str, message: str) -> None:
        self._jobs.post_from_thread(self._job_id, name, message)

    def percent(self, name: str, label: str, done: int, total: int) -> None:
        value = 100 if total <= 0 else min(100, done * 100 // total)
        step = value - value % _PERCENT_STEP
        if self._shown.get((name, label), -1) < step:
            self._shown[(name, label)] = step
            self._jobs.post_from_thread(self._job_id, name, f"{label} {step}%")


class ConsoleJobs:
    """Runs console jobs and publishes and stores their progress."""

    def __init__(self, box: Box, config_path: Path | None) -> None:
        self._box = box
        self._config_path = config_path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._kinds: dict[str, str] = {}
        self._open = False

    @property
    def has_site_file(self) -> bool:
        """Whether the box runs from a site file that provisioning can change."""
        return self._config_path is not None

    def start(self) -> None:
        """Accept jobs from now on."""
        self._loop = asyncio.get_running_loop()
        self._open = True

    async def stop(self) -> None:
        """Wait a little for running jobs, then record the rest as interrupted."""
        running = [task for task in self._tasks.values() if not task.done()]
        if running:
            await asyncio.wait(running, timeout=STOP_WAIT_S)
        for job_id, task in list(self._tasks.items()):
            if task.done():
                continue
            await cancel_and_wait(task)
            self._finish(
                job_id,
                ok=False,
                error="the box stopped while the job ran; run it again",
                reader=None,
                stage="interrupted",
            )
        self._open = False
        if self._sending:
            await asyncio.wait(list(self._sending), timeout=_PUBLISH_TIMEOUT_S)

    def running(self, kind: str) -> str | None:
        """Return the id of a running job of ``kind``, or None."""
        for job_id, task in self._tasks.items():
            if not task.done() and self._kinds.get(job_id) == kind:
                return job_id
        return None

    def start_reader_provision(
        self, transaction: Transaction, request: ReaderRequest
    ) -> str:
        """Queue provisioning the board of ``request``; return the job id.

        The job's first message is stored in ``transaction``, the request's
        own, and the job starts on the event loop's next pass, after the
        request's commit.
        """
        if self._config_path is None or self._loop is None:
            raise NightboxError("this box runs without a site file")
        job_id = uuid.uuid4().hex
        self._kinds[job_id] = KIND_READER_PROVISION
        body = self._message(
            job_id, "queued", f"provisioning the board on {request.port}", None
        )
        self._store_message(transaction, body)
        self._schedule_publish(body)
        self._tasks[job_id] = self._loop.create_task(
            self._provision(job_id, self._config_path, request),
            name=f"console-job-{job_id[:8]}",
        )
        return job_id

    def recent(self) -> list[dict[str, Any]]:
        """Return the last message of the latest jobs, newest first."""
        rows = self._box.store.query(
            "SELECT message FROM console_jobs ORDER BY updated_at DESC LIMIT ?",
            (MAX_LISTED_JOBS,),
        )
        return [orjson.loads(row[0]) for row in rows]

    def post_from_thread(self, job_id: str, stage: str, message: str) -> None:
        """Post a stage from the worker thread to the event loop."""
        loop = self._loop
        if loop is None or not self._open:
            return
        try:
            loop.call_soon_threadsafe(self._record, job_id, stage, message, None)
        except RuntimeError:
            # The loop closed while the job ran; the box is gone.
            _LOGGER.warning("Job %s: stage %s after the box stopped", job_id, stage)

    async def _provision(
        self, job_id: str, config_path: Path, request: ReaderRequest
    ) -> None:
        progress = _JobProgress(self, job_id)
        _LOGGER.info("Job %s: provisioning a reader on %s", job_id, request.port)
        try:
            result = await asyncio.to_thread(
                provision_reader, config_path, request, progress
            )
        except (NightboxError, OSError, ValueError) as err:
            _LOGGER.warning("Job %s: reader provisioning failed: %s", job_id, err)
            self._finish(
                job_id,
                ok=False,
                error=str(err),
                reader=getattr(err, "reader_id", None),
                stage="failed",
            )
            return
        except Exception as err:  # a bug must end the job, not hide it
            _LOGGER.exception("Job %s: reader provisioning failed: %s", job_id, err)
            self._finish(
                job_id,
                ok=False,
                error=f"internal error: {err}",
                reader=None,
                stage="failed",
            )
            return
        reader_id = result.reader.id
        self._finish(job_id, ok=True, error=None, reader=reader_id, stage="done")
        if result.box_pid != os.getpid():
            # provision_reader signals the process that holds the box's lock
            # file (nightbox run) with SIGHUP; a box without that lock
            # restarts through remote management's restart request.
            _LOGGER.info("Restarting the box's services to serve reader %s", reader_id)
            self._box.management.restart_requested.set()

    def _finish(
        self,
        job_id: str,
        *,
        ok: bool,
        error: str | None,
        reader: str | None,
        stage: str,
    ) -> None:
        message = (
            f"reader {reader} is ready; the box restarts to serve it"
            if ok
            else f"failed: {error}"
        )
        self._record(job_id, stage, message, reader, done=True, ok=ok, error=error)

    def _record(
        self,
        job_id: str,
        stage: str,
        message: str,
        reader: str | None,
        *,
        done: bool = False,
        ok: bool | None = None,
        error: str | None = None,
    ) -> None:
        body = self._message(
            job_id, stage, message, reader, done=done, ok=ok, error=error
        )
        try:
            with self._box.store.transaction() as transaction:
                self._store_message(transaction, body)
        except sqlite3.Error as err:
            _LOGGER.warning("Job %s: could not store stage %s: %s", job_id, stage, err)
        self._schedule_publish(body)

    def _message(
        self,
        job_id: str,
        stage: str,
        message: str,
        reader: str | None,
        *,
        done: bool = False,
        ok: bool | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        return {
            "job": job_id,
            "kind": self._kinds.get(job_id, KIND_READER_PROVISION),
            "stage": stage,
            "message": message,
            "done": done,
            "ok": ok,
            "error": error,
            "reader": reader,
        }

    @staticmethod
    def _store_message(transaction: Transaction, body: dict[str, Any]) -> None:
        transaction.execute(
            "INSERT INTO console_jobs (id, kind, message, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " message = excluded.message, updated_at = excluded.updated_at",
            (body["job"], body["kind"], orjson.dumps(body).decode(), time.time()),
        )

    def _schedule_publish(self, body: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(body))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, body: dict[str, Any]) -> None:
        bus = self._box.bus
        topic = bus.topics.box_topic(
            self._box.config.box_id, f"console/jobs/{body['job']}"
        )
        try:
            await asyncio.wait_for(
                bus.publish_json(topic, {"data": body}), _PUBLISH_TIMEOUT_S
            )
        except (aiomqtt.MqttError, TimeoutError) as err:
            _LOGGER.warning(
                "Job %s: could not publish stage %s: %s",
                body["job"],
                body["stage"],
                err,
            )
