// A drop page left open in headless Chromium while the venue changes the drop.
//
// Usage: node drop_state.mjs PORTAL_URL STOP_DROP START_DROP BAND_CODE
//
// The script opens /drops/STOP_DROP, prints {"ready": "stop"} and waits until
// the page shows the state "stopped"; the pytest test stops the drop once it
// reads that line. Then it opens /drops/START_DROP, a scheduled drop, prints
// {"ready": "start"} and waits until the page shows "open"; the test starts
// the drop then. When the claim form has appeared, the script claims with
// BAND_CODE. Every line is one JSON object. The last one contains what each
// page showed before and after, and every console error. The test judges it.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// The page polls its stock JSON every 2 s; this leaves room for a slow box.
const CHANGE_TIMEOUT_MS = 15_000;

const [portalUrl, stopDrop, startDrop, bandCode] = process.argv.slice(2);
const origin = new URL(portalUrl).origin;

const result = {
  stop: null,
  start: null,
  claim: null,
  foreign_requests: [],
  console_errors: [],
  page_errors: [],
  error: null,
};

function say(values) {
  process.stdout.write(JSON.stringify(values) + "\n");
}

// Read the drop's state line and which claim parts are visible.
async function readDropPage(page) {
  return page.evaluate(() => {
    const line = document.querySelector("[data-testid=drop-state]");
    const form = document.getElementById("claim");
    const visible = (element) => element !== null && element.checkVisibility();
    return {
      state: line?.dataset.state ?? null,
      state_text: line?.textContent.trim() ?? null,
      form_visible: visible(form),
      button_visible: visible(document.getElementById("claim-submit")),
      later_hint_visible: visible(document.querySelector("[data-testid=claim-later]")),
      closed_hint_visible: visible(document.querySelector("[data-testid=claim-closed]")),
    };
  });
}

// Opens ``drop``'s page, announces it, and waits until it shows ``state``.
async function followDrop(page, drop, action, state) {
  await page.goto(`${origin}/drops/${drop}`);
  const before = await readDropPage(page);
  say({ ready: action });
  await page.waitForFunction(
    (wanted) => document.querySelector("[data-testid=drop-state]")?.dataset.state === wanted,
    state,
    { timeout: CHANGE_TIMEOUT_MS },
  );
  return { before, after: await readDropPage(page) };
}

async function claim(page) {
  await page.fill("form#claim input[name=band_code]", bandCode);
  await Promise.all([page.waitForURL(`${origin}/drops/${startDrop}/claim`), page.click("button#claim-submit")]);
  const text = async (selector) => {
    const element = await page.$(selector);
    return element === null ? null : (await element.textContent()).trim();
  };
  return {
    claim_result: await text("[data-testid=claim-result]"),
    pickup_code: await text("[data-testid=pickup-code]"),
    error: await text("[data-testid=error]"),
  };
}

const userDataDir = mkdtempSync(join(tmpdir(), "nightbox-chromium-"));
let context = null;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  // Only the portal on loopback may be reached.
  await context.route(
    (url) => url.protocol !== "data:" && url.hostname !== "127.0.0.1",
    (route) => {
      result.foreign_requests.push(route.request().url());
      return route.abort("blockedbyclient");
    },
  );
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => {
    if (message.type() === "error") {
      result.console_errors.push(message.text());
    }
  });
  page.on("pageerror", (error) => result.page_errors.push(String(error)));
  result.stop = await followDrop(page, stopDrop, "stop", "stopped");
  result.start = await followDrop(page, startDrop, "start", "open");
  result.claim = await claim(page);
} catch (error) {
  result.error = String(error?.stack ?? error);
} finally {
  if (context !== null) {
    await context.close().catch(() => {});
  }
  rmSync(userDataDir, { recursive: true, force: true });
}
say(result);
