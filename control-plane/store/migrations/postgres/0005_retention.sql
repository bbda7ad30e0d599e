-- Retention prunes finished commands by age: find them without a scan.
CREATE INDEX commands_finished ON commands (updated_ms)
    WHERE state IN ('succeeded', 'failed', 'expired', 'superseded');
