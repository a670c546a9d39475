-- Each validate() call is one report (Data Docs): its results share a
-- validation_id and name who asked. Results of runs have run_id instead.
ALTER TABLE validations ADD COLUMN validation_id TEXT;
ALTER TABLE validations ADD COLUMN validated_by TEXT;
CREATE INDEX IF NOT EXISTS validations_validation_id ON validations (validation_id);
CREATE INDEX IF NOT EXISTS validations_run_id ON validations (run_id);
