// The procflow console: a tasklist and a cockpit over the HTTP API. Plain ES module, no build.

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
};

const LABELS = {
  tasklist: ["任务列表", "Tasklist"], cockpit: ["驾驶舱", "Cockpit"], logout: ["退出", "Log out"],
  login: ["登录", "Log in"], token: ["令牌", "Bearer token"],
  "login-hint": ["演示令牌见 process-defs/org/tokens.yaml", "Demo tokens are in process-defs/org/tokens.yaml."],
  scope: ["范围", "Show"], all: ["全部", "all"], mine: ["我的任务", "my work"], groups: ["我组的任务", "my groups' work"],
  process: ["流程", "Process"], node: ["节点", "Node"], order: ["排序", "Order"], "by-due": ["按时限", "deadline"],
  "by-priority": ["按优先级", "priority"], refresh: ["刷新", "Refresh"], "claim-id": ["按编号认领", "Claim by id"],
  claim: ["认领", "Claim"], task: ["任务", "Task"], instance: ["实例", "Instance"], due: ["时限", "Due"],
  "claimed-by": ["认领人", "Claimed by"], "no-work": ["没有待办任务。", "Nothing to do."], open: ["打开", "Open"],
  complete: ["完成", "Complete"], comment: ["备注", "Comment"], delegate: ["委托", "Delegate"],
  "send-back": ["退回", "Send back"], release: ["释放", "Release"], return: ["交回", "Give back"],
  reason: ["原因", "Reason"], processes: ["流程", "Processes"], customer: ["客户历史", "Customer history"],
  search: ["查询", "Search"], "sla-board": ["SLA 看板", "SLA board"], "open-tasks": ["待办", "Open tasks"],
  incidents: ["异常", "Incidents"], retry: ["重试", "Retry"], cancel: ["撤销", "Cancel"],
  heatmap: ["热力图", "Heatmap"], running: ["运行中的实例", "Running instances"], history: ["历史", "History"],
  start: ["发起", "Start"], variables: ["变量", "Variables"], done: ["已完成", "Done"], versions: ["版本", "Versions"],
};
let lang = localStorage.getItem("pf-lang") || "zh";
const t = (key) => (LABELS[key] || [key, key])[lang === "zh" ? 0 : 1];
const pick = (en, zh) => (lang === "zh" ? zh || en : en || zh) || "";

let token = sessionStorage.getItem("pf-token") || "";
let me = null;

function banner(text, ok = false) {
  const b = $("#banner");
  b.hidden = !text;
  b.textContent = text || "";
  b.className = ok ? "ok" : "";
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers, body: payload });
  const type = r.headers.get("content-type") || "";
  if (!r.ok) {
    const p = type.includes("json") ? await r.json() : { detail: await r.text(), kind: "HttpError" };
    const err = new Error(`${p.kind}: ${p.detail}`);
    err.problem = p;
    err.status = r.status;
    throw err;
  }
  if (r.status === 204) return null;
  if (type.includes("json")) return r.json();
  return r.text();
}

async function act(method, path, body, message) {
  try {
    await api(method, path, body);
    banner(message || t("done"), true);
    return true;
  } catch (e) {
    banner(e.message);
    return false;
  }
}

function applyLabels() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  $("#lang").value = lang;
}

function show(page) {
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== page;
  for (const b of document.querySelectorAll("header nav button")) b.classList.toggle("active", b.dataset.page === page);
  location.hash = page;
  if (page === "tasklist") loadWork();
  if (page === "cockpit") loadCockpit();
}

async function login(tok) {
  token = tok;
  try {
    me = await api("GET", "/api/me");
  } catch (e) {
    me = null;
    token = "";
    sessionStorage.removeItem("pf-token");
    banner(e.message);
    show("login");
    return;
  }
  sessionStorage.setItem("pf-token", token);
  $("#who").textContent = `${me.name || me.id} (${me.id}) · ${me.roles.join(", ") || "—"}`;
  banner("");
  await loadProcessOptions();
  show(location.hash === "#cockpit" ? "cockpit" : "tasklist");
}

function slaBadge(sla) {
  if (!sla) return "";
  return el("span", { class: `sla ${sla.status}` }, sla.status.replace("_", " "));
}

const time = (s) => (s ? new Date(s).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB") : "");

let processes = [];
async function loadProcessOptions() {
  processes = await api("GET", "/api/processes");
  const sel = $("#f-process");
  sel.replaceChildren(el("option", { value: "" }, "*"));
  const ids = [...new Set(processes.map((p) => p.id))];
  for (const id of ids) {
    const p = processes.filter((x) => x.id === id).pop();
    sel.append(el("option", { value: id }, pick(p.name, p.name_zh)));
  }
}

// ---------------------------------------------------------------------------------- tasklist

async function loadWork() {
  const q = new URLSearchParams({ scope: $("#f-scope").value, order: $("#f-order").value });
  if ($("#f-process").value) q.set("process", $("#f-process").value);
  if ($("#f-node").value.trim()) q.set("node", $("#f-node").value.trim());
  let rows;
  try {
    rows = await api("GET", `/api/work?${q}`);
  } catch (e) {
    banner(e.message);
    return;
  }
  const body = $("#work tbody");
  body.replaceChildren(
    ...rows.map((r) =>
      el("tr", { "data-task": r.task },
        el("td", {}, pick(r.name, r.name_zh) || r.node_id),
        el("td", {}, pick(r.process_name, r.process_name_zh)),
        el("td", {}, r.instance),
        el("td", {}, time(r.due)),
        el("td", {}, slaBadge(r.sla)),
        el("td", {}, r.claimed_by || ""),
        el("td", {},
          r.claimed_by ? "" : el("button", { class: "claim", onclick: () => claim(r.task) }, t("claim")),
          " ",
          el("button", { class: "open", onclick: () => openTask(r.task) }, t("open"))))));
  $("#work-empty").hidden = rows.length > 0;
}

async function claim(task) {
  if (await act("POST", `/api/tasks/${task}/claim`, undefined, `${task}: ${t("claim")} ✓`)) {
    await loadWork();
    await openTask(task);
  }
}

function input(v, value) {
  const name = v.name;
  const initial = value === undefined ? "" : v.enum ? JSON.stringify(value) : String(value);
  if (v.enum) {
    return el("select", { name, "data-type": v.type, "data-initial": initial },
      el("option", { value: "" }, ""),
      ...v.enum.map((x) => el("option", { value: JSON.stringify(x), selected: JSON.stringify(x) === JSON.stringify(value) }, String(x))));
  }
  if (v.type === "boolean") {
    return el("select", { name, "data-type": "boolean", "data-initial": initial },
      el("option", { value: "" }, ""),
      el("option", { value: "true", selected: value === true }, "true"),
      el("option", { value: "false", selected: value === false }, "false"));
  }
  if (v.type === "object" || v.type === "array" || v.type === "list") {
    return el("textarea", { name, "data-type": "json", rows: 2, placeholder: "JSON" });
  }
  const type = v.type === "integer" || v.type === "number" ? "number" : "text";
  return el("input", { name, type, "data-type": v.type, placeholder: value === undefined ? "" : String(value) });
}

function formValues(form) {
  const out = {};
  for (const f of form.querySelectorAll("[name]")) {
    const raw = f.value.trim();
    // Only what the user set: a field left at the instance's value is not sent again.
    if (raw === "" || raw === (f.dataset.initial ?? "")) continue;
    const ty = f.dataset.type;
    if (f.tagName === "SELECT" && ty !== "boolean") out[f.name] = JSON.parse(raw);
    else if (ty === "boolean") out[f.name] = raw === "true";
    else if (ty === "integer") out[f.name] = parseInt(raw, 10);
    else if (ty === "number") out[f.name] = Number(raw);
    else if (ty === "json") out[f.name] = JSON.parse(raw);
    else out[f.name] = raw;
  }
  return out;
}

async function openTask(task) {
  let d;
  try {
    d = await api("GET", `/api/tasks/${task}`);
  } catch (e) {
    banner(e.message);
    return;
  }
  const r = d.task;
  const panel = $("#task-panel");
  panel.hidden = false;
  // The form: the variables the task sets (its `sets:`), in their order; a task that does not
  // say shows every variable, those its description names ("Sets problem_details.") first.
  const text = `${d.description || ""}`;
  const vars = d.sets
    ? d.sets.map((name) => d.variables.find((v) => v.name === name)).filter(Boolean)
    : [...d.variables].sort((a, b) => (text.includes(b.name) ? 1 : 0) - (text.includes(a.name) ? 1 : 0));
  const form = el("form", { id: "complete-form" },
    el("h4", {}, t("variables")),
    el("div", { class: "vars" },
      ...vars.flatMap((v) => [
        el("label", { for: `v-${v.name}`, class: text.includes(v.name) ? "suggested" : "" }, v.name),
        Object.assign(input(v, d.values[v.name]), { id: `v-${v.name}` }),
        ...(v.description ? [el("span", { class: "desc" }, v.description)] : []),
      ])),
    el("button", { type: "submit", id: "complete" }, t("complete")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let values;
    try {
      values = formValues(form);
    } catch (e) {
      banner(`JSON: ${e.message}`);
      return;
    }
    if (await act("POST", `/api/tasks/${task}/complete`, { variables: values }, `${task}: ${t("complete")} ✓`)) {
      panel.hidden = true;
      await loadWork();
    }
  });
  const people = await api("GET", "/api/people").catch(() => []);
  const personSelect = (id) => el("select", { id }, ...people.map((p) => el("option", { value: p.id }, `${p.name} (${p.id})`)));
  const small = (id, label, fields, run) => {
    const f = el("form", { id, class: "bar" }, ...fields, el("button", { type: "submit" }, label));
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (await run()) {
        await loadWork();
        await openTask(task).catch(() => {});
      }
    });
    return f;
  };
  panel.replaceChildren(
    el("h3", {}, `${pick(r.name, r.name_zh)} · ${r.task} `, slaBadge(r.sla)),
    el("p", { class: "hint" }, `${pick(r.process_name, r.process_name_zh)} · ${t("due")}: ${time(r.due)} · ${t("claimed-by")}: ${r.claimed_by || "—"}${r.delegated_by ? ` (${t("delegate")}: ${r.delegated_by})` : ""}`),
    el("p", {}, d.description || ""),
    el("ul", { class: "comments" }, ...d.comments.map((c) => el("li", {}, `${time(c.at)} ${c.actor}: ${c.text}`))),
    form,
    small("comment-form", t("comment"), [el("input", { id: "comment-text", size: 40 })],
      () => act("POST", `/api/tasks/${task}/comment`, { text: $("#comment-text").value })),
    small("delegate-form", t("delegate"), [personSelect("delegate-to")],
      () => act("POST", `/api/tasks/${task}/delegate`, { to: $("#delegate-to").value })),
    ...(d.send_back.length
      ? [small("send-back-form", t("send-back"),
          [el("select", { id: "send-back-to" }, ...d.send_back.map((n) => el("option", { value: n }, n))),
            el("input", { id: "send-back-reason", placeholder: t("reason") })],
          () => act("POST", `/api/tasks/${task}/send-back`, { to: $("#send-back-to").value, reason: $("#send-back-reason").value }))]
      : []),
    el("div", { class: "bar" },
      el("button", { id: "release", onclick: async () => (await act("POST", `/api/tasks/${task}/release`)) && loadWork() }, t("release")),
      el("button", { id: "return", onclick: async () => (await act("POST", `/api/tasks/${task}/return`)) && loadWork() }, t("return"))),
  );
}

// ---------------------------------------------------------------------------------- cockpit

let current = null; // { id, version }

async function loadCockpit() {
  await loadProcessOptions().catch((e) => banner(e.message));
  const list = $("#processes");
  const ids = [...new Set(processes.map((p) => p.id))];
  list.replaceChildren(
    ...ids.map((id) => {
      const vs = processes.filter((p) => p.id === id);
      const p = vs[vs.length - 1];
      return el("li", { "data-process": id, class: current?.id === id ? "active" : "", onclick: () => openProcess(id) },
        `${pick(p.name, p.name_zh)} `, el("span", { class: "hint" }, `v${vs.map((v) => v.version).join(", v")}`));
    }));
  const keys = [...new Set(processes.flatMap((p) => p.keys))];
  $("#key-name").replaceChildren(...keys.map((k) => el("option", { value: k }, k)));
  await loadSla();
  if (current) await openProcess(current.id, current.instance);
}

async function loadSla() {
  const rows = await api("GET", "/api/sla").catch(() => []);
  $("#sla tbody").replaceChildren(
    ...rows.map((r) => {
      const i = r.instance;
      const worst = i.sla || (r.tasks[0] && r.tasks[0].sla);
      return el("tr", {},
        el("td", {}, el("a", { href: "#cockpit", onclick: () => openProcess(i.process, i.instance) }, i.instance)),
        el("td", {}, pick(i.name, i.name_zh)),
        el("td", {}, i.open_tasks.join(", ")),
        el("td", {}, slaBadge(worst)),
        el("td", {}, time(worst && worst.due)));
    }));
}

async function svgOf(path) {
  const text = await api("GET", path);
  const div = el("div", { class: "graph" });
  div.innerHTML = text; // the server's own SVG
  return div;
}

async function openProcess(id, instance) {
  current = { id, instance };
  for (const li of document.querySelectorAll("#processes li")) li.classList.toggle("active", li.dataset.process === id);
  let def;
  try {
    def = await api("GET", `/api/processes/${encodeURIComponent(id)}`);
  } catch (e) {
    banner(e.message);
    return;
  }
  const view = $("#process-view");
  const graphPath = `/api/processes/${encodeURIComponent(id)}/graph${instance ? `?instance=${instance}` : ""}`;
  const running = await api("GET", `/api/instances?process=${encodeURIComponent(id)}&status=running`).catch(() => []);
  const startForm = el("form", { id: "start-form", class: "bar" },
    el("textarea", { id: "start-vars", rows: 2, cols: 60, placeholder: '{"customer_id": "C-1001"}' }),
    el("button", { type: "submit", id: "start" }, t("start")));
  startForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let variables = {};
    try {
      const raw = $("#start-vars").value.trim();
      if (raw) variables = JSON.parse(raw);
    } catch (e) {
      banner(`JSON: ${e.message}`);
      return;
    }
    try {
      const r = await api("POST", `/api/processes/${encodeURIComponent(id)}/instances`, { variables });
      banner(`${t("start")}: ${r.instance}`, true);
      await openProcess(id, r.instance);
    } catch (e) {
      banner(e.message);
    }
  });
  const metric = el("select", { id: "metric" }, ...["mean-wait", "breach-rate", "rework-rate"].map((m) => el("option", { value: m }, m)));
  const heat = el("div", { id: "heatmap" });
  metric.addEventListener("change", async () => heat.replaceChildren(await svgOf(`/api/processes/${encodeURIComponent(id)}/heatmap?metric=${metric.value}`).catch((e) => e.message)));
  view.replaceChildren(
    el("h2", {}, `${pick(def.name, def.name_zh)} `, el("span", { class: "hint" }, `${def.id} · ${t("versions")}: ${def.versions.join(", ")}`)),
    el("p", { class: "hint" }, def.description || ""),
    el("div", { id: "graph" }, await svgOf(graphPath).catch((e) => e.message)),
    startForm,
    el("h3", {}, t("running")),
    el("table", { id: "instances" },
      el("thead", {}, el("tr", {}, el("th", {}, t("instance")), el("th", {}, t("open-tasks")), el("th", {}, "SLA"), el("th", {}, t("incidents")), el("th", {}))),
      el("tbody", {}, ...running.map((i) =>
        el("tr", { "data-instance": i.instance, class: i.instance === instance ? "active" : "" },
          el("td", {}, el("a", { href: "#cockpit", onclick: () => openProcess(id, i.instance) }, i.instance), " ", el("span", { class: "hint" }, Object.values(i.keys).join(" "))),
          el("td", {}, i.open_tasks.join(", ")),
          el("td", {}, slaBadge(i.sla)),
          el("td", {}, ...i.incidents.map((x) => el("div", {}, x.message)),
            i.incidents.length ? el("button", { class: "retry", onclick: async () => (await act("POST", `/api/instances/${i.instance}/retry`)) && openProcess(id, i.instance) }, t("retry")) : ""),
          el("td", {}, el("button", { class: "cancel", onclick: async () => (await act("POST", `/api/instances/${i.instance}/cancel`, { reason: "cancelled in the console" })) && openProcess(id) }, t("cancel"))))))),
    el("h3", {}, t("heatmap"), " ", metric),
    heat,
  );
  if (instance) {
    const d = await api("GET", `/api/instances/${instance}`).catch(() => null);
    if (d) view.append(el("h3", {}, `${t("history")} ${instance}`), el("ol", { id: "history" }, ...d.history.map((h) => el("li", {}, `${time(h.at)} ${h.what}`))));
  }
  metric.dispatchEvent(new Event("change"));
}

async function searchKey(ev) {
  ev.preventDefault();
  const key = $("#key-name").value;
  const value = $("#key-value").value.trim();
  if (!key || !value) return;
  try {
    const r = await api("GET", `/api/keys/${encodeURIComponent(key)}/${encodeURIComponent(value)}`);
    $("#key-view").replaceChildren(
      el("h2", {}, `${key} = ${value}`),
      el("ul", {}, ...r.instances.map((i) => el("li", {}, `${i.instance} ${i.definition.id} ${i.status} ${i.open_tasks.join(", ")}`))),
      el("ol", { id: "key-history" }, ...r.history.map((h) => el("li", {}, `${time(h.at)} ${h.instance} ${h.definition.id}: ${h.what}`))));
  } catch (e) {
    banner(e.message);
  }
}

// ---------------------------------------------------------------------------------- wiring

applyLabels();
$("#lang").addEventListener("change", () => {
  lang = $("#lang").value;
  localStorage.setItem("pf-lang", lang);
  applyLabels();
  if (!$("#tasklist").hidden) loadWork();
  if (!$("#cockpit").hidden) loadCockpit();
});
$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  login($("#token").value.trim());
});
$("#logout").addEventListener("click", () => {
  token = "";
  me = null;
  sessionStorage.removeItem("pf-token");
  $("#who").textContent = "";
  show("login");
});
for (const b of document.querySelectorAll("header nav button")) b.addEventListener("click", () => (me ? show(b.dataset.page) : show("login")));
$("#filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  loadWork();
});
$("#claim-id-go").addEventListener("click", () => claim($("#claim-id").value.trim()));
$("#key-form").addEventListener("submit", searchKey);
if (token) login(token);
else show("login");
