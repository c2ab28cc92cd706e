// Cross-site request forgery from a real browser page (issue 17, point 1).
//
// Starts s2-sink WITHOUT an api_token (as the example config) and a second HTTP server on
// 127.0.0.1 on another port serving an "attacker" page. Headless Chromium opens that page,
// which tries what the black-box probe did: a no-cors `text/plain` POST of a message, a
// no-cors POST that discards a pending message, a form POST, and a CORS `application/json`
// POST (needs a preflight). None of them may change anything: nothing is stored, the pending
// message stays. The server's own origin (the console's) still can write.
//
// No S2 is needed: the sink points at a closed port, so accepted messages stay pending.
//
// Env: S2SINK_BIN (default target/debug/s2-sink, built if missing), CHROMIUM_BIN (default
// /usr/bin/chromium). Run: node --test tests/browser/csrf.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM_BIN, freePort, ROOT, S2SINK_BIN } from "./support.mjs";


async function waitFor(what, fn, timeout = 30_000) {
  const deadline = Date.now() + timeout;
  let last = null;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (${last.message})` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The attacker's page: every write attempt against `target`, results in window.__results. */
function attackerPage(target, id) {
  return `<!doctype html><html><body><h1>innocent page</h1>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" target="sink" enctype="text/plain"
      action="${target}/api/sinks/orders/messages"><input name='{"form":1,"x":"' value='"}'></form>
<script>
window.__results = {};
(async () => {
  const r = window.__results;
  const attempt = async (name, url, init) => {
    try {
      const res = await fetch(url, init);
      r[name] = { type: res.type, status: res.status };
    } catch (e) {
      r[name] = { error: String(e) };
    }
  };
  await attempt("noCorsTextPlain", "${target}/api/sinks/orders/messages",
    { method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" }, body: '{"probe":1}' });
  await attempt("noCorsNoType", "${target}/api/sinks/orders/messages",
    { method: "POST", mode: "no-cors", body: new Blob(['{"probe":2}']) });
  await attempt("noCorsDiscard", "${target}/api/sinks/orders/messages/${id}/discard",
    { method: "POST", mode: "no-cors" });
  await attempt("noCorsReload", "${target}/api/reload", { method: "POST", mode: "no-cors" });
  await attempt("corsJson", "${target}/api/sinks/orders/messages",
    { method: "POST", headers: { "content-type": "application/json" }, body: '{"probe":3}' });
  await attempt("corsRead", "${target}/api/sinks", { method: "GET" });
  document.getElementById("f").submit();
  await new Promise((res) => setTimeout(res, 500));
  r.done = true;
})();
</script></body></html>`;
}

test("a page on another origin cannot write to the API (no api_token)", { timeout: 120_000 }, async () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "s2sink-csrf-"));
  let sink = null;
  let attacker = null;
  let browser = null;
  try {
    if (!fs.existsSync(S2SINK_BIN)) {
      const b = spawnSync("cargo", ["build", "-p", "s2sink-server", "--bin", "s2-sink"], { cwd: ROOT, stdio: "inherit" });
      assert.equal(b.status, 0, "cargo build of s2-sink failed");
    }
    const port = await freePort();
    const cfg = path.join(work, "s2-sink.toml");
    fs.writeFileSync(cfg, `[server]
listen = "127.0.0.1:${port}"
data_dir = "${path.join(work, "data")}"

[[sinks]]
name = "orders"
basin = "csrf-basin"
stream = "orders"
endpoint = "http://127.0.0.1:1"
[sinks.backoff]
base_ms = 60000
max_ms = 60000
`);
    const log = fs.openSync(path.join(work, "s2-sink.log"), "a");
    sink = spawn(S2SINK_BIN, ["serve", "--config", cfg], { cwd: work, stdio: ["ignore", log, log], detached: true });
    fs.closeSync(log);
    const target = `http://127.0.0.1:${port}`;
    await waitFor("s2-sink /healthz", async () => (await fetch(`${target}/healthz`)).ok);

    // One pending message, sent by a non-browser producer (no Origin): allowed.
    const sent = await fetch(`${target}/api/sinks/orders/messages`, {
      method: "POST", headers: { "content-type": "application/json" }, body: '{"legit":1}',
    });
    const sentText = await sent.text();
    assert.equal(sent.status, 202, sentText);
    const id = JSON.parse(sentText).ids[0];
    const pending = async () => (await (await fetch(`${target}/api/sinks/orders`)).json()).counts.pending;
    assert.equal(await pending(), 1);

    // The attacker: another port on 127.0.0.1 is another origin (and the same site).
    const attackerPort = await freePort();
    attacker = http.createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(attackerPage(target, id));
    });
    await new Promise((r) => attacker.listen(attackerPort, "127.0.0.1", r));

    browser = await chromium.launch({ executablePath: CHROMIUM_BIN, args: ["--no-sandbox"] });
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${attackerPort}/`);
    const results = await waitFor("the attacker page to finish",
      () => page.evaluate(() => (window.__results && window.__results.done ? window.__results : null)));
    console.log("attacker page results:", JSON.stringify(results));
    // The CORS attempts fail in the browser (no CORS headers); the no-cors ones are opaque.
    assert.ok(results.corsJson.error, `CORS JSON POST was let through: ${JSON.stringify(results.corsJson)}`);
    assert.ok(results.corsRead.error, `cross-origin read was let through: ${JSON.stringify(results.corsRead)}`);

    // Nothing changed on the server: still exactly the one legitimate message, still pending.
    assert.equal(await pending(), 1, "a cross-site request stored a message");
    const m = await fetch(`${target}/api/sinks/orders/messages/${id}`);
    assert.equal(m.status, 200, `message ${id} was discarded cross-site`);
    const d = await (await fetch(`${target}/api/sinks/orders/discarded`)).json();
    assert.equal(d.messages.length, 0, "a cross-site discard happened");
    const log2 = fs.readFileSync(path.join(work, "s2-sink.log"), "utf8");
    assert.match(log2, /request refused/, "the server did not log the refusals");

    // The server's own origin may write (what the console does).
    const own = await browser.newPage();
    await own.goto(`${target}/`);
    const status = await own.evaluate(async () => {
      const r = await fetch("/api/sinks/orders/messages", {
        method: "POST", headers: { "content-type": "application/json" }, body: '{"same_origin":1}',
      });
      return r.status;
    });
    assert.equal(status, 202, "a same-origin write was refused");
    assert.equal(await pending(), 2);
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (attacker) attacker.close();
    if (sink && sink.exitCode == null) {
      try { process.kill(-sink.pid, "SIGKILL"); } catch { /* gone */ }
    }
    fs.rmSync(work, { recursive: true, force: true });
  }
});
