-- Placement by resources and quotas: what each session requests, in base
-- units (millicores, bytes), so the store can sum them inside the writing
-- transaction. Sessions written before this migration count as requesting
-- nothing until their next write.
ALTER TABLE sessions ADD COLUMN cpu_millis BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN memory_bytes BIGINT NOT NULL DEFAULT 0;
