-- The dispatch and deadline indexes serve only unfinished commands: every
-- query that walks them names the active states. Finished commands (most of
-- the table) are then kept in no index but the primary key, the id and the
-- retention index, so finishing and pruning a command each touch two fewer
-- b-trees.
DROP INDEX commands_dispatch;
DROP INDEX commands_deadline;
CREATE INDEX commands_dispatch ON commands (agent_id, state, seq)
    WHERE state IN ('pending', 'delivered', 'acknowledged');
CREATE INDEX commands_deadline ON commands (state, deadline_ms)
    WHERE state IN ('pending', 'delivered', 'acknowledged');
