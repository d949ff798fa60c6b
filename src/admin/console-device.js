// The device page's commands and message log, loaded by console.html before console-main.js
// (whose `deviceView` calls `commandsView` and `messagesView`); built with `h` from
// console-pages.js, so data reaches the DOM only through textContent and attributes.
"use strict";

/// The commands names the form suggests: the GXP firmware's four, and common v1 ones.
const COMMAND_NAMES = ["capture_image", "send_image", "next_wake", "send_all_pending", "capture_now", "reboot"];

async function commandsView(id) {
  const box = $("commands-box");
  const base = `/api/v1/devices/${enc(id)}/commands`;
  const result = h("p", { id: "command-result", class: "note" });
  const list = h("div", { id: "commands-list" });
  const reload = async () => {
    const r = await api(base + "?limit=20");
    const d = await jsonOf(r);
    if (!r.ok) { list.replaceChildren(h("p", { class: "note err" }, errText(r, d))); return; }
    const rows = d.commands.map((c) => h("tr", { "data-command": c.command_id, "data-status": c.status },
      h("td", {}, h("code", {}, c.command_id)), h("td", {}, c.name), h("td", {}, h("code", {}, compact(c.args))),
      h("td", { class: "cmd-status " + (c.status === "succeeded" ? "ok" : c.status === "failed" || c.status === "expired" ? "err" : "") }, c.status),
      h("td", {}, c.format || ""), h("td", {}, when(c.created_at)), h("td", {}, when(c.sent_at)), h("td", {}, when(c.completed_at)),
      h("td", {}, h("code", {}, c.error || compact(c.result)))));
    fill(list, table("commands", ["command", "name", "args", "status", "format", "created", "sent", "completed", "result"], rows),
      rows.length ? null : h("p", {}, "No commands yet."));
  };
  const form = h("form", { id: "command-form", class: "form" },
    h("label", {}, "command ", h("input", { id: "cmd-name", list: "command-names", required: true, size: 18, value: "capture_image" })),
    h("datalist", { id: "command-names" }, COMMAND_NAMES.map((n) => h("option", { value: n }))),
    h("label", {}, "args (JSON object) ", h("textarea", { id: "cmd-args", value: "{}" })),
    h("button", { type: "submit", id: "cmd-send" }, "Send command"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let args;
    try { args = JSON.parse($("cmd-args").value || "{}"); } catch (x) { say(result, false, "args is not JSON: " + x.message, "refused"); return; }
    const w = await api(base, { method: "POST", body: JSON.stringify({ name: $("cmd-name").value.trim(), args }) });
    const b = await jsonOf(w);
    if (w.ok) say(result, true, `${b.command_id} ${b.status} on ${b.topic} (${b.format}, ${b.via})`, b.status);
    else say(result, false, "not sent: " + errText(w, b), "refused");
    await reload();
  });
  box.replaceChildren(form, result, list);
  await reload();
}

/// The newest 50 entries of the message log; "Older" appends the next page.
async function messagesView(id) {
  const box = $("messages-box");
  const tbody = h("tbody", {});
  const more = h("p", {});
  const load = async (before) => {
    const r = await api(`/api/v1/devices/${enc(id)}/messages?limit=50` + (before ? "&before_id=" + enc(before) : ""));
    const d = await jsonOf(r);
    if (!r.ok) { more.replaceChildren(h("span", { class: "note err" }, errText(r, d))); return; }
    tbody.append(...d.messages.map((m) => h("tr", { "data-message": m.id, "data-direction": m.direction },
      h("td", { class: "dir-" + m.direction }, m.direction), h("td", {}, h("code", {}, m.topic)), h("td", {}, when(m.received_at)),
      h("td", {}, h("pre", { class: "payload" }, m.payload === null ? "(no payload kept)" : JSON.stringify(m.payload, null, 2))))));
    more.replaceChildren(`${tbody.childElementCount} message(s) shown`);
    if (d.next_before_id !== null) {
      more.append(" ", h("button", { type: "button", id: "messages-older", onclick: () => load(d.next_before_id) }, "Older"));
    }
  };
  box.replaceChildren(h("table", { id: "messages" }, h("thead", {}, h("tr", {}, ["direction", "topic", "time", "payload"].map((x) => h("th", {}, x)))), tbody), more);
  await load(null);
}
