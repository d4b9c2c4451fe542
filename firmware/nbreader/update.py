"""Firmware updates from the box: download, check, switch, confirm.

The box publishes a retained manifest on ``nightbox/<site>/firmware/manifest``:
a version, the chunk size and every file's path, size and SHA-256. When
the version differs from the running one, the reader asks for each file
one chunk at a time on its own ``firmware/get`` topic and gets the chunk
on its ``firmware/chunk`` topic, base64 in JSON. Chunks are appended to
the file in a staging folder (``/fw/a`` or ``/fw/b``, whichever is not
running), so memory keeps one chunk and a power loss keeps what was
written. The next attempt resumes from the staged files of the same
manifest.

Each file's size and SHA-256 are checked as it completes. Only when every
file matches does the reader write ``/fw/boot.json`` (see ``main.py``)
naming the staging folder, with a trial of ``TRIAL_BOOTS`` boots, and
reset. The new firmware confirms itself once it has published its status.
A bad hash, a short chunk, an invalid manifest or a full file system
stops the download, leaves the running firmware as it is and is reported
in the status's ``update`` field and ``last_error``.
"""

import asyncio
import binascii
import hashlib
import json
import os
import time

from micropython import const

from . import FW_VERSION

BOOT_FILE = "/fw/boot.json"
FIRMWARE_ROOT = "/fw"
FOLDERS = ("/fw/a", "/fw/b")
FACTORY_FOLDER = "/lib"
# The record of the manifest being staged, so a download after a power
# loss knows whether the staged files belong to it.
OFFER_FILE = ".offer.json"
TRIAL_BOOTS = const(3)
MAX_FILES = const(64)
MAX_CHUNK_BYTES = const(4096)
MAX_PATH_CHARACTERS = const(64)
# Space kept free beyond the firmware itself, for the boot state and the
# file system's own blocks.
SPACE_MARGIN_BYTES = const(16384)
CHUNK_TIMEOUT_MS = const(5000)
CHUNK_ATTEMPTS = const(3)
# After a failed download the same manifest is tried again this much later.
RETRY_MS = const(60000)
_HASH_BLOCK_BYTES = const(512)
_POLL_STEP_MS = const(5)
_ENOSPC = const(28)
_PATH_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./"


class UpdateError(Exception):
    """A download or check that failed; the message names the file and value."""


def running_folder():
    """Return the folder that contains the running ``nbreader`` package."""
    import nbreader

    path = getattr(nbreader, "__file__", "")
    suffix = "/nbreader/__init__.py"
    if path.endswith(suffix):
        return path[: -len(suffix)] or "/"
    return FACTORY_FOLDER


def read_state():
    """Return ``/fw/boot.json`` as a dict, or None when missing or unreadable."""
    try:
        with open(BOOT_FILE) as file:
            state = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return state if type(state) is dict else None


def write_state(state):
    """Write ``/fw/boot.json`` as a temporary file renamed over the old one."""
    _write_replacing(BOOT_FILE, json.dumps(state))


def _write_replacing(path, text):
    partial = path + ".new"
    with open(partial, "w") as file:
        file.write(text)
    try:
        os.rename(partial, path)
    except OSError:
        # Only FAT refuses to rename over an existing file.
        os.remove(path)
        os.rename(partial, path)


def _exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _mkdirs(folder):
    current = ""
    for part in folder.split("/"):
        if not part:
            continue
        current += "/" + part
        try:
            os.mkdir(current)
        except OSError:
            pass


def remove_tree(path):
    """Remove a file or a folder with everything in it; a missing path is fine."""
    try:
        mode = os.stat(path)[0]
    except OSError:
        return
    if mode & 0x4000:
        for entry in os.ilistdir(path):
            remove_tree(path + "/" + entry[0])
        os.rmdir(path)
    else:
        os.remove(path)


def _hex(digest):
    return binascii.hexlify(digest).decode()


def hash_file(path):
    """Return a ``hashlib.sha256`` object fed with the bytes of ``path``.

    The file is read in small blocks, so a partly downloaded file can be
    hashed and then extended with the chunks that follow.
    """
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as file:
        while True:
            count = file.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest


def _valid_path(path):
    if type(path) is not str or not path or len(path) > MAX_PATH_CHARACTERS:
        return False
    if path[0] == "/" or path[-1] == "/":
        return False
    for character in path:
        if character not in _PATH_CHARACTERS:
            return False
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return False
    return True


def _valid_sha256(text):
    if type(text) is not str or len(text) != 64:
        return False
    for character in text:
        if character not in "0123456789abcdef":
            return False
    return True


class Offer:
    """A parsed firmware manifest: version, chunk size and files."""

    def __init__(self, version, chunk_bytes, files, text):
        self.version = version
        self.chunk_bytes = chunk_bytes
        # (path, size, sha256) in manifest order.
        self.files = files
        # The manifest data as canonical JSON, stored beside staged files.
        self.text = text

    def total(self):
        """Return the sum of the file sizes in bytes."""
        total = 0
        for _, size, _ in self.files:
            total += size
        return total


def parse_manifest(payload):
    """Parse a manifest envelope into an Offer; raise UpdateError naming the fault."""
    try:
        body = json.loads(payload)
    except ValueError:
        raise UpdateError("firmware manifest is not JSON") from None
    data = body.get("data") if type(body) is dict else None
    if type(data) is not dict:
        raise UpdateError("firmware manifest has no data object")
    version = data.get("version")
    if type(version) is not str or not 0 < len(version) <= 32:
        raise UpdateError("firmware manifest has no valid version")
    chunk_bytes = data.get("chunk_bytes")
    if type(chunk_bytes) is not int or not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise UpdateError(
            "firmware manifest chunk_bytes %r is not 1-%d"
            % (chunk_bytes, MAX_CHUNK_BYTES)
        )
    entries = data.get("files")
    if type(entries) is not list or not 0 < len(entries) <= MAX_FILES:
        raise UpdateError(
            "firmware manifest lists no files or more than %d" % MAX_FILES
        )
    files = []
    seen = set()
    for entry in entries:
        if type(entry) is not dict:
            raise UpdateError("firmware manifest has a file entry that is no object")
        path = entry.get("path")
        size = entry.get("size")
        sha256 = entry.get("sha256")
        if not _valid_path(path) or path in seen:
            raise UpdateError("firmware manifest has an invalid path %r" % (path,))
        if type(size) is not int or size < 0:
            raise UpdateError("firmware manifest has an invalid size for %s" % path)
        if not _valid_sha256(sha256):
            raise UpdateError("firmware manifest has an invalid sha256 for %s" % path)
        seen.add(path)
        files.append((path, size, sha256))
    if "nbreader/__init__.py" not in seen:
        raise UpdateError("firmware manifest lists no nbreader/__init__.py")
    text = json.dumps(
        {
            "version": version,
            "chunk_bytes": chunk_bytes,
            "files": [[path, size, sha256] for path, size, sha256 in files],
        }
    )
    return Offer(version, chunk_bytes, files, text)


def free_bytes(path="/"):
    """Return the bytes free on the file system of ``path``, or None if unknown."""
    try:
        info = os.statvfs(path)
    except (AttributeError, OSError):
        return None
    return info[0] * info[4]


class Updater:
    """Downloads the box's firmware offer and switches to it when it checks out.

    ``send(channel, payload)`` publishes on the reader's channel and raises
    OSError when the uplink is down. ``poll()`` delivers waiting messages.
    ``reset()`` restarts the board after a switch. ``on_status()`` is called
    when the state changes, so the app publishes its status; it must not
    publish at once, because manifests arrive inside umqtt's message
    callback. ``free_space`` returns free bytes (None when unknown); tests
    replace it.
    """

    def __init__(self, reader, boot, send, poll, reset, on_status=None):
        self._reader = reader
        self._boot = boot
        self._send = send
        self._poll = poll
        self._reset = reset
        self._on_status = on_status
        self.free_space = free_bytes
        self.folder = running_folder()
        self.boot_state = read_state()
        self.offer = None
        self.state = None
        self.version = None
        self.done = 0
        self.total = 0
        self.error = None
        self.failures = 0
        # Bytes found staged by an earlier, interrupted download.
        self.resumed_bytes = 0
        self.confirmed = False
        self.reset_requested = False
        self.retry_ms = RETRY_MS
        self._retry_at = None
        self._progress = None
        self._reply = None
        self._waiting = None
        self._requests = 0
        self._note_boot_state()

    def _note_boot_state(self):
        state = self.boot_state
        if state is None:
            return
        failed = state.get("failed")
        if type(failed) is str and state.get("active") == self.folder:
            self.state = "rolled-back"
            self.version = failed
            self.error = (
                "firmware %s did not report healthy within %d boots; running %s again"
                % (failed, TRIAL_BOOTS, FW_VERSION)
            )

    def data(self):
        """Return the status's ``update`` field: None, or the state and its details."""
        if self.state is None:
            return None
        return {
            "state": self.state,
            "version": self.version,
            "done": self.done,
            "total": self.total,
            "error": self.error,
        }

    def _changed(self):
        if self._on_status is not None:
            self._on_status()

    # Messages from the box.

    def on_manifest(self, payload):
        """Take a manifest message; an invalid one is reported and ignored."""
        if not payload:
            # The box withdrew its offer.
            self.offer = None
            return None
        try:
            offer = parse_manifest(payload)
        except UpdateError as err:
            self.offer = None
            self._fail(None, str(err))
            return str(err)
        self.offer = offer
        self._retry_at = None
        if offer.version == FW_VERSION and self.state == "failed":
            self.state = None
            self.error = None
            self._changed()
        return None

    def on_chunk(self, payload):
        """Keep a chunk reply for the download waiting for it."""
        if self._waiting is not None:
            self._reply = payload

    # Confirmation after a switch.

    def confirm(self):
        """Mark a firmware on trial as healthy; return True when it was on trial.

        Called after the first status publish. The boot state keeps the
        previous folder, but without ``trial`` the loader no longer counts
        boots.
        """
        if self.confirmed:
            return False
        self.confirmed = True
        state = self.boot_state
        if state is None or "trial" not in state or state.get("active") != self.folder:
            return False
        del state["trial"]
        write_state(state)
        self.state = "installed"
        self.version = FW_VERSION
        self.error = None
        print("nbreader %s: firmware %s confirmed" % (self._reader, FW_VERSION))
        self._changed()
        return True

    # The download.

    def due(self, now_ms):
        """Return True when the current offer should be downloaded now."""
        offer = self.offer
        if offer is None or self.reset_requested or offer.version == FW_VERSION:
            return False
        state = self.boot_state
        if state is not None:
            if state.get("failed") == offer.version:
                # This version already failed its trial on this board.
                return False
            if "trial" in state and not self.confirmed:
                # The running firmware is on trial, and its folder's
                # counterpart contains the previous firmware to switch back to.
                return False
        retry_at = self._retry_at
        return retry_at is None or time.ticks_diff(now_ms, retry_at) >= 0

    def staging_folder(self):
        """Return the folder a download goes to: the one that is not running."""
        return FOLDERS[1] if self.folder == FOLDERS[0] else FOLDERS[0]

    async def run(self, progress):
        """Download offers while they are due; ``progress()`` is called every step."""
        self._progress = progress
        while True:
            progress()
            if self.due(time.ticks_ms()) and await self.install(self.offer, progress):
                self._reset()
            await asyncio.sleep_ms(100)

    async def install(self, offer, progress=None):
        """Download, check and switch to ``offer``; return True after the switch.

        A failure is recorded and reported, and leaves the running firmware
        as it is.
        """
        staging = self.staging_folder()
        self.state = "downloading"
        self.version = offer.version
        self.total = offer.total()
        self.done = 0
        self.error = None
        self._changed()
        try:
            self._prepare(staging, offer)
            for path, size, sha256 in offer.files:
                await self._fetch(staging, offer, path, size, sha256, progress)
            self._switch(staging, offer)
        except UpdateError as err:
            self._fail(offer, str(err))
            return False
        except OSError as err:
            if err.args and err.args[0] == _ENOSPC:
                remove_tree(staging)
                self._fail(offer, "no space left on the file system for the firmware")
            else:
                self._fail(offer, "firmware download failed: %r" % (err,))
            return False
        except Exception as err:
            # A bug must not end the update task; the attempt is retried.
            self._fail(offer, "firmware download failed: %r" % (err,))
            return False
        return True

    def _fail(self, offer, text):
        self.state = "failed"
        if offer is not None:
            self.version = offer.version
        self.error = text
        self.failures += 1
        self._retry_at = time.ticks_add(time.ticks_ms(), self.retry_ms)
        self._waiting = None
        print("nbreader %s: firmware update failed: %s" % (self._reader, text))
        self._changed()

    def _prepare(self, staging, offer):
        record = staging + "/" + OFFER_FILE
        kept = None
        try:
            with open(record) as file:
                kept = file.read()
        except OSError:
            pass
        if kept != offer.text:
            remove_tree(staging)
            _mkdirs(staging)
            with open(record, "w") as file:
                file.write(offer.text)
        needed = SPACE_MARGIN_BYTES
        for path, size, _ in offer.files:
            staged = _size(staging + "/" + path)
            needed += size - staged if 0 <= staged <= size else size
        free = self.free_space()
        if free is not None and free < needed:
            remove_tree(staging)
            raise UpdateError(
                "not enough space for firmware %s: %d bytes free, %d needed"
                % (offer.version, free, needed)
            )

    async def _fetch(self, staging, offer, path, size, sha256, progress):
        target = staging + "/" + path
        chunk_bytes = offer.chunk_bytes
        have = _size(target)
        if have > size or (have > 0 and have % chunk_bytes and have != size):
            # Longer than the manifest, or cut inside a chunk: start again.
            os.remove(target)
            have = -1
        if have < 0:
            slash = target.rfind("/")
            _mkdirs(target[:slash])
            open(target, "wb").close()
            have = 0
        digest = hash_file(target)
        self.done += have
        self.resumed_bytes += have
        count = (size + chunk_bytes - 1) // chunk_bytes
        index = count if have == size else have // chunk_bytes
        while index < count:
            if progress is not None:
                progress()
            expected = min(chunk_bytes, size - index * chunk_bytes)
            data = await self._request(offer, path, index)
            if len(data) != expected:
                raise UpdateError(
                    "chunk %d of %s has %d bytes, expected %d"
                    % (index, path, len(data), expected)
                )
            with open(target, "ab") as file:
                file.write(data)
            digest.update(data)
            self.done += len(data)
            index += 1
        actual = _hex(digest.digest())
        if actual != sha256:
            os.remove(target)
            raise UpdateError(
                "%s of firmware %s has SHA-256 %s, the manifest lists %s"
                % (path, offer.version, actual, sha256)
            )
        staged = _size(target)
        if staged != size:
            os.remove(target)
            raise UpdateError(
                "%s of firmware %s has %d bytes, the manifest lists %d"
                % (path, offer.version, staged, size)
            )

    async def _request(self, offer, path, index):
        for _ in range(CHUNK_ATTEMPTS):
            self._requests += 1
            request_id = "%s-f%d" % (self._boot, self._requests)
            payload = '{"v":1,"id":"%s","ts":0,"src":%s,"data":%s}' % (
                request_id,
                json.dumps("reader/" + self._reader),
                json.dumps({"version": offer.version, "path": path, "index": index}),
            )
            self._reply = None
            self._waiting = (offer.version, path, index)
            self._send("firmware/get", payload)
            started = time.ticks_ms()
            while time.ticks_diff(time.ticks_ms(), started) < CHUNK_TIMEOUT_MS:
                if self._progress is not None:
                    self._progress()
                self._poll()
                reply = self._reply
                if reply is not None:
                    self._reply = None
                    data = self._chunk_data(reply, offer, path, index)
                    if data is not None:
                        self._waiting = None
                        return data
                await asyncio.sleep_ms(_POLL_STEP_MS)
        self._waiting = None
        raise UpdateError(
            "no answer from the box for chunk %d of %s after %d tries"
            % (index, path, CHUNK_ATTEMPTS)
        )

    def _chunk_data(self, reply, offer, path, index):
        # Returns the chunk's bytes, None for a reply to another request,
        # and raises UpdateError for a refusal or a malformed chunk.
        try:
            body = json.loads(reply)
        except ValueError:
            raise UpdateError("chunk %d of %s is not JSON" % (index, path)) from None
        data = body.get("data") if type(body) is dict else None
        if type(data) is not dict:
            raise UpdateError("chunk %d of %s has no data object" % (index, path))
        if (
            data.get("version") != offer.version
            or data.get("path") != path
            or data.get("index") != index
        ):
            return None
        error = data.get("error")
        if error is not None:
            raise UpdateError(
                "the box refused chunk %d of %s: %s" % (index, path, error)
            )
        text = data.get("data")
        if type(text) is not str:
            raise UpdateError("chunk %d of %s has no data" % (index, path))
        try:
            return binascii.a2b_base64(text.encode())
        except ValueError:
            raise UpdateError(
                "chunk %d of %s is not valid base64" % (index, path)
            ) from None

    def _switch(self, staging, offer):
        self.state = "switching"
        self.done = self.total
        self._changed()
        write_state(
            {
                "active": staging,
                "version": offer.version,
                "previous": self.folder,
                "previous_version": FW_VERSION,
                "trial": TRIAL_BOOTS,
            }
        )
        print(
            "nbreader %s: firmware %s staged in %s; resetting"
            % (self._reader, offer.version, staging)
        )
        self.reset_requested = True
