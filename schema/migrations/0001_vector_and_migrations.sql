-- pgvector powers grouping of similar queries; everything else needs it,
-- so it comes first. The migrations table itself is created by the runner.
CREATE EXTENSION IF NOT EXISTS vector;
