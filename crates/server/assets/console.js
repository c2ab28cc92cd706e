// The s2-sink web console's script, served as /console.js (the page's Content-Security-Policy
// allows no inline script).
"use strict";
(function () {
  // ---------- small helpers (all data goes in through textContent) ----------
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "s2sink.apiToken";
  const PAGE_SIZE = 50;
  const DISCARDED_PAGE = 20; // the discarded list carries payloads: smaller pages
  const STATES = ["all", "pending", "backing_off", "failed"];
  const REFRESH_MS = 2000;
  const MAX_SHOWN_STRING = 4000; // long strings are cut for display only

  function setText(node, text) {
    text = text == null ? "" : String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setAttr(node, name, value) {
    if (value == null || value === "") { if (node.hasAttribute(name)) node.removeAttribute(name); return; }
    value = String(value);
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }
  function show(node, visible) { if (node.hidden === visible) node.hidden = !visible; }
  function setClass(node, cls) { if (node.className !== cls) node.className = cls; }

  // Server clock offset (server now − local now), from the sink views' `now`.
  let clockOffset = 0;
  const serverNow = () => Date.now() + clockOffset;

  function relTime(ms) {
    if (ms == null) return "—";
    const d = Math.round((ms - serverNow()) / 1000);
    const a = Math.abs(d);
    let s;
    if (a < 1) return d === 0 ? (ms >= serverNow() ? "in <1 s" : "<1 s ago") : (d < 0 ? "1 s ago" : "in 1 s");
    if (a < 60) s = a + " s";
    else if (a < 3600) s = Math.floor(a / 60) + " min " + (a % 60) + " s";
    else if (a < 86400) s = Math.floor(a / 3600) + " h " + Math.floor((a % 3600) / 60) + " min";
    else s = Math.floor(a / 86400) + " d";
    return d < 0 ? s + " ago" : "in " + s;
  }
  function absTime(ms) { return ms == null ? "" : new Date(ms).toISOString(); }
  function setTime(node, ms) { setText(node, relTime(ms)); setAttr(node, "title", absTime(ms)); }

  function prettyJSON(value) {
    return JSON.stringify(value, (k, v) => {
      if (typeof v === "string" && v.length > MAX_SHOWN_STRING) {
        return v.slice(0, MAX_SHOWN_STRING) + "… [" + v.length.toLocaleString("en-US") + " chars, cut for display]";
      }
      return v;
    }, 2);
  }
  function prettyBody(text) {
    if (text == null || text === "") return "(empty)";
    try { return prettyJSON(JSON.parse(text)); } catch (e) { return String(text); }
  }
  function errSummary(err) {
    if (!err) return "";
    const head = [err.status != null ? "HTTP " + err.status : null, err.code].filter(Boolean).join(" ");
    return head ? head + ": " + (err.message || "") : (err.message || "");
  }

  let noticeTimer = null;
  function notice(text, ok) {
    const n = $("notice");
    setText(n, text);
    setClass(n, "notice " + (ok ? "ok" : "err"));
    show(n, true);
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => show(n, false), ok ? 4000 : 10000);
  }

  // ---------- API ----------
  class AuthNeeded extends Error {}
  async function api(method, path) {
    const headers = { "accept": "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["authorization"] = "Bearer " + token;
    const res = await fetch(path, { method, headers, cache: "no-store" });
    if (res.status === 401) throw new AuthNeeded(token ? "The token was rejected." : "");
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      const err = new Error(body && body.error ? body.error.code + ": " + body.error.message : "HTTP " + res.status);
      err.status = res.status;
      err.code = body && body.error ? body.error.code : null;
      throw err;
    }
    return body;
  }
  const enc = encodeURIComponent;

  // ---------- routing ----------
  // The view lives in the URL's hash, so a copied link opens the same view, reload keeps it and
  // back/forward walk between views:
  //   #/                                         overview
  //   #/sinks/{sink}[/messages/{id}][?filters]   Messages tab (and the selected message)
  //   #/sinks/{sink}/discarded[/{id}][?filters]  Discarded tab (and the selected message)
  // filters: state, group, order (the Messages tab's; kept while on the Discarded tab).
  // Views (sink, tab, message) are new history entries; filter changes replace the current one.
  // The API token never goes into the URL: it stays in sessionStorage.
  function parseRoute() {
    let h = location.hash.replace(/^#/, "");
    let qs = "";
    const qi = h.indexOf("?");
    if (qi >= 0) { qs = h.slice(qi + 1); h = h.slice(0, qi); }
    const parts = h.split("/").filter(Boolean).map((p) => { try { return decodeURIComponent(p); } catch (e) { return p; } });
    if (parts[0] === "sinks" && parts[1] != null) {
      const q = new URLSearchParams(qs);
      const tab = parts[2] === "discarded" ? "discarded" : "messages";
      const msg = parts[3] != null && /^\d+$/.test(parts[3]) ? Number(parts[3]) : null;
      const state = STATES.includes(q.get("state")) ? q.get("state") : "all";
      const order = q.get("order") === "newest" ? "newest" : "oldest";
      const group = (q.get("group") || "").trim();
      return { view: "sink", sink: parts[1], tab, msg, state, group, order };
    }
    return { view: "overview" };
  }
  function hashOf(r) {
    if (r.view !== "sink") return "#/";
    let h = "#/sinks/" + enc(r.sink);
    if (r.tab === "discarded") h += "/discarded";
    else if (r.msg != null) h += "/messages";
    if (r.msg != null) h += "/" + r.msg;
    const q = new URLSearchParams();
    if (r.state && r.state !== "all") q.set("state", r.state);
    if (r.group) q.set("group", r.group);
    if (r.order && r.order !== "oldest") q.set("order", r.order);
    const qs = q.toString();
    return qs ? h + "?" + qs : h;
  }
  /** Goes to the view `changes` make of the current one: a new history entry, or (replace) this one changed. */
  function navigate(changes, replace) {
    const h = hashOf(Object.assign({}, route, changes));
    if (h === location.hash) return;
    if (replace) { history.replaceState(history.state, "", h); routeChanged(); }
    else location.hash = h; // hashchange → routeChanged
  }
  let route = parseRoute();

  // Per-page list state (kept across refreshes); its filters come from the route.
  const list = { sink: null, key: null, cursors: [null], nextAfter: null };
  // Discarded tab: the pages loaded so far (newest first) and the cursor for older ones.
  const disc = { sink: null, items: [], nextBefore: null, wantOlder: false };

  function resetPaging() { list.cursors = [null]; list.nextAfter = null; }

  // ---------- auth view ----------
  let authShown = false;
  function showAuth(message) {
    authShown = true;
    show($("view-auth"), true);
    show($("view-overview"), false);
    show($("view-sink"), false);
    show($("forget-token"), false);
    const e = $("auth-error");
    setText(e, message || "");
    show(e, !!message);
    if (document.activeElement !== $("token-input")) $("token-input").focus();
  }
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token-input").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token-input").value = "";
    authShown = false;
    show($("view-auth"), false);
    refresh(true);
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refresh(true);
  });

  // ---------- overview ----------
  function reconcile(tbody, items, keyOf, create, update) {
    const existing = new Map();
    for (const tr of Array.from(tbody.children)) existing.set(tr.dataset.key, tr);
    const keep = new Set();
    items.forEach((item, i) => {
      const key = String(keyOf(item));
      let tr = existing.get(key);
      if (!tr) { tr = create(item); tr.dataset.key = key; }
      keep.add(key);
      update(tr, item);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const [key, tr] of existing) if (!keep.has(key)) tr.remove();
  }
  function cells(tr, n, classes) {
    for (let i = 0; i < n; i++) {
      const td = document.createElement("td");
      if (classes && classes[i]) td.className = classes[i];
      tr.appendChild(td);
    }
    return tr;
  }

  /** A list row that selects its message: by click, or Enter/Space when focused (rows are in the tab order). */
  function selectable(tr, select) {
    tr.tabIndex = 0;
    tr.addEventListener("click", select);
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); select(); }
    });
  }

  function renderOverview(sinks) {
    const body = $("sinks-body");
    reconcile(body, sinks, (s) => s.name,
      (s) => {
        const tr = cells(document.createElement("tr"), 8, [null, "mono", "num", "num", "num", "num", null, "ellipsis err-text"]);
        tr.className = "clickable";
        tr.setAttribute("data-testid", "sink-row");
        const a = document.createElement("a");
        a.setAttribute("data-testid", "sink-link");
        tr.children[0].appendChild(a);
        const badge = document.createElement("span");
        tr.children[6].appendChild(badge);
        tr.addEventListener("click", (ev) => {
          if (ev.target.tagName !== "A") location.hash = "#/sinks/" + enc(tr.dataset.key);
        });
        return tr;
      },
      (tr, s) => {
        setAttr(tr, "data-sink", s.name);
        const a = tr.children[0].firstChild;
        setText(a, s.name);
        setAttr(a, "href", "#/sinks/" + enc(s.name));
        setText(tr.children[1], s.routed ? "routed" : (s.basin + " / " + s.stream));
        setText(tr.children[2], s.counts.pending);
        setText(tr.children[3], s.counts.failing);
        setText(tr.children[4], s.counts.delivered);
        setText(tr.children[5], s.counts.discarded);
        const badge = tr.children[6].firstChild;
        setText(badge, s.health);
        setClass(badge, "badge health-" + s.health);
        const le = s.last_error ? (s.last_error_message_id != null ? "#" + s.last_error_message_id + " " : "") + errSummary(s.last_error) : "";
        setText(tr.children[7], le || "—");
        setAttr(tr.children[7], "title", le);
        tr.children[7].className = le ? "ellipsis err-text" : "muted";
      });
    show($("sinks-empty"), sinks.length === 0);
  }

  /** The `[[sources]]` table under the sinks (hidden when there are none). */
  function renderSources(sources) {
    show($("sources-block"), sources.length > 0);
    reconcile($("sources-body"), sources, (s) => s.name,
      (s) => {
        const tr = cells(document.createElement("tr"), 8, [null, null, null, "num", "num", "num", "mono", "ellipsis err-text"]);
        tr.setAttribute("data-testid", "source-row");
        const badge = document.createElement("span");
        tr.children[2].appendChild(badge);
        return tr;
      },
      (tr, s) => {
        setAttr(tr, "data-source", s.name);
        setText(tr.children[0], s.name + (s.kind ? " (" + s.kind + ")" : ""));
        setText(tr.children[1], s.sink);
        const badge = tr.children[2].firstChild;
        setText(badge, s.state);
        setClass(badge, "badge " + (s.state === "streaming" || s.state === "backfilling" ? "health-ok" : s.state === "error" ? "health-failing" : "state-pending"));
        setAttr(badge, "data-testid", "source-state");
        setText(tr.children[3], s.changes_stored);
        setText(tr.children[4], s.lag_bytes == null ? "—" : s.lag_bytes);
        setText(tr.children[5], s.lag_seconds.toFixed(1));
        setText(tr.children[6], s.confirmed_flush_lsn || "—");
        setText(tr.children[7], s.last_error || "—");
        setAttr(tr.children[7], "title", s.last_error || "");
        tr.children[7].className = s.last_error ? "ellipsis err-text" : "muted";
      });
  }

  // ---------- sink page ----------
  function renderSinkHeader(s) {
    setText($("sink-name"), s.name);
    setText($("sink-health"), s.health);
    setClass($("sink-health"), "badge health-" + s.health);
    setText($("sink-pending"), s.counts.pending);
    setText($("sink-failing"), s.counts.failing);
    setText($("sink-delivered"), s.counts.delivered);
    setText($("sink-discarded"), s.counts.discarded);
    setText($("sink-live-groups"), s.stats ? s.stats.live_groups : "–");
    setText($("sink-appends"), s.stats ? s.stats.appends : "–");
    setText($("sink-target"), s.routed ? "routed (routing function)" : s.basin + " / " + s.stream);
    setText($("sink-endpoint"), s.endpoint);
    setText($("sink-max-retry"), s.max_retry_count == null ? "unlimited" : s.max_retry_count);
    setText($("sink-dlq"), s.dead_letter_stream || "none");
    setAttr($("tab-messages"), "href", hashOf(Object.assign({}, route, { tab: "messages", msg: null })));
    setAttr($("tab-discarded"), "href", hashOf(Object.assign({}, route, { tab: "discarded", msg: null })));
    $("redeliver-all").disabled = s.counts.failing === 0;
  }

  function renderMessages(msgs) {
    const body = $("messages-body");
    reconcile(body, msgs, (m) => m.id,
      (m) => {
        const tr = cells(document.createElement("tr"), 7, ["num mono", null, "mono", "num", "nowrap", "nowrap", "ellipsis err-text"]);
        tr.className = "clickable";
        tr.setAttribute("data-testid", "message-row");
        const badge = document.createElement("span");
        tr.children[1].appendChild(badge);
        selectable(tr, () => navigate({ tab: "messages", msg: Number(tr.dataset.key) }));
        return tr;
      },
      (tr, m) => {
        setAttr(tr, "data-id", m.id);
        setAttr(tr, "data-state", m.state);
        const sel = route.msg === m.id;
        tr.classList.toggle("selected", sel);
        setAttr(tr, "aria-selected", sel ? "true" : "false");
        setText(tr.children[0], m.id);
        const badge = tr.children[1].firstChild;
        setText(badge, m.state.replace("_", " "));
        setClass(badge, "badge state-" + m.state);
        setText(tr.children[2], m.group == null ? "(none)" : m.group);
        setText(tr.children[3], m.deliver_count);
        setClass(tr.children[3], m.deliver_count > 1 ? "num dc-high" : "num");
        setTime(tr.children[4], m.last_attempt_at);
        setTime(tr.children[5], m.not_visible_until);
        const le = m.last_error ? errSummary(m.last_error) : "";
        setText(tr.children[6], le || "—");
        setAttr(tr.children[6], "title", le);
      });
    show($("messages-empty"), msgs.length === 0);
    const page = list.cursors.length;
    $("page-prev").disabled = page <= 1;
    $("page-first").disabled = page <= 1;
    $("page-next").disabled = list.nextAfter == null;
    setText($("page-info"), "page " + page + " · " + msgs.length + " shown");
  }

  /** The "Last S2 error" box of a pane; `p` is its ids' prefix ("" message pane, "d" discarded pane). */
  function renderError(p, e) {
    show($(p + "err-none"), !e);
    show($(p + "err-box"), !!e);
    if (e) {
      setText($(p + "err-class"), e.class);
      setText($(p + "err-status"), e.status == null ? "no HTTP response (failed locally or before an answer)" : e.status);
      setText($(p + "err-code"), e.code == null ? "—" : e.code);
      setText($(p + "err-message"), e.message);
      setTime($(p + "err-at"), e.at_ms);
      setText($(p + "err-body"), prettyBody(e.body));
    }
  }

  function renderDetail(m) {
    show($("pane-empty"), false);
    show($("pane-gone"), false);
    show($("pane-body"), true);
    setText($("msg-id"), "#" + m.id);
    setText($("msg-state"), m.state.replace("_", " "));
    setClass($("msg-state"), "badge state-" + m.state);
    setAttr($("msg-state"), "data-state", m.state);
    setText($("msg-group"), m.group == null ? "(none)" : m.group);
    setText($("msg-deliver-count"), m.deliver_count);
    setClass($("msg-deliver-count"), m.deliver_count > 1 ? "dc-high" : "");
    setTime($("msg-enqueued"), m.enqueued_at);
    setTime($("msg-last-attempt"), m.last_attempt_at);
    setTime($("msg-next-attempt"), m.not_visible_until);

    renderError("", m.last_error);

    const d = m.delivery || {};
    show($("delivery-error"), d.error != null);
    show($("delivery-filtered"), d.error == null && d.filtered === true);
    show($("delivery-ok"), d.error == null && d.filtered === false);
    if (d.error != null) setText($("delivery-error"), "Function error: " + d.error);
    if (d.error == null && d.filtered === false) {
      setText($("delivery-route"), d.route ? d.route.basin + " / " + d.route.stream : "(no route)");
      setText($("delivery-body"), prettyJSON(d.body));
    }
    setText($("msg-envelope"), prettyJSON(m.message));
  }

  function renderGone(id) {
    show($("pane-empty"), false);
    show($("pane-body"), false);
    show($("confirm-msg"), false);
    const g = $("pane-gone");
    const href = hashOf(Object.assign({}, route, { tab: "discarded", msg: id }));
    if (g.dataset.href !== href) { // built once per message (a focused link survives refreshes)
      g.dataset.href = href;
      g.textContent = "";
      const a = document.createElement("a");
      a.href = href;
      a.textContent = "look in the Discarded tab";
      a.setAttribute("data-testid", "pane-gone-discarded");
      g.append("Message #" + id + " is no longer queued: it was delivered, acknowledged or discarded (if discarded, ", a, ").");
    }
    show(g, true);
  }
  function renderNoSelection() {
    show($("pane-empty"), true);
    show($("pane-body"), false);
    show($("pane-gone"), false);
    show($("confirm-msg"), false);
  }

  // ---------- Discarded tab ----------
  function renderDiscarded() {
    const body = $("discarded-body");
    reconcile(body, disc.items, (m) => m.id,
      (m) => {
        const tr = cells(document.createElement("tr"), 5, ["num mono", "mono", "nowrap", "num", "ellipsis err-text"]);
        tr.className = "clickable";
        tr.setAttribute("data-testid", "discarded-row");
        selectable(tr, () => navigate({ tab: "discarded", msg: Number(tr.dataset.key) }));
        return tr;
      },
      (tr, m) => {
        setAttr(tr, "data-id", m.id);
        const sel = route.msg === m.id;
        tr.classList.toggle("selected", sel);
        setAttr(tr, "aria-selected", sel ? "true" : "false");
        setText(tr.children[0], m.id);
        setText(tr.children[1], m.group == null ? "(none)" : m.group);
        setTime(tr.children[2], m.discarded_at);
        setText(tr.children[3], m.deliver_count);
        const le = m.last_error ? errSummary(m.last_error) : "";
        setText(tr.children[4], le || "—");
        setAttr(tr.children[4], "title", le);
      });
    show($("discarded-empty"), disc.items.length === 0);
    $("discarded-older").disabled = disc.nextBefore == null;
    setText($("discarded-info"), disc.items.length + " shown" + (disc.nextBefore == null ? " · no older ones" : ""));
    setAttr($("discarded-table"), "data-sink", disc.sink);
    setAttr($("discarded-table"), "data-loaded", disc.items.length);

    const id = route.msg;
    const m = id == null ? null : disc.items.find((x) => x.id === id);
    show($("dpane-empty"), id == null);
    show($("dpane-missing"), id != null && !m);
    show($("dpane-body"), !!m);
    if (id != null && !m) {
      setText($("dpane-missing"), "Message #" + id + " is not in the discarded list (the server keeps the newest 1000 per sink).");
    }
    if (m) {
      setText($("dmsg-id"), "#" + m.id);
      setText($("dmsg-group"), m.group == null ? "(none)" : m.group);
      setText($("dmsg-attempts"), m.deliver_count);
      setTime($("dmsg-enqueued"), m.enqueued_at);
      setTime($("dmsg-last-attempt"), m.last_attempt_at);
      setTime($("dmsg-discarded-at"), m.discarded_at);
      renderError("d", m.last_error);
      setText($("dmsg-payload"), prettyJSON(m.message));
    }
  }

  /** Puts a fresh first page on top of the pages loaded so far (new discards come in at the top). */
  function mergeFirstPage(page) {
    const fresh = page.messages;
    if (page.next_before == null || disc.items.length <= fresh.length) {
      disc.items = fresh;
      disc.nextBefore = page.next_before;
      return;
    }
    // Older pages were loaded: keep them under the fresh page where the two join up.
    const k = disc.items.findIndex((m) => m.id === fresh[fresh.length - 1].id);
    if (k < 0) { disc.items = fresh; disc.nextBefore = page.next_before; return; }
    const seen = new Set(fresh.map((m) => m.id));
    disc.items = fresh.concat(disc.items.slice(k + 1).filter((m) => !seen.has(m.id)));
  }
  function appendOlder(page) {
    const seen = new Set(disc.items.map((m) => m.id));
    disc.items = disc.items.concat(page.messages.filter((m) => !seen.has(m.id)));
    disc.nextBefore = page.next_before;
  }

  $("discarded-older").addEventListener("click", () => {
    if (disc.nextBefore == null) return;
    disc.wantOlder = true;
    refresh(true);
  });

  // ---------- confirmation steps ----------
  function askConfirm(box, text, label, onYes) {
    box.textContent = "";
    const t = document.createElement("span");
    t.className = "text";
    t.textContent = text;
    const yes = document.createElement("button");
    yes.className = "primary";
    yes.textContent = label;
    yes.setAttribute("data-testid", "confirm-yes");
    const no = document.createElement("button");
    no.textContent = "Cancel";
    no.setAttribute("data-testid", "confirm-no");
    yes.addEventListener("click", async () => { show(box, false); await onYes(); });
    no.addEventListener("click", () => show(box, false));
    box.append(t, yes, no);
    show(box, true);
    yes.focus();
  }

  async function messageAction(action, verb) {
    const sink = list.sink, id = route.msg;
    try {
      await api("POST", "/api/sinks/" + enc(sink) + "/messages/" + id + "/" + action);
      notice("Message #" + id + " " + verb + ".", true);
    } catch (e) {
      if (e instanceof AuthNeeded) return showAuth(e.message);
      notice(action + " of message #" + id + " failed: " + e.message, false);
    }
    refresh(true);
  }
  $("btn-ack").addEventListener("click", () => askConfirm($("confirm-msg"),
    "Acknowledge message #" + route.msg + "? It is removed as delivered without being sent, and its group continues.",
    "Acknowledge", () => messageAction("acknowledge", "acknowledged")));
  $("btn-redeliver").addEventListener("click", () => askConfirm($("confirm-msg"),
    "Redeliver message #" + route.msg + " now? Its backoff is cleared and it is retried at once.",
    "Redeliver", () => messageAction("redeliver", "queued for redelivery")));
  $("btn-discard").addEventListener("click", () => askConfirm($("confirm-msg"),
    "Discard message #" + route.msg + "? It is removed as undeliverable (kept in the discarded list) and its group continues.",
    "Discard", () => messageAction("discard", "discarded")));
  $("redeliver-all").addEventListener("click", () => askConfirm($("confirm-all"),
    "Redeliver all failing messages of sink " + list.sink + " now?", "Redeliver all", async () => {
      try {
        const r = await api("POST", "/api/sinks/" + enc(list.sink) + "/redeliver");
        notice(r.redelivered + " message(s) queued for redelivery.", true);
      } catch (e) {
        if (e instanceof AuthNeeded) return showAuth(e.message);
        notice("Redeliver all failed: " + e.message, false);
      }
      refresh(true);
    }));

  // ---------- filters and paging ----------
  // A filter change rewrites the current history entry (not a new one per keystroke).
  $("state-filter").addEventListener("change", () => navigate({ state: $("state-filter").value }, true));
  $("order-select").addEventListener("change", () => navigate({ order: $("order-select").value }, true));
  let groupTimer = null;
  $("group-filter").addEventListener("input", () => {
    clearTimeout(groupTimer);
    groupTimer = setTimeout(() => navigate({ group: $("group-filter").value.trim() }, true), 300);
  });
  /** Shows the route's filters in the controls (after a link, reload or back/forward). */
  function syncControls() {
    if (route.view !== "sink") return;
    if ($("state-filter").value !== route.state) $("state-filter").value = route.state;
    if ($("order-select").value !== route.order) $("order-select").value = route.order;
    // Not while the user types there (the box may hold a trailing space not in the route yet).
    if ($("group-filter").value.trim() !== route.group && document.activeElement !== $("group-filter")) {
      $("group-filter").value = route.group;
    }
  }
  $("page-next").addEventListener("click", () => {
    if (list.nextAfter == null) return;
    list.cursors.push(list.nextAfter);
    $("messages-scroll").scrollTop = 0;
    refresh(true);
  });
  $("page-prev").addEventListener("click", () => { if (list.cursors.length > 1) { list.cursors.pop(); refresh(true); } });
  $("page-first").addEventListener("click", () => { resetPaging(); refresh(true); });

  // ---------- refresh loop ----------
  let inFlight = null, again = false, lastOk = null;
  async function load() {
    const r = route;
    if (r.view === "overview") {
      const [data, sources] = await Promise.all([api("GET", "/api/sinks"), api("GET", "/api/sources")]);
      if (data.sinks.length) clockOffset = data.sinks[0].now - Date.now();
      if (r !== route) return;
      show($("view-sink"), false);
      show($("view-overview"), true);
      renderOverview(data.sinks);
      renderSources(sources.sources);
      document.title = "Sinks · s2-sink";
      return;
    }
    if (r.tab === "discarded") return loadDiscarded(r);
    if (list.sink !== r.sink) {
      list.sink = r.sink;
      resetPaging();
      show($("confirm-all"), false);
      $("messages-body").textContent = "";
    }
    const key = [r.state, r.group, r.order].join("\n");
    if (list.key !== key) { list.key = key; resetPaging(); }
    const q = new URLSearchParams({ state: r.state, order: r.order, limit: String(PAGE_SIZE) });
    if (r.group) q.set("group", r.group);
    const after = list.cursors[list.cursors.length - 1];
    if (after != null) q.set("after", String(after));
    const base = "/api/sinks/" + enc(r.sink);
    const detailP = r.msg != null
      ? api("GET", base + "/messages/" + r.msg).catch((e) => { if (e.code === "unknown_message") return null; throw e; })
      : Promise.resolve(undefined);
    const [sink, page, detail] = await Promise.all([api("GET", base), api("GET", base + "/messages?" + q), detailP]);
    clockOffset = sink.now - Date.now();
    if (r !== route) return;
    showSinkTab("messages");
    document.title = sink.name + " · s2-sink";
    list.nextAfter = page.next_after;
    renderSinkHeader(sink);
    renderMessages(page.messages);
    // What the shown list was filtered by (lets scripts wait for a filter change to land).
    setAttr($("messages-table"), "data-filter-state", q.get("state"));
    setAttr($("messages-table"), "data-sink", r.sink);
    if (r.msg == null) renderNoSelection();
    else if (detail === null) renderGone(r.msg);
    else renderDetail(detail);
  }

  function showSinkTab(tab) {
    show($("view-overview"), false);
    show($("view-sink"), true);
    for (const t of ["messages", "discarded"]) {
      const on = t === tab;
      $("tab-" + t).classList.toggle("active", on);
      setAttr($("tab-" + t), "aria-selected", on ? "true" : "false");
      show($("panel-" + t), on);
    }
  }

  async function loadDiscarded(r) {
    const base = "/api/sinks/" + enc(r.sink);
    const [sink, first] = await Promise.all([api("GET", base), api("GET", base + "/discarded?limit=" + DISCARDED_PAGE)]);
    clockOffset = sink.now - Date.now();
    if (r !== route) return;
    if (disc.sink !== r.sink) {
      disc.sink = r.sink;
      disc.items = [];
      disc.nextBefore = null;
      $("discarded-body").textContent = "";
    }
    mergeFirstPage(first);
    // "Load older", or a linked message not loaded yet: older pages until it shows or the list ends.
    let pages = 0;
    while (disc.nextBefore != null && pages < 60 &&
           (disc.wantOlder || (r.msg != null && !disc.items.some((m) => m.id === r.msg)))) {
      disc.wantOlder = false;
      const older = await api("GET", base + "/discarded?limit=" + (r.msg != null ? 100 : DISCARDED_PAGE) +
        "&before=" + enc(disc.nextBefore));
      if (r !== route || disc.sink !== r.sink) return;
      appendOlder(older);
      pages++;
    }
    disc.wantOlder = false;
    showSinkTab("discarded");
    document.title = sink.name + " · Discarded · s2-sink";
    renderSinkHeader(sink);
    renderDiscarded();
  }

  async function refresh(force) {
    if (authShown && !force) return;
    if (inFlight) { again = again || force; return inFlight; }
    inFlight = (async () => {
      try {
        await load();
        lastOk = Date.now();
        show($("forget-token"), !!sessionStorage.getItem(TOKEN_KEY));
        setText($("refresh-status"), "updated " + new Date(lastOk).toLocaleTimeString());
      } catch (e) {
        if (e instanceof AuthNeeded) { showAuth(e.message); return; }
        if (e.code === "unknown_sink") {
          show($("view-overview"), false);
          show($("view-sink"), false);
          notice("No sink named " + route.sink + ".", false);
        } else {
          setText($("refresh-status"), "refresh failed: " + e.message);
        }
      } finally {
        inFlight = null;
      }
      if (again) { again = false; refresh(true); }
    })();
    return inFlight;
  }

  function routeChanged() {
    const prev = route;
    route = parseRoute();
    if (prev.msg !== route.msg || prev.sink !== route.sink || prev.tab !== route.tab) show($("confirm-msg"), false);
    if (prev.state !== route.state) $("messages-table").removeAttribute("data-filter-state");
    syncControls();
    // Highlight the new selection at once, before the data arrives.
    const body = route.tab === "discarded" ? $("discarded-body") : $("messages-body");
    for (const tr of body.children) tr.classList.toggle("selected", String(route.msg) === tr.dataset.key);
    if (!authShown) refresh(true);
  }
  window.addEventListener("hashchange", routeChanged);
  setInterval(() => { if ($("auto-refresh").checked && !document.hidden) refresh(false); }, REFRESH_MS);

  // The filter controls show the route's filters (a copied link, a reload).
  syncControls();
  refresh(true);
})();
