"""The coordinator: runs DAG workflows, one member of its own consumer group."""
