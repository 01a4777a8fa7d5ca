"""The scheduler: delayed fires of schedules into the task log (see service.py)."""
