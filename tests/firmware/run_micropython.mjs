// Run a MicroPython scenario on the MicroPython WebAssembly port.
//
// Usage: node run_micropython.mjs SPEC.json
// SPEC: {"lib": {"/lib/path.py": "source", ...}, "files": {...},
//        "scenario": "source", "relay": false, "flash": null}
// With "flash", a JSON file on the host stands in for the board's flash:
// its files (base64) are loaded over "files" at start, and every file
// outside /lib is saved to it before each relay call and at the end, so
// a process killed during a relay call keeps what it had written.
// Python output goes to stdout. With "relay", the module `nbrelay` offers
// call(text): it writes "@@relay <text>" on stdout and returns the next
// line from stdin, read synchronously. A failing scenario prints its
// traceback on stderr and exits with status 1.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const packagePath = require.resolve("@micropython/micropython-webassembly-pyscript", {
  paths: [root],
});
const { loadMicroPython } = await import(packagePath);

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const write = (text) => fs.writeSync(1, text);
const mp = await loadMicroPython({
  stdout: (line) => write(line + "\n"),
  stderr: (line) => fs.writeSync(2, line + "\n"),
  heapsize: 8 * 1024 * 1024,
});

function makeDirs(file) {
  const parts = file.split("/").slice(1, -1);
  let current = "";
  for (const part of parts) {
    current += "/" + part;
    try {
      mp.FS.mkdir(current);
    } catch (err) {
      // The folder exists already.
    }
  }
}

for (const [file, text] of Object.entries({ ...spec.lib, ...spec.files })) {
  makeDirs(file);
  mp.FS.writeFile(file, text);
}

const SKIPPED = new Set(["/lib", "/dev", "/proc", "/tmp", "/home"]);

function loadFlash() {
  if (!spec.flash || !fs.existsSync(spec.flash)) {
    return;
  }
  const saved = JSON.parse(fs.readFileSync(spec.flash, "utf8"));
  for (const [file, data] of Object.entries(saved)) {
    makeDirs(file);
    mp.FS.writeFile(file, Buffer.from(data, "base64"));
  }
}

function collect(folder, out) {
  for (const name of mp.FS.readdir(folder)) {
    if (name === "." || name === "..") {
      continue;
    }
    const file = (folder === "/" ? "" : folder) + "/" + name;
    if (SKIPPED.has(file)) {
      continue;
    }
    const mode = mp.FS.stat(file).mode;
    if (mp.FS.isDir(mode)) {
      collect(file, out);
    } else if (mp.FS.isFile(mode)) {
      out[file] = Buffer.from(mp.FS.readFile(file)).toString("base64");
    }
  }
  return out;
}

function saveFlash() {
  if (!spec.flash) {
    return;
  }
  const partial = spec.flash + ".new";
  fs.writeFileSync(partial, JSON.stringify(collect("/", {})));
  fs.renameSync(partial, spec.flash);
}

loadFlash();

let pending = "";
function readLine() {
  const buffer = Buffer.alloc(65536);
  for (;;) {
    const newline = pending.indexOf("\n");
    if (newline >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      return line;
    }
    let count = 0;
    try {
      count = fs.readSync(0, buffer, 0, buffer.length, null);
    } catch (err) {
      if (err.code === "EAGAIN") {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
        continue;
      }
      throw err;
    }
    if (count === 0) {
      throw new Error("relay closed stdin");
    }
    pending += buffer.toString("utf8", 0, count);
  }
}

if (spec.relay) {
  mp.registerJsModule("nbrelay", {
    call: (text) => {
      saveFlash();
      write("@@relay " + text + "\n");
      return readLine();
    },
  });
}

let status = 0;
try {
  await mp.runPythonAsync(spec.scenario);
} catch (err) {
  fs.writeSync(2, String(err.message || err) + "\n");
  status = 1;
}
saveFlash();
process.exit(status);
