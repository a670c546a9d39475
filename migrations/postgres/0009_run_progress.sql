-- What a long-lived run (change data capture) says about itself while it
-- works: last position, lag, throughput. Updated on every commit it makes.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS progress JSONB;
