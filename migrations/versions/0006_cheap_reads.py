"""cheap reads: task counts kept by triggers, type and title-search indexes, finished index

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

* ``task_counts`` holds the number of tasks per (partition, status). Statement-level
  triggers on ``tasks`` keep it, in the transaction that writes the tasks, from the
  rows the statement inserted, updated or deleted (transition tables): one write per
  (partition, status) a statement touched, not one per row. Keyed by partition, each
  projector transaction only touches the rows of the partitions whose checkpoints it
  holds locked, so two projectors never wait for each other on a count. The triggers
  write to the ``task_counts`` of the schema their ``tasks`` is in, so that a rebuild's
  shadow schema keeps its own counts and swaps them in with its tasks.
  ``/stats`` sums a few dozen rows instead of grouping every task.
* ``tasks_type_created`` serves ``GET /tasks?type=`` in creation order.
* ``tasks_title_trgm`` (pg_trgm, GIN) serves ``?q=`` (ILIKE '%q%') without a full scan.
* ``task_changes_finished`` serves the throughput of ``/stats`` (terminal changes by time).
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TERMINAL_CHANGES = "('task.done', 'task.failed', 'task.cancelled')"

_APPLY = """
CREATE OR REPLACE FUNCTION task_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE format(
            'INSERT INTO %I.task_counts AS c (partition, status, n) '
            'SELECT partition, status, count(*) FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2 '
            'ON CONFLICT (partition, status) DO UPDATE SET n = c.n + EXCLUDED.n',
            TG_TABLE_SCHEMA);
    ELSIF TG_OP = 'UPDATE' THEN
        EXECUTE format(
            'INSERT INTO %I.task_counts AS c (partition, status, n) '
            'SELECT partition, status, sum(d) FROM ('
            '  SELECT partition, status, 1 AS d FROM new_rows'
            '  UNION ALL SELECT partition, status, -1 FROM old_rows) AS x '
            'GROUP BY 1, 2 HAVING sum(d) <> 0 ORDER BY 1, 2 '
            'ON CONFLICT (partition, status) DO UPDATE SET n = c.n + EXCLUDED.n',
            TG_TABLE_SCHEMA);
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format(
            'UPDATE %I.task_counts AS c SET n = c.n - o.n FROM ('
            '  SELECT partition, status, count(*) AS n FROM old_rows GROUP BY 1, 2) AS o '
            'WHERE c.partition = o.partition AND c.status = o.status',
            TG_TABLE_SCHEMA);
    ELSE  -- TRUNCATE
        EXECUTE format('DELETE FROM %I.task_counts', TG_TABLE_SCHEMA);
    END IF;
    RETURN NULL;
END
$fn$
"""

_TRIGGERS = (
    "CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply()",
    "CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply()",
    "CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply()",
    "CREATE TRIGGER task_counts_truncate AFTER TRUNCATE ON tasks "
    "FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply()",
)


def upgrade() -> None:
    op.execute("CREATE TABLE task_counts (partition integer NOT NULL, status text NOT NULL, "
               "n bigint NOT NULL, PRIMARY KEY (partition, status))")
    op.execute(_APPLY)
    # The triggers lock tasks against writes until this transaction ends, so the counts
    # taken below miss no write.
    for stmt in _TRIGGERS:
        op.execute(stmt)
    op.execute("INSERT INTO task_counts (partition, status, n) "
               "SELECT partition, status, count(*) FROM tasks GROUP BY 1, 2")
    op.execute("CREATE INDEX tasks_type_created ON tasks (type, created_at, task_id)")
    # A trusted extension since PostgreSQL 13: the database's owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX tasks_title_trgm ON tasks USING gin (title gin_trgm_ops)")
    op.execute("CREATE INDEX task_changes_finished ON task_changes (time) "
               f"WHERE type IN {TERMINAL_CHANGES}")


def downgrade() -> None:
    op.execute("DROP INDEX task_changes_finished")
    op.execute("DROP INDEX tasks_title_trgm")
    op.execute("DROP INDEX tasks_type_created")
    for name in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER task_counts_{name} ON tasks")
    op.execute("DROP FUNCTION task_counts_apply()")
    op.execute("DROP TABLE task_counts")
