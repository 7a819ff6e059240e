-- procflow PostgreSQL store, schema version 1, frozen: a database written by the first version of
-- the PostgreSQL store holds exactly these tables. Never edit this file; add a migration instead.
-- started_at is the instant in nanoseconds since the Unix epoch, next_due the earliest pending
-- timer in epoch milliseconds (rounded up); instance ids come from the sequence procflow_ids.
CREATE TABLE procflow_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO procflow_meta (key, value) VALUES ('application', 'procflow'), ('schema_version', '1');
CREATE TABLE procflow_definitions (
    id TEXT NOT NULL,
    version BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE TABLE procflow_instances (
    id BIGINT PRIMARY KEY,
    process TEXT NOT NULL,
    def_version BIGINT NOT NULL,
    running BOOLEAN NOT NULL,
    row_version BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    next_due BIGINT,
    state TEXT NOT NULL
);
CREATE INDEX procflow_instances_due ON procflow_instances (next_due)
    WHERE running AND next_due IS NOT NULL;
CREATE INDEX procflow_instances_running ON procflow_instances (id) WHERE running;
CREATE TABLE procflow_records (
    instance BIGINT NOT NULL,
    first BIGINT NOT NULL,
    batch TEXT NOT NULL,
    PRIMARY KEY (instance, first)
);
CREATE TABLE procflow_keys (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    instance BIGINT NOT NULL,
    PRIMARY KEY (name, value, instance)
);
CREATE INDEX procflow_keys_instance ON procflow_keys (instance);
CREATE TABLE procflow_messages (
    id BIGINT PRIMARY KEY,
    unmatched BOOLEAN NOT NULL,
    body TEXT NOT NULL
);
CREATE SEQUENCE procflow_ids;
