-- What the session policies need, kept across restarts: the last activity
-- (idle timeout), when the current RUNNING period began (0 when not
-- running) and the RUNNING time of earlier periods (maximum duration).
ALTER TABLE sessions ADD COLUMN last_activity_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN running_since_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN ran_ms BIGINT NOT NULL DEFAULT 0;
