-- 0003: how many reply partitions each saga type's sagas are placed over. A saga belongs to the reply partition
-- of its key (saga_instances.partition); Kafka maps keys to partitions by the topic's partition count, so when the
-- count changes while sagas of the type are unfinished, their stored partitions no longer say who owns them. The
-- orchestrator records the count here and refuses to run such sagas over another one.

CREATE TABLE saga_reply_partition_counts (
  type        text        PRIMARY KEY,
  partitions  integer     NOT NULL CHECK (partitions > 0),
  recorded_at timestamptz NOT NULL DEFAULT now()
);
