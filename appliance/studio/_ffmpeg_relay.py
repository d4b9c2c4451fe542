"""The ffmpeg child process that sends a push for a protocol PyAV lacks.

The FFmpeg libraries that PyAV bundles may lack a protocol (PyAV 18's build
has no ``srt``), while the ``ffmpeg`` program may have it (Debian's ffmpeg
links libsrt). ``StreamPush`` then muxes MPEG-TS in the box's process and
writes it into the standard input of an ``ffmpeg`` child, which copies it to
the URL. This module starts and stops that child and writes to it, never
blocking the push for longer than its I/O timeout. It reports when the
child has connected. It turns the child's error lines into log lines and a
failure reason, with URLs cut to ``scheme://host:port`` and secrets masked.

It also contains ``redact_url`` and ``describe_error``, which the push uses
for its own messages, so that both modules report URLs and errors the same
way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO
from urllib.parse import parse_qsl, urlsplit

# The relay is part of the push, so one logger name covers every line about
# a push.
_log = logging.getLogger("appliance.studio.push")

# ffmpeg analyses this much of its input (in microseconds) before it opens
# the output. Its default of 5 s would hold back every connection that long.
_RELAY_ANALYZE_US = 500_000
# How long the ffmpeg child may take to exit after its input is closed,
# and again after it is killed.
RELAY_EXIT_GRACE_S = 1.0
# How often a blocked write to the child checks whether the push is closing.
_RELAY_WRITE_POLL_S = 0.1
# Error lines logged per ffmpeg child. The rest are only counted.
_RELAY_LOGGED_LINES = 20
# The prefix of an ffmpeg or libsrt message: a log context with an address,
# or a clock time with the SRT thread's name.
_LOG_PREFIX = re.compile(r"^(\[[\w-]+ @ 0x[0-9a-f]+\] |[\d:.]+/SRT:\S+ )")
# Query parameters of an srt:// URL that carry secrets.
_SECRET_QUERY_KEYS = ("passphrase", "streamid", "srt_streamid")
_SECRET_MIN_CHARS = 4
# A URL inside a message, without the punctuation that may follow it.
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]*[^\s'\":,.;]", re.IGNORECASE)


class _PipeWriter:
    """The ffmpeg child's standard input as a file object for PyAV.

    A write that cannot finish within ``timeout_s`` raises TimeoutError, so
    a stalled child ends the connection like a stalled socket does. Once
    the push is closing, data that does not fit into the pipe is discarded.
    """

    def __init__(
        self, pipe: IO[bytes], timeout_s: float, stopping: threading.Event
    ) -> None:
        self._fd = pipe.fileno()
        os.set_blocking(self._fd, False)
        self._timeout_s = timeout_s
        self._stopping = stopping

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        deadline = time.monotonic() + self._timeout_s
        while True:
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(self._fd, view) :]
            if not view or self._stopping.is_set():
                return len(data)
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError(
                    f"ffmpeg took no data for {self._timeout_s:.1f} s, so the link "
                    "is taken as stalled"
                )
            select.select([], [self._fd], [], min(remaining_s, _RELAY_WRITE_POLL_S))


class FfmpegRelay:
    """An ffmpeg child that reads MPEG-TS on its standard input and sends it on.

    ffmpeg writes progress reports to a pipe of its own once the output is
    open. For SRT that is after the handshake with the peer, so the first
    report calls ``on_connected``. Error lines on its standard error are
    logged with URLs cut to ``scheme://host:port`` and the secrets of
    ``url`` masked, and the first and last are kept.
    """

    def __init__(
        self,
        ffmpeg: str,
        url: str,
        output_format: str,
        *,
        target: str,
        on_connected: Callable[[], None],
        stopping: threading.Event,
        io_timeout_s: float,
    ) -> None:
        self.target = target
        # ffmpeg's first error line names the cause, later ones what failed
        # because of it (for a rejected passphrase: the connection).
        self.first_error: str | None = None
        self.last_error: str | None = None
        self.killed = False
        self._secrets = _query_secrets(urlsplit(url).query)
        self._on_connected = on_connected
        self._logged_lines = 0
        self._unlogged_lines = 0
        progress_read, progress_write = os.pipe()
        # NOTE: the URL, passphrase included, is in the child's argument list,
        # which local users of the box can read (ps, /proc) while it runs,
        # because ffmpeg 5.1 takes an output URL and its options only there.
        argv = [
            ffmpeg,
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-progress",
            f"pipe:{progress_write}",
            "-analyzeduration",
            str(_RELAY_ANALYZE_US),
            "-f",
            "mpegts",
            "-i",
            "pipe:0",
            "-c",
            "copy",
            "-f",
            output_format,
            url,
        ]
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(progress_write,),
            )
        except OSError:
            os.close(progress_read)
            raise
        finally:
            os.close(progress_write)
        assert self.process.stdin is not None and self.process.stderr is not None
        self.writer = _PipeWriter(self.process.stdin, io_timeout_s, stopping)
        self._readers = (
            threading.Thread(
                target=self._read_errors,
                args=(self.process.stderr,),
                name=f"push {target} ffmpeg errors",
                daemon=True,
            ),
            threading.Thread(
                target=self._read_progress,
                args=(os.fdopen(progress_read, "rb"),),
                name=f"push {target} ffmpeg progress",
                daemon=True,
            ),
        )
        for reader in self._readers:
            reader.start()
        _log.info("push to %s: started ffmpeg (pid %d)", target, self.process.pid)

    def exited(self) -> bool:
        """Return whether the child has exited."""
        return self.process.poll() is not None

    def stop(self) -> None:
        """Close the child's input, kill it if it does not exit, and reap it."""
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(RELAY_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.process.kill()
            self.process.wait(RELAY_EXIT_GRACE_S)
        for reader in self._readers:
            reader.join(RELAY_EXIT_GRACE_S)
        if self._unlogged_lines:
            _log.warning(
                "push to %s: ffmpeg wrote %d more error lines",
                self.target,
                self._unlogged_lines,
            )

    def failure_reason(self, error: Exception | None) -> str:
        """Return why the child stopped sending, ``error`` being what our side saw."""
        if isinstance(error, TimeoutError):
            return str(error)
        if self.killed:
            return describe_error(error) if error is not None else "ffmpeg did not exit"
        status = self.process.returncode
        if self.first_error is None or self.last_error is None:
            return f"ffmpeg exited with status {status} and wrote no error message"
        detail = _LOG_PREFIX.sub("", self.first_error)
        if self.last_error != self.first_error:
            detail += f" (last error: {_LOG_PREFIX.sub('', self.last_error)})"
        return f"ffmpeg exited with status {status}: {detail}"

    def _scrub(self, text: str) -> str:
        """Return ``text`` with URLs cut to scheme, host and port, and no secrets."""
        text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _read_errors(self, stream: IO[bytes]) -> None:
        with stream:
            for raw_line in stream:
                line = self._scrub(raw_line.decode("utf-8", "replace").strip())
                if not line:
                    continue
                if self.first_error is None:
                    self.first_error = line
                self.last_error = line
                if self._logged_lines >= _RELAY_LOGGED_LINES:
                    self._unlogged_lines += 1
                    continue
                self._logged_lines += 1
                _log.warning("push to %s: ffmpeg: %s", self.target, line)

    def _read_progress(self, stream: IO[bytes]) -> None:
        reported = False
        with stream:
            for raw_line in stream:
                if not reported and raw_line.startswith(b"progress="):
                    reported = True
                    self._on_connected()


def ffmpeg_protocol_problem(ffmpeg: str, scheme: str) -> str | None:
    """Return why ``ffmpeg`` cannot send to ``scheme``, or None when it can."""
    try:
        result = subprocess.run(
            [ffmpeg, "-hide_banner", "-protocols"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except FileNotFoundError:
        return f"{ffmpeg} was not found"
    except (OSError, subprocess.SubprocessError) as err:
        return f"running {ffmpeg} -protocols failed ({describe_error(err)})"
    if scheme in _output_protocols(result.stdout):
        return None
    return f"{ffmpeg} -protocols lists no {scheme} output protocol"


def _output_protocols(listing: str) -> set[str]:
    """Return the names under ``Output:`` in what ``ffmpeg -protocols`` prints."""
    protocols = set()
    in_output = False
    for line in listing.splitlines():
        name = line.strip()
        if name.endswith(":"):
            in_output = name == "Output:"
        elif in_output and name:
            protocols.add(name)
    return protocols


def _query_secrets(query: str) -> tuple[str, ...]:
    """Return the secret values in a URL query, both as written and decoded.

    Values shorter than ``_SECRET_MIN_CHARS`` are left out, because
    replacing them would garble every message (SRT passphrases have at
    least 10 characters).
    """
    pairs = list(parse_qsl(query))
    pairs += [field.partition("=")[::2] for field in query.split("&")]
    secrets = {
        value
        for key, value in pairs
        if key.lower() in _SECRET_QUERY_KEYS and len(value) >= _SECRET_MIN_CHARS
    }
    # Longer values first, so that replacing a shorter secret that is part of
    # a longer one leaves nothing of the longer one.
    return tuple(sorted(secrets, key=len, reverse=True))


def redact_url(url: str) -> str:
    """Return ``scheme://host:port`` of ``url``, without path, query or login."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def describe_error(err: BaseException) -> str:
    """Return the error's type and text, without the file name of an OSError."""
    # str() of an OSError appends its file name, which for a push would be
    # the URL with its stream key, so only the error's own text is kept.
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    return f"{type(err).__name__}: {err}"
