-- signet store schema, version 1.
--
-- Records are stored as signet's versioned CBOR envelopes (the same bytes
-- the sled backend keeps), so both backends share one encoding and one set
-- of decoders. Columns beside a record hold only what SQL must see: keys,
-- uniqueness, foreign keys, and what queries select or order by.
-- Times are unix milliseconds in bigint.

CREATE TABLE users (
    id      bytea PRIMARY KEY,
    name    text  NOT NULL UNIQUE,
    record  bytea NOT NULL
);

CREATE TABLE credentials (
    id      bytea PRIMARY KEY,
    user_id bytea NOT NULL REFERENCES users (id),
    aaguid  bytea NOT NULL,
    record  bytea NOT NULL
);
CREATE INDEX credentials_by_user ON credentials (user_id, id);
CREATE INDEX credentials_by_aaguid ON credentials (aaguid);

-- Devices, transactions and pairings change by compare-and-swap on the
-- revision inside their record (the rules live in signet, store::Revised).
CREATE TABLE devices (
    id      bytea PRIMARY KEY,
    record  bytea NOT NULL
);

CREATE TABLE transactions (
    id      bytea PRIMARY KEY,
    record  bytea NOT NULL
);

CREATE TABLE pairings (
    id      bytea PRIMARY KEY,
    record  bytea NOT NULL
);

-- One-time objects (ceremonies, registration tokens, transactions' and
-- pairings' one-time parts): state 0 live, 1 consumed, 2 expired. A spent
-- object keeps its row, without its body, as the tombstone until purge_ms.
CREATE TABLE one_time (
    kind        smallint NOT NULL,
    id          bytea    NOT NULL,
    state       smallint NOT NULL CHECK (state IN (0, 1, 2)),
    expires_ms  bigint   NOT NULL,
    purge_ms    bigint   NOT NULL,
    spent_ms    bigint,
    body        bytea,
    PRIMARY KEY (kind, id),
    CHECK ((state = 0) = (body IS NOT NULL))
);
CREATE INDEX one_time_due ON one_time (expires_ms) WHERE state = 0;
CREATE INDEX one_time_purge ON one_time (purge_ms) WHERE state <> 0;

-- The audit chain. audit_head is one row, locked FOR UPDATE by every append:
-- sequence numbers and previous hashes are assigned inside the database
-- transaction, so any number of instances extend one chain.
CREATE TABLE audit (
    seq     bigint PRIMARY KEY CHECK (seq > 0),
    record  bytea  NOT NULL
);

CREATE TABLE audit_head (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq       bigint  NOT NULL,
    hash      bytea   NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE checkpoints (
    seq     bigint PRIMARY KEY REFERENCES audit (seq),
    record  bytea  NOT NULL
);

-- The FIDO metadata catalog: entries of one generation at a time; the
-- status row names the generation readers use.
CREATE TABLE mds_status (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    generation  bigint  NOT NULL,
    record      bytea
);
INSERT INTO mds_status (generation, record) VALUES (0, NULL);

CREATE TABLE mds_entries (
    generation  bigint  NOT NULL,
    idx         integer NOT NULL,
    record      bytea   NOT NULL,
    PRIMARY KEY (generation, idx)
);

CREATE TABLE mds_by_aaguid (
    generation  bigint  NOT NULL,
    aaguid      bytea   NOT NULL,
    idx         integer NOT NULL,
    PRIMARY KEY (generation, aaguid)
);

CREATE TABLE mds_by_key_id (
    generation  bigint  NOT NULL,
    key_id      text    NOT NULL,
    idx         integer NOT NULL,
    PRIMARY KEY (generation, key_id)
);
