-- MuniFab coordinator core schema. Portable between SQLite and PostgreSQL: only TEXT and
-- BIGINT columns (sqlx's Any driver mis-binds floats to PostgreSQL); times are Unix milliseconds; JSON is stored as TEXT.
-- `__SERIAL__` is replaced by the backend's auto-increment primary key when the migration
-- is loaded (the one spelling the two databases do not share).

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    scope       TEXT,
    label       TEXT NOT NULL,
    signing_key TEXT,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
CREATE INDEX tokens_by_scope ON tokens (role, scope);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    site          TEXT,
    online        BIGINT NOT NULL,
    version       TEXT,
    last_seen_ms  BIGINT NOT NULL,
    changed_ms    BIGINT NOT NULL
);

CREATE TABLE machines (
    agent        TEXT NOT NULL,
    machine      TEXT NOT NULL,
    state        TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    job          TEXT,
    epoch        BIGINT,
    detail       TEXT,
    updated_ms   BIGINT NOT NULL,
    PRIMARY KEY (agent, machine)
);

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    coop          TEXT NOT NULL,
    name          TEXT NOT NULL,
    submitted_by  TEXT NOT NULL,
    state         TEXT NOT NULL,
    epoch         BIGINT NOT NULL,
    agent         TEXT,
    machine       TEXT,
    artifact      TEXT NOT NULL,
    size          BIGINT NOT NULL,
    requirements  TEXT NOT NULL,
    analysis      TEXT NOT NULL,
    excluded      TEXT NOT NULL,
    rejections    BIGINT NOT NULL,
    priority      BIGINT NOT NULL,
    progress      BIGINT,            -- hundredths of a percent
    last_seq      BIGINT NOT NULL,
    detail        TEXT,
    created_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL,
    queued_ms     BIGINT
);
CREATE INDEX jobs_by_state ON jobs (state, priority, created_ms);
CREATE INDEX jobs_by_coop ON jobs (coop, created_ms);
-- "is a job of ours on this machine" (free machines) and jobs of an agent (lost jobs).
CREATE INDEX jobs_by_machine ON jobs (agent, machine, state);

CREATE TABLE job_events (
    id          __SERIAL__,
    job         TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    cause       TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX job_events_by_job ON job_events (job, id);

-- Agent messages already applied, by message id: replays and at-least-once duplicates
-- are recognised here, in the same transaction that applies the message.
CREATE TABLE seen_messages (
    id     TEXT PRIMARY KEY,
    agent  TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);

-- Commands to agents. Written in the transaction that decides them, published when the
-- agent is online, re-published on every reconnect until answered: the broker's session
-- queue is never relied upon.
CREATE TABLE outbox (
    id          __SERIAL__,
    agent       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    job         TEXT,
    epoch       BIGINT,
    machine     TEXT,
    message     TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    sent_ms     BIGINT,
    done_ms     BIGINT
);
CREATE INDEX outbox_pending ON outbox (agent, done_ms, id);
CREATE INDEX outbox_by_job ON outbox (job, epoch);
