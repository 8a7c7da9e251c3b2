// saga/storage/postgres_event_store.hpp — the event store in PostgreSQL, with group commit of many sagas' appends.
#pragma once

#include "saga/storage/event_store.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace saga::storage {

struct postgres_event_store_options {
  std::size_t max_batch_size = 256;                       // appends (distinct sagas) per group-commit transaction
  std::chrono::microseconds max_batch_wait{2000};         // longest a batch waits for more appends (0 = never)
  std::size_t writer_connections = 2;                     // batches in flight at once, one connection each (>= 1)
  std::size_t read_connections = 2;                       // pooled connections for load/read_all/list/find
  std::chrono::milliseconds reconnect_backoff_min{50};    // first wait before reconnecting the writer
  std::chrono::milliseconds reconnect_backoff_max{2000};  // longest wait between reconnect attempts
  std::chrono::milliseconds in_doubt_timeout{30000};      // how long to keep trying to learn a cut-off commit's outcome
  std::size_t load_many_chunk = 1000;                     // saga ids per query of load_many (recovery)
};

// Counters since construction (monitoring, benchmarks, tests).
struct postgres_event_store_stats {
  std::uint64_t batches = 0;    // committed group-commit transactions
  std::uint64_t appends = 0;    // appends acknowledged as durable
  std::uint64_t events = 0;     // events in those appends
  std::uint64_t conflicts = 0;  // appends refused with concurrency_conflict
  std::uint64_t in_doubt = 0;   // commits whose outcome had to be read back
};

// Needs the schema of migrate(url). Appends queue for writer_connections writer threads that commit them in
// batches: one multi-row statement, one transaction, one WAL flush for up to max_batch_size sagas; a conflicting
// append fails alone, and a saga has at most one append in flight. Batches take positions under a transaction-level
// advisory lock held until their commit is durable, so positions commit in order across connections and processes
// and a reader tailing read_all never skips one. Callbacks run on a completion thread (never inside async_append) and
// must not block on another append of this store. Thread-safe.
class postgres_event_store final : public event_store {
 public:
  // Connects once to check `url`; throws store_unavailable when the server cannot be reached (retry helps).
  explicit postgres_event_store(std::string url, postgres_event_store_options options = {});
  // Fails queued appends with store_unavailable, waits for the batch in flight, joins the threads. Never throws.
  ~postgres_event_store() override;
  postgres_event_store(const postgres_event_store&) = delete;
  postgres_event_store& operator=(const postgres_event_store&) = delete;

  // Queues the append; `done` runs after COMMIT returned, or with concurrency_conflict, duplicate_idempotency_key,
  // store_unavailable (connection lost; retry after a reload helps) or store_error (bad request or SQL failure).
  void async_append(append_request request, append_callback done) override;
  // Every event of the saga in seq order; throws store_unavailable (retry helps) or store_error.
  [[nodiscard]] std::vector<recorded_event> load(const saga_id& saga) override;
  // The logs of many sagas, one query per chunk of load_many_chunk ids; throws like load (a chunk that fails
  // fails the whole call).
  [[nodiscard]] std::vector<saga_log> load_many(std::span<const saga_id> sagas) override;
  // Up to `limit` events with position >= from_position in global order; throws like load.
  [[nodiscard]] std::vector<recorded_event> read_all(std::uint64_t from_position, std::size_t limit) override;
  // Running, compensating and stuck sagas of the partitions, oldest first; throws like load.
  [[nodiscard]] std::vector<saga_summary> list_unfinished(const partition_filter& filter) override;
  // The saga's summary row, if it exists; throws like load.
  [[nodiscard]] std::optional<saga_summary> find(const saga_id& saga) override;
  // The saga of this type started with this idempotency key, if any; throws like load.
  [[nodiscard]] std::optional<saga_id> find_by_idempotency_key(const std::string& type,
                                                               const std::string& key) override;

  // Sagas matching `query`, oldest start first (then by id), at most query.limit; throws like load.
  [[nodiscard]] std::vector<saga_summary> list(const saga_query& query) override;
  // Sagas per status (of `type`, all types when empty), statuses without sagas left out; throws like load.
  [[nodiscard]] std::vector<std::pair<saga_status, std::uint64_t>> count_by_status(const std::string& type) override;
  // Records the count in saga_reply_partition_counts (migration 0003) as event_store documents, in one statement;
  // throws like load.
  [[nodiscard]] std::int32_t reply_partition_count(const std::string& type, std::int32_t current) override;
  [[nodiscard]] std::vector<partition_placement> partition_placements(const std::string& type) override;

  // Counters so far. Never fails.
  [[nodiscard]] postgres_event_store_stats stats() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace saga::storage
