-- 0002: a participant's inbox: each command id's reply, stored in the transaction that applied the command.

CREATE TABLE saga_inbox (
  command_id text        PRIMARY KEY,
  result     text        NOT NULL CHECK (result IN ('success', 'failure')),
  payload    jsonb,                                          -- NULL when the reply had no payload
  reason     text        NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now()
);
