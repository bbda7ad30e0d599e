-- The W3C traceparent of the span that accepted each command ('' when
-- tracing is off), so the command's later spans join that trace.
ALTER TABLE commands ADD COLUMN trace_context TEXT NOT NULL DEFAULT '';
