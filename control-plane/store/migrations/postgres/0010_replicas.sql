-- Which control-plane replica holds each agent's stream, and the epoch of
-- that hold: every attach takes the agent over with the next epoch, and a
-- replica claims commands for the agent only while its epoch is current.
ALTER TABLE agents ADD COLUMN replica_id TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN stream_epoch BIGINT NOT NULL DEFAULT 0;
-- Live replicas: each renews its row while it serves; agents held by a
-- replica whose row went stale are offline until they attach elsewhere.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    last_seen_ms BIGINT NOT NULL
);
-- Set when a delivered command is put back to pending (its agent's stream
-- ended): the agent may have applied it, so it is waited for, never
-- superseded or cancelled as a command nobody has seen.
ALTER TABLE commands ADD COLUMN sent_before BOOLEAN NOT NULL DEFAULT FALSE;
