"""``make bench``: TaskFlow side by side with Celery and Dramatiq, in one run.

The bench brings up everything it measures and tears it down again, by PID:

* TaskFlow services (``python -m cli.main api|worker|projector``) on the running local
  stack, each scenario in a private *world*: its own topic (6 partitions) and its own
  database, cloned from a freshly migrated template.
* ``redis-server`` on a free port, the broker and result backend of both peers.
* The peers: Celery 5 (prefork, 2 processes) and Dramatiq 2 (2 processes x 8 threads),
  each with a no-op task.

Scenarios (``bench.scenarios``, which runs ``bench.taskflow_runner``, ``bench.fanout``,
``bench.reads`` and ``bench.peers``):

1. ``submit``     enqueue rate: concurrent ``POST /tasks``, ``POST /tasks:batch``,
                  ``.delay()``, ``.send()``.
2. ``e2e``        N no-op tasks from the first submit until all are terminal.
3. ``latency``    a steady 200 tasks/s, submit to terminal change (SSE / result).
4. ``projector``  live apply rate and a rebuild of 1,000,000 events.
5. ``fanout``     1,000 SSE subscribers on one API process, 100 changes/s; then a sweep
                  over change rates for the highest delivery rate with p99 < 250 ms, and
                  the memory per idle subscriber with 5,000 connected.
6. ``workflow``   a 1,000-node layered DAG of no-op tasks against the same tasks as a flat
                  batch: wall times, and the coordinator's overhead per edge
                  (``bench.workflow``).

``bench.report`` prints the table (every TaskFlow figure also as a ratio to the best
peer) and writes ``bench/results/<UTC timestamp>.json``.
"""
