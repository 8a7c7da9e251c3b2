-- 0001: the event log (append-only, hash-chained per saga) and one summary row per saga instance.
-- Applied by saga::storage::migrate() in one transaction; never edit after release (its checksum is recorded).

CREATE TABLE saga_events (
  position       bigint      GENERATED ALWAYS AS IDENTITY,  -- global order
  saga_id        uuid        NOT NULL,
  seq            bigint      NOT NULL CHECK (seq >= 1),     -- 1, 2, 3, ... per saga
  type           text        NOT NULL,
  schema_version integer     NOT NULL,
  payload        jsonb       NOT NULL,
  metadata       jsonb       NOT NULL,                       -- {"at": ms, trace / causation fields}
  recorded_at    timestamptz NOT NULL DEFAULT now(),
  prev_hash      text        NOT NULL,                       -- '' for seq 1
  hash           text        NOT NULL CHECK (length(hash) = 64),
  PRIMARY KEY (saga_id, seq)
);
CREATE UNIQUE INDEX saga_events_position ON saga_events (position);

-- The log is evidence: rows are never changed or removed.
CREATE FUNCTION saga_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'saga_events is append-only: % refused', TG_OP
    USING ERRCODE = 'restrict_violation', HINT = 'events are evidence; append a new event instead';
END;
$$;
CREATE TRIGGER saga_events_append_only BEFORE UPDATE OR DELETE ON saga_events
  FOR EACH ROW EXECUTE FUNCTION saga_events_refuse_change();
CREATE TRIGGER saga_events_no_truncate BEFORE TRUNCATE ON saga_events
  FOR EACH STATEMENT EXECUTE FUNCTION saga_events_refuse_change();

-- One row per saga, written in the same transaction as its events: cheap listing and counting by status.
CREATE TABLE saga_instances (
  id                 uuid        PRIMARY KEY,
  type               text        NOT NULL,
  definition_version integer     NOT NULL,
  status             text        NOT NULL
                     CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'stuck')),
  last_seq           bigint      NOT NULL,
  last_hash          text        NOT NULL,
  partition          integer     NOT NULL,
  started_at         timestamptz NOT NULL,
  updated_at         timestamptz NOT NULL,
  idempotency_key    text,                                   -- NULL when the saga was started without one
  CONSTRAINT saga_instances_idempotency UNIQUE (type, idempotency_key)
) WITH (fillfactor = 70);  -- room for HOT updates: every append rewrites its saga's row
CREATE INDEX saga_instances_unfinished ON saga_instances (partition, started_at)
  WHERE status IN ('running', 'compensating', 'stuck');
CREATE INDEX saga_instances_status ON saga_instances (status);
