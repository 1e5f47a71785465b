// cutover's dashboard. It reads the live feed (GET /v1/events, server-sent
// events read through fetch so that the token travels in a header) and
// steers through the admin API, each change carrying the epoch the page
// showed (If-Match) so that a page out of date is refused (412) rather
// than undoing someone else's change. Every string is set as text, never
// as HTML.
"use strict";

const TOKEN_KEY = "cutover-token";
const SPAN = 300; // seconds of series kept, as the daemon keeps them
const ENDED = ["succeeded", "failed", "aborted", "superseded"];

const page = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  role: null, // "read" or "operate", from the feed's hello
  tick: null, // the newest tick
  series: {}, // app -> {blue: [points], green: [points]}
  cards: {}, // app -> the card's stable elements
  retry: null,
};

// ---- small DOM helpers -------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function badge(color) {
  return el("span", { class: "badge " + color, text: color });
}

function fmt(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toFixed(digits === undefined ? 1 : digits);
}

function say(text, kind) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.dataset.kind = kind || "info";
  m.hidden = !text;
}

function setLink(state, text) {
  const l = document.getElementById("link");
  l.dataset.state = state;
  l.textContent = text;
}

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (page.token) h.Authorization = "Bearer " + page.token;
  return h;
}

// ---- the feed ----------------------------------------------------------

async function connect() {
  clearTimeout(page.retry);
  setLink("connecting", "connecting…");
  let resp;
  try {
    resp = await fetch("/v1/events", { headers: authHeaders(), cache: "no-store" });
  } catch (e) {
    return reconnect("cannot reach the admin API");
  }
  if (resp.status === 401) {
    setLink("down", "no access");
    askToken(page.token ? "Wrong token: the admin API refused it (401). Nothing was changed." : "This admin API needs a token.");
    return;
  }
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    say("The live feed was refused (" + resp.status + "): " + (body.error || resp.statusText), "error");
    return reconnect("refused");
  }
  document.getElementById("token-form").hidden = true;
  setLink("live", "live");
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        received(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
      }
    }
  } catch (e) {
    // The stream broke: reconnect below.
  }
  reconnect("the feed ended");
}

function reconnect(why) {
  setLink("down", why + "; reconnecting…");
  page.retry = setTimeout(connect, 1000);
}

function received(text) {
  let name = "message";
  let data = "";
  for (const line of text.split("\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  const doc = JSON.parse(data);
  if (name === "hello") {
    page.role = doc.role;
    page.series = doc.series;
    page.cards = {};
    document.getElementById("apps").replaceChildren();
  } else if (name === "tick") {
    addPoints(doc.points);
    page.tick = doc;
    render();
  }
}

function addPoints(points) {
  for (const [app, colors] of Object.entries(points)) {
    const s = page.series[app] || (page.series[app] = { blue: [], green: [] });
    for (const c of ["blue", "green"]) {
      for (const p of colors[c]) {
        const last = s[c][s[c].length - 1];
        if (!last || p.t > last.t) s[c].push(p);
      }
      if (s[c].length > SPAN) s[c].splice(0, s[c].length - SPAN);
    }
  }
}

function askToken(why) {
  say(why, "error");
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token").focus();
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  page.token = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, page.token);
  document.getElementById("token").value = "";
  say("");
  connect();
});

// ---- steering ----------------------------------------------------------

// POST `path` with `body`, sending the epoch the page showed. A 412 means
// someone changed the state since: nothing was done; the page refreshes.
async function act(path, body, epoch, done) {
  let resp;
  try {
    resp = await fetch(path, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", "If-Match": String(epoch) }),
      body: JSON.stringify(body || {}),
    });
  } catch (e) {
    say("Cannot reach the admin API: " + e.message, "error");
    return;
  }
  const answer = await resp.json().catch(() => ({}));
  if (resp.status === 412) {
    say("The state changed since this page showed it (epoch " + epoch + ", now " + answer.epoch + "): nothing was done. The page is refreshed; look again before you act.", "error");
    await refresh();
    return;
  }
  if (!resp.ok) {
    say("Refused (" + resp.status + "): " + (answer.error || resp.statusText), "error");
    return;
  }
  say(done(answer));
  await refresh();
}

// The state now, without waiting for the next tick.
async function refresh() {
  const resp = await fetch("/v1/status", { headers: authHeaders(), cache: "no-store" }).catch(() => null);
  if (!resp || !resp.ok || !page.tick) return;
  const status = await resp.json();
  page.tick = Object.assign({}, page.tick, { status: status, epoch: status.epoch });
  render();
}

function guardWords(answer) {
  const g = answer.guard ? Object.keys(answer.guard) : [];
  return g.length ? " A guard watches it for " + answer.guard[g[0]].window_seconds + " s and undoes it if it hurts." : "";
}

// A change asks first; the epoch is the one shown when it was asked.
function confirmChange(card, question, go) {
  const epoch = page.tick.epoch;
  const box = el("div", { class: "confirm", role: "group", "aria-label": "confirm" },
    el("span", { text: question + " " }),
    el("button", { "data-action": "confirm", class: "danger", onclick: () => { card.pending.replaceChildren(); go(epoch); } }, "Confirm"),
    el("button", { "data-action": "cancel", onclick: () => card.pending.replaceChildren() }, "Cancel"));
  card.pending.replaceChildren(box);
}

function controlsFor(name, card) {
  const base = "/v1/apps/" + encodeURIComponent(name);
  const flip = el("button", { "data-action": "flip" }, "Flip");
  flip.addEventListener("click", () => {
    const app = page.tick.status.apps[name];
    const to = app.live === "blue" ? "green" : "blue";
    confirmChange(card, "Flip " + name + ": make " + to + " live (" + app.live + " now)?", (epoch) =>
      act(base + "/flip", { to: to }, epoch, (a) => "Flipped " + name + ": " + to + " is live." + guardWords(a)));
  });
  const slider = el("input", { type: "range", min: 0, max: 100, step: 1, value: 0, "aria-label": "standby percent", "data-action": "percent" });
  const shown = el("span", { class: "now", text: "0 %" });
  slider.addEventListener("input", () => { shown.textContent = slider.value + " %"; card.dragging = true; });
  const shift = el("button", { "data-action": "shift" }, "Shift…");
  shift.addEventListener("click", () => {
    const p = Number(slider.value);
    const app = page.tick.status.apps[name];
    confirmChange(card, "Send " + p + " % of " + name + "'s traffic to " + app.standby + " (standby; " + fmt(app.standby_percent, 0) + " % now)?", (epoch) =>
      act(base + "/shift", { percent: p }, epoch, (a) => "Shifted " + name + ": " + p + " % to " + app.standby + "." + guardWords(a)));
    card.dragging = false;
  });
  const rollback = el("button", { "data-action": "rollback" }, "Roll back");
  rollback.addEventListener("click", () =>
    confirmChange(card, "Undo " + name + "'s last change?", (epoch) =>
      act(base + "/rollback", {}, epoch, () => "Rolled back " + name + "'s last change.")));
  const steer = {};
  for (const what of ["pause", "resume", "abort"]) {
    steer[what] = el("button", { "data-action": what, hidden: true }, what[0].toUpperCase() + what.slice(1) + " rollout");
    steer[what].addEventListener("click", () =>
      confirmChange(card, what[0].toUpperCase() + what.slice(1) + " " + name + "'s rollout?", (epoch) =>
        act(base + "/rollout/" + what, {}, epoch, () => "Rollout of " + name + ": " + what + " asked.")));
  }
  card.slider = slider;
  card.shown = shown;
  card.steer = steer;
  return el("div", { class: "controls" }, flip, el("span", {}, "standby "), slider, shown, shift, rollback, steer.pause, steer.resume, steer.abort);
}

// ---- rendering ---------------------------------------------------------

function render() {
  const t = page.tick;
  const p = t.status.process;
  document.getElementById("process").textContent =
    (p ? "version " + p.version + " · pid " + p.pid + " · upgrades " + p.upgrades + " · " : "") + "epoch " + t.epoch + " · " + t.time;
  const apps = document.getElementById("apps");
  for (const [name, app] of Object.entries(t.status.apps)) {
    let card = page.cards[name];
    if (!card) {
      card = page.cards[name] = { pending: el("div") };
      card.head = el("div", { class: "app-head" });
      card.split = el("div", { class: "split", role: "img" });
      card.rules = el("div");
      card.controls = page.role === "operate" ? controlsFor(name, card) : el("p", { class: "muted", text: "read-only token: no buttons" });
      card.charts = el("div", { class: "charts" });
      card.body = el("div", { class: "grid" });
      card.root = el("section", { class: "app", "data-app": name }, card.head, card.split, card.rules, card.controls, card.pending, card.charts, card.body);
      apps.append(card.root);
    }
    renderApp(name, app, card);
  }
  for (const name of Object.keys(page.cards)) {
    if (!t.status.apps[name]) {
      page.cards[name].root.remove();
      delete page.cards[name];
    }
  }
  renderFleet(t.fleet);
  renderHistory(t.history);
}

function share(app, color) {
  return color === app.live ? 100 - app.standby_percent : app.standby_percent;
}

function renderApp(name, app, card) {
  card.head.replaceChildren(
    el("h2", { text: name }),
    el("span", { class: "muted", text: app.hosts.join(", ") + (app.path_prefix && app.path_prefix !== "/" ? " " + app.path_prefix : "") }),
    el("span", {}, "live: ", el("span", { class: "live badge " + app.live, "data-live": app.live, text: app.live })));
  const parts = ["blue", "green"].map((c) => {
    const s = share(app, c);
    return el("div", { class: c, "data-share": c, title: c + " " + fmt(s, 1) + " %" }, s >= 8 ? c + " " + fmt(s, s % 1 ? 1 : 0) + " %" : "");
  });
  parts[0].style.flex = String(share(app, "blue"));
  parts[1].style.flex = String(share(app, "green"));
  card.split.setAttribute("aria-label", "split: blue " + fmt(share(app, "blue"), 1) + " %, green " + fmt(share(app, "green"), 1) + " %");
  card.split.replaceChildren(...parts);
  card.rules.replaceChildren(rulesOf(app));
  if (card.slider && !card.dragging && !card.pending.firstChild) {
    card.slider.value = String(Math.round(app.standby_percent));
    card.shown.textContent = card.slider.value + " %";
  }
  if (card.steer) {
    const r = app.rollout;
    const active = r && !ENDED.includes(r.state);
    card.steer.pause.hidden = !active || r.state === "paused";
    card.steer.resume.hidden = !active || r.state !== "paused";
    card.steer.abort.hidden = !active;
  }
  const guard = page.tick.guards[name];
  card.charts.replaceChildren(...chartsOf(name).flat());
  const panels = [poolsOf(app), app.rollout ? rolloutOf(app.rollout) : null, guard ? guardOf(guard) : null, mirrorOf(app.mirror)];
  card.body.replaceChildren(...panels.filter((p) => p));
}

function rulesOf(app) {
  if (!app.rules.length) return el("p", { class: "muted", text: "no canary rules: the split above takes every request" });
  const when = (r) => {
    const w = [];
    if (r.header) w.push("header " + r.header.name + " = " + r.header.value);
    if (r.cookie) w.push("cookie " + r.cookie.name + " = " + r.cookie.value);
    if (r.path_prefix) w.push("path " + r.path_prefix + "*");
    if (r.user_agent) w.push("user agent ~ " + r.user_agent);
    if (r.client_ip) w.push("client in " + r.client_ip.join(", "));
    if (r.all) w.push("every request");
    return w.join(" and ");
  };
  return el("div", { class: "table-wrap" }, el("table", {},
    el("tr", {}, el("th", {}, "rule"), el("th", {}, "matches"), el("th", {}, "to"), el("th", {}, "share of matches")),
    app.rules.map((r) => el("tr", {},
      el("td", { text: r.name }), el("td", { class: "wrap", text: when(r) }), el("td", {}, badge(r.to)),
      el("td", { class: "num", text: (r.percent === undefined || r.percent === null ? 100 : r.percent) + " %" })))));
}

function chartsOf(name) {
  const s = page.series[name] || { blue: [], green: [] };
  const last = (c) => s[c][s[c].length - 1] || {};
  const now = Math.max(last("blue").t || 0, last("green").t || 0);
  const chart = (title, lines, reading) => el("div", { class: "chart panel" },
    el("div", {}, el("strong", { text: title }), " ", reading),
    plot(lines, now),
    el("div", { class: "legend", text: lines.map((l) => l.label).join("  ·  ") }));
  const figure = (c, key, unit, digits) => el("span", { class: "now", "data-figure": key + "-" + c, text: c + " " + fmt(last(c)[key], digits) + unit });
  return [
    chart("requests/s", [
      { points: s.blue, key: "rps", cls: "blue", label: "── blue" },
      { points: s.green, key: "rps", cls: "green", label: "╌╌ green (last 5 minutes)" }],
      [figure("blue", "rps", "", 1), " ", figure("green", "rps", "", 1)]),
    chart("5xx %", [
      { points: s.blue, key: "error_pct", cls: "blue", label: "── blue" },
      { points: s.green, key: "error_pct", cls: "green", label: "╌╌ green" }],
      [figure("blue", "error_pct", " %", 1), " ", figure("green", "error_pct", " %", 1)]),
    ["blue", "green"].map((c) => chart("latency, " + c + " (ms)", [
      { points: s[c], key: "p50_ms", cls: c, label: "lower line p50" },
      { points: s[c], key: "p99_ms", cls: c + " p99", label: "upper line p99 (last 5 minutes)" }],
      [figure(c, "p50_ms", " ms p50", 1), " ", el("span", { class: "now", text: fmt(last(c).p99_ms, 1) + " ms p99" })]))];
}

// Lines over the last SPAN seconds ending at `now`, scaled to their
// largest value.
function plot(lines, now) {
  const w = SPAN, h = 60;
  let max = 0;
  for (const l of lines) for (const p of l.points) if (p[l.key] > max) max = p[l.key];
  max = max > 0 ? max * 1.1 : 1;
  const s = svg("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none", role: "img" });
  s.setAttribute("aria-label", "peak " + fmt(max / 1.1, 1));
  for (const l of lines) {
    const pts = l.points
      .filter((p) => p[l.key] !== null && p[l.key] !== undefined && now - p.t < w)
      .map((p) => (w - (now - p.t)) + "," + fmt(h - (p[l.key] / max) * (h - 2) - 1, 2));
    if (pts.length) s.append(svg("polyline", { class: l.cls, points: pts.join(" ") }));
  }
  return s;
}

function serverState(s) {
  if (s.state !== "ready") return s.state;
  return s.healthy ? "ready" : "down";
}

function poolsOf(app) {
  const rows = [];
  for (const c of ["blue", "green"]) {
    const pool = app.pools[c];
    for (const s of pool.servers) {
      const st = serverState(s);
      rows.push(el("tr", {}, el("td", {}, badge(c)), el("td", { text: s.addr }),
        el("td", { class: "state-" + st, text: st }),
        el("td", { class: "num", text: s.in_flight }), el("td", { class: "num", text: s.open_connections })));
    }
  }
  const totals = ["blue", "green"].map((c) => {
    const pool = app.pools[c];
    const conns = pool.servers.reduce((n, s) => n + s.open_connections, 0);
    return el("p", { "data-pool": c }, badge(c), " " + (c === app.live ? "live" : "standby") + ": " + pool.in_flight + " in flight, " + conns + " upstream connections" + (pool.tunnels ? ", " + pool.tunnels + " tunnels" : "") + (pool.receives_traffic ? "" : " (no traffic routed: draining)"));
  });
  return el("div", { class: "panel" }, el("h3", { text: "Servers" }), totals,
    el("div", { class: "table-wrap" }, el("table", {},
      el("tr", {}, el("th", {}, "colour"), el("th", {}, "server"), el("th", {}, "state"), el("th", { class: "num" }, "in flight"), el("th", { class: "num" }, "conns")),
      rows)));
}

function counts(c) {
  return c.requests + " requests, " + c.bad + " bad" + (c.slow ? ", " + c.slow + " slow" : "");
}

function rolloutOf(r) {
  const w = r.window;
  return el("div", { class: "panel", "data-rollout": r.state },
    el("h3", { text: "Rollout to " + r.target + ": " + r.state }),
    el("p", { text: "step " + r.step + " of " + r.steps.length + " (" + r.steps.join(" → ") + " %), " + fmt(r.percent, 1) + " % to " + r.target + " now" }),
    el("p", { class: "muted", text: r.reason }),
    w ? el("p", { text: "judge: " + w.judge + " — blue " + counts(w.blue) + "; green " + counts(w.green) + " (window " + fmt(w.age_seconds, 0) + " s" + (w.holding ? ", holding" : "") + ")" }) : null,
    el("ul", { class: "timeline" }, r.transitions.slice(-8).map((x) =>
      el("li", { text: x.time.slice(11, 19) + "  " + x.from + " → " + x.to + " at " + fmt(x.percent, 1) + " %: " + x.reason }))));
}

function guardOf(g) {
  return el("div", { class: "panel", "data-guard": g.new },
    el("h3", { text: "Guard watching the " + g.kind + " (epoch " + g.epoch + ")" }),
    el("p", {}, badge(g.new), " now: " + counts(g.new_counts)),
    el("p", {}, badge(g.old), " before: " + counts(g.old_counts)),
    el("p", { class: "muted", text: g.remaining_seconds + " s left of " + g.window_seconds + " s; reverts by itself if " + g.new + " is clearly worse" }));
}

function mirrorOf(m) {
  if (!m || (!m.percent && !m.compared)) return null;
  return el("div", { class: "panel" },
    el("h3", { text: "Shadow traffic" }),
    el("p", { text: fmt(m.percent, 1) + " % copied · " + m.compared + " compared · " + m.mismatched + " mismatched · by " + (m.compare || []).join(", ") }),
    el("ul", { class: "timeline" }, (m.differences || []).slice(0, 5).map((d) =>
      el("li", { text: d.time.slice(11, 19) + " " + d.method + " " + d.path + ": " + d.outcome + (d.where ? " at " + d.where : "") + " (live " + d.live_status + (d.live_value ? " " + d.live_value : "") + ", shadow " + (d.shadow_status === null ? "no answer" : d.shadow_status) + (d.shadow_value ? " " + d.shadow_value : "") + ")" }))));
}

function renderFleet(f) {
  const section = document.getElementById("fleet");
  section.hidden = !f;
  if (!f) return;
  document.getElementById("fleet-body").replaceChildren(
    el("p", { text: "cluster " + f.cluster + " · epoch " + f.epoch + " · " + (f.connected ? "connected" : "not connected to etcd") }),
    el("div", { class: "table-wrap" }, el("table", {},
      el("tr", {}, el("th", {}, "instance"), el("th", {}, "epoch"), el("th", {}, "in sync"), el("th", {}, "judge"), el("th", {}, "reported"), el("th", {}, "last error")),
      f.instances.map((i) => el("tr", {},
        el("td", { text: i.id + (i.admin ? " (" + i.admin + ")" : "") }), el("td", { class: "num", text: i.epoch }),
        el("td", { text: i.in_sync ? "yes" : "NO" }), el("td", { text: i.judge ? "judge" : "" }),
        el("td", { text: i.updated.slice(11, 19) }), el("td", { class: "wrap", text: i.last_error || "" }))))));
}

function renderHistory(entries) {
  document.getElementById("history-list").replaceChildren(...entries.slice().reverse().map((e) =>
    el("li", { text: e.time.replace("T", " ").slice(0, 19) + " · epoch " + e.epoch + " · " + e.actor + " · " + e.app + " · " + e.kind + ": " + e.changes.join("; ") + (e.reason ? " — " + e.reason : "") })));
}

connect();
