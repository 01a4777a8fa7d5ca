"""The ``workflow`` scenario: a layered DAG of ``noop`` nodes against a flat batch.

``workflow_layers`` layers of ``workflow_width`` nodes, each node depending on two nodes
of the layer above, are submitted as one workflow (``POST /workflows``) and timed from
the request to the workflow's DONE in the ``workflows`` read model. The same number of
``noop`` tasks is then submitted as one flat batch (``POST /tasks:batch``) and timed to
the last one terminal. The coordinator's overhead per edge is the difference of the two
wall times divided by the number of edges, and its CPU seconds per edge.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from bench.http import Connection
from bench.taskflow_runner import BATCH_PATH, batch_body
from bench.world import World, poll_until

if TYPE_CHECKING:
    from bench.run import Run

TERMINAL = "SELECT count(*) FROM tasks WHERE status IN ('DONE', 'FAILED', 'CANCELLED')"


def layered(layers: int, width: int) -> tuple[list[dict[str, Any]], int]:
    """The nodes, and the number of edges."""
    nodes: list[dict[str, Any]] = []
    edges = 0
    for layer in range(layers):
        for i in range(width):
            deps = [] if layer == 0 else sorted({f"n{layer - 1}_{i}",
                                                 f"n{layer - 1}_{(i + 1) % width}"})
            edges += len(deps)
            nodes.append({"key": f"n{layer}_{i}", "title": "n", "type": "noop",
                          "depends_on": deps})
    return nodes, edges


async def run_workflow(w: World, *, layers: int, width: int) -> dict[str, Any]:
    await w.start_all()
    w.start("coordinator")
    nodes, edges = layered(layers, width)
    n = len(nodes)
    db = await w.connect()
    conn = Connection("127.0.0.1", w.api_port)
    try:
        # A one-node workflow first: the coordinator has its partitions and is warm.
        warm = orjson.dumps({"name": "warm-up", "tasks": [
            {"key": "w", "title": "w", "type": "noop"}]})
        resp = await conn.request("POST", "/workflows", warm)
        if resp.status != 202:
            raise RuntimeError(f"POST /workflows answered {resp.status}: {resp.body[:300]!r}")
        wid = uuid.UUID(orjson.loads(resp.body)["workflow_id"])

        async def wf_done(w_id: uuid.UUID) -> bool:
            status = await db.fetchval("SELECT status FROM workflows WHERE workflow_id = $1",
                                       w_id)
            return bool(status == "DONE")

        await poll_until(lambda: wf_done(wid), timeout=120, what="the warm-up workflow",
                         interval=0.05)
        before, t0 = w.cpu(), time.perf_counter()
        resp = await conn.request("POST", "/workflows",
                                  orjson.dumps({"name": "bench", "tasks": nodes}))
        if resp.status != 202:
            raise RuntimeError(f"POST /workflows answered {resp.status}: {resp.body[:300]!r}")
        wid = uuid.UUID(orjson.loads(resp.body)["workflow_id"])
        await poll_until(lambda: wf_done(wid), timeout=1800, what="the workflow",
                         interval=0.02)
        wf_s = time.perf_counter() - t0
        cores = World.cores(before, w.cpu(), wf_s)
        coord_cpu_s = cores.get("coordinator0", 0.0) * wf_s
        base = int(await db.fetchval(TERMINAL))
        t0 = time.perf_counter()
        resp = await conn.request("POST", BATCH_PATH, batch_body(n))
        if resp.status != 202:
            raise RuntimeError(f"POST {BATCH_PATH} answered {resp.status}: "
                               f"{resp.body[:300]!r}")

        async def flat_done() -> bool:
            return int(await db.fetchval(TERMINAL)) >= base + n

        await poll_until(flat_done, timeout=1800, what="the flat batch", interval=0.02)
        flat_s = time.perf_counter() - t0
    finally:
        await conn.close()
        await db.close()
    return {
        "nodes": n, "layers": layers, "width": width, "edges": edges,
        "workflow_s": round(wf_s, 3), "flat_s": round(flat_s, 3),
        "overhead_per_edge_ms": round((wf_s - flat_s) / edges * 1000, 3) if edges else None,
        "per_layer_ms": round(wf_s / layers * 1000, 1),
        "coordinator_cpu_per_edge_ms": round(coord_cpu_s / edges * 1000, 3) if edges else None,
        "cores": cores,
    }


async def scenario(run: Run) -> None:
    """Run the scenario in a world of its own and record its figures."""
    z = run.sizes
    w = await run.lab.world("workflow")
    label = f"{z.workflow_layers * z.workflow_width:,} noop nodes in {z.workflow_layers} layers"
    wall = run.figure("workflow", f"workflow wall time, {label}", "s", "lower",
                      comparable=False)
    flat = run.figure("workflow", "same tasks as one flat batch, wall time", "s", "lower",
                      comparable=False)
    per_edge = run.figure("workflow", "coordinator overhead per edge (wall)", "ms", "lower",
                          comparable=False)
    cpu = run.figure("workflow", "coordinator CPU per edge", "ms", "lower", comparable=False)
    try:
        res = await run_workflow(w, layers=z.workflow_layers, width=z.workflow_width)
        run.detail("workflow", "taskflow", res)
        wall.values["taskflow"] = res["workflow_s"]
        flat.values["taskflow"] = res["flat_s"]
        per_edge.values["taskflow"] = res["overhead_per_edge_ms"]
        per_edge.notes["taskflow"] = f"{res['edges']:,} edges"
        cpu.values["taskflow"] = res["coordinator_cpu_per_edge_ms"]
    except Exception as exc:
        run.failed("workflow", "taskflow", exc)
    finally:
        w.stop()
