-- The cooperative model the scheduler reads: cooperatives, sites, pools (machines and
-- weighted members), quotas; an audit trail of every change; machine readiness as
-- confirmed by people (or a self-confirming agent).

CREATE TABLE cooperatives (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

-- Coordinates in millionths of a degree (no floats through sqlx's Any driver).
CREATE TABLE sites (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    region      TEXT NOT NULL,
    lat_e6      BIGINT NOT NULL,
    lon_e6      BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

CREATE TABLE pools (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
CREATE TABLE pool_machines (
    pool     TEXT NOT NULL,
    agent    TEXT NOT NULL,
    machine  TEXT NOT NULL,
    PRIMARY KEY (pool, agent, machine)
);
CREATE TABLE pool_members (
    pool         TEXT NOT NULL,
    cooperative  TEXT NOT NULL,
    weight       BIGINT NOT NULL,
    PRIMARY KEY (pool, cooperative)
);

-- At most `machine_hours` per period of `period_days` days, counted from `period_start_ms`.
CREATE TABLE quotas (
    cooperative      TEXT PRIMARY KEY,
    machine_hours    BIGINT NOT NULL,
    period_days      BIGINT NOT NULL,
    period_start_ms  BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL
);

CREATE TABLE audit (
    id       __SERIAL__,
    at_ms    BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX audit_by_subject ON audit (subject, id);

-- NULL: no job has ended on the machine since it was first seen; `needs_attention` after
-- every job end; `ready` / `stock_loaded_and_zeroed` when confirmed, by whom and when.
ALTER TABLE machines ADD COLUMN readiness TEXT;
ALTER TABLE machines ADD COLUMN ready_by TEXT;
ALTER TABLE machines ADD COLUMN ready_ms BIGINT;
