"""The grpod service shell: settings, the Celery app, the command line, the embedded runtime, the SDK."""
