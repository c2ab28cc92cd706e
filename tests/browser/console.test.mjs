// Browser test of the s2-sink web console (`GET /`), driven by Debian's Chromium through
// playwright-core (no bundled browser).
//
// Starts s2-lite and s2-sink (with an api_token), sends messages to a sink whose stream
// does not exist (S2 answers 404 stream_not_found) and to a good sink (one message over
// 1 MiB fails locally with record_too_large and blocks its group), then drives the console:
// token prompt, overview, Messages tab filtered by Failed, the message pane's error, and
// Acknowledge (with its confirmation step), after which the blocked group drains. A third sink
// with `max_retry_count = 1` and a missing stream discards what it gets: the Discarded tab
// lists them (paged), shows one's payload and error read-only, as it does a message discarded
// from the Messages tab; a Postgres source that cannot connect shows in the overview with its
// error and without its password; the view (sink, tab, filters,
// selected message) lives in the URL: back/forward, reload and a copied link in a fresh tab
// open the same view, and the API token never appears in any URL.
//
// Env: S2_LITE_BIN (default ~/.cache/s2-sink-tools/bin/server), S2SINK_BIN (default
// target/debug/s2-sink, built if missing), CHROMIUM_BIN (default /usr/bin/chromium),
// S2SINK_SCREENSHOTS=1 writes docs/console-overview.png and docs/console-message.png.
//
// Run: node --test tests/browser/console.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM_BIN, freePort, ROOT, S2SINK_BIN } from "./support.mjs";
// scripts/test.sh runs this file only; the cross-site (CSRF) browser test runs with it.
import "./csrf.test.mjs";

const S2_LITE_BIN = process.env.S2_LITE_BIN || path.join(os.homedir(), ".cache/s2-sink-tools/bin/server");
const SCREENSHOTS = ["1", "true", "yes"].includes((process.env.S2SINK_SCREENSHOTS || "").toLowerCase());
const API_TOKEN = "console-test-token-" + Math.random().toString(36).slice(2);
const UI_TIMEOUT = 15_000;
const HOSTILE_GROUP = '<img src=x onerror="window.__xss=1">';
const PG_PASSWORD = "pg-sekret-" + Math.random().toString(36).slice(2);

const children = [];
const tmpDirs = [];
let browser = null;

function tmpDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

/** Spawns a child in its own process group, logging to `logPath`. */
function start(name, bin, args, opts) {
  const log = fs.openSync(opts.logPath, "a");
  const child = spawn(bin, args, {
    cwd: opts.cwd,
    env: { ...process.env, ...(opts.env || {}) },
    stdio: ["ignore", log, log],
    detached: true,
  });
  fs.closeSync(log);
  child.testName = name;
  child.logPath = opts.logPath;
  child.exited = null;
  child.on("exit", (code, signal) => { child.exited = { code, signal }; });
  child.on("error", (e) => { child.exited = { error: e.message }; });
  children.push(child);
  return child;
}

function tail(file, n = 40) {
  try { return fs.readFileSync(file, "utf8").split("\n").slice(-n).join("\n"); } catch { return "(no log)"; }
}

function killAll() {
  for (const c of children) {
    if (c.exited == null && c.pid) {
      try { process.kill(-c.pid, "SIGKILL"); } catch { try { c.kill("SIGKILL"); } catch { /* gone */ } }
    }
  }
}
// Also on an unexpected exit (uncaught error, Ctrl-C): never leave servers behind.
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { killAll(); process.exit(130); });

async function waitFor(what, fn, { timeout = 20_000, interval = 100, child = null } = {}) {
  const deadline = Date.now() + timeout;
  let last = null;
  for (;;) {
    if (child && child.exited) {
      throw new Error(`${what}: ${child.testName} exited (${JSON.stringify(child.exited)}); log:\n${tail(child.logPath)}`);
    }
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}` + (last ? ` (last error: ${last.message})` : "") +
        (child ? `; ${child.testName} log:\n${tail(child.logPath)}` : ""));
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

async function http(method, url, { body, headers = {}, expect } = {}) {
  const res = await fetch(url, {
    method,
    headers: body !== undefined ? { "content-type": "application/json", ...headers } : headers,
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  if (expect !== undefined && res.status !== expect) {
    throw new Error(`${method} ${url}: expected HTTP ${expect}, got ${res.status}: ${text.slice(0, 500)}`);
  }
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

function envelope(id, lsn, record) {
  return {
    action: "insert",
    record: { id, ...record },
    changes: null,
    metadata: {
      table_schema: "public", table_name: "orders", commit_timestamp: "2026-11-27T12:00:00Z",
      commit_lsn: lsn, commit_idx: 0, record_pks: [String(id)], idempotency_key: `${lsn}:0`,
      transaction_annotations: null, enrichment: null,
      consumer: { id: "c1", name: "orders_s2", annotations: {} },
      database: { id: "d1", name: "shop", annotations: {}, database: "shop", hostname: "db.local" },
    },
  };
}

/** Runs one step; a failure names the step. */
async function step(name, fn) {
  const t0 = Date.now();
  try {
    const v = await fn();
    console.log(`  ok   ${name} (${Date.now() - t0} ms)`);
    return v;
  } catch (e) {
    console.log(`  FAIL ${name}`);
    e.message = `step "${name}" failed: ${e.message}`;
    throw e;
  }
}

test("web console: token prompt, failed messages and their S2 errors, acknowledge drains the group", { timeout: 150_000 }, async () => {
  try {
    await run();
  } finally {
    if (browser) await browser.close().catch(() => {});
    killAll();
    for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
  }
});

/** A console tab: records page errors, CSP violations and every URL it is at. */
async function newConsolePage(ctx) {
  const p = await ctx.newPage();
  p.setDefaultTimeout(UI_TIMEOUT);
  const pageErrors = [];
  p.on("pageerror", (e) => pageErrors.push(e.message));
  // The console runs under a strict Content-Security-Policy: any violation is an error.
  p.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) pageErrors.push("CSP: " + m.text());
  });
  p.pageErrors = pageErrors;
  p.seenUrls = [];
  p.on("framenavigated", (f) => { if (f === p.mainFrame()) p.seenUrls.push(f.url()); });
  // The console confirms in-page; a native dialog would also be accepted.
  p.on("dialog", (d) => d.accept());
  return p;
}

async function run() {
  const work = tmpDir("s2sink-console-");

  // ---------- s2-lite ----------
  const s2 = await step("start s2-lite", async () => {
    assert.ok(fs.existsSync(S2_LITE_BIN), `s2-lite binary not found at ${S2_LITE_BIN} (set S2_LITE_BIN)`);
    const port = await freePort();
    const child = start("s2-lite", S2_LITE_BIN, ["--port", String(port), "--no-dashboard"], {
      cwd: work, logPath: path.join(work, "s2-lite.log"),
    });
    const url = `http://127.0.0.1:${port}`;
    await waitFor("s2-lite /health", async () => (await fetch(`${url}/health`)).ok, { child, timeout: 30_000 });
    return { url, child };
  });

  const basin = "console-" + Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  await step("create basin and stream", async () => {
    await http("PUT", `${s2.url}/v1/basins/${basin}`, { body: {}, expect: 201 }).catch(async (e) => {
      // Some s2-lite versions answer 200; accept any 2xx.
      const r = await http("GET", `${s2.url}/v1/basins/${basin}`);
      if (r.status !== 200) throw e;
    });
    const r = await http("PUT", `${s2.url}/v1/streams/events`, { body: {}, headers: { "s2-basin": basin } });
    assert.ok(r.status >= 200 && r.status < 300, `create stream: HTTP ${r.status} ${r.text}`);
  });

  // ---------- s2-sink ----------
  const sink = await step("start s2-sink", async () => {
    if (!fs.existsSync(S2SINK_BIN)) {
      const b = spawnSync("cargo", ["build", "-p", "s2sink-server", "--bin", "s2-sink"], { cwd: ROOT, stdio: "inherit" });
      assert.equal(b.status, 0, "cargo build of s2-sink failed");
    }
    const port = await freePort();
    const config = `[server]
listen = "127.0.0.1:${port}"
data_dir = "${path.join(work, "data")}"
api_token = "${API_TOKEN}"

[[sinks]]
name = "good"
basin = "${basin}"
stream = "events"
endpoint = "${s2.url}"
[sinks.backoff]
base_ms = 200
max_ms = 1000

[[sinks]]
name = "typo"
basin = "${basin}"
stream = "evnets"
endpoint = "${s2.url}"
[sinks.backoff]
base_ms = 200
max_ms = 1000

[[sinks]]
name = "doomed"
basin = "${basin}"
stream = "missing"
endpoint = "${s2.url}"
max_retry_count = 1

# A Postgres source whose database does not answer (a port nothing listens on): the overview
# shows it retrying with its error, never the URL's password.
[[sources]]
name = "app-db"
kind = "postgres"
url = "postgres://app:${PG_PASSWORD}@127.0.0.1:${await freePort()}/app"
publication = "pub"
slot = "slot"
tables = ["public.orders"]
sink = "good"
`;
    const cfgPath = path.join(work, "s2-sink.toml");
    fs.writeFileSync(cfgPath, config);
    const child = start("s2-sink", S2SINK_BIN, ["serve", "--config", cfgPath], {
      cwd: work, logPath: path.join(work, "s2-sink.log"), env: { RUST_LOG: "info" },
    });
    const url = `http://127.0.0.1:${port}`;
    await waitFor("s2-sink /healthz", async () => (await fetch(`${url}/healthz`)).ok, { child, timeout: 30_000 });
    return { url, child };
  });
  const auth = { authorization: `Bearer ${API_TOKEN}` };
  const apiGet = async (p) => (await http("GET", sink.url + p, { headers: auth, expect: 200 })).json;

  const ids = await step("send messages (one over 1 MiB)", async () => {
    const noAuth = await http("GET", `${sink.url}/api/sinks`);
    assert.equal(noAuth.status, 401, "the API must need the token");
    const post = async (name, msgs) =>
      (await http("POST", `${sink.url}/api/sinks/${name}/messages`, { body: msgs, headers: auth, expect: 202 })).json.ids;
    const small = [envelope(1, 1001, { status: "pending" }), envelope(2, 1002, { status: "pending" })];
    const typoIds = await post("typo", small);
    // Hostile data (a group name with markup) must show as text, never as HTML.
    const hostile = (await http("POST", `${sink.url}/api/sinks/typo/messages?group=${encodeURIComponent(HOSTILE_GROUP)}`, {
      body: { note: "<script>window.__xss = 1</script>" }, headers: auth, expect: 202 })).json.ids[0];
    const good1 = await post("good", [envelope(3, 1003, { status: "ok" })]);
    const big = await post("good", [envelope(7, 1007, { status: "huge", blob: "x".repeat(1_100_000) })]);
    const after = await post("good", [envelope(7, 1008, { status: "after the huge one" })]);
    return { typo: typoIds, hostile, good1: good1[0], big: big[0], after: after[0] };
  });

  await step("failures are recorded (API)", async () => {
    await waitFor("good sink: oversized message failed with record_too_large", async () => {
      const m = await apiGet(`/api/sinks/good/messages/${ids.big}`);
      return m.last_error && m.last_error.code === "record_too_large";
    }, { child: sink.child });
    await waitFor("typo sink: stream_not_found", async () => {
      const m = await apiGet(`/api/sinks/typo/messages/${ids.typo[0]}`);
      return m.last_error && m.last_error.code === "stream_not_found";
    }, { child: sink.child });
    await waitFor("good sink: the healthy message is delivered", async () =>
      (await apiGet("/api/sinks/good")).counts.delivered >= 1, { child: sink.child });
    const g = await apiGet("/api/sinks/good");
    assert.equal(g.counts.pending, 2, "the oversized message and the one behind it stay pending");
  });

  // ---------- the browser ----------
  const page = await step("launch Chromium", async () => {
    assert.ok(fs.existsSync(CHROMIUM_BIN), `Chromium not found at ${CHROMIUM_BIN} (apt-get install -y chromium)`);
    const profile = tmpDir("s2sink-chromium-");
    // A fresh profile directory (playwright passes it as --user-data-dir).
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM_BIN,
      headless: true,
      timeout: 30_000,
      viewport: { width: 1440, height: 900 },
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-proxy-server"],
    });
    const ctx = browser;
    return newConsolePage(ctx);
  });

  /** Every URL a page was at (hash changes and history entries included): the token must be in none. */
  const seenUrls = (p) => p.seenUrls;
  const assertNoTokenInUrls = (p) => {
    for (const u of [...seenUrls(p), p.url()]) assert.ok(!u.includes(API_TOKEN), `the API token is in a URL: ${u}`);
  };

  const tid = (id) => page.getByTestId(id);
  const expectText = async (testId, re, what) => {
    await waitFor(what || `${testId} to match ${re}`, async () => re.test(await tid(testId).textContent()), { timeout: UI_TIMEOUT });
  };

  await step("token prompt on 401, then the overview", async () => {
    await page.goto(`${sink.url}/`);
    await tid("auth-form").waitFor({ state: "visible" });
    await tid("token-input").fill("wrong-token");
    await tid("token-submit").click();
    await expectText("auth-error", /rejected/i, "the wrong token to be rejected");
    await tid("token-input").fill(API_TOKEN);
    await tid("token-submit").click();
    await tid("view-overview").waitFor({ state: "visible" });
    const stored = await page.evaluate(() => sessionStorage.getItem("s2sink.apiToken"));
    assert.equal(stored, API_TOKEN, "token kept in sessionStorage");
    const ls = await page.evaluate(() => JSON.stringify(localStorage));
    assert.ok(!ls.includes(API_TOKEN), "token must not be in localStorage");
    const good = page.locator('[data-testid="sink-row"][data-sink="good"]');
    const typo = page.locator('[data-testid="sink-row"][data-sink="typo"]');
    await good.waitFor();
    await typo.waitFor();
    await waitFor("typo sink to show failing health and its error", async () => {
      const t = await typo.textContent();
      return /failing/.test(t) && /stream_not_found/.test(t) && /404/.test(t);
    }, { timeout: UI_TIMEOUT });
    await waitFor("good sink row to show record_too_large", async () => /record_too_large/.test(await good.textContent()), { timeout: UI_TIMEOUT });
    assert.match(await good.textContent(), new RegExp(`${basin} / events`));
    const source = page.locator('[data-testid="source-row"][data-source="app-db"]');
    await waitFor("the source row to show its connection error", async () => {
      const t = await source.textContent();
      return /app-db \(postgres\)/.test(t) && /good/.test(t) && /(starting|error)/.test(t) && /connect|refused/i.test(t);
    }, { timeout: UI_TIMEOUT });
    assert.ok(!(await page.content()).includes(PG_PASSWORD), "the source's password must not reach the page");
    if (SCREENSHOTS) await page.screenshot({ path: path.join(ROOT, "docs/console-overview.png") });
  });

  const selectState = async (sinkName, state) => {
    await tid("state-filter").selectOption(state);
    await page.locator(`[data-testid="messages-table"][data-sink="${sinkName}"][data-filter-state="${state}"]`).waitFor();
  };
  const openFailed = async (sinkName) => {
    await page.locator(`[data-testid="sink-row"][data-sink="${sinkName}"] [data-testid="sink-link"]`).click();
    await tid("view-sink").waitFor({ state: "visible" });
    await expectText("sink-name", new RegExp(`^${sinkName}$`));
    await selectState(sinkName, "failed");
  };
  const row = (id) => page.locator(`[data-testid="message-row"][data-id="${id}"]`);

  await step("good sink, Failed: the oversized message shows record_too_large", async () => {
    await openFailed("good");
    await row(ids.big).waitFor();
    // Only failed messages are listed: the one behind it never failed.
    assert.equal(await row(ids.after).count(), 0, "the message behind the oversized one is not in the Failed list");
    await row(ids.big).click();
    await waitFor("the hash route to name the message", async () =>
      page.url().endsWith(`#/sinks/good/messages/${ids.big}?state=failed`), { timeout: UI_TIMEOUT });
    await expectText("msg-id", new RegExp(`#${ids.big}$`));
    await expectText("err-code", /^record_too_large$/, "the pane to show code record_too_large");
    const msg = await tid("err-message").textContent();
    assert.match(msg, /\d/, `error message names the size/limit: ${msg}`);
    assert.match(msg, /MiB|bytes|limit|large/i, `error message names the size/limit: ${msg}`);
    assert.match(await tid("msg-envelope").textContent(), /"action": "insert"/, "envelope pretty-printed");
    assert.match(await tid("delivery-route").textContent(), new RegExp(`${basin} / events`));
    const dc = Number(await tid("msg-deliver-count").textContent());
    assert.ok(dc >= 1, "deliver count at least 1");
    const title = await tid("msg-last-attempt").getAttribute("title");
    assert.match(title || "", /^\d{4}-\d\d-\d\dT/, "absolute time in title");
    assert.match(await tid("msg-last-attempt").textContent(), /ago|now/, "relative time");
    assert.ok(await page.locator(`[data-testid="message-row"][data-id="${ids.big}"].selected`).count() === 1, "row selected");
  });

  await step("selection and scroll survive auto-refresh", async () => {
    await page.evaluate(() => { window.__marker = document.getElementById("msg-envelope"); document.getElementById("message-pane").scrollTop = 120; });
    const before = await page.evaluate(() => document.getElementById("message-pane").scrollTop);
    assert.ok(before > 0, "the message pane scrolls (it holds the error, body and envelope)");
    const stamp = await tid("refresh-status").textContent();
    await waitFor("an auto-refresh", async () => (await tid("refresh-status").textContent()) !== stamp, { timeout: 6_000 });
    const stamp2 = await tid("refresh-status").textContent();
    await waitFor("another auto-refresh", async () => (await tid("refresh-status").textContent()) !== stamp2, { timeout: 6_000 });
    const same = await page.evaluate(() => window.__marker === document.getElementById("msg-envelope") &&
      document.getElementById("message-pane").scrollTop);
    assert.equal(same, before, "pane scroll position kept across refreshes");
    assert.equal(await page.locator(`[data-testid="message-row"][data-id="${ids.big}"].selected`).count(), 1, "selection kept");
    await expectText("err-code", /^record_too_large$/);
    await page.evaluate(() => { document.getElementById("message-pane").scrollTop = 0; });
  });

  await step("typo sink, Failed: the pane shows S2's 404 stream_not_found", async () => {
    await tid("home-link").click();
    await tid("view-overview").waitFor({ state: "visible" });
    await openFailed("typo");
    await row(ids.typo[0]).waitFor();
    await row(ids.typo[0]).click();
    await expectText("msg-id", new RegExp(`#${ids.typo[0]}$`));
    await expectText("err-code", /^stream_not_found$/, "code stream_not_found");
    await expectText("err-status", /^404$/, "HTTP status 404");
    assert.match(await tid("err-class").textContent(), /\w/, "error class shown");
    assert.match(await tid("err-body").textContent(), /stream_not_found/, "S2 response body shown");
    if (SCREENSHOTS) await page.screenshot({ path: path.join(ROOT, "docs/console-message.png") });

    // Escaping: the markup in the group and the payload is shown as text.
    await row(ids.hostile).waitFor();
    assert.equal((await row(ids.hostile).locator("td").nth(2).textContent()), HOSTILE_GROUP, "group shown literally");
    await row(ids.hostile).click();
    await expectText("msg-group", /^<img src=x/, "the hostile group in the pane as text");
    assert.match(await tid("msg-envelope").textContent(), /<script>window.__xss = 1<\/script>/);
    assert.equal(await page.locator("#messages-body img, #message-pane img, #message-pane script").count(), 0, "no injected elements");
    assert.equal(await page.evaluate(() => window.__xss), undefined, "no injected script ran");

    // Group filter: only that group's messages.
    await tid("group-filter").fill("public.orders/2");
    await waitFor("the group filter to leave only public.orders/2", async () => {
      const shown = await page.locator('[data-testid="message-row"]').evaluateAll((rs) => rs.map((r) => r.dataset.id));
      return shown.length === 1 && shown[0] === String(ids.typo[1]);
    }, { timeout: UI_TIMEOUT });
    await tid("group-filter").fill("");
    await waitFor("the group filter to clear", async () => (await page.locator('[data-testid="message-row"]').count()) === 3, { timeout: UI_TIMEOUT });

    // Paging (50 a page, `next_after` cursor), newest first.
    const bulk = Array.from({ length: 55 }, (_, i) => ({ n: i }));
    const bulkIds = (await http("POST", `${sink.url}/api/sinks/typo/messages`, { body: bulk, headers: auth, expect: 202 })).json.ids;
    await tid("order-select").selectOption("newest");
    await selectState("typo", "all");
    const shownIds = () => page.locator('[data-testid="message-row"]').evaluateAll((rs) => rs.map((r) => Number(r.dataset.id)));
    await waitFor("page 1: the 50 newest messages", async () => {
      const v = await shownIds();
      return v.length === 50 && v[0] === bulkIds[bulkIds.length - 1];
    }, { timeout: UI_TIMEOUT });
    await tid("page-next").click();
    await waitFor("page 2: the 8 oldest messages", async () => {
      const v = await shownIds();
      return v.length === 8 && v[v.length - 1] === ids.typo[0];
    }, { timeout: UI_TIMEOUT });
    assert.ok(await tid("page-next").isDisabled(), "no page 3");
    await tid("page-prev").click();
    await waitFor("back on page 1", async () => (await shownIds()).length === 50, { timeout: UI_TIMEOUT });
    await tid("order-select").selectOption("oldest");
  });

  const discardedIds = await step("doomed sink (max_retry_count = 1, missing stream): 25 messages discarded", async () => {
    const plain = Array.from({ length: 24 }, (_, i) => ({ n: i }));
    const first = (await http("POST", `${sink.url}/api/sinks/doomed/messages`, { body: plain, headers: auth, expect: 202 })).json.ids;
    const marked = (await http("POST", `${sink.url}/api/sinks/doomed/messages?group=${encodeURIComponent("public.orders/9")}`, {
      body: { marker: "discarded-marker-<b>kept as text</b>" }, headers: auth, expect: 202 })).json.ids[0];
    await waitFor("all 25 in the discarded list (API)", async () =>
      (await apiGet("/api/sinks/doomed/discarded?limit=100")).messages.length === 25, { child: sink.child });
    const all = (await apiGet("/api/sinks/doomed/discarded?limit=100")).messages;
    const m = all.find((x) => x.id === marked);
    assert.equal(m.last_error && m.last_error.code, "stream_not_found", "discarded with its last error");
    return { first, marked, all };
  });

  const rowD = (id) => page.locator(`[data-testid="discarded-row"][data-id="${id}"]`);
  const loaded = (n) => page.locator(`[data-testid="discarded-table"][data-sink="doomed"][data-loaded="${n}"]`);

  await step("Discarded tab: paged list, a message's payload and error, read-only", async () => {
    await tid("home-link").click();
    await tid("view-overview").waitFor({ state: "visible" });
    await page.locator('[data-testid="sink-row"][data-sink="doomed"] [data-testid="sink-link"]').click();
    await expectText("sink-name", /^doomed$/);
    await tid("panel-messages").waitFor({ state: "visible" });
    await tid("tab-discarded").click();
    await tid("panel-discarded").waitFor({ state: "visible" });
    assert.ok(await tid("panel-messages").isHidden(), "the Messages panel is hidden on the Discarded tab");
    assert.equal(await tid("tab-discarded").getAttribute("aria-selected"), "true");
    assert.equal(await tid("tab-messages").getAttribute("aria-selected"), "false");
    assert.equal(await tid("tab-discarded").getAttribute("role"), "tab");
    assert.ok(page.url().endsWith("#/sinks/doomed/discarded"), `tab in the URL: ${page.url()}`);
    // First page (20), then "Load older" fetches the rest with the API's cursor.
    await loaded(20).waitFor();
    assert.equal(await page.locator('[data-testid="discarded-row"]').count(), 20);
    assert.ok(!(await tid("discarded-older").isDisabled()), "older ones to load");
    await tid("discarded-older").click();
    await loaded(25).waitFor();
    assert.ok(await tid("discarded-older").isDisabled(), "no older ones after the last page");
    await waitFor("Load older to say the list ends", async () => /no older/.test(await tid("discarded-info").textContent()), { timeout: UI_TIMEOUT });
    const shown = await page.locator('[data-testid="discarded-row"]').evaluateAll((rs) => rs.map((r) => Number(r.dataset.id)));
    assert.deepEqual(shown, discardedIds.all.map((m) => m.id), "newest first, as the API lists them");

    const r = rowD(discardedIds.marked);
    await waitFor("the row to show its error", async () => /stream_not_found/.test(await r.textContent()), { timeout: UI_TIMEOUT });
    assert.match(await r.textContent(), /public\.orders\/9/, "group shown");
    assert.match(await r.textContent(), /ago/, "when discarded");
    await r.click();
    await waitFor("the URL to name the discarded message", async () =>
      page.url().endsWith(`#/sinks/doomed/discarded/${discardedIds.marked}`), { timeout: UI_TIMEOUT });
    await expectText("dmsg-id", new RegExp(`#${discardedIds.marked}$`));
    await expectText("derr-code", /^stream_not_found$/, "the discarded message's S2 code");
    await expectText("derr-status", /^404$/);
    assert.equal(await tid("dmsg-attempts").textContent(), "1", "one attempt (max_retry_count = 1)");
    assert.match(await tid("dmsg-discarded-at").getAttribute("title") || "", /^\d{4}-\d\d-\d\dT/);
    assert.match(await tid("dmsg-payload").textContent(), /discarded-marker-<b>kept as text<\/b>/, "payload shown as text");
    assert.equal(await page.locator("#discarded-pane b, #discarded-body b").count(), 0, "no injected elements");
    assert.equal(await tid("discarded-pane").locator("button").count(), 0, "read-only: no actions");
    assert.equal(await r.getAttribute("aria-selected"), "true");
    // Keyboard: rows are focusable and Enter selects.
    await rowD(discardedIds.first[0]).focus();
    await page.keyboard.press("Enter");
    await expectText("dmsg-id", new RegExp(`#${discardedIds.first[0]}$`), "Enter to select the focused row");
    await page.goBack();
    await expectText("dmsg-id", new RegExp(`#${discardedIds.marked}$`), "back to the previously selected message");
  });

  await step("back/forward walk the views (message, tab, sink)", async () => {
    await page.goBack(); // the Discarded tab, nothing selected
    await tid("dpane-empty").waitFor({ state: "visible" });
    assert.ok(page.url().endsWith("#/sinks/doomed/discarded"), page.url());
    await page.goBack(); // the Messages tab
    await tid("panel-messages").waitFor({ state: "visible" });
    assert.equal(await tid("tab-messages").getAttribute("aria-selected"), "true");
    await page.goForward();
    await tid("panel-discarded").waitFor({ state: "visible" });
    await page.goForward();
    await expectText("dmsg-id", new RegExp(`#${discardedIds.marked}$`));
    await expectText("derr-code", /^stream_not_found$/);
    assert.ok(page.seenUrls.some((u) => u.includes(`/discarded/${discardedIds.marked}`)), "in-page navigations are recorded");
    assertNoTokenInUrls(page);
  });

  await step("a copied URL (sink, tab, filters, message) opens the same view in a fresh tab; the token is in no URL", async () => {
    // Set up a view on the typo sink: Failed, one group, newest first, a message selected.
    await page.goto(`${sink.url}/#/sinks/typo`);
    await expectText("sink-name", /^typo$/);
    await selectState("typo", "failed");
    await tid("order-select").selectOption("newest");
    await tid("group-filter").fill("public.orders/2");
    await waitFor("the group filter in the URL", async () => page.url().includes("group=public.orders%2F2"), { timeout: UI_TIMEOUT });
    await row(ids.typo[1]).waitFor();
    await row(ids.typo[1]).click();
    await expectText("msg-id", new RegExp(`#${ids.typo[1]}$`));
    const copied = page.url();
    assert.match(copied, new RegExp(`#/sinks/typo/messages/${ids.typo[1]}\\?`), copied);
    for (const part of ["state=failed", "group=public.orders%2F2", "order=newest"]) assert.ok(copied.includes(part), `${part} in ${copied}`);

    // Reload keeps the view.
    await page.reload();
    await expectText("msg-id", new RegExp(`#${ids.typo[1]}$`), "the selected message after a reload");
    assert.equal(await tid("state-filter").inputValue(), "failed");
    assert.equal(await tid("group-filter").inputValue(), "public.orders/2");
    assert.equal(await tid("order-select").inputValue(), "newest");

    // A fresh tab has no token (sessionStorage is per tab): prompt, then the same view.
    const p2 = await newConsolePage(browser);
    try {
      const t2 = (id) => p2.getByTestId(id);
      await p2.goto(copied);
      await t2("auth-form").waitFor({ state: "visible" });
      await t2("token-input").fill(API_TOKEN);
      await t2("token-submit").click();
      await t2("view-sink").waitFor({ state: "visible" });
      await p2.locator('[data-testid="messages-table"][data-sink="typo"][data-filter-state="failed"]').waitFor();
      await waitFor("the fresh tab to show the selected message", async () =>
        new RegExp(`#${ids.typo[1]}$`).test(await t2("msg-id").textContent()), { timeout: UI_TIMEOUT });
      await waitFor("its S2 error", async () => /^stream_not_found$/.test(await t2("err-code").textContent()), { timeout: UI_TIMEOUT });
      assert.ok(await p2.locator("#pane-body").isVisible(), "the message detail is visible");
      assert.equal(await t2("sink-name").textContent(), "typo");
      assert.equal(await t2("tab-messages").getAttribute("aria-selected"), "true");
      assert.equal(await t2("state-filter").inputValue(), "failed");
      assert.equal(await t2("group-filter").inputValue(), "public.orders/2");
      assert.equal(await t2("order-select").inputValue(), "newest");
      const shown = await p2.locator('[data-testid="message-row"]').evaluateAll((rs) => rs.map((r) => Number(r.dataset.id)));
      assert.deepEqual(shown, [ids.typo[1]], "the group filter applies");
      assert.equal(await p2.locator(`[data-testid="message-row"][data-id="${ids.typo[1]}"].selected`).count(), 1, "row selected");
      assert.equal(p2.url(), copied, "the URL is still the copied one");

      // A copied Discarded-tab link with a message from an older page (loaded until found).
      const oldest = discardedIds.all[discardedIds.all.length - 1].id;
      await p2.goto(`${sink.url}/#/sinks/doomed/discarded/${oldest}`);
      await t2("panel-discarded").waitFor({ state: "visible" });
      await waitFor("the linked discarded message's detail", async () =>
        new RegExp(`#${oldest}$`).test(await t2("dmsg-id").textContent()), { timeout: UI_TIMEOUT });
      await waitFor("its S2 error", async () => /^stream_not_found$/.test(await t2("derr-code").textContent()), { timeout: UI_TIMEOUT });
      assert.equal(await p2.locator(`[data-testid="discarded-row"][data-id="${oldest}"].selected`).count(), 1, "row selected");
      assert.equal(await t2("tab-discarded").getAttribute("aria-selected"), "true");
      assertNoTokenInUrls(p2);
      assert.deepEqual(p2.pageErrors, [], "no JavaScript errors or CSP violations in the fresh tab");
    } finally {
      await p2.close();
    }
    assertNoTokenInUrls(page);
    // Back to the defaults for the next step.
    await page.goto(`${sink.url}/#/sinks/typo`);
    await expectText("sink-name", /^typo$/);
  });

  await step("Acknowledge the oversized message: it leaves the Failed list, its group drains", async () => {
    await page.goto(`${sink.url}/#/sinks/good/messages/${ids.big}`);
    await tid("view-sink").waitFor({ state: "visible" });
    await selectState("good", "failed");
    await row(ids.big).waitFor();
    await expectText("err-code", /^record_too_large$/);
    await tid("btn-ack").click();
    await tid("confirm-msg").waitFor({ state: "visible" });
    assert.match(await tid("confirm-msg").textContent(), /Acknowledge message/);
    await tid("confirm-msg").getByTestId("confirm-yes").click();
    await row(ids.big).waitFor({ state: "detached" });
    await tid("pane-gone").waitFor({ state: "visible" });
    await waitFor("the good sink to drain (pending 0)", async () => {
      const g = await apiGet("/api/sinks/good");
      return g.counts.pending === 0 && g.counts.failing === 0;
    }, { child: sink.child, timeout: 20_000 });
    const r = await http("GET", `${sink.url}/api/sinks/good/messages/${ids.after}`, { headers: auth });
    assert.equal(r.status, 404, "the message behind the oversized one was delivered");
    await expectText("sink-pending", /^0$/, "the console to show pending 0");
    await selectState("good", "all");
    await tid("messages-empty").waitFor({ state: "visible" });
  });

  await step("Discard from the Messages tab: the message shows in the Discarded tab with its error", async () => {
    const id = ids.typo[0];
    await page.goto(`${sink.url}/#/sinks/typo/messages/${id}?state=failed`);
    await expectText("msg-id", new RegExp(`#${id}$`));
    await tid("btn-discard").click();
    await tid("confirm-msg").getByTestId("confirm-yes").click();
    await tid("pane-gone").waitFor({ state: "visible" });
    await tid("pane-gone-discarded").click();
    await waitFor("the URL to name the discarded message", async () =>
      page.url().endsWith(`#/sinks/typo/discarded/${id}?state=failed`), { timeout: UI_TIMEOUT });
    await tid("panel-discarded").waitFor({ state: "visible" });
    await expectText("dmsg-id", new RegExp(`#${id}$`));
    await expectText("derr-code", /^stream_not_found$/, "the error it had when discarded by hand");
    assert.equal(await page.locator(`[data-testid="discarded-row"][data-id="${id}"].selected`).count(), 1);
    await page.goBack();
    await tid("pane-gone").waitFor({ state: "visible" });
    assert.ok(await tid("panel-messages").isVisible(), "back on the Messages tab");
    assertNoTokenInUrls(page);
    assert.deepEqual(page.pageErrors, [], "no JavaScript errors or CSP violations in the page");
  });
}
