-- OpenLineage-shaped JSON event of each finished run.
ALTER TABLE runs ADD COLUMN openlineage JSONB;
