-- OpenLineage-shaped JSON event of each finished run (SQLite flavour: JSON as text).
ALTER TABLE runs ADD COLUMN openlineage TEXT;
