-- The Kubernetes object (UID) a session belongs to, when it came from a Session object.
ALTER TABLE sessions ADD COLUMN external_id TEXT;
