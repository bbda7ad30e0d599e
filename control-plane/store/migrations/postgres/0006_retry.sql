-- Automatic retry: which attempt a command is (1 for the first), and the
-- time before which it is not sent (the retry's backoff; 0: at once).
ALTER TABLE commands ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;
ALTER TABLE commands ADD COLUMN not_before_ms BIGINT NOT NULL DEFAULT 0;
