// TaskFlow dashboard. Plain JavaScript, no build step, nothing from the network.
//
// How the live table stays gapless:
// * The server renders the change position its feed had reached into <body data-position>.
//   The task list is read after that, so it reflects every change up to that position, and
//   the stream is opened with /events?after=<position>: every later change arrives.
// * Every change carries the task's status after it. A row remembers the position of the
//   last change applied to it, and a change at or below that position is ignored.
// * While a page of the list is being (re)loaded, changes are buffered and applied to the
//   new rows once it arrives, because the list may have been read before they happened.
// * EventSource reconnects by itself and sends Last-Event-ID, so the server replays what was
//   missed. If it gives up (an HTTP error), we reconnect with ?after=<last id seen>.
//
// Logging in: with the API closed (<body data-auth="on">) the page asks for an API key
// once and trades it for an HttpOnly cookie (POST /session); the key itself is never kept.
// Every request, the stream included, then goes with that cookie, and every write with
// the X-CSRF-Token the API answered. A 401 later (logged out elsewhere, expired, the key
// revoked) stops everything and shows the login form again.
"use strict";

(() => {
  const EVENT_TYPES = [
    "task.created", "task.processing", "task.progress", "task.done", "task.failed",
    "task.retry_scheduled", "task.cancel_requested", "task.cancelled", "task.dead_lettered",
    "task.redriven",
  ];
  const STATUSES = ["PENDING", "DELAYED", "PROCESSING", "RETRYING", "DONE", "FAILED", "CANCELLED"];
  const TERMINAL = new Set(["DONE", "FAILED", "CANCELLED"]);
  const PAGE_SIZE = Math.min(500, Math.max(1, Number(new URLSearchParams(location.search).get("limit")) || 50));
  const STATS_EVERY_MS = 3000;
  const RECONNECT_MS = 3000;
  const SEEN_MAX = 100000;
  const OTHERS_MAX = 5000;

  const $ = (id) => document.getElementById(id);

  const state = {
    lastId: Number(document.body.dataset.position) || 0, // last change position received
    seen: [],             // every change position received, in order (for tests and audits)
    rows: new Map(),      // task_id -> {task, pos, tr}: the tasks in the table
    others: new Map(),    // task_id -> {task, pos}: known tasks outside the current view
    pending: new Map(),   // task_id -> changes queued while GET /tasks/{id} is in flight
    filter: {status: "", type: ""},
    cursor: null,         // next_cursor of the oldest page loaded; null when complete
    oldest: null,         // created_at (ms) of the oldest row loaded, while incomplete
    generation: 0,        // bumped by every list reload; stale responses are dropped
    ready: false,         // false while a page is loading: changes go to `buffer`
    buffer: [],
    selected: null,       // task_id shown in the detail panel
    source: null,         // the EventSource
    streams: 0,           // EventSources opened (the browser's own reconnects do not count)
    resets: 0,            // times retention trimmed changes we missed, and we reloaded
    connected: false,
    types: [],
    started: false,       // the live views run (after login, when the API is closed)
    csrf: null,           // X-CSRF-Token of the login cookie; null when the API is open
    timers: [],
  };
  window.taskflow = state;

  // ---------------------------------------------------------------- helpers

  async function api(path, {method = "GET", body} = {}) {
    const init = {method, headers: {Accept: "application/json"}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (method !== "GET" && state.csrf) init.headers["X-CSRF-Token"] = state.csrf;
    const resp = await fetch(path, init);
    if (resp.status === 401 && state.started) loggedOut();
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = {detail: text}; }
    }
    return {ok: resp.ok, status: resp.status, data};
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  const svg = (tag, attrs = {}) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  };

  const ms = (iso) => (iso ? Date.parse(iso) : NaN);
  const shortTime = (iso) => {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
  };
  const timeEl = (iso) => el("time", {datetime: iso || "", title: iso || "", text: shortTime(iso)});
  const badge = (status) => el("span", {class: `badge s-${status}`, text: status});

  function problemText(r) {
    const d = r.data || {};
    if (d.title || d.detail) return [d.title, d.detail].filter(Boolean).join(": ");
    return `HTTP ${r.status}`;
  }

  function debounce(fn, wait) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, wait);
    };
  }

  // One run at a time; a call during a run schedules exactly one more.
  function serial(fn) {
    let running = false;
    let again = false;
    return async function run() {
      if (running) { again = true; return; }
      running = true;
      try { await fn(); } finally {
        running = false;
        if (again) { again = false; run(); }
      }
    };
  }

  function summaryOf(task) {
    if (task.summary) return task.summary;
    if (task.status === "DONE" && task.result !== undefined && task.result !== null) {
      return typeof task.result === "string" ? task.result : JSON.stringify(task.result);
    }
    return task.error || task.progress_message || "";
  }

  // ---------------------------------------------------------------- the table

  function matches(task) {
    const f = state.filter;
    return (!f.status || task.status === f.status) && (!f.type || task.type === f.type);
  }

  // The table holds every matching task created at or after the oldest row loaded.
  function inRange(task) {
    return state.cursor === null || state.oldest === null || ms(task.created_at) >= state.oldest;
  }

  // Newest first, ties by task id descending: the same order as GET /tasks.
  function before(a, b) {
    const ta = ms(a.created_at);
    const tb = ms(b.created_at);
    if (ta !== tb) return ta > tb;
    return a.task_id > b.task_id;
  }

  // Rows are built once and then updated in place, so a focused button keeps its focus
  // while the stream rewrites the row around it.
  const PRIORITY_NAMES = {"-50": "low", "0": "normal", "50": "high", "100": "critical"};
  const priorityLabel = (p) => (p === undefined || p === null) ? ""
    : (PRIORITY_NAMES[String(p)] || String(p));

  function renderRow(row) {
    const t = row.task;
    if (!row.tr) {
      const c = {
        button: el("button", {type: "button", class: "link",
                              onclick: () => select(row.task.task_id, true)}),
        id: el("span", {class: "mono id"}),
        type: el("td", {class: "col-type"}),
        priority: el("td", {class: "col-priority num"}),
        status: el("td", {class: "col-status"}),
        attempt: el("td", {class: "col-attempt num"}),
        progress: el("progress", {max: 100, value: 0}),
        summary: el("td", {class: "col-summary"}),
        created: el("td", {class: "col-created"}),
      };
      row.cells = c;
      row.tr = el("tr", {},
        el("th", {scope: "row", class: "col-task"}, c.button, c.id),
        c.type, c.priority, c.status, c.attempt, el("td", {class: "col-progress"}, c.progress),
        c.summary, c.created);
    }
    const c = row.cells;
    const tr = row.tr;
    const selected = state.selected === t.task_id;
    tr.dataset.taskId = t.task_id;
    tr.dataset.status = t.status;
    tr.classList.toggle("selected", selected);
    if (selected) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
    c.button.textContent = t.title || t.task_id;
    c.id.textContent = t.task_id.slice(0, 8);
    c.type.textContent = t.type || "";
    c.priority.textContent = priorityLabel(t.priority);
    c.status.replaceChildren(badge(t.status));
    c.attempt.textContent = String(t.attempt ?? "");
    c.progress.value = t.progress || 0;
    c.progress.setAttribute("aria-label", `progress ${t.progress || 0}%`);
    const summary = summaryOf(t);
    c.summary.textContent = summary;
    c.summary.title = summary;
    c.summary.classList.toggle("error-text", t.status === "FAILED");
    if (!c.created.firstChild || c.created.firstChild.dateTime !== (t.created_at || "")) {
      c.created.replaceChildren(timeEl(t.created_at));
    }
    return tr;
  }

  function flash(tr) {
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }

  function insertRow(task, pos) {
    const row = {task, pos, tr: null};
    state.rows.set(task.task_id, row);
    state.others.delete(task.task_id);
    renderRow(row);
    const body = $("task-rows");
    let next = null;
    for (const tr of body.children) {
      const other = state.rows.get(tr.dataset.taskId);
      if (other && before(task, other.task)) { next = tr; break; }
    }
    body.insertBefore(row.tr, next);
    return row;
  }

  function removeRow(row) {
    state.rows.delete(row.task.task_id);
    row.tr.remove();
    remember(row.task, row.pos);
  }

  function remember(task, pos) {
    state.others.delete(task.task_id);
    state.others.set(task.task_id, {task, pos});
    if (state.others.size > OTHERS_MAX) state.others.delete(state.others.keys().next().value);
  }

  function updateEmpty() {
    const empty = $("empty");
    empty.hidden = state.rows.size > 0;
    empty.textContent = state.ready ? "No tasks match." : "Loading…";
  }

  // Copy what a change says about the task's state onto it.
  function merge(task, c) {
    task.status = c.status;
    task.attempt = c.attempt;
    task.progress = c.progress;
    task.summary = c.summary;
    task.updated_at = c.time;
  }

  // Put a task where it belongs: in the table, or among the others.
  function place(task, pos) {
    const row = state.rows.get(task.task_id);
    if (matches(task) && inRange(task)) {
      if (row) {
        row.task = task;
        row.pos = pos;
        renderRow(row);
        flash(row.tr);
      } else {
        flash(insertRow(task, pos).tr);
      }
    } else if (row) {
      removeRow(row);
    } else {
      remember(task, pos);
    }
    updateEmpty();
  }

  function applyChange(c) {
    const id = c.task_id;
    const row = state.rows.get(id) || state.others.get(id);
    if (row) {
      if (c.position <= row.pos) return; // the row already reflects it
      const task = {...row.task};
      merge(task, c);
      place(task, c.position);
    } else if (state.pending.has(id)) {
      state.pending.get(id).push(c);
    } else {
      fetchTask(c);
    }
  }

  // A change for a task we do not know: read it, then apply what arrived meanwhile.
  async function fetchTask(c) {
    const id = c.task_id;
    const generation = state.generation;
    const queue = [c];
    state.pending.set(id, queue);
    const mine = () => state.pending.get(id) === queue;
    for (let attempt = 0; attempt < 30; attempt++) {
      let r = null;
      try { r = await api(`/tasks/${id}`); } catch { r = null; }
      // A reload since then read the list after these changes and owns the task now.
      if (!mine()) return;
      if (generation !== state.generation) { state.pending.delete(id); return; }
      if (r && r.ok) {
        state.pending.delete(id);
        const task = r.data;
        let pos = 0;
        for (const q of queue) { merge(task, q); pos = q.position; }
        place(task, pos);
        return;
      }
      if (r && r.status === 404) break;
      await new Promise((resolve) => setTimeout(resolve, Math.min(500 * (attempt + 1), 3000)));
      if (!mine()) return;
    }
    state.pending.delete(id);
  }

  async function loadPage(reset) {
    const generation = reset ? ++state.generation : state.generation;
    state.ready = false;
    const floor = state.lastId; // the list read below reflects every change up to here
    const q = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (state.filter.status) q.set("status", state.filter.status);
    if (state.filter.type) q.set("type", state.filter.type);
    if (!reset && state.cursor) q.set("cursor", state.cursor);
    $("older").disabled = true;
    let r = null;
    try { r = await api(`/tasks?${q}`); } catch { r = null; }
    if (generation !== state.generation) return;
    if (!r || !r.ok) {
      $("empty").hidden = false;
      $("empty").textContent = r ? `Could not load tasks: ${problemText(r)}` : "API unreachable; retrying…";
      setTimeout(() => { if (generation === state.generation) loadPage(reset); }, RECONNECT_MS);
      return;
    }
    if (reset) {
      state.rows.clear();
      state.others.clear();
      state.pending.clear();
      $("task-rows").replaceChildren();
    }
    const items = r.data.items || [];
    state.cursor = r.data.next_cursor || null;
    if (reset) state.oldest = null;
    if (items.length) state.oldest = ms(items[items.length - 1].created_at);
    for (const task of items) if (!state.rows.has(task.task_id)) insertRow(task, floor);
    $("older").hidden = state.cursor === null;
    $("older").disabled = false;
    state.ready = true;
    const buffered = state.buffer;
    state.buffer = [];
    for (const c of buffered) applyChange(c);
    updateEmpty();
  }

  function readFilters() {
    const q = new URLSearchParams(location.search);
    state.filter.status = STATUSES.includes(q.get("status")) ? q.get("status") : "";
    state.filter.type = q.get("type") || "";
    $("filter-status").value = state.filter.status;
  }

  function onFilter() {
    state.filter.status = $("filter-status").value;
    state.filter.type = $("filter-type").value;
    const q = new URLSearchParams(location.search);
    for (const key of ["status", "type"]) {
      if (state.filter[key]) q.set(key, state.filter[key]);
      else q.delete(key);
    }
    const qs = q.toString();
    history.replaceState(null, "", qs ? `?${qs}` : location.pathname);
    loadPage(true);
  }

  // ---------------------------------------------------------------- the stream

  function setConn(kind, text) {
    state.connected = kind === "live";
    $("conn").dataset.state = kind;
    $("conn").textContent = text;
  }

  function onChange(ev) {
    const pos = Number(ev.lastEventId);
    state.seen.push(pos);
    if (state.seen.length > SEEN_MAX) state.seen.splice(0, state.seen.length - SEEN_MAX);
    if (!(pos > state.lastId)) return; // never expected: the server replays after Last-Event-ID
    state.lastId = pos;
    const c = JSON.parse(ev.data);
    c.position = pos;
    if (state.ready) applyChange(c);
    else state.buffer.push(c);
    if (c.task_id === state.selected) refreshDetailSoon();
    if (c.type === "task.dead_lettered" || c.type === "task.redriven") refreshDeadSoon();
    if (TERMINAL.has(c.status) || c.type === "task.created") refreshStatsSoon();
  }

  // Retention trimmed changes we had not seen: read everything again from here on.
  function onReset(ev) {
    const pos = Number(ev.lastEventId);
    state.resets += 1;
    if (pos > state.lastId) state.lastId = pos;
    state.buffer = [];
    loadPage(true);
    refreshDead();
    refreshStats();
    if (state.selected) refreshDetail();
  }

  function connect() {
    if (state.source) state.source.close();
    const es = new EventSource(`/events?after=${state.lastId}`);
    state.source = es;
    state.streams += 1;
    for (const t of EVENT_TYPES) es.addEventListener(t, onChange);
    es.addEventListener("reset", onReset);
    es.onopen = () => setConn("live", "live");
    es.onerror = () => {
      if (state.source !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error); resume from the last change we saw.
        setConn("offline", "offline, retrying…");
        setTimeout(async () => {
          if (state.source !== es) return;
          // A refused stream may be a login that ended: ask (a 401 shows the form).
          if (state.csrf) {
            try { await api("/session"); } catch { /* away: retry the stream anyway */ }
          }
          if (state.source === es) connect();
        }, RECONNECT_MS);
      } else {
        setConn("reconnecting", "reconnecting…");
      }
    };
  }

  // ---------------------------------------------------------------- header

  function renderCounts(counts) {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    $("counts").replaceChildren(
      el("li", {class: "count"}, el("b", {text: String(total)}), " total"),
      ...STATUSES.map((s) => el("li", {class: `count s-${s}`, dataset: {status: s}},
                                 el("b", {text: String(counts[s] || 0)}), ` ${s.toLowerCase()}`)),
    );
  }

  function renderChart(throughput, minutes) {
    const byMinute = new Map(throughput.map((t) => [Math.floor(ms(t.minute) / 60000), t.finished]));
    const now = Math.floor(Date.now() / 60000);
    const values = [];
    for (let m = now - minutes + 1; m <= now; m++) values.push(byMinute.get(m) || 0);
    const max = Math.max(1, ...values);
    const total = values.reduce((a, b) => a + b, 0);
    const w = 150 / minutes;
    const chart = $("chart");
    const label = svg("title", {id: "chart-label"});
    label.textContent = `${total} tasks finished in the last ${minutes} minutes; ` +
      `${values[values.length - 1]} in the current minute`;
    chart.replaceChildren(label, svg("line", {x1: 0, y1: 39.5, x2: 150, y2: 39.5, class: "axis"}));
    values.forEach((v, i) => {
      const h = v ? Math.max(2, (v / max) * 36) : 0;
      const bar = svg("rect", {x: i * w + 0.5, y: 40 - h, width: Math.max(1, w - 1), height: h, class: "bar"});
      const tip = svg("title");
      tip.textContent = `${v} finished, ${minutes - 1 - i} min ago`;
      bar.append(tip);
      chart.append(bar);
    });
  }

  function renderLag(lag) {
    const list = $("lag");
    if (lag === undefined) {  // /stats shows lag to admin keys only
      list.replaceChildren(el("li", {text: "admin keys only"}));
      return;
    }
    if (lag === null) {
      list.replaceChildren(el("li", {class: "warn", text: "log unreachable"}));
      return;
    }
    const parts = Object.entries(lag).sort((a, b) => Number(a[0]) - Number(b[0]));
    const total = parts.reduce((a, [, n]) => a + n, 0);
    list.replaceChildren(
      el("li", {class: total ? "warn" : "ok"}, el("b", {text: String(total)}), " behind"),
      ...parts.map(([p, n]) => el("li", {class: n ? "warn" : "", dataset: {partition: p}},
                                  `p${p} `, el("b", {text: String(n)}))),
    );
  }

  function renderRetention(ret, counts) {
    const kept = Object.values(counts).reduce((a, n) => a + n, 0);
    const items = [el("li", {}, el("b", {text: String(kept)}), " kept")];
    if (ret && ret.days) {
      items.push(el("li", {}, el("b", {text: String(ret.expired)}),
                    ` expired (> ${ret.days} d)`));
    } else {
      items.push(el("li", {text: "kept forever"}));
    }
    $("retention").replaceChildren(...items);
  }

  const refreshStats = serial(async () => {
    try {
      const r = await api("/stats?minutes=15");
      if (!r.ok) return;
      renderCounts(r.data.counts || {});
      renderChart(r.data.throughput || [], 15);
      renderLag(r.data.lag);
      renderRetention(r.data.retention, r.data.counts || {});
    } catch {
      // the API is away; the next poll will try again
    }
    loadHandlers();  // the pools come and go; the types are read once
  });
  const refreshStatsSoon = debounce(refreshStats, 500);

  // Each running pool with its workers and the types it serves; accepted types no pool
  // serves are named too: their tasks wait as PENDING until a worker for them starts.
  function renderPools(pools, unserved) {
    const items = pools.map((p) => el("li", {dataset: {pool: p.pool}, title: `last seen ${p.seen_at}`},
                                      el("b", {text: p.pool}), ` ×${p.workers}: `,
                                      el("span", {class: "pool-types", text: p.types.join(", ") || "—"})));
    if (!pools.length) items.push(el("li", {class: "warn", text: "no worker running"}));
    if (unserved.length) {
      items.push(el("li", {class: "warn", dataset: {unserved: unserved.join(",")}},
                    "not served: ", el("b", {text: unserved.join(", ")})));
    }
    $("pools").replaceChildren(...items);
  }

  async function loadHandlers() {
    let r;
    try { r = await api("/handlers"); } catch { return; }
    if (!r.ok) return;
    renderPools(r.data.pools || [], r.data.unserved || []);
    if (state.types.length) return;
    state.types = r.data.types || [];
    const typeSel = $("f-type");
    const current = typeSel.value;
    typeSel.replaceChildren(...state.types.map((t) => el("option", {value: t, text: t})));
    typeSel.value = current || (state.types.includes("echo") ? "echo" : state.types[0] || "");
    const filterSel = $("filter-type");
    const wanted = state.filter.type;
    filterSel.replaceChildren(el("option", {value: "", text: "any"}),
                              ...state.types.map((t) => el("option", {value: t, text: t})));
    if (wanted && !state.types.includes(wanted)) filterSel.append(el("option", {value: wanted, text: wanted}));
    filterSel.value = wanted;
  }

  // ---------------------------------------------------------------- detail

  function markSelected() {
    for (const row of state.rows.values()) {
      const on = row.task.task_id === state.selected;
      row.tr.classList.toggle("selected", on);
      if (on) row.tr.setAttribute("aria-current", "true");
      else row.tr.removeAttribute("aria-current");
    }
  }

  async function select(id, focus) {
    const panel = $("detail");
    if (panel.hidden || panel.dataset.taskId !== id) {
      // Never show another task's (or an old) state while this one loads.
      delete panel.dataset.taskId;
      delete panel.dataset.status;
      $("detail-title").textContent = "Loading…";
      $("d-timeline").replaceChildren();
      delete $("d-timeline").dataset.taskId;
    }
    state.selected = id;
    markSelected();
    panel.hidden = false;
    $("d-action-status").textContent = "";
    await refreshDetail();
    if (focus) $("detail-title").focus();
  }

  function closeDetail() {
    const id = state.selected;
    state.selected = null;
    $("detail").hidden = true;
    markSelected();
    const row = id && state.rows.get(id);
    if (row) row.tr.querySelector("button").focus();
  }

  function timelineItem(ev) {
    const pos = ev.position ? `p${ev.position.partition}:${ev.position.offset}` : "";
    return el("li", {class: "event", dataset: {type: ev.type, eventId: ev.id}},
      el("div", {class: "event-head"},
        el("span", {class: "event-type", text: ev.type}),
        el("span", {class: "event-attempt", text: `attempt ${ev.attempt ?? 0}`}),
        // Only a command's event names who asked (an API key id, anonymous, cli:<name>).
        ev.actor ? el("span", {class: "event-actor mono", text: `by ${ev.actor}`}) : null,
        el("time", {datetime: ev.time, title: ev.time, text: ev.time})),
      el("details", {},
        el("summary", {}, "JSON ", el("span", {class: "mono muted", text: pos})),
        el("pre", {text: JSON.stringify(ev, null, 2)})));
  }

  // The history only grows, so new events are appended and what is there stays (an open
  // JSON view stays open while the task moves on).
  function renderTimeline(taskId, items) {
    const list = $("d-timeline");
    const shown = [...list.children];
    const same = list.dataset.taskId === taskId && shown.length <= items.length &&
      shown.every((li, i) => li.dataset.eventId === items[i].id);
    if (!same) {
      list.replaceChildren();
      list.dataset.taskId = taskId;
    }
    list.append(...items.slice(same ? shown.length : 0).map(timelineItem));
  }

  const refreshDetail = serial(async () => {
    const id = state.selected;
    if (!id) return;
    let t;
    let h;
    try {
      // History first, then the state: the state is then at least as new as the history
      // shown with it, and the change that makes them differ triggers another refresh.
      h = await api(`/tasks/${id}/events`);
      t = await api(`/tasks/${id}`);
    } catch {
      $("d-action-status").textContent = "API unreachable; the panel will refresh when it is back.";
      return;
    }
    if (state.selected !== id) return;
    if (!t.ok) {
      $("d-action-status").textContent = problemText(t);
      return;
    }
    const task = t.data;
    $("detail").dataset.taskId = id;
    $("detail").dataset.status = task.status;
    $("detail-title").textContent = task.title;
    $("d-status").replaceWith(Object.assign(badge(task.status), {id: "d-status"}));
    $("d-id").textContent = task.task_id;
    $("d-type").textContent = task.type;
    $("d-waiting").textContent = task.waiting_reason || "";
    $("d-waiting").hidden = $("d-waiting-label").hidden = !task.waiting_reason;
    $("d-attempt").textContent = String(task.attempt) +
      (task.max_attempts ? ` of ${task.max_attempts}` : "") + (task.dead_lettered ? " (dead-lettered)" : "");
    $("d-created").replaceChildren(timeEl(task.created_at));
    $("d-by").textContent = task.created_by || "";
    $("d-by").hidden = $("d-by-label").hidden = !task.created_by;
    $("d-due").replaceChildren(task.not_before ? timeEl(task.not_before) : "—");
    $("d-finished").replaceChildren(task.finished_at ? timeEl(task.finished_at) : "—");
    $("d-progress").value = task.progress || 0;
    $("d-progress-text").textContent = `${task.progress || 0}%` +
      (task.progress_message ? ` · ${task.progress_message}` : "");
    const hasResult = task.status === "DONE" && task.result !== null && task.result !== undefined;
    $("d-result-box").hidden = !hasResult;
    $("d-result").textContent = hasResult ? JSON.stringify(task.result, null, 2) : "";
    $("d-error-box").hidden = !task.error;
    $("d-error").textContent = task.error || "";
    $("d-payload").textContent = JSON.stringify(task.payload, null, 2);
    $("d-cancel").disabled = TERMINAL.has(task.status);
    $("d-retry").disabled = task.status !== "FAILED";
    if (h.ok) renderTimeline(id, h.data.items || []);
  });
  const refreshDetailSoon = debounce(refreshDetail, 100);

  async function act(kind, statusEl, id) {
    statusEl.textContent = kind === "cancel" ? "Cancelling…" : "Redriving…";
    let r;
    try { r = await api(`/tasks/${id}/${kind}`, {method: "POST"}); } catch {
      statusEl.textContent = "API unreachable; try again.";
      return;
    }
    statusEl.textContent = r.ok ? (kind === "cancel" ? "Cancel requested." : "Redriven: it will run again.")
      : problemText(r);
    if (id === state.selected) refreshDetail();
    refreshDead();
  }

  // ---------------------------------------------------------------- dead letters

  const refreshDead = serial(async () => {
    let r;
    try { r = await api("/tasks?status=FAILED&limit=100"); } catch { return; }
    if (!r.ok) return;
    const dead = (r.data.items || []).filter((t) => t.dead_lettered);
    $("dead-empty").hidden = dead.length > 0;
    $("dead-list").replaceChildren(...dead.map((t) => el("li", {dataset: {taskId: t.task_id}},
      el("div", {class: "dead-main"},
        el("button", {type: "button", class: "link", text: t.title, onclick: () => select(t.task_id, true)}),
        el("span", {class: "error-text", text: t.error || ""})),
      el("button", {type: "button", class: "redrive", text: "Redrive",
                    "aria-label": `Redrive ${t.title}`,
                    onclick: () => act("retry", $("dead-status"), t.task_id)}))));
  });
  const refreshDeadSoon = debounce(refreshDead, 300);

  // ---------------------------------------------------------------- schedules

  function when(t) {
    return t ? new Date(t).toLocaleString() : "–";
  }

  const refreshSchedules = serial(async () => {
    let r;
    try { r = await api("/schedules?limit=100"); } catch { return; }
    if (!r.ok) return;
    const items = r.data.items || [];
    $("sched-empty").hidden = items.length > 0;
    $("sched-table").hidden = items.length === 0;
    $("sched-rows").replaceChildren(...items.map((s) => el("tr", {dataset: {scheduleId: s.schedule_id}},
      el("td", {text: s.paused ? `${s.name} (paused)` : s.name}),
      el("td", {class: "mono", text: s.cron ? `${s.cron} ${s.timezone}` : `every ${s.every_s} s`}),
      el("td", {text: s.paused ? "–" : when(s.next_run_at)}),
      el("td", {text: when(s.last_due_at)}),
      el("td", {}, s.last_status
        ? badge(s.last_status)
        : "–"))));
  });

  // ---------------------------------------------------------------- create form

  const FIELDS = ["title", "type", "payload"];

  function fieldError(name, message) {
    const input = $(`f-${name}`);
    const box = $(`f-${name}-error`);
    box.textContent = message || "";
    box.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function parsePayload() {
    const text = $("f-payload").value.trim();
    if (!text) return {value: {}};
    let value;
    try { value = JSON.parse(text); } catch (err) {
      return {error: `Not valid JSON: ${err.message}`};
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return {error: 'The payload must be a JSON object, like {"message": "hi"}.'};
    }
    return {value};
  }

  function showProblem(r) {
    const errors = (r.data && Array.isArray(r.data.errors)) ? r.data.errors : [];
    const byField = {};
    const general = [];
    for (const e of errors) {
      const loc = Array.isArray(e.loc) ? e.loc : [];
      const name = loc[0] === "body" ? String(loc[1] ?? "") : "";
      let msg = e.msg || e.type || "invalid";
      if (loc.length > 2) msg = `${loc.slice(2).join(".")}: ${msg}`;
      if (Array.isArray(e.allowed)) msg += ` (one of: ${e.allowed.join(", ")})`;
      if (FIELDS.includes(name)) (byField[name] ||= []).push(msg);
      else general.push(loc.length ? `${loc.join(".")}: ${msg}` : msg);
    }
    for (const [name, msgs] of Object.entries(byField)) fieldError(name, msgs.join("; "));
    $("form-status").textContent = [problemText(r), ...general].join(" · ");
    const first = FIELDS.find((f) => byField[f]);
    if (first) $(`f-${first}`).focus();
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    for (const f of FIELDS) fieldError(f, "");
    $("form-status").textContent = "";
    const payload = parsePayload();
    if (payload.error) {
      fieldError("payload", payload.error);
      $("f-payload").focus();
      return;
    }
    const body = {title: $("f-title").value, type: $("f-type").value, payload: payload.value};
    $("f-submit").disabled = true;
    let r;
    try {
      r = await api("/tasks", {method: "POST", body});
    } catch {
      $("form-status").textContent = "The API is unreachable; nothing was sent. Try again.";
      return;
    } finally {
      $("f-submit").disabled = false;
    }
    if (!r.ok) {
      showProblem(r);
      return;
    }
    $("form-status").textContent = `Created “${body.title}” (${r.data.task_id.slice(0, 8)}).`;
    $("f-title").value = "";
    select(r.data.task_id, false);
  }

  const checkPayload = debounce(() => {
    const {error} = parsePayload();
    fieldError("payload", error || "");
  }, 300);

  // ---------------------------------------------------------------- start

  function start() {
    state.started = true;
    showView("app");
    readFilters();
    $("filter-status").addEventListener("change", onFilter);
    $("filter-type").addEventListener("change", onFilter);
    $("older").addEventListener("click", () => loadPage(false));
    $("create-form").addEventListener("submit", onSubmit);
    $("f-payload").addEventListener("input", checkPayload);
    $("detail-close").addEventListener("click", closeDetail);
    $("d-cancel").addEventListener("click", () => act("cancel", $("d-action-status"), state.selected));
    $("d-retry").addEventListener("click", () => act("retry", $("d-action-status"), state.selected));
    $("detail").addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });
    loadHandlers();
    loadPage(true); // reads the list after the rendered position; changes meanwhile are buffered
    connect();
    refreshStats();
    state.timers.push(setInterval(refreshStats, STATS_EVERY_MS));
    refreshDead();
    refreshSchedules();
    state.timers.push(setInterval(refreshSchedules, STATS_EVERY_MS));
    // A link to one task (`/?task=ID`, as the workflow page makes) opens its panel.
    const linked = new URLSearchParams(location.search).get("task");
    if (linked && /^[0-9a-f-]{36}$/i.test(linked)) select(linked.toLowerCase(), true);
  }

  // ---------------------------------------------------------------- login

  function showView(view) {
    document.body.dataset.view = view;
    $("login").hidden = view !== "login";
    $("app").hidden = view !== "app";
  }

  function showLogin(message) {
    $("who").hidden = true;
    showView("login");
    $("login-status").textContent = message || "";
    $("login-key").focus();
  }

  function showWho(me) {
    $("who-tenant").textContent = me.tenant;
    $("who-key").textContent = me.key_id;
    $("who-until").dateTime = me.expires_at;
    $("who-until").textContent = new Date(me.expires_at).toLocaleString();
    $("who").hidden = false;
  }

  // The API said 401 while the page ran: stop polling and streaming, and ask again.
  function loggedOut() {
    state.started = false;
    state.csrf = null;
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    if (state.source) state.source.close();
    state.source = null;
    setConn("offline", "logged out");
    showLogin("Your login has ended (logged out, expired, or its key revoked). Log in again.");
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const key = $("login-key").value.trim();
    if (!key) {
      $("login-status").textContent = "Paste an API key.";
      $("login-key").focus();
      return;
    }
    $("login-submit").disabled = true;
    $("login-status").textContent = "Logging in…";
    let r;
    try {
      r = await api("/session", {method: "POST", body: {key}});
    } catch {
      $("login-status").textContent = "The API is unreachable; try again.";
      return;
    } finally {
      $("login-submit").disabled = false;
    }
    if (!r.ok) {
      $("login-status").textContent = problemText(r);
      $("login-key").select();
      return;
    }
    $("login-key").value = "";
    // Start afresh, logged in: a new change position, then the list and the stream.
    location.reload();
  }

  async function onLogout() {
    $("logout").disabled = true;
    try { await api("/session", {method: "DELETE"}); } catch { /* the cookie stays; reload shows */ }
    location.reload();
  }

  async function boot() {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", onLogout);
    if (document.body.dataset.auth === "off") {
      $("open-banner").hidden = false;
      start();
      return;
    }
    let r = null;
    try { r = await api("/session"); } catch { /* below */ }
    if (r && r.ok) {
      state.csrf = r.data.csrf_token;
      showWho(r.data);
      start();
    } else {
      showLogin(r === null ? "The API is unreachable; reload to try again."
        : r.status === 401 ? "" : problemText(r));
    }
  }

  boot();
})();
