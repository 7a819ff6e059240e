// The console in a real browser: Debian's Chromium (/usr/bin/chromium) driven by playwright-core.
//
//   PROCFLOW_BIN=target/release/procflow node tests/browser/console.test.mjs
//
// Starts `procflow serve --store memory` on a free port with the shipped definitions, then:
// an agent logs in, sees the instance on the cockpit's graph, claims and completes the task in
// the tasklist and sees it leave the list, and the cockpit shows the instance moved on; a
// forged token and a trainee are refused. Screenshots go to target/browser/*.png.

import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const root = new URL("../../", import.meta.url).pathname;
const bin = process.env.PROCFLOW_BIN || `${root}target/release/procflow`;
const shots = `${root}target/browser`;
mkdirSync(shots, { recursive: true });

const port = await new Promise((resolve) => {
  const s = createServer();
  s.listen(0, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const base = `http://127.0.0.1:${port}`;
const server = spawn(bin, ["serve", "--store", "memory", "--listen", `127.0.0.1:${port}`, "process-defs/"], {
  cwd: root,
  stdio: ["ignore", "inherit", "inherit"],
});
const stop = () => server.kill("SIGTERM");
process.on("exit", stop);

async function call(method, path, token, body) {
  const r = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

for (let i = 0; ; i++) {
  try {
    if ((await fetch(`${base}/openapi.json`)).ok) break;
  } catch {}
  if (i > 100) throw new Error("the server did not start");
  await new Promise((r) => setTimeout(r, 100));
}

// A complaint from a Guangzhou customer: its first task is the call centre's.
const WANG = "agent-wang-demo";
const started = await call("POST", "/api/processes/complaint-handling/instances", WANG, {
  variables: { customer_id: "C-1001", channel: "call_centre", account_unit: "gz", local_network: "gz" },
});
assert.equal(started.status, 201, JSON.stringify(started.body));
const instance = started.body.instance;
const task = started.body.tasks[0].task;
assert.equal(started.body.tasks[0].node_id, "create_ticket");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  // ------------------------------------------------------------------ the agent
  const agent = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  agent.on("pageerror", (e) => { failed = true; console.error("page error:", e); });
  await agent.goto(base);
  await agent.fill("#token", WANG);
  await agent.screenshot({ path: `${shots}/login.png` });
  await agent.click("#login-submit");
  await agent.waitForSelector(`#work tr[data-task="${task}"]`);
  assert.match(await agent.textContent("#who"), /王芳/);
  await agent.screenshot({ path: `${shots}/tasklist.png` });

  // The cockpit: the instance waits at create_ticket on the graph.
  await agent.click("#nav-cockpit");
  await agent.click('#processes li[data-process="complaint-handling"]');
  await agent.click(`#instances tr[data-instance="${instance}"] a`);
  await agent.waitForSelector('#graph g.node.current[data-node="create_ticket"]');
  assert.equal(await agent.getAttribute('#graph g.node[data-node="create_ticket"]', "data-count"), "1");
  await agent.screenshot({ path: `${shots}/cockpit-before.png`, fullPage: true });

  // Claim and complete in the tasklist with the form; the task leaves the list.
  await agent.click("#nav-tasklist");
  await agent.click(`#work tr[data-task="${task}"] button.claim`);
  await agent.waitForSelector("#complete-form");
  await agent.waitForFunction((t) => document.querySelector(`#work tr[data-task="${t}"] td:nth-child(6)`)?.textContent === "wang", task);
  await agent.fill("#v-ticket_id", "CT-1001");
  await agent.screenshot({ path: `${shots}/task.png`, fullPage: true });
  await agent.click("#complete");
  await agent.waitForSelector(`#work tr[data-task="${task}"]`, { state: "detached" });
  assert.match(await agent.textContent("#banner"), /✓/);
  // the next task (record the problem) is the agent's group's work now
  await agent.waitForSelector("#work tbody tr");
  await agent.screenshot({ path: `${shots}/tasklist-after.png`, fullPage: true });

  // The cockpit shows the instance moved on.
  await agent.click("#nav-cockpit");
  await agent.click('#processes li[data-process="complaint-handling"]');
  await agent.click(`#instances tr[data-instance="${instance}"] a`);
  await agent.waitForSelector('#graph g.node.current[data-node="record_problem"]');
  assert.equal(await agent.$('#graph g.node.current[data-node="create_ticket"]'), null);
  await agent.waitForSelector("#history li");
  await agent.screenshot({ path: `${shots}/cockpit.png`, fullPage: true });

  // ------------------------------------------------------------------ refused
  const trainee = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await trainee.goto(base);
  await trainee.fill("#token", "forged-token-000");
  await trainee.click("#login-submit");
  await trainee.waitForFunction(() => document.querySelector("#banner")?.textContent.includes("Unauthenticated"));
  assert.equal(await trainee.isVisible("#login"), true);
  await trainee.fill("#token", "trainee-xiao-demo");
  await trainee.click("#login-submit");
  await trainee.waitForSelector("#work-empty", { state: "visible" });
  const next = (await call("GET", `/api/instances/${instance}`, WANG)).body.tasks[0].task;
  await trainee.fill("#claim-id", next);
  await trainee.click("#claim-id-go");
  await trainee.waitForFunction(() => document.querySelector("#banner")?.textContent.includes("Denied"));
  await trainee.screenshot({ path: `${shots}/trainee-refused.png`, fullPage: true });
  const after = await call("GET", `/api/instances/${instance}`, WANG);
  assert.equal(after.body.tasks[0].claimed_by, null, "the trainee's claim changed nothing");
  console.log(`browser tests: passed; screenshots in ${shots}`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  stop();
}
process.exit(failed ? 1 : 0);
