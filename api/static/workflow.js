// The workflow page: the DAG as SVG, one box per node (linked to its task), coloured by
// status; /workflows/{id}/stream sends a snapshot, then each node change.
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 120, H = 34, GX = 60, GY = 14;
  const wid = document.body.dataset.workflowId;
  const svg = document.getElementById("dag");
  const boxes = new Map();

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }

  function layout(nodes) {
    const depth = new Map();
    const byKey = new Map(nodes.map((n) => [n.key, n]));
    const d = (k) => {
      if (depth.has(k)) return depth.get(k);
      depth.set(k, 0);  // parents come first in a DAG; this only guards the recursion
      const v = Math.max(-1, ...byKey.get(k).depends_on.map(d)) + 1;
      depth.set(k, v);
      return v;
    };
    const rows = new Map();
    const pos = new Map();
    for (const n of nodes) {
      const x = d(n.key);
      const y = rows.get(x) || 0;
      rows.set(x, y + 1);
      pos.set(n.key, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) });
    }
    return pos;
  }

  function draw(wf) {
    svg.replaceChildren();
    boxes.clear();
    const pos = layout(wf.nodes);
    let maxX = 0, maxY = 0;
    for (const p of pos.values()) { maxX = Math.max(maxX, p.x + W); maxY = Math.max(maxY, p.y + H); }
    svg.setAttribute("viewBox", `0 0 ${maxX + 10} ${maxY + 10}`);
    svg.setAttribute("width", maxX + 10);
    const edges = el("g", {}, svg);
    for (const n of wf.nodes) {
      const to = pos.get(n.key);
      for (const p of n.depends_on) {
        const from = pos.get(p);
        const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2;
        el("path", { class: "edge", "data-from": p, "data-to": n.key,
                     d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}` }, edges);
      }
    }
    for (const n of wf.nodes) {
      const p = pos.get(n.key);
      const a = el("a", { class: "node", href: `/?task=${encodeURIComponent(n.task_id)}`, "data-key": n.key }, svg);
      el("rect", { x: p.x, y: p.y, width: W, height: H }, a);
      const t = el("text", { x: p.x + 8, y: p.y + H / 2 + 4 }, a);
      t.textContent = n.key;
      el("title", {}, a).textContent = "";
      boxes.set(n.key, a);
      update(n);
    }
    header(wf);
  }

  function update(n) {
    const a = boxes.get(n.key);
    if (!a) return;
    a.dataset.status = n.status;
    a.setAttribute("href", `/?task=${encodeURIComponent(n.task_id)}`);
    a.querySelector("title").textContent =
      `${n.key}: ${n.status}${n.reason ? ` (${n.reason})` : ""}${n.task_status ? ` · task ${n.task_status}` : ""}`;
  }

  function header(wf) {
    document.getElementById("wf-name").textContent = wf.name;
    const s = document.getElementById("wf-status");
    s.textContent = wf.status;
    s.className = `badge ${wf.status}`;
    document.getElementById("wf-summary").textContent =
      Object.entries(wf.summary || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  }

  const source = new EventSource(`/workflows/${wid}/stream`);
  source.addEventListener("snapshot", (e) => draw(JSON.parse(e.data)));
  source.addEventListener("node", (e) => update(JSON.parse(e.data)));
  source.addEventListener("workflow", (e) => {
    header(JSON.parse(e.data));
    source.close();  // the stream ends with the workflow
  });
  source.addEventListener("error", async () => {
    // EventSource retries on its own; a missing or expired login would only repeat the 401.
    const r = await fetch(`/workflows/${encodeURIComponent(wid)}`);
    if (r.status !== 401) return;
    source.close();
    const s = document.getElementById("wf-summary");
    s.textContent = "Not logged in: ";
    const a = document.createElement("a");
    a.href = "/";
    a.textContent = "log in on the dashboard";
    s.appendChild(a);
  });
})();
