"""The proofreading page: one HTML document with inline CSS and JavaScript (no build step).

Element ids are stable (tests and users' scripts rely on them): ``#token``, ``#login``, ``#next``,
``#task``, ``#status``, ``#ng-link``, ``#merge``, ``#split``, ``#skip``, ``#correct``, ``#admin``,
``#stats``. Hotkeys (outside text fields): ``n`` next task, ``m`` merge, ``s`` split, ``x`` skip,
``d`` correct as is. The token is kept in ``localStorage`` under ``cx-token``.
"""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>connectomix proofreading</title>
<link rel="icon" href="data:,">
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: .7em 1.2em; display: flex; gap: 1em;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 1.05em; margin: 0 1em 0 0; font-weight: 600; }
  header input { width: 22em; padding: .3em .5em; font: inherit; }
  main { max-width: 58em; margin: 1.2em auto; padding: 0 1em; }
  section { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 1em 1.2em;
            margin-bottom: 1em; }
  button { font: inherit; padding: .35em .9em; border-radius: 6px; border: 1px solid #8a94a6;
           background: #fff; cursor: pointer; }
  button:disabled { opacity: .45; cursor: default; }
  button.primary { background: #2f6fdf; border-color: #2f6fdf; color: #fff; }
  kbd { font: 12px ui-monospace, monospace; border: 1px solid #aab; border-radius: 3px; padding: 0 .3em; }
  dl { display: grid; grid-template-columns: 10em 1fr; gap: .2em .8em; margin: .6em 0; }
  dt { color: #5b6578; } dd { margin: 0; font-family: ui-monospace, monospace; }
  #status { min-height: 1.4em; font-weight: 600; }
  #status.error { color: #b3261e; } #status.ok { color: #1b7f3b; }
  .actions { display: flex; gap: .6em; flex-wrap: wrap; margin-top: .8em; }
  table { border-collapse: collapse; } td, th { padding: .2em .8em; border-bottom: 1px solid #eee;
  text-align: left; }
  .muted { color: #5b6578; }
</style>
</head>
<body>
<header>
  <h1>connectomix proofreading</h1>
  <label for="token">API token</label>
  <input id="token" type="password" autocomplete="off" placeholder="paste the token from cx users add">
  <button id="login" class="primary">log in</button>
  <span id="who" class="muted"></span>
</header>
<main>
  <section>
    <div class="actions">
      <button id="next" class="primary" disabled>next task <kbd>n</kbd></button>
      <a id="ng-link" href="#" target="_blank" rel="noopener" hidden>open in Neuroglancer</a>
    </div>
    <p id="status" role="status" aria-live="polite"></p>
    <div id="task" class="muted">Log in, then ask for the next task.</div>
    <div class="actions">
      <button id="merge" disabled>merge <kbd>m</kbd></button>
      <button id="split" disabled>split <kbd>s</kbd></button>
      <button id="skip" disabled>skip <kbd>x</kbd></button>
      <button id="correct" disabled>correct as is <kbd>d</kbd></button>
    </div>
  </section>
  <section id="admin" hidden>
    <h2 style="font-size:1em;margin-top:0">Queue (admin) <button id="refresh">refresh</button></h2>
    <div id="stats"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const ACTIONS = ["merge", "split", "skip", "correct"];
const KEYS = { m: "merge", s: "split", x: "skip", d: "correct", n: "next" };
let token = localStorage.getItem("cx-token") || "";
let me = null, current = null, busy = false, heartbeatTimer = null;

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = kind || "";
}

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + token };
  const options = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new Error((data && data.detail) || (response.status + " " + response.statusText));
  return data;
}

function enable() {
  $("next").disabled = busy || !me;
  for (const a of ACTIONS) $(a).disabled = busy || !current;
}

function row(dl, label, value) {
  const dt = document.createElement("dt"); dt.textContent = label;
  const dd = document.createElement("dd"); dd.textContent = value;
  dl.append(dt, dd);
}

function showTask(view) {
  const el = $("task");
  el.textContent = "";
  el.className = "";
  current = view ? view.task : null;
  const link = $("ng-link");
  if (!view) {
    el.className = "muted";
    el.textContent = "No task held.";
    link.hidden = true;
    enable();
    return;
  }
  const t = view.task, dl = document.createElement("dl");
  row(dl, "task", "#" + t.id + " (" + t.kind + ")");
  row(dl, "segments", t.segment_ids.join(", ") || "none");
  row(dl, "score", Number(t.score).toPrecision(4));
  row(dl, "location (vx)", "x " + t.point_xyz[0] + ", y " + t.point_xyz[1] + ", z " + t.point_xyz[2]);
  row(dl, "location (nm)", t.point_nm_xyz.map((v) => Math.round(v)).join(", "));
  row(dl, "state", t.state + (t.claimed_by ? " by " + t.claimed_by : ""));
  el.append(dl);
  link.href = view.neuroglancer_url;
  link.hidden = false;
  enable();
}

async function login() {
  token = $("token").value.trim() || token;
  if (!token) { setStatus("paste your API token first", "error"); return; }
  try {
    me = await api("GET", "/api/me");
    localStorage.setItem("cx-token", token);
    $("who").textContent = me.name + " (" + me.role + ")";
    setStatus("logged in as " + me.name, "ok");
    $("admin").hidden = me.role !== "admin";
    if (me.role === "admin") loadStats();
  } catch (e) {
    me = null;
    setStatus("log-in failed: " + e.message, "error");
  }
  enable();
}

async function nextTask() {
  if (busy || !me) return;
  busy = true; enable();
  try {
    const view = await api("POST", "/api/tasks/next");
    showTask(view);
    setStatus(view ? "task " + view.task.id + " claimed" : "queue empty: nothing to do", view ? "" : "ok");
  } catch (e) {
    setStatus("next task failed: " + e.message, "error");
  } finally { busy = false; enable(); }
}

function describe(action, out) {
  if (out.edit) return (action === "merge" ? "merged" : "split") + " → edit " + out.edit.id;
  return action === "skip" ? "skipped" : "done";
}

async function act(action) {
  if (busy || !current) return;
  busy = true; enable();
  const id = current.id;
  setStatus(action + " task " + id + " …");
  try {
    const out = await api("POST", "/api/tasks/" + id + "/" + action);
    showTask(null);
    setStatus(describe(action, out) + " (task " + id + ")", "ok");
    if (me && me.role === "admin") loadStats();
  } catch (e) {
    setStatus(action + " failed: " + e.message, "error");
  } finally { busy = false; enable(); }
}

async function heartbeat() {
  if (!current || busy) return;
  try { await api("POST", "/api/tasks/" + current.id + "/heartbeat"); }
  catch (e) { setStatus("lost the task: " + e.message, "error"); showTask(null); }
}

async function loadStats() {
  try {
    const s = await api("GET", "/api/admin/stats");
    const el = $("stats");
    el.textContent = "";
    const q = s.queue, p = document.createElement("p");
    p.textContent = "waiting " + q.depth + ", claimed " + q.claimed + ", done " + q.done + ", skipped " +
      q.skipped + "; edits " + s.edits + ", version " + s.version;
    const table = document.createElement("table");
    table.innerHTML = "<tr><th>user</th><th>role</th><th>completed</th><th>edits</th></tr>";
    for (const u of s.users) {
      const tr = document.createElement("tr");
      for (const v of [u.name, u.role, u.completed, u.edits]) {
        const td = document.createElement("td"); td.textContent = v; tr.append(td);
      }
      table.append(tr);
    }
    el.append(p, table);
  } catch (e) { $("stats").textContent = "stats unavailable: " + e.message; }
}

$("login").addEventListener("click", login);
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") login(); });
$("next").addEventListener("click", nextTask);
$("refresh").addEventListener("click", loadStats);
for (const a of ACTIONS) $(a).addEventListener("click", () => act(a));
document.addEventListener("keydown", (e) => {
  const target = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
  const action = KEYS[e.key];
  if (!action) return;
  e.preventDefault();
  if (action === "next") nextTask(); else act(action);
});
heartbeatTimer = setInterval(heartbeat, 60000);
if (token) { $("token").value = token; login(); }
enable();
</script>
</body>
</html>
"""

__all__ = ["PAGE_HTML"]
