"""The pipeline stages as plain functions, with thin Celery tasks around them (``tasks``)."""
