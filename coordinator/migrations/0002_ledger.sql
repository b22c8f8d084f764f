-- The production ledger, and what a job needs to be recorded in it: the design it was
-- made from, the pool it ran through, where it is delivered; a machine's power draw.

-- One row per ended job that reached a machine. `seq` is the primary key, so two
-- coordinators appending at once collide and the loser retries on the new head instead
-- of forking the chain. Every hashed field is a column (times in Unix seconds), so
-- editing any of them breaks verification at that row.
CREATE TABLE ledger (
    seq              BIGINT PRIMARY KEY,
    job              TEXT NOT NULL UNIQUE,
    design           TEXT,               -- JSON {source,id,commit,licence,authors} or NULL
    cooperative      TEXT NOT NULL,
    maker            TEXT NOT NULL,
    pool             TEXT NOT NULL,
    site             TEXT NOT NULL,
    agent            TEXT NOT NULL,
    machine          TEXT NOT NULL,
    started_s        BIGINT NOT NULL,
    ended_s          BIGINT NOT NULL,
    machine_seconds  BIGINT NOT NULL,
    material         TEXT,
    material_mg      BIGINT NOT NULL,
    energy_wh        BIGINT NOT NULL,
    outcome          TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX ledger_by_coop ON ledger (cooperative, ended_s);
CREATE INDEX ledger_by_pool ON ledger (pool, ended_s);
CREATE INDEX ledger_by_site ON ledger (site, ended_s);
CREATE INDEX ledger_by_end ON ledger (ended_s);
-- "when did this machine last finish a job" (least recently used first, per plan).
CREATE INDEX ledger_by_machine ON ledger (agent, machine, ended_s);

-- JSON of the pinned design (source, id, commit, licence, authors, path, profile) for jobs
-- submitted from the catalog.
ALTER TABLE jobs ADD COLUMN design TEXT;
-- The pool the job was placed through, set at assignment.
ALTER TABLE jobs ADD COLUMN pool TEXT;
-- Where the part is delivered (a site id), for cosmo-local placement.
ALTER TABLE jobs ADD COLUMN delivery_site TEXT;

-- The machine profile an administrator bound the machine to, and its average draw (W).
ALTER TABLE machines ADD COLUMN profile TEXT;
ALTER TABLE machines ADD COLUMN watts BIGINT;
