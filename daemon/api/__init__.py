"""The HTTP API: `grpod api`."""
