// Warren's web console: a single page over the management HTTP API (the
// same endpoints rabbitmqadmin uses). Hash routes (#/queues, #/queue/VHOST/NAME,
// ...), basic auth kept in sessionStorage, every page refreshed every 5 s.
"use strict";

const REFRESH_MS = 5000;
const state = { auth: sessionStorage.getItem("warren.auth"), timer: null, sort: {}, filter: "" };
const $ = (sel, root = document) => root.querySelector(sel);
const enc = encodeURIComponent;

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function fmt(n) {
  if (n === undefined || n === null) return "";
  if (typeof n !== "number") return esc(n);
  return Number.isInteger(n) ? n.toLocaleString("en-US") : n.toLocaleString("en-US", { maximumFractionDigits: 1 });
}

function rate(stats, key) {
  const d = stats && stats[key + "_details"];
  return d ? d.rate : 0;
}

function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 3500);
}

async function api(method, path, body) {
  const headers = { Authorization: "Basic " + state.auth };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch("/api" + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { reason: text };
  }
  // Bad or missing credentials log out; "not authorised" for one page or
  // action (a tag or permission missing) is only an error.
  if (res.status === 401 && (!data || data.error === "not_authorized")) {
    logout();
    throw new Error("login failed");
  }
  if (!res.ok) throw new Error((data && (data.reason || data.error)) || res.statusText);
  return data;
}

function vhostFilter() {
  return $("#vhost-filter").value;
}

// ---- login ---------------------------------------------------------------

async function login(username, password) {
  state.auth = btoa(username + ":" + password);
  try {
    const me = await api("GET", "/whoami");
    sessionStorage.setItem("warren.auth", state.auth);
    $("#user").textContent = me.name;
    await loadVhosts();
    show(true);
    route();
  } catch (e) {
    state.auth = null;
    $("#login-error").textContent = "Login failed: " + e.message;
  }
}

function logout() {
  state.auth = null;
  sessionStorage.removeItem("warren.auth");
  clearInterval(state.timer);
  show(false);
}

function show(loggedIn) {
  $("#login").hidden = loggedIn;
  $("#nav").hidden = !loggedIn;
  $("#who").hidden = !loggedIn;
  $("#page").hidden = !loggedIn;
}

async function loadVhosts() {
  const vhosts = await api("GET", "/vhosts");
  const sel = $("#vhost-filter");
  const current = sel.value;
  sel.innerHTML = '<option value="">All</option>' + vhosts.map((v) => `<option value="${esc(v.name)}">${esc(v.name)}</option>`).join("");
  sel.value = vhosts.some((v) => v.name === current) ? current : "";
  return vhosts;
}

// ---- tables --------------------------------------------------------------

// columns: [label, value(row) -> sortable value, render(row) -> html, numeric?]
function table(id, columns, rows) {
  const sort = state.sort[id] || { col: 0, rev: false };
  const sorted = rows.slice().sort((a, b) => {
    const x = columns[sort.col][1](a), y = columns[sort.col][1](b);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return sort.rev ? -c : c;
  });
  const head = columns
    .map((c, i) => `<th data-table="${id}" data-col="${i}" class="${c[3] ? "num" : ""} ${i === sort.col ? "sorted" : ""} ${i === sort.col && sort.rev ? "rev" : ""}">${esc(c[0])}</th>`)
    .join("");
  const body = sorted
    .map((r) => "<tr>" + columns.map((c) => `<td class="${c[3] ? "num" : ""}">${c[2] ? c[2](r) : fmt(c[1](r))}</td>`).join("") + "</tr>")
    .join("");
  const empty = rows.length ? "" : `<tr><td class="muted" colspan="${columns.length}">Nothing here yet.</td></tr>`;
  return `<table id="${id}"><thead><tr>${head}</tr></thead><tbody>${body}${empty}</tbody></table>`;
}

document.addEventListener("click", (e) => {
  const th = e.target.closest("th[data-table]");
  if (!th) return;
  const id = th.dataset.table, col = Number(th.dataset.col);
  const s = state.sort[id] || { col: 0, rev: false };
  state.sort[id] = { col, rev: s.col === col ? !s.rev : false };
  route();
});

// ---- charts --------------------------------------------------------------

const COLORS = ["#e8590c", "#1971c2", "#2f9e44", "#9c36b5"];

function chart(canvas, samples, series) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pad = { l: 56, r: 10, t: 10, b: 22 };
  const max = Math.max(1, ...samples.flatMap((s) => series.map(([key]) => s[key] || 0)));
  g.strokeStyle = "#e3e6ea";
  g.fillStyle = "#667085";
  g.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ((h - pad.t - pad.b) * i) / 4;
    g.beginPath();
    g.moveTo(pad.l, y);
    g.lineTo(w - pad.r, y);
    g.stroke();
    g.fillText(fmt(Math.round((max * (4 - i) * 10) / 4) / 10), 4, y + 4);
  }
  if (samples.length > 1) {
    const t0 = samples[0].at_ms, t1 = samples[samples.length - 1].at_ms;
    g.fillText(`${Math.round((t1 - t0) / 60000)} min`, pad.l, h - 6);
    series.forEach(([key], i) => {
      g.strokeStyle = COLORS[i % COLORS.length];
      g.lineWidth = 2;
      g.beginPath();
      samples.forEach((s, j) => {
        const x = pad.l + ((w - pad.l - pad.r) * (s.at_ms - t0)) / Math.max(1, t1 - t0);
        const y = pad.t + (h - pad.t - pad.b) * (1 - (s[key] || 0) / max);
        j ? g.lineTo(x, y) : g.moveTo(x, y);
      });
      g.stroke();
    });
  }
}

function legend(series) {
  return '<div class="legend">' + series.map(([, label], i) => `<span><i style="background:${COLORS[i]}"></i>${esc(label)}</span>`).join("") + "</div>";
}

// ---- pages ---------------------------------------------------------------

const pages = {
  async overview(el) {
    const o = await api("GET", "/overview");
    $("#version").textContent = `${o.product_version} · RabbitMQ API ${o.rabbitmq_version}`;
    const t = o.object_totals, q = o.queue_totals, m = o.message_stats;
    const tiles = [
      ["Connections", t.connections], ["Channels", t.channels], ["Queues", t.queues], ["Consumers", t.consumers],
      ["Ready", q.messages_ready], ["Unacked", q.messages_unacknowledged],
      ["Publish /s", rate(m, "publish")], ["Deliver /s", rate(m, "deliver_get")], ["Ack /s", rate(m, "ack")],
    ];
    const rates = [["publish_rate", "Publish"], ["deliver_get_rate", "Deliver / get"], ["ack_rate", "Ack"]];
    const depth = [["ready", "Ready"], ["unacked", "Unacknowledged"]];
    el.innerHTML = `<h1>Overview</h1>
      <div class="tiles">${tiles.map(([l, n]) => `<div class="tile"><div class="n">${fmt(n)}</div><div class="l">${l}</div></div>`).join("")}</div>
      <div class="charts">
        <div class="card"><h2>Message rates (/s)</h2><canvas id="rates"></canvas>${legend(rates)}</div>
        <div class="card"><h2>Queued messages</h2><canvas id="depth"></canvas>${legend(depth)}</div>
      </div>
      <h2>Listeners</h2>${table("listeners", [["Protocol", (l) => l.protocol], ["Address", (l) => l.ip_address], ["Port", (l) => l.port, null, true]], o.listeners)}`;
    const history = o.warren_history || [];
    chart($("#rates"), history, rates);
    chart($("#depth"), history, depth);
  },

  async queues(el) {
    const v = vhostFilter();
    const queues = await api("GET", v ? `/queues/${enc(v)}` : "/queues");
    const filter = state.filter;
    let match = () => true;
    try {
      if (filter) {
        const re = new RegExp(filter, "i");
        match = (q) => re.test(q.name);
      }
    } catch {
      match = (q) => q.name.toLowerCase().includes(filter.toLowerCase());
    }
    const shown = queues.filter(match);
    el.innerHTML = `<h1>Queues <span class="muted">(${shown.length} of ${queues.length})</span></h1>
      <div class="toolbar"><label class="grow">Filter (name or regex)<input id="filter" value="${esc(filter)}" placeholder="e.g. ^orders"></label></div>
      ${table("queues", [
        ["Virtual host", (q) => q.vhost],
        ["Name", (q) => q.name, (q) => `<a href="#/queue/${enc(q.vhost)}/${enc(q.name)}">${esc(q.name)}</a>`],
        ["Type", (q) => q.type],
        ["Node", (q) => q.leader || q.node || "", (q) => esc(q.leader || q.node || "") + (q.members && q.members.length > 1 ? ` <span class="muted">+${q.members.length - 1}</span>` : "")],
        ["Features", (q) => (q.durable ? "D " : "") + (q.auto_delete ? "AD " : "") + (q.exclusive ? "Excl " : "") + (q.policy || "")],
        ["Ready", (q) => q.messages_ready, null, true],
        ["Unacked", (q) => q.messages_unacknowledged, null, true],
        ["Total", (q) => q.messages, null, true],
        ["Consumers", (q) => q.consumers, null, true],
        ["Publish /s", (q) => rate(q.message_stats, "publish"), null, true],
        ["Deliver /s", (q) => rate(q.message_stats, "deliver_get"), null, true],
      ], shown)}
      <h2>Add a queue</h2>
      <form id="add-queue" class="card row">
        <label>Virtual host<select name="vhost">${await vhostOptions()}</select></label>
        <label>Name<input name="name" required></label>
        <label>Type<select name="type"><option>classic</option><option>quorum</option></select></label>
        <label>Durable<select name="durable"><option>true</option><option>false</option></select></label>
        <button>Add queue</button>
      </form>`;
    $("#filter").addEventListener("input", (e) => {
      state.filter = e.target.value;
      clearTimeout(state.filterTimer);
      state.filterTimer = setTimeout(() => route().then(() => $("#filter").focus()), 250);
    });
    $("#add-queue").addEventListener("submit", act(async (f) => {
      await api("PUT", `/queues/${enc(f.vhost.value)}/${enc(f.name.value)}`, {
        durable: f.durable.value === "true", auto_delete: false, arguments: { "x-queue-type": f.type.value },
      });
      toast(`Queue ${f.name.value} added`);
    }));
  },

  async queue(el, vhost, name) {
    const base = `/queues/${enc(vhost)}/${enc(name)}`;
    const [q, bindings, consumers] = await Promise.all([
      api("GET", base), api("GET", base + "/bindings"), api("GET", `/consumers/${enc(vhost)}`),
    ]);
    const mine = consumers.filter((c) => c.queue.name === name);
    el.innerHTML = `<h1>Queue <span id="queue-name">${esc(name)}</span> <span class="muted">in ${esc(vhost)}</span></h1>
      <div class="tiles">
        <div class="tile"><div class="n" id="q-ready">${fmt(q.messages_ready)}</div><div class="l">Ready</div></div>
        <div class="tile"><div class="n" id="q-unacked">${fmt(q.messages_unacknowledged)}</div><div class="l">Unacked</div></div>
        <div class="tile"><div class="n">${fmt(q.consumers)}</div><div class="l">Consumers</div></div>
        <div class="tile"><div class="n">${fmt(rate(q.message_stats, "publish"))}</div><div class="l">Publish /s</div></div>
        <div class="tile"><div class="n">${fmt(rate(q.message_stats, "deliver_get"))}</div><div class="l">Deliver /s</div></div>
      </div>
      <div class="card kv">
        <div>Type</div><div>${esc(q.type)}</div><div>Durable</div><div>${esc(q.durable)}</div>
        <div>Auto-delete</div><div>${esc(q.auto_delete)}</div><div>Exclusive</div><div>${esc(q.exclusive)}</div>
        <div>Policy</div><div>${esc(q.policy || "")}</div><div>Arguments</div><div>${esc(JSON.stringify(q.arguments))}</div>
        ${q.type === "quorum" ? `<div>Leader</div><div id="q-leader">${esc(q.leader || "(none known)")}</div>
        <div>Members</div><div id="q-members">${(q.members || []).map((m) => `<span class="${(q.online || []).includes(m) ? "" : "muted"}">${esc(m)}</span>`).join(", ")}</div>` : ""}
      </div>
      <h2>Bindings</h2>${table("qbindings", [["From", (b) => b.source || "(default exchange)"], ["Routing key", (b) => b.routing_key], ["Arguments", (b) => JSON.stringify(b.arguments)]], bindings)}
      <h2>Consumers</h2>${table("qconsumers", [["Tag", (c) => c.consumer_tag], ["Channel", (c) => c.channel_details.name], ["Ack required", (c) => c.ack_required], ["Prefetch", (c) => c.prefetch_count, null, true], ["Active", (c) => c.activity_status]], mine)}
      <div class="forms">
        <form id="publish" class="card"><h2>Publish a message</h2>
          <label>Payload<textarea name="payload" required></textarea></label>
          <label>Persistent<select name="persistent"><option value="2">yes</option><option value="1">no</option></select></label>
          <button>Publish</button></form>
        <form id="get" class="card"><h2>Get messages</h2>
          <div class="row"><label>Count<input name="count" type="number" value="1" min="1" max="10000"></label>
          <label>Ack mode<select name="ackmode"><option value="ack_requeue_true">Nack, requeue</option><option value="ack_requeue_false">Ack, remove</option><option value="reject_requeue_false">Reject, no requeue</option></select></label></div>
          <button>Get messages</button><div id="got">${state.got && state.got.queue === base ? state.got.html : ""}</div></form>
        <div class="card"><h2>Danger zone</h2><div class="row">
          <button id="purge" class="secondary">Purge messages</button>
          <button id="delete" class="danger">Delete queue</button></div></div>
      </div>`;
    $("#publish").addEventListener("submit", act(async (f) => {
      const r = await api("POST", `/exchanges/${enc(vhost)}/amq.default/publish`, {
        properties: { delivery_mode: Number(f.persistent.value) }, routing_key: name, payload: f.payload.value, payload_encoding: "string",
      });
      toast(r.routed ? "Message published" : "Message published but not routed", !r.routed);
    }));
    $("#get").addEventListener("submit", act(async (f) => {
      const msgs = await api("POST", base + "/get", { count: Number(f.count.value), ackmode: f.ackmode.value, encoding: "auto", truncate: 50000 });
      const html = msgs.length
        ? msgs.map((m) => `<pre class="message">${esc(m.payload)}</pre><div class="muted">redelivered: ${esc(m.redelivered)} · ${esc(m.message_count)} left</div>`).join("")
        : '<p class="muted">Queue is empty.</p>';
      // Kept across the page's refreshes, until the next get.
      state.got = { queue: base, html };
      $("#got").innerHTML = html;
      if (msgs.length && f.ackmode.value !== "ack_requeue_true") $("#q-ready").textContent = fmt(msgs[msgs.length - 1].message_count);
    }, false));
    $("#purge").addEventListener("click", act(async () => {
      if (!confirm(`Purge every ready message of ${name}?`)) return;
      await api("DELETE", base + "/contents");
      toast(`Queue ${name} purged`);
    }));
    $("#delete").addEventListener("click", act(async () => {
      if (!confirm(`Delete queue ${name}?`)) return;
      await api("DELETE", base);
      toast(`Queue ${name} deleted`);
      location.hash = "#/queues";
    }));
  },

  async exchanges(el) {
    const v = vhostFilter();
    const exchanges = await api("GET", v ? `/exchanges/${enc(v)}` : "/exchanges");
    el.innerHTML = `<h1>Exchanges</h1>
      ${table("exchanges", [
        ["Virtual host", (e) => e.vhost], ["Name", (e) => e.name || "(AMQP default)"], ["Type", (e) => e.type],
        ["Features", (e) => (e.durable ? "D " : "") + (e.auto_delete ? "AD " : "") + (e.internal ? "I" : "")],
        ["", () => "", (e) => (e.name && !e.name.startsWith("amq.") ? `<button class="link" data-del-exchange="${esc(e.name)}" data-vhost="${esc(e.vhost)}">delete</button>` : "")],
      ], exchanges)}
      <h2>Add an exchange</h2>
      <form id="add-exchange" class="card row">
        <label>Virtual host<select name="vhost">${await vhostOptions()}</select></label>
        <label>Name<input name="name" required></label>
        <label>Type<select name="type"><option>direct</option><option>fanout</option><option>topic</option><option>headers</option></select></label>
        <button>Add exchange</button>
      </form>`;
    $("#add-exchange").addEventListener("submit", act(async (f) => {
      await api("PUT", `/exchanges/${enc(f.vhost.value)}/${enc(f.name.value)}`, { type: f.type.value, durable: true });
      toast(`Exchange ${f.name.value} added`);
    }));
    el.querySelectorAll("[data-del-exchange]").forEach((b) => b.addEventListener("click", act(async () => {
      const [vh, n] = [b.dataset.vhost, b.dataset.delExchange];
      if (!confirm(`Delete exchange ${n}?`)) return;
      await api("DELETE", `/exchanges/${enc(vh)}/${enc(n)}`);
      toast(`Exchange ${n} deleted`);
    })));
  },

  async connections(el) {
    const conns = await api("GET", "/connections");
    el.innerHTML = `<h1>Connections</h1>
      ${table("connections", [
        ["Name", (c) => c.name], ["User", (c) => c.user], ["Virtual host", (c) => c.vhost], ["Client", (c) => c.client_properties.product || ""],
        ["Channels", (c) => c.channels, null, true], ["Heartbeat", (c) => c.timeout, null, true],
        ["", () => "", (c) => `<button class="link" data-close="${esc(c.name)}">close</button>`],
      ], conns)}`;
    el.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", act(async () => {
      if (!confirm(`Close connection ${b.dataset.close}?`)) return;
      await api("DELETE", `/connections/${enc(b.dataset.close)}`);
      toast("Connection closed");
    })));
  },

  async channels(el) {
    const channels = await api("GET", "/channels");
    el.innerHTML = `<h1>Channels</h1>
      ${table("channels", [
        ["Channel", (c) => c.name], ["User", (c) => c.user], ["Virtual host", (c) => c.vhost],
        ["Prefetch", (c) => c.prefetch_count, null, true], ["Unacked", (c) => c.messages_unacknowledged, null, true],
        ["Consumers", (c) => c.consumer_count, null, true],
      ], channels)}`;
  },

  async admin(el) {
    const [vhosts, users, perms, policies] = await Promise.all([
      loadVhosts(), api("GET", "/users").catch(() => []), api("GET", "/permissions").catch(() => []), api("GET", "/policies"),
    ]);
    el.innerHTML = `<h1>Admin</h1>
      <h2>Virtual hosts</h2>${table("vhosts", [["Name", (v) => v.name], ["Description", (v) => v.description], ["Messages", (v) => v.messages, null, true],
        ["", () => "", (v) => `<button class="link" data-del-vhost data-a="${esc(v.name)}">delete</button>`]], vhosts)}
      <h2>Users</h2>${table("users", [["Name", (u) => u.name], ["Tags", (u) => u.tags.join(","), (u) => u.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join("")],
        ["", () => "", (u) => `<button class="link" data-del-user data-a="${esc(u.name)}">delete</button>`]], users)}
      <h2>Permissions</h2>${table("perms", [["User", (p) => p.user], ["Virtual host", (p) => p.vhost], ["Configure", (p) => p.configure], ["Write", (p) => p.write], ["Read", (p) => p.read],
        ["", () => "", (p) => `<button class="link" data-del-perm data-a="${esc(p.vhost)}" data-b="${esc(p.user)}">clear</button>`]], perms)}
      <h2>Policies</h2>${table("policies", [["Virtual host", (p) => p.vhost], ["Name", (p) => p.name], ["Pattern", (p) => p.pattern], ["Apply to", (p) => p["apply-to"]],
        ["Definition", (p) => JSON.stringify(p.definition)], ["Priority", (p) => p.priority, null, true],
        ["", () => "", (p) => `<button class="link" data-del-policy data-a="${esc(p.vhost)}" data-b="${esc(p.name)}">delete</button>`]], policies)}
      <div class="forms">
        <form id="add-vhost" class="card"><h2>Add a virtual host</h2><label>Name<input name="name" required></label><label>Description<input name="description"></label><button>Add virtual host</button></form>
        <form id="add-user" class="card"><h2>Add a user</h2><label>Name<input name="name" required></label><label>Password<input name="password" type="password" required></label>
          <label>Tags (comma-separated)<input name="tags" placeholder="management"></label><button>Add user</button></form>
        <form id="set-perm" class="card"><h2>Set permissions</h2><label>User<input name="user" required></label><label>Virtual host<select name="vhost">${await vhostOptions()}</select></label>
          <div class="row"><label>Configure<input name="configure" value=".*"></label><label>Write<input name="write" value=".*"></label><label>Read<input name="read" value=".*"></label></div><button>Set permissions</button></form>
        <form id="add-policy" class="card"><h2>Add a policy</h2><label>Virtual host<select name="vhost">${await vhostOptions()}</select></label><label>Name<input name="name" required></label>
          <label>Pattern<input name="pattern" value=".*"></label><label>Apply to<select name="applyto"><option>queues</option><option>exchanges</option><option>all</option></select></label>
          <label>Definition (JSON)<textarea name="definition">{"max-length": 1000}</textarea></label><label>Priority<input name="priority" type="number" value="0"></label><button>Add policy</button></form>
      </div>`;
    $("#add-vhost").addEventListener("submit", act(async (f) => { await api("PUT", `/vhosts/${enc(f.name.value)}`, { description: f.description.value }); toast("Virtual host added"); }));
    $("#add-user").addEventListener("submit", act(async (f) => { await api("PUT", `/users/${enc(f.name.value)}`, { password: f.password.value, tags: f.tags.value }); toast("User added"); }));
    $("#set-perm").addEventListener("submit", act(async (f) => {
      await api("PUT", `/permissions/${enc(f.vhost.value)}/${enc(f.user.value)}`, { configure: f.configure.value, write: f.write.value, read: f.read.value });
      toast("Permissions set");
    }));
    $("#add-policy").addEventListener("submit", act(async (f) => {
      await api("PUT", `/policies/${enc(f.vhost.value)}/${enc(f.name.value)}`, {
        pattern: f.pattern.value, "apply-to": f.applyto.value, definition: JSON.parse(f.definition.value), priority: Number(f.priority.value),
      });
      toast("Policy added");
    }));
    const wire = (attr, fn) => el.querySelectorAll(`[${attr}]`).forEach((b) => b.addEventListener("click", act(() => fn([b.dataset.a, b.dataset.b]))));
    wire("data-del-vhost", async ([v]) => { if (confirm(`Delete virtual host ${v} and everything in it?`)) { await api("DELETE", `/vhosts/${enc(v)}`); toast("Virtual host deleted"); } });
    wire("data-del-user", async ([u]) => { if (confirm(`Delete user ${u}?`)) { await api("DELETE", `/users/${enc(u)}`); toast("User deleted"); } });
    wire("data-del-perm", async ([v, u]) => { await api("DELETE", `/permissions/${enc(v)}/${enc(u)}`); toast("Permissions cleared"); });
    wire("data-del-policy", async ([v, n]) => { await api("DELETE", `/policies/${enc(v)}/${enc(n)}`); toast("Policy deleted"); });
  },

  async definitions(el) {
    el.innerHTML = `<h1>Definitions</h1>
      <div class="forms">
        <div class="card"><h2>Export</h2><p class="muted">Users, virtual hosts, permissions, policies, queues, exchanges and bindings, in RabbitMQ's JSON format.</p>
          <button id="export">Download definitions</button></div>
        <form id="import" class="card"><h2>Import</h2><label>Definitions file<input name="file" type="file" accept=".json,application/json" required></label><button>Upload</button></form>
      </div>`;
    $("#export").addEventListener("click", act(async () => {
      const defs = await api("GET", "/definitions");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([JSON.stringify(defs, null, 2)], { type: "application/json" }));
      a.download = `warren-definitions-${new Date().toISOString().slice(0, 10)}.json`;
      a.click();
    }, false));
    $("#import").addEventListener("submit", act(async (f) => {
      const text = await f.file.files[0].text();
      await api("POST", "/definitions", JSON.parse(text));
      toast("Definitions imported");
    }, false));
  },
};

async function vhostOptions() {
  const vhosts = await api("GET", "/vhosts");
  return vhosts.map((v) => `<option value="${esc(v.name)}" ${v.name === (vhostFilter() || "/") ? "selected" : ""}>${esc(v.name)}</option>`).join("");
}

// Wraps a form or button handler: errors become a red toast; the page
// refreshes after a change unless told not to.
function act(fn, refresh = true) {
  return async (e) => {
    e.preventDefault();
    try {
      await fn(e.target.closest("form") || e.target);
      if (refresh) route();
    } catch (err) {
      toast(err.message, true);
    }
  };
}

// ---- routing -------------------------------------------------------------

async function route() {
  if (!state.auth) return;
  const parts = (location.hash.replace(/^#\//, "") || "overview").split("/").map(decodeURIComponent);
  const name = parts[0] in pages ? parts[0] : "overview";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (name === "queue" ? "queues" : name)));
  const el = $("#page");
  const typing = document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName) && document.activeElement.id !== "filter";
  try {
    if (!typing) await pages[name](el, ...parts.slice(1));
  } catch (e) {
    el.innerHTML = `<h1>Error</h1><p class="error">${esc(e.message)}</p>`;
  }
  clearInterval(state.timer);
  state.timer = setInterval(route, REFRESH_MS);
}

window.addEventListener("hashchange", route);
$("#vhost-filter").addEventListener("change", route);
$("#logout").addEventListener("click", logout);
$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  login(e.target.username.value, e.target.password.value);
});

if (state.auth) {
  api("GET", "/whoami").then((me) => { $("#user").textContent = me.name; show(true); loadVhosts().then(route); }).catch(logout);
} else {
  show(false);
}
