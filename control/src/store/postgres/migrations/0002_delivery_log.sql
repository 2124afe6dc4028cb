-- The delivery log: deliveries, their attempts and the report ids seen, each partitioned by day (UTC) of a
-- time that never changes. Deliveries and attempts use the delivery id's creation time, report ids their own,
-- both read from the UUIDv7 in the id, so a lookup by id computes its partition. The partitions themselves are
-- created by the store (`log.rs`, `retention.rs`) ahead of time and on demand, and dropped whole by retention.
-- A unique key on a partitioned table must include the partition key: hence (id, created_ms).
-- Ids compare bytewise (COLLATE "C"): they sort by time, and time ranges become id ranges.

CREATE TABLE deliveries (
    id text COLLATE "C" NOT NULL,
    created_ms bigint NOT NULL,
    owner_id text COLLATE "C" NOT NULL,
    endpoint_id text COLLATE "C" NOT NULL,
    event_type text COLLATE "C" NOT NULL,
    status integer NOT NULL,
    agent text COLLATE "C" NOT NULL,
    updated_ms bigint NOT NULL,
    -- The encoded hookrelay.v1.Delivery; the columns above copy the fields that queries filter on.
    record bytea NOT NULL,
    PRIMARY KEY (id, created_ms)
) PARTITION BY RANGE (created_ms);

-- ListDeliveries reads newest first (id descending) from one of these, the cursor being an upper bound on id; the
-- primary key serves the unfiltered listing and time ranges.
CREATE INDEX deliveries_owner_idx ON deliveries (owner_id, id);
CREATE INDEX deliveries_endpoint_idx ON deliveries (endpoint_id, id);
CREATE INDEX deliveries_status_idx ON deliveries (status, id);
CREATE INDEX deliveries_event_type_idx ON deliveries (event_type, id);
-- Retention asks whether a day still holds a delivery to keep: one finished after the cutoff (a few pages of this
-- BRIN, as updates land near the end of a day's heap) or one not final (the status index's ranges below and
-- above the final states).
CREATE INDEX deliveries_updated_idx ON deliveries USING brin (updated_ms) WITH (autosummarize = on);

CREATE TABLE attempts (
    delivery_id text COLLATE "C" NOT NULL,
    -- The delivery's created_ms: attempts live and go with their delivery's day.
    created_ms bigint NOT NULL,
    number bigint NOT NULL,
    -- The report that brought the record; a later report of the same attempt number replaces both.
    report_id text COLLATE "C" NOT NULL,
    -- The encoded hookrelay.v1.Attempt.
    record bytea NOT NULL,
    PRIMARY KEY (delivery_id, created_ms, number)
) PARTITION BY RANGE (created_ms);

CREATE TABLE report_ids (
    report_id text COLLATE "C" NOT NULL,
    -- The report id's own creation time: markers go by their own age.
    created_ms bigint NOT NULL,
    delivery_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (report_id, created_ms)
) PARTITION BY RANGE (created_ms);

-- Deliveries per day of creation, in a few slots per day so concurrent batches rarely wait on one row; their sum
-- is the log's size for /metrics, and a dropped day subtracts its rows exactly.
CREATE TABLE delivery_counts (
    day_ms bigint NOT NULL,
    slot smallint NOT NULL,
    deliveries bigint NOT NULL,
    PRIMARY KEY (day_ms, slot)
);
