// The console's control-plane pages (hash routes `#/products`, `#/subscriptions`,
// `#/credentials`, `#/restarts`), loaded by console.html before console-main.js, whose `$`,
// `api`, `route` and `parseHash` they use.
// Every piece of data reaches the DOM through textContent or an attribute (`h` below), and
// every handler is attached with addEventListener: no innerHTML, no inline handlers.
"use strict";

/// An element with attributes and children; strings become text nodes. `on<event>` attaches a
/// function with addEventListener (never as an attribute); `value` is set as the attribute (a
/// textarea's as its text).
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) {
      if (typeof v !== "function") throw new TypeError(`h: ${k} must be a function`);
      e.addEventListener(k.slice(2), v);
    }
    else if (k === "class") e.className = v;
    else if (k === "value" && tag === "textarea") e.textContent = String(v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of kids.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
const enc = encodeURIComponent;
const when = (t) => (t ? new Date(t).toLocaleString() : "–");
const compact = (v) => (v === null || v === undefined ? "" : JSON.stringify(v));
async function jsonOf(r) { try { return await r.json(); } catch (_) { return {}; } }
function errText(r, b) {
  if (b && b.error) return `${r.status} ${b.error.code}: ${b.error.message}` + (b.error.field ? ` (${b.error.field})` : "");
  return `HTTP ${r.status}`;
}
function say(el, ok, text, outcome) {
  el.textContent = text; el.className = "note " + (ok ? "ok" : "err");
  if (outcome !== undefined) el.dataset.outcome = outcome;
}
/// Replaces `el`'s children, skipping the absent (null) ones.
function fill(el, ...nodes) { el.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false)); }
function view(...nodes) { fill($("view"), ...nodes); }
function table(id, heads, rows) {
  return h("table", { id }, h("thead", {}, h("tr", {}, heads.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}
function select(id, values, chosen) {
  return h("select", { id }, values.map((v) => h("option", { value: v, selected: v === chosen }, v)));
}
/// A destructive button that asks once more on the page (no dialog): the first click arms it.
function confirmButton(label, cls, action) {
  const b = h("button", { type: "button", class: "warn " + cls }, label);
  b.addEventListener("click", async () => {
    if (!b.dataset.armed) { b.dataset.armed = "1"; b.textContent = "Confirm " + label.toLowerCase(); return; }
    b.disabled = true;
    await action();
  });
  return b;
}
let pageTimer = null;
function stopPageTimer() { if (pageTimer) { clearInterval(pageTimer); pageTimer = null; } }

// ---- Products and broker config -------------------------------------------------------------

/// Settings the form does not show, kept from the stored config on save.
const KEPT = ["use_tls", "verify_cert", "client_id", "keep_alive_secs", "clean_session", "pattern", "use_shared", "shared_group", "qos", "ca_cert_pem", "ws_path", "gxp", "company_id"];

function statusCell(p) {
  const text = p.connected ? "connected" : "disconnected" + (p.connection_error ? ": " + p.connection_error : "");
  return h("td", { class: "status " + (p.connected ? "ok" : "err"), "data-connected": String(p.connected) }, text);
}
async function productsPage(params) {
  const r = await api("/api/v1/products");
  const d = await jsonOf(r);
  if (!r.ok) { view(h("h2", {}, "Products"), h("p", { class: "note err" }, errText(r, d))); return; }
  const result = h("p", { id: "product-result", class: "note" });
  const rows = d.products.map((p) => {
    const reconnect = h("button", { type: "button", class: "reconnect" }, "Reconnect");
    reconnect.addEventListener("click", async () => {
      reconnect.disabled = true; say(result, true, `reconnecting ${p.product_id}…`);
      const w = await api(`/api/v1/products/${enc(p.product_id)}/mqtt-config/reconnect`, { method: "POST" });
      const b = await jsonOf(w);
      reconnect.disabled = false;
      if (w.ok) say(result, b.status === "completed", `${p.product_id}: reconnect ${b.status} ${compact(b.result)}`, b.status);
      else say(result, false, `${p.product_id}: reconnect refused: ${errText(w, b)}`, "refused");
      refreshProducts().catch(() => {});
    });
    return h("tr", { "data-product": p.product_id },
      h("td", {}, h("a", { href: "#/products?product=" + enc(p.product_id) }, p.product_id)),
      h("td", { class: "host" }, p.url), h("td", {}, p.prefix), h("td", {}, p.enabled ? "enabled" : "disabled"),
      statusCell(p), h("td", { class: "messages" }, String(p.messages_received)),
      h("td", {}, h("a", { href: "#/subscriptions?product=" + enc(p.product_id) }, String(p.subscriptions))),
      h("td", {}, reconnect));
  });
  const chosen = params.get("product");
  view(h("h2", {}, "Products and broker config"),
    table("products", ["product", "broker", "prefix", "", "live status", "messages", "subscriptions", ""], rows),
    rows.length ? null : h("p", {}, "No product has a broker config: the [mqtt] source runs."),
    result,
    h("h3", { id: "product-form-title" }, chosen ? `Edit ${chosen}` : "New product config"),
    await productForm(chosen),
    chosen ? h("p", {}, h("a", { href: "#/products" }, "+ new product config")) : null);
  pageTimer = setInterval(() => refreshProducts().catch(() => {}), 3000);
}
/// The live status and message counts, without touching the form.
async function refreshProducts() {
  if (!$("products")) return;
  const r = await api("/api/v1/products");
  if (!r.ok) return;
  for (const p of (await r.json()).products) {
    const row = [...document.querySelectorAll("#products tr[data-product]")].find((x) => x.dataset.product === p.product_id);
    if (!row) continue;
    row.querySelector("td.status").replaceWith(statusCell(p));
    row.querySelector("td.messages").textContent = String(p.messages_received);
  }
}
async function productForm(productId) {
  let cfg = null;
  if (productId) {
    const r = await api(`/api/v1/products/${enc(productId)}/mqtt-config`);
    if (r.ok) cfg = (await r.json()).config;
  }
  const input = (name, label, attrs) => h("label", {}, label + " ", h("input", { id: "pf-" + name, ...attrs }));
  const stored = Boolean(cfg && cfg.password);
  const form = h("form", { id: "product-form", class: "form", "data-product": productId || "" },
    input("product_id", "product", { value: productId || "", required: true, readonly: Boolean(productId), pattern: "[A-Za-z0-9._\\-]{1,64}", size: 14 }),
    input("host", "host", { value: cfg ? cfg.host : "", required: true, size: 18 }),
    input("port", "port", { type: "number", min: 1, max: 65535, value: cfg ? cfg.port : 1883 }),
    h("label", {}, "protocol ", select("pf-protocol", ["mqtt", "mqtts", "ws", "wss"], cfg ? cfg.protocol : "mqtt")),
    h("label", {}, "MQTT ", select("pf-protocol_version", ["5", "3.1.1"], cfg ? cfg.protocol_version : "5")),
    input("username", "username", { value: cfg && cfg.username ? cfg.username : "", autocomplete: "off", size: 12 }),
    h("label", {}, "password ",
      h("input", { id: "pf-password", type: "password", autocomplete: "new-password", size: 12, placeholder: stored ? "empty keeps it" : "none" }),
      stored ? h("span", { id: "pf-password-mask", title: "stored, sealed; never shown" }, " stored: " + cfg.password) : null),
    input("prefix", "prefix", { value: cfg ? cfg.prefix : "ESP32CAM", size: 14 }),
    h("label", {}, h("input", { id: "pf-enabled", type: "checkbox", checked: cfg ? cfg.enabled : true }), " enabled"),
    h("button", { type: "submit", id: "pf-save" }, "Save"),
    h("button", { type: "button", id: "pf-test" }, "Test connection"));
  const out = h("p", { id: "test-result", class: "note" });
  const body = () => {
    const v = (n) => $("pf-" + n).value.trim();
    const b = {};
    for (const k of KEPT) if (cfg && cfg[k] !== null && cfg[k] !== undefined) b[k] = cfg[k];
    Object.assign(b, { host: v("host"), port: Number(v("port")), protocol: v("protocol"), protocol_version: v("protocol_version"), prefix: v("prefix"), enabled: $("pf-enabled").checked });
    if (v("username")) b.username = v("username");
    if ($("pf-password").value) b.password = $("pf-password").value;
    return b;
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("pf-product_id").value.trim();
    const w = await api(`/api/v1/products/${enc(id)}/mqtt-config`, { method: "PUT", body: JSON.stringify(body()) });
    const b = await jsonOf(w);
    if (!w.ok) { say(out, false, "not saved: " + errText(w, b), "refused"); return; }
    say(out, true, `${id} saved; ${b.live_reconnect ? "the source reconnected" : "the source has not reported a connection yet"}`, "saved");
    if (parseHash().params.get("product") === id) await route(); else location.hash = "#/products?product=" + enc(id);
  });
  form.querySelector("#pf-test").addEventListener("click", async () => {
    const id = $("pf-product_id").value.trim() || "new";
    say(out, true, "testing…", "testing");
    const w = await api(`/api/v1/products/${enc(id)}/mqtt-config/test`, { method: "POST", body: JSON.stringify(body()) });
    const b = await jsonOf(w);
    if (!w.ok) { say(out, false, "test refused: " + errText(w, b), "refused"); return; }
    out.dataset.connected = String(b.connected);
    say(out, b.connected, b.connected ? `connected in ${b.latency_ms} ms (${b.reason || "success"})` : `not connected: ${b.reason} (reason code ${b.reason_code ?? "–"}, ${b.latency_ms} ms)`, b.connected ? "connected" : "failed");
  });
  return h("div", {}, form, out);
}

// ---- Subscriptions --------------------------------------------------------------------------

async function subscriptionsPage(params) {
  const pr = await api("/api/v1/products");
  const products = pr.ok ? (await pr.json()).products.map((p) => p.product_id) : [];
  const product = params.get("product") || products[0] || "";
  const pick = select("sub-product", products, product);
  pick.addEventListener("change", () => { location.hash = "#/subscriptions?product=" + enc(pick.value); });
  const head = [h("h2", {}, "Subscriptions"), h("label", {}, "product ", pick)];
  if (!product) { view(...head, h("p", {}, "No product has a broker config yet: add one on the Products page.")); return; }
  const base = `/api/v1/products/${enc(product)}/mqtt-config/subscriptions`;
  const r = await api(base);
  const d = await jsonOf(r);
  const result = h("p", { id: "sub-result", class: "note" });
  if (!r.ok) { say(result, false, errText(r, d)); view(...head, result); return; }
  const rows = d.subscriptions.map((s) => {
    const toggle = h("button", { type: "button", class: "toggle" }, s.enabled ? "Disable" : "Enable");
    toggle.addEventListener("click", async () => {
      toggle.disabled = true;
      const w = await api(`${base}/${s.id}`, { method: "PUT", body: JSON.stringify({ enabled: !s.enabled }) });
      if (w.ok) await route(); else say(result, false, errText(w, await jsonOf(w)));
    });
    const del = confirmButton("Delete", "delete", async () => {
      const w = await api(`${base}/${s.id}`, { method: "DELETE" });
      if (w.ok) await route(); else say(result, false, errText(w, await jsonOf(w)));
    });
    return h("tr", { "data-sub": s.id, "data-name": s.name, "data-enabled": String(s.enabled) },
      h("td", {}, s.name), h("td", {}, h("code", {}, s.topic)), h("td", { class: s.enabled ? "ok" : "err" }, s.enabled ? "enabled" : "disabled"),
      h("td", { class: "received" }, String(s.messages_received)), h("td", {}, String(s.actions_executed)), h("td", {}, String(s.actions_failed)),
      h("td", {}, when(s.last_message_at)), h("td", {}, (s.actions || []).map((a) => a.type).join(", ")),
      h("td", {}, toggle, " ", del));
  });
  const form = h("form", { id: "sub-form", class: "form" },
    h("label", {}, "name ", h("input", { id: "sf-name", required: true, maxlength: 64, size: 14 })),
    h("label", {}, "topic filter ", h("input", { id: "sf-topic", required: true, size: 22, placeholder: "sensors/+/telemetry" })),
    h("label", {}, "actions (JSON) ", h("textarea", { id: "sf-actions", value: '[{"type": "store_json", "table": "telemetry"}]' })),
    h("label", {}, h("input", { id: "sf-enabled", type: "checkbox", checked: true }), " enabled"),
    h("button", { type: "submit", id: "sf-create" }, "Create"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let actions;
    try { actions = JSON.parse($("sf-actions").value); } catch (x) { say(result, false, "actions is not JSON: " + x.message); return; }
    const body = { name: $("sf-name").value, topic: $("sf-topic").value.trim(), enabled: $("sf-enabled").checked, actions };
    const w = await api(base, { method: "POST", body: JSON.stringify(body) });
    if (w.ok) await route(); else say(result, false, "not created: " + errText(w, await jsonOf(w)), "refused");
  });
  view(...head,
    h("p", { class: "note" }, d.default_profile_active ? "No subscriptions: the camera profile runs on the product's prefix." : `${d.subscriptions.length} subscription(s); only the enabled ones run.`),
    table("subscriptions", ["name", "topic", "state", "messages", "actions run", "actions failed", "last message", "actions", ""], rows),
    result, h("h3", {}, "New subscription"), form);
}

// ---- Hosted credentials ---------------------------------------------------------------------

async function credentialsPage(params) {
  const org = params.get("org") || "";
  const orgForm = h("form", { id: "org-form", class: "form" },
    h("label", {}, "organisation id ", h("input", { id: "org-id", type: "number", min: 1, value: org, required: true })),
    h("button", { type: "submit" }, "Show credentials"));
  orgForm.addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#/credentials?org=" + enc($("org-id").value); });
  if (!org) { view(h("h2", {}, "Hosted broker credentials"), orgForm); return; }
  const base = `/api/v1/organizations/${enc(org)}/mqtt-credentials`;
  // The password box lives outside the list, so refreshing the list keeps it; nothing keeps
  // the password anywhere else, so a reload or another page loses it for good.
  const secret = h("div", { id: "secret-box", class: "secret", hidden: true });
  const result = h("p", { id: "cred-result", class: "note" });
  const list = h("div", { id: "cred-list" });
  const reload = async () => {
    const r = await api(base);
    const d = await jsonOf(r);
    if (!r.ok) { list.replaceChildren(); say(result, false, errText(r, d), "refused"); return; }
    fill(list, table("credentials", ["id", "username", "allowed topics", "description", "created", "rotated", "last used", "state", ""],
      d.credentials.map((c) => credentialRow(c, base, secret, result, reload))),
    d.credentials.length ? null : h("p", {}, "No credentials yet."));
  };
  const gen = h("form", { id: "cred-form", class: "form" },
    h("label", {}, "description ", h("input", { id: "cred-description", size: 24, maxlength: 200 })),
    h("button", { type: "submit", id: "cred-generate" }, "Generate credential"));
  gen.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = $("cred-description").value ? { description: $("cred-description").value } : {};
    const w = await api(base, { method: "POST", body: JSON.stringify(body) });
    const b = await jsonOf(w);
    if (!w.ok) { say(result, false, "not generated: " + errText(w, b), "refused"); return; }
    showSecret(secret, b, "New credential");
    say(result, true, `credential ${b.id} generated`, "generated");
    await reload();
  });
  view(h("h2", {}, `Hosted broker credentials of organisation ${org}`), orgForm, gen, secret, result, list);
  await reload();
}
function credentialRow(c, base, secret, result, reload) {
  const active = !c.revoked_at;
  const actions = [];
  if (active) {
    const rotate = h("button", { type: "button", class: "rotate" }, "Rotate");
    rotate.addEventListener("click", async () => {
      rotate.disabled = true;
      const w = await api(`${base}/${c.id}/rotate`, { method: "POST" });
      const b = await jsonOf(w);
      if (!w.ok) { say(result, false, "not rotated: " + errText(w, b), "refused"); rotate.disabled = false; return; }
      showSecret(secret, b, "Rotated");
      say(result, true, `credential ${c.id} rotated; the previous password no longer works`, "rotated");
      await reload();
    });
    const revoke = confirmButton("Revoke", "revoke", async () => {
      const w = await api(`${base}/${c.id}`, { method: "DELETE" });
      if (w.ok) say(result, true, `credential ${c.id} (${c.username}) revoked`, "revoked");
      else say(result, false, "not revoked: " + errText(w, await jsonOf(w)), "refused");
      await reload();
    });
    actions.push(rotate, " ", revoke);
  }
  return h("tr", { "data-credential": c.id, "data-username": c.username, "data-state": active ? "active" : "revoked" },
    h("td", {}, String(c.id)), h("td", {}, h("code", {}, c.username)), h("td", {}, (c.allowed_topics || []).join(", ")),
    h("td", {}, c.description || ""), h("td", {}, when(c.created_at)), h("td", {}, when(c.rotated_at)), h("td", {}, when(c.last_used_at)),
    h("td", { class: active ? "ok" : "err" }, active ? "active" : "revoked " + when(c.revoked_at)), h("td", {}, actions));
}
/// Shows a new password once, with a Copy button; after copying it is gone from the page.
function showSecret(box, b, what) {
  let password = b.password;
  const pw = h("code", { id: "secret-password" }, password);
  const copy = h("button", { type: "button", id: "secret-copy" }, "Copy");
  copy.addEventListener("click", async () => {
    let ok = false;
    try {
      await Promise.race([navigator.clipboard.writeText(password), new Promise((_, no) => setTimeout(() => no(new Error("timeout")), 1000))]);
      ok = true;
    } catch (_) {
      const t = h("textarea", {}); t.value = password; document.body.append(t); t.select();
      try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
      t.remove();
    }
    password = null;
    pw.textContent = ok ? "copied; it is not shown again" : "could not copy; it is not shown again (rotate for a new one)";
    copy.disabled = true;
    box.dataset.state = ok ? "copied" : "gone";
  });
  fill(box,
    h("p", {}, `${what} `, h("b", { id: "secret-username" }, b.username), ": its password is shown only now. Copy it."),
    h("p", {}, pw, " ", copy),
    b.broker_urls ? h("p", {}, `broker ${b.broker_urls.join(", ")} · topics under ${b.topic_prefix}/`) : null);
  box.hidden = false;
  box.dataset.state = "shown";
}

// ---- Restarts -------------------------------------------------------------------------------

async function restartsPage() {
  const targets = ["pipeline", "sink:postgres", "sink:objects", "source:default"];
  const pr = await api("/api/v1/products");
  if (pr.ok) for (const p of (await pr.json()).products) targets.push("source:" + p.product_id);
  const form = h("form", { id: "restart-form", class: "form" },
    h("label", {}, "target ", h("input", { id: "rf-target", list: "restart-targets", required: true, size: 26, placeholder: "device:AABBCCDDEEFF" })),
    h("datalist", { id: "restart-targets" }, targets.map((t) => h("option", { value: t }))),
    h("label", {}, "reason ", h("input", { id: "rf-reason", size: 30, value: "console" })),
    h("button", { type: "submit", id: "rf-request", class: "warn" }, "Request restart"));
  const result = h("p", { id: "restart-result", class: "note" });
  const list = h("div", { id: "restart-list" });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const btn = $("rf-request"); btn.disabled = true;
    say(result, true, "restarting…", "running");
    const w = await api("/api/v1/restarts", { method: "POST", body: JSON.stringify({ target: $("rf-target").value.trim(), reason: $("rf-reason").value }) });
    const b = await jsonOf(w);
    btn.disabled = false;
    if (w.ok) say(result, b.status === "completed", `#${b.id} ${b.target}: ${b.status} ${compact(b.result)}`, b.status);
    else if (w.status === 429) say(result, false, `cooldown: ${b.error.message}; retry after ${w.headers.get("Retry-After")} s`, "cooldown");
    else say(result, false, "refused: " + errText(w, b), "refused");
    await restartHistory(list, null);
  });
  view(h("h2", {}, "Restarts"), form, result, h("h3", {}, "History"), list);
  await restartHistory(list, null);
}
/// The newest page into `list`, or, with `before`, the next older page appended.
async function restartHistory(list, before) {
  const r = await api("/api/v1/restarts?limit=25" + (before ? "&before_id=" + enc(before) : ""));
  const d = await jsonOf(r);
  if (!r.ok) { list.replaceChildren(h("p", { class: "note err" }, errText(r, d))); return; }
  const rows = d.restarts.map((x) => h("tr", { "data-restart": x.id, "data-status": x.status },
    h("td", {}, String(x.id)), h("td", {}, x.target), h("td", { class: "requested-by" }, x.requested_by), h("td", {}, x.reason || ""),
    h("td", { class: x.status === "completed" ? "ok" : x.status === "failed" || x.status === "rejected" ? "err" : "" }, x.status),
    h("td", {}, when(x.requested_at)), h("td", {}, when(x.started_at)), h("td", {}, when(x.completed_at)),
    h("td", {}, h("code", {}, compact(x.result)))));
  if (!before) fill(list, table("restarts", ["id", "target", "requested by", "reason", "status", "requested", "started", "completed", "result"], rows));
  else list.querySelector("#restarts tbody").append(...rows);
  const old = list.querySelector("#restarts-older");
  if (old) old.remove();
  if (d.next_before_id !== null) {
    list.append(h("button", { type: "button", id: "restarts-older", onclick: () => restartHistory(list, d.next_before_id) }, "Older"));
  }
}

/// The pages by hash path (`#/products` → "products"); the devices pages are console.html's.
const PAGES = { products: productsPage, subscriptions: subscriptionsPage, credentials: credentialsPage, restarts: restartsPage };
