-- Sessions: desired state (what the user wants) and observed state (what the agent reports).
CREATE TABLE sessions (
    name           TEXT PRIMARY KEY,
    user_name      TEXT NOT NULL,
    template       TEXT NOT NULL,
    desired        TEXT NOT NULL,
    generation     BIGINT NOT NULL,
    phase          TEXT NOT NULL,
    url            TEXT NOT NULL,
    agent_id       TEXT,
    selector       TEXT NOT NULL,
    workload       TEXT NOT NULL,
    conditions     TEXT NOT NULL,
    failure_reason TEXT NOT NULL,
    message        TEXT NOT NULL,
    workload_name  TEXT NOT NULL,
    delete_home    BOOLEAN NOT NULL,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name, created_ms DESC, name);
CREATE INDEX sessions_agent ON sessions (agent_id);
CREATE INDEX sessions_created ON sessions (created_ms DESC, name);

-- Durable commands: written before they are sent.
CREATE TABLE commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    session        TEXT NOT NULL,
    agent_id       TEXT NOT NULL,
    generation     BIGINT NOT NULL,
    action         TEXT NOT NULL,
    state          TEXT NOT NULL,
    deadline_ms    BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    updated_ms     BIGINT NOT NULL,
    failure_reason TEXT NOT NULL,
    message        TEXT NOT NULL,
    retryable      BOOLEAN NOT NULL
);
-- One session, one active command (DESIGN.md 4), enforced by the database too.
CREATE UNIQUE INDEX commands_one_active ON commands (session)
    WHERE state IN ('pending', 'delivered', 'acknowledged');
CREATE INDEX commands_dispatch ON commands (agent_id, state, seq);
CREATE INDEX commands_deadline ON commands (state, deadline_ms);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    platform      TEXT NOT NULL,
    region        TEXT NOT NULL,
    capacity      TEXT NOT NULL,
    version       TEXT NOT NULL,
    fencing_token BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL
);

CREATE TABLE templates (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
