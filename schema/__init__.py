"""SQL migrations, named queries and the JSON Schemas of the wire events (data only)."""
