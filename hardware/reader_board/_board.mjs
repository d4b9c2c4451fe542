// The MicroPython side of the simulated ESP32: the real MicroPython
// WebAssembly interpreter behind a byte stream that behaves like the board's
// USB serial port.
//
// Usage: node _board.mjs MICROPYTHON_MJS FS_DIR MAC_HEX RESET_CAUSE
//
// stdin carries the bytes a host sends to the board, stdout the bytes the
// board sends back. The board's filesystem is loaded from FS_DIR at start. It
// is written back after every chunk of input that can run code and before the
// output of that chunk goes out, so FS_DIR is current once a host has a reply. Exit status 0: stdin closed; 2: machine.reset(); 3:
// machine.bootloader().

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modulePath, fsDir, macHex, resetCause] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(modulePath).href);

const EXIT_HARD_RESET = 2;
const EXIT_BOOTLOADER = 3;
// Directories Emscripten creates in its in-memory filesystem; they are not
// part of the board's flash filesystem.
const SYSTEM_DIRS = new Set(["dev", "proc"]);
const RAW_PROMPT = "raw REPL; CTRL-B to exit\r\n";
const WASM_MACHINE = "JS with Emscripten";
const ESP32_MACHINE = "Generic ESP32 module with ESP32";

// Python that makes the WebAssembly interpreter reply like MicroPython on an
// ESP32 where hosts look: os.uname(), the machine module, errno numbers, and
// a root directory without Emscripten's own folders.
const BOARD_SETUP = String.raw`
# Runs with its own globals dict, because MicroPython methods cannot close
# over the locals of an enclosing function.
import sys
import time
import js
import os as builtin_os
from collections import namedtuple

board = js.nightboxBoard
mac = bytes.fromhex(MAC_HEX)
uname_result = namedtuple(
    "uname_result", ("sysname", "nodename", "release", "version", "machine")
)
uname = uname_result(
    "esp32", "esp32", "1.27.0", "v1.27.0", "Generic ESP32 module with ESP32"
)
hidden = ("dev", "proc")


# The WebAssembly port's VFS raises WASI errno numbers; MicroPython on an
# ESP32 raises the newlib ones, which hosts such as mpremote decode.
WASI_TO_ESP32_ERRNO = {
    2: 13,  # EACCES
    8: 9,  # EBADF
    20: 17,  # EEXIST
    28: 22,  # EINVAL
    29: 5,  # EIO
    31: 21,  # EISDIR
    44: 2,  # ENOENT
    51: 28,  # ENOSPC
    54: 20,  # ENOTDIR
    55: 90,  # ENOTEMPTY
    63: 1,  # EPERM
}


def esp32_errno(func):
    def call(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OSError as err:
            code = WASI_TO_ESP32_ERRNO.get(err.errno)
            if code is None:
                raise
            raise OSError(code)

    return call


import builtins

builtins.open = esp32_errno(builtins.open)


def at_root(path):
    if path is None or path in ("", "."):
        return builtin_os.getcwd() == "/"
    return path.rstrip("/") == ""


class Os:
    def __getattr__(self, name):
        value = getattr(builtin_os, name)
        return esp32_errno(value) if callable(value) else value

    def uname(self):
        return uname

    def ilistdir(self, path=None):
        ilistdir = esp32_errno(builtin_os.ilistdir)
        entries = ilistdir() if path is None else ilistdir(path)
        hide = at_root(path)
        prefix = "" if path in (None, "", ".") else path.rstrip("/") + "/"
        for entry in entries:
            if hide and entry[0] in hidden:
                continue
            if len(entry) > 3:
                yield entry
            elif entry[1] == 0x4000:
                yield (entry[0], entry[1], entry[2], 0)
            else:
                # LittleFS on the ESP32 reports the file size as a fourth
                # item; the WebAssembly port's VFS does not.
                size = builtin_os.stat(prefix + entry[0])[6]
                yield (entry[0], entry[1], entry[2], size)

    def listdir(self, path=None):
        return [entry[0] for entry in self.ilistdir(path)]

class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        self.id = pin_id
        self.mode = mode
        self.pull = pull
        self._value = 0 if value is None else (1 if value else 0)

    def init(self, mode=-1, pull=-1, value=None):
        self.mode = mode
        self.pull = pull
        if value is not None:
            self._value = 1 if value else 0

    def value(self, value=None):
        if value is None:
            return self._value
        self._value = 1 if value else 0

    def __call__(self, value=None):
        return self.value(value)

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def irq(self, handler=None, trigger=3):
        return None

class RTC:
    _set = None

    def datetime(self, value=None):
        if value is not None:
            RTC._set = tuple(value)
            return None
        if RTC._set is not None:
            return RTC._set
        t = time.localtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)

class WDT:
    # Records feeds but never fires: the simulated board does not reset when
    # the firmware stops feeding it.
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0

    def feed(self):
        self.feeds += 1

class Machine:
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5

    def __init__(self):
        self.Pin = Pin
        self.RTC = RTC
        self.WDT = WDT

    def freq(self, hz=None):
        return 160000000

    def unique_id(self):
        return mac

    def reset_cause(self):
        return RESET_CAUSE

    def idle(self):
        return None

    def reset(self):
        board.request("reset")
        raise SystemExit

    def soft_reset(self):
        raise SystemExit

    def bootloader(self):
        board.request("bootloader")
        raise SystemExit

sys.modules["os"] = Os()
sys.modules["machine"] = Machine()
`;

const pending = [];
let capturing = true;
// The plain raw REPL starts its reply with "OK"; raw-paste mode does not.
let okBytesToDrop = 0;
const onOutput = (bytes) => {
  if (!capturing) return;
  if (okBytesToDrop > 0) {
    okBytesToDrop -= bytes.length;
    return;
  }
  pending.push(Buffer.from(bytes));
};
let request = null;
globalThis.nightboxBoard = {
  request: (what) => {
    request = String(what);
  },
};

// Last contents written to FS_DIR, keyed by board path without the leading
// slash; directories map to null.
const synced = new Map();
let mp = null;
let rawMode = false;
let atRawPrompt = false;
let heldInput = [];
// Code received in raw-paste mode, or null outside it.
let pasteBuffer = null;
// Bytes the host may send before it waits for a 0x01 credit: 128, the value
// the WebAssembly port's own raw-paste reply announces.
const RAW_PASTE_WINDOW = 128;

function takeOutput() {
  const data = Buffer.concat(pending);
  pending.length = 0;
  return data;
}

function emit(text) {
  pending.push(Buffer.from(text, "latin1"));
}

function loadTree(diskDir, boardDir) {
  if (!fs.existsSync(diskDir)) return;
  for (const entry of fs.readdirSync(diskDir, { withFileTypes: true })) {
    // A leftover of an interrupted write, or a name Emscripten already uses.
    if (entry.name.endsWith(".partial")) continue;
    if (boardDir === "/" && SYSTEM_DIRS.has(entry.name)) continue;
    const diskPath = path.join(diskDir, entry.name);
    const boardPath = boardDir === "/" ? `/${entry.name}` : `${boardDir}/${entry.name}`;
    const key = boardPath.slice(1);
    if (entry.isDirectory()) {
      mp.FS.mkdir(boardPath);
      synced.set(key, null);
      loadTree(diskPath, boardPath);
    } else if (entry.isFile()) {
      const data = fs.readFileSync(diskPath);
      mp.FS.writeFile(boardPath, data);
      synced.set(key, data);
    }
  }
}

function walkBoard(boardDir, found) {
  for (const name of mp.FS.readdir(boardDir)) {
    if (name === "." || name === "..") continue;
    if (boardDir === "/" && SYSTEM_DIRS.has(name)) continue;
    const boardPath = boardDir === "/" ? `/${name}` : `${boardDir}/${name}`;
    const stat = mp.FS.stat(boardPath);
    if (mp.FS.isDir(stat.mode)) {
      found.set(boardPath.slice(1), null);
      walkBoard(boardPath, found);
    } else if (mp.FS.isFile(stat.mode)) {
      found.set(boardPath.slice(1), Buffer.from(mp.FS.readFile(boardPath)));
    }
  }
}

function syncToDisk() {
  const found = new Map();
  walkBoard("/", found);
  // Deepest paths first, so files go before the folders that contain them.
  const gone = [...synced.keys()].filter((key) => !found.has(key));
  gone.sort((a, b) => b.length - a.length);
  for (const key of gone) {
    fs.rmSync(path.join(fsDir, key), { recursive: true, force: true });
    synced.delete(key);
  }
  const keys = [...found.keys()].sort((a, b) => a.length - b.length);
  for (const key of keys) {
    const data = found.get(key);
    const diskPath = path.join(fsDir, key);
    const previous = synced.get(key);
    if (data === null) {
      if (previous !== null) {
        // A file may have been replaced by a folder of the same name.
        fs.rmSync(diskPath, { force: true });
        fs.mkdirSync(diskPath, { recursive: true });
        synced.set(key, null);
      }
      continue;
    }
    if (previous instanceof Buffer && previous.equals(data)) continue;
    if (previous === null) fs.rmSync(diskPath, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(diskPath), { recursive: true });
    const partial = `${diskPath}.partial`;
    fs.writeFileSync(partial, data);
    fs.renameSync(partial, diskPath);
    synced.set(key, data);
  }
}

async function boot(enterRaw) {
  const earlier = takeOutput();
  capturing = false;
  mp = await loadMicroPython({ stdout: onOutput, stderr: onOutput, linebuffer: false });
  for (const dir of ["/home/web_user", "/home", "/tmp"]) {
    try {
      mp.FS.rmdir(dir);
    } catch {
      // Not every Emscripten build creates all of them.
    }
  }

  fs.mkdirSync(fsDir, { recursive: true });
  synced.clear();
  loadTree(fsDir, "/");

  mp.globals.set("_board_source", BOARD_SETUP);
  mp.runPython(
    `exec(_board_source, {"MAC_HEX": "${macHex}", "RESET_CAUSE": ${Number(resetCause)}})\ndel _board_source`,
  );
  capturing = true;

  mp.replInit();
  const banner = takeOutput().toString("latin1").replace(WASM_MACHINE, ESP32_MACHINE);
  pending.push(earlier);
  if (enterRaw) {
    capturing = false;
    mp.replProcessChar(0x01);
    capturing = true;
    emit(RAW_PROMPT + ">");
    rawMode = true;
    atRawPrompt = true;
  } else {
    emit(banner.replace(/^\r\n/, ""));
    rawMode = false;
    atRawPrompt = false;
  }
}

function finish(code) {
  syncToDisk();
  process.stdout.write(takeOutput(), () => process.exit(code));
}

// Returns false when the board left the interpreter (reset or bootloader).
async function feed(byte) {
  if (pasteBuffer !== null) return feedPaste(byte);
  if (rawMode && atRawPrompt && (heldInput.length > 0 || byte === 0x05)) {
    // Raw-paste request: Ctrl-E "A" Ctrl-A at the raw REPL prompt.
    heldInput.push(byte);
    const expected = [0x05, 0x41, 0x01];
    const matches = heldInput.every((b, i) => b === expected[i]);
    if (matches && heldInput.length < expected.length) return true;
    const held = heldInput;
    heldInput = [];
    if (matches) {
      startPaste();
      return true;
    }
    atRawPrompt = false;
    for (const b of held) {
      if (!(await feedInterpreter(b))) return false;
    }
    return true;
  }
  return feedInterpreter(byte);
}

// The event-driven REPL of the WebAssembly port announces raw-paste mode but
// never runs the pasted code, so the board implements the mode itself. It
// collects the code with flow control and then runs it through the plain raw
// REPL, dropping that REPL's "OK".
function startPaste() {
  pasteBuffer = [];
  emit("R\x01");
  pending.push(Buffer.from([RAW_PASTE_WINDOW & 0xff, RAW_PASTE_WINDOW >> 8]));
}

async function feedPaste(byte) {
  if (byte !== 0x04) {
    pasteBuffer.push(byte);
    if (pasteBuffer.length % RAW_PASTE_WINDOW === 0) emit("\x01");
    return true;
  }
  const code = pasteBuffer;
  pasteBuffer = null;
  emit("\x04");
  for (const b of code) {
    if (!(await feedInterpreter(b))) return false;
  }
  okBytesToDrop = 2;
  return feedInterpreter(0x04);
}

async function feedInterpreter(byte) {
  if (byte === 0x02 && rawMode) rawMode = false;
  const before = pending.length;
  const result = mp.replProcessChar(byte);
  if (pending.length > before) {
    const text = Buffer.concat(pending.slice(before)).toString("latin1");
    if (text.includes(RAW_PROMPT)) rawMode = true;
    if (text.includes(WASM_MACHINE)) {
      const fixed = text.replace(WASM_MACHINE, ESP32_MACHINE);
      pending.splice(before, pending.length - before, Buffer.from(fixed, "latin1"));
    }
    atRawPrompt = rawMode && text.endsWith(">");
  } else if (byte !== 0x05) {
    atRawPrompt = false;
  }
  if (result === 0) return true;
  if (request === "reset") {
    finish(EXIT_HARD_RESET);
    return false;
  }
  if (request === "bootloader") {
    finish(EXIT_BOOTLOADER);
    return false;
  }
  // Soft reboot (Ctrl-D on an empty line, sys.exit()): a fresh interpreter
  // reloads the filesystem, in the REPL mode the old one was in.
  syncToDisk();
  emit("MPY: soft reboot\r\n");
  await boot(rawMode);
  return true;
}

const queue = [];
let busy = false;
let stopped = false;
let inputEnded = false;

async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length > 0 && !stopped) {
    const chunk = queue.shift();
    for (const byte of chunk) {
      if (!(await feed(byte))) {
        stopped = true;
        break;
      }
    }
    if (stopped) break;
    if (chunk.includes(0x0d) || chunk.includes(0x04)) syncToDisk();
    const data = takeOutput();
    if (data.length > 0) process.stdout.write(data);
  }
  busy = false;
  if (inputEnded && !stopped) {
    // The host closed the port: keep what the board wrote and power off.
    stopped = true;
    finish(0);
  }
}

await boot(false);
process.stdout.write(takeOutput());
process.stdin.on("data", (chunk) => {
  queue.push(chunk);
  drain();
});
process.stdin.on("end", () => {
  inputEnded = true;
  drain();
});
