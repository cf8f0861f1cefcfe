-- A trace whose query the embeddings API refused (too long, invalid for the model) is kept with the
-- reason and waits for no group: it cannot hold back the domain's other traces.
ALTER TABLE traces ADD COLUMN grouping_error text;
