// A guest's night on the portal of a running `nightbox demo`, in headless
// Chromium driven by playwright-core.
//
// Usage: node walkthrough.mjs PORTAL_FILE KIT_TIMEOUT_S
//
// PORTAL_FILE is what `nightbox demo --portal-file` wrote. The guest opts in,
// waits on /me until the demo's kit station hands them a kit, reads their
// coupon, claims the late drop with one tap and opens the item's try-on page
// until <model-viewer> has loaded the model from the box. The script prints
// one JSON object with what each step saw, every request the browser made
// and every console error and CSP violation. It judges nothing itself: the
// pytest test asserts on the output. A step that cannot go on records its
// error and the script stops there, still printing the JSON.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
// Debian's chromium, headless, with nothing that phones home: no QUIC, no
// component updates, no sync, no background networking.
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
const STEP_TIMEOUT_MS = 20_000;
// One reload of /me a second fetches three files (the page, its CSS and its
// script), under the portal's default limit of 240 requests a minute.
const POLL_INTERVAL_MS = 1000;
const GUEST_EMAIL = "portal-guest@example.org";

const [portalFile, kitTimeoutText] = process.argv.slice(2);
const portal = JSON.parse(readFileSync(portalFile, "utf8"));
const kitTimeoutMs = Number(kitTimeoutText) * 1000;
const origin = new URL(portal.url).origin;

const result = {
  origin,
  steps: {},
  requests: [],
  foreign_requests: [],
  failed_requests: [],
  console_errors: [],
  page_errors: [],
  csp_violations: [],
  error: null,
};

function record(name, values) {
  result.steps[name] = { ...values, at: Date.now() / 1000 };
}

// Keeps every request the browser makes. One to another host is aborted
// before it leaves the machine and listed as foreign.
async function watchNetwork(context) {
  context.on("request", (request) => {
    result.requests.push({ url: request.url(), method: request.method() });
  });
  context.on("requestfailed", (request) => {
    result.failed_requests.push({
      url: request.url(),
      error: request.failure()?.errorText ?? "",
    });
  });
  await context.route(
    (url) => url.protocol !== "data:" && url.protocol !== "blob:" && url.hostname !== "127.0.0.1",
    (route) => {
      result.foreign_requests.push(route.request().url());
      return route.abort("blockedbyclient");
    },
  );
}

function watchPage(page) {
  page.on("console", (message) => {
    if (message.type() === "error") {
      result.console_errors.push({
        text: message.text(),
        url: message.location().url ?? "",
      });
    }
  });
  page.on("pageerror", (error) => result.page_errors.push(String(error)));
}

// Reports CSP violations from inside each page, with the directive and the
// blocked resource, which console messages do not always carry.
const cspListener = () => {
  document.addEventListener("securitypolicyviolation", (event) => {
    console.error(
      "CSP violation: " +
        JSON.stringify({
          directive: event.effectiveDirective,
          blocked: event.blockedURI,
          source: event.sourceFile,
          line: event.lineNumber,
        }),
    );
  });
};

async function text(page, selector) {
  return (await page.locator(selector).first().textContent({ timeout: STEP_TIMEOUT_MS })).trim();
}

async function optIn(page) {
  await page.goto(`${origin}/optin`);
  const consent = await text(page, "[data-testid=consent-text]");
  await page.fill("form#optin input[name=band_code]", portal.band_code);
  await page.fill("form#optin input[name=email]", GUEST_EMAIL);
  await page.check("form#optin input[name=consent]");
  await Promise.all([
    page.waitForURL(`${origin}/me`, { timeout: STEP_TIMEOUT_MS }),
    page.click("button#optin-submit"),
  ]);
  record("optin", {
    consent_text: consent,
    url: page.url(),
    kit_status: await text(page, "[data-testid=kit-status]"),
    coupons: await page.locator("[data-testid=coupon-code]").count(),
  });
}

async function waitForKit(page) {
  const deadline = Date.now() + kitTimeoutMs;
  let polls = 0;
  let status = "";
  for (;;) {
    polls += 1;
    status = await text(page, "[data-testid=kit-status]");
    if (!status.includes("not yet") || Date.now() > deadline) {
      break;
    }
    await page.waitForTimeout(POLL_INTERVAL_MS);
    await page.goto(`${origin}/me`);
  }
  const codes = page.locator("[data-testid=coupon] [data-testid=coupon-code]");
  record("kit", {
    kit_status: status,
    polls,
    url: page.url(),
    coupon_codes: await codes.allTextContents(),
    balance: await text(page, "[data-testid=balance]"),
  });
}

async function claimDrop(page) {
  await page.goto(`${origin}/drops/${portal.drop}`);
  const stock = await text(page, "[data-testid=stock]");
  await Promise.all([
    page.waitForURL((url) => url.pathname !== `/drops/${portal.drop}`, {
      timeout: STEP_TIMEOUT_MS,
    }),
    page.click("form#claim button#claim-submit"),
  ]);
  const error = page.locator("[data-testid=error]");
  record("claim", {
    stock_before: stock,
    url: page.url(),
    claim_result: await text(page, "[data-testid=claim-result]"),
    pickup_code: await text(page, "[data-testid=pickup-code]"),
    error: (await error.count()) ? (await error.first().textContent()).trim() : null,
  });
}

// Resolves on model-viewer's `load` event, or at once when it already fired.
// An `error` event resolves with its detail.
function loadEvent(element, timeoutMs) {
  return new Promise((resolve) => {
    if (element.loaded) {
      resolve({ event: "already-loaded" });
      return;
    }
    element.addEventListener("load", () => resolve({ event: "load" }), { once: true });
    element.addEventListener(
      "error",
      (event) => resolve({ event: "error", detail: String(event.detail?.type ?? event.detail) }),
      { once: true },
    );
    setTimeout(() => resolve({ event: "timeout" }), timeoutMs);
  });
}

async function describeResponse(response) {
  const headers = await response.allHeaders();
  const body = await response.body().catch(() => null);
  return {
    url: response.url(),
    status: response.status(),
    cache_control: headers["cache-control"] ?? null,
    etag: headers["etag"] ?? null,
    content_type: headers["content-type"] ?? null,
    bytes: body === null ? null : body.length,
    magic: body === null ? null : body.subarray(0, 4).toString("latin1"),
  };
}

async function tryOn(page) {
  const modelResponses = [];
  page.on("response", (response) => {
    if (new URL(response.url()).pathname.startsWith("/assets/")) {
      modelResponses.push(response);
    }
  });
  await page.goto(`${origin}/items/${portal.item}/try-on`);
  const viewer = page.locator("model-viewer[data-testid=model]");
  const src = await viewer.getAttribute("src", { timeout: STEP_TIMEOUT_MS });
  const loaded = await viewer.evaluate(loadEvent, STEP_TIMEOUT_MS);

  // modelIsVisible turns true on the first frame drawn after loading.
  await page
    .waitForFunction(
      () => document.querySelector("model-viewer[data-testid=model]")?.modelIsVisible === true,
      null,
      { timeout: STEP_TIMEOUT_MS },
    )
    .catch(() => {});
  const state = await viewer.evaluate((element) => ({
    loaded: element.loaded,
    model_is_visible: element.modelIsVisible,
    defined: customElements.get("model-viewer") !== undefined,
  }));
  const responses = await Promise.all(modelResponses.map(describeResponse));
  record("try_on", { src, url: page.url(), load: loaded, ...state, model_responses: responses });
}

const userDataDir = mkdtempSync(join(tmpdir(), "nightbox-chromium-"));
let context = null;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  await watchNetwork(context);
  await context.addInitScript(cspListener);
  const page = context.pages()[0] ?? (await context.newPage());
  watchPage(page);
  await optIn(page);
  await waitForKit(page);
  await claimDrop(page);
  await tryOn(page);
} catch (error) {
  result.error = String(error?.stack ?? error);
} finally {
  if (context !== null) {
    await context.close().catch(() => {});
  }
  rmSync(userDataDir, { recursive: true, force: true });
}
result.csp_violations = result.console_errors.filter((entry) =>
  /Content Security Policy|CSP violation/i.test(entry.text),
);
process.stdout.write(JSON.stringify(result) + "\n");
