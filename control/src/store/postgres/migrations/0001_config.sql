-- Config: owners, the event-type catalog and endpoints, each row one encoded record keyed by its id; the config
-- version; the version-ordered change log; agents; and the master key's check value. Ids compare bytewise
-- (COLLATE "C"), so listings page in the same order as on sled.

-- One row: the config version in force, bumped in the transaction of each change.
CREATE TABLE config_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL
);
INSERT INTO config_version (version) VALUES (0);

-- One row per config version: the change's hookrelay.v1.ConfigDelta, sealed under the master key (it carries
-- signing secrets), written in the transaction of the change. Replicas read it to fan changes out and to resume
-- an agent's Watch from its version.
CREATE TABLE config_changes (
    version bigint PRIMARY KEY,
    delta bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The encoded hookrelay.v1.Owner.
CREATE TABLE owners (
    id text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

-- The encoded hookrelay.v1.EventType.
CREATE TABLE event_types (
    name text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

-- The endpoint's fields in the clear and its signing secrets sealed (the store's StoredEndpoint); owner_id and
-- filter_types copy the fields that the cross-record rules query.
CREATE TABLE endpoints (
    id text COLLATE "C" PRIMARY KEY,
    owner_id text COLLATE "C" NOT NULL REFERENCES owners (id),
    filter_types text[] NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX endpoints_owner_idx ON endpoints (owner_id, id);

-- What control last heard from each agent: the encoded hookrelay.v1.Agent.
CREATE TABLE agents (
    node_name text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

-- Small settings of the store: the master key's check value (`master_key_check`).
CREATE TABLE store_meta (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
