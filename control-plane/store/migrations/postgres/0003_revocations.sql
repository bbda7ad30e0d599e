-- The agent deny list: an agent id (kind 'agent') or a client certificate
-- serial, lowercase hex without leading zeros (kind 'serial').
CREATE TABLE revocations (
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
