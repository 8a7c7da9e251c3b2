// saga/storage/event_store.hpp — where every saga transition lands: an append-only, hash-chained log per saga.
#pragma once

#include "saga/state.hpp"

#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace saga::storage {

// Base of every storage error; `retryable()` says whether the same call may succeed later.
class store_error : public std::runtime_error {
 public:
  explicit store_error(const std::string& what, bool retryable = false)
      : std::runtime_error(what), retryable_(retryable) {}
  // True when trying again (after a reload, or later) can help.
  [[nodiscard]] bool retryable() const noexcept { return retryable_; }

 private:
  bool retryable_;
};

// Another writer appended to the saga first: reload it and decide again.
class concurrency_conflict : public store_error {
 public:
  concurrency_conflict(const saga_id& saga, std::uint64_t expected, std::uint64_t actual)
      : store_error("concurrency conflict on saga " + saga.to_string() + ": expected seq " + std::to_string(expected) +
                        ", log is at " + std::to_string(actual),
                    true),
        saga_(saga),
        expected_(expected),
        actual_(actual) {}
  [[nodiscard]] const saga_id& saga() const noexcept { return saga_; }
  [[nodiscard]] std::uint64_t expected() const noexcept { return expected_; }
  [[nodiscard]] std::uint64_t actual() const noexcept { return actual_; }

 private:
  saga_id saga_;
  std::uint64_t expected_, actual_;
};

// A saga of this type with this idempotency key exists already: use `existing()` instead of starting another.
class duplicate_idempotency_key : public store_error {
 public:
  duplicate_idempotency_key(const std::string& type, const std::string& key, const saga_id& existing)
      : store_error("saga type '" + type + "' already has a saga with idempotency key '" + key +
                    "': " + existing.to_string()),
        existing_(existing) {}
  [[nodiscard]] const saga_id& existing() const noexcept { return existing_; }

 private:
  saga_id existing_;
};

// The store cannot be reached now (connection lost, server restarting); retry later.
class store_unavailable : public store_error {
 public:
  explicit store_unavailable(const std::string& what) : store_error(what, true) {}
};

// One event as stored: the event plus its place in the global order and its link in the saga's hash chain.
struct recorded_event {
  saga_id saga;
  std::uint64_t seq = 0;
  std::uint64_t position = 0;  // global order, assigned by the store
  std::string type;
  std::uint32_t schema_version = 0;
  std::string payload;   // canonical JSON
  std::string metadata;  // canonical JSON: {"at": ms, optional trace/causation fields}
  time_point recorded_at{};
  std::string prev_hash;  // hex SHA-256 of the previous event of the saga ("" for seq 1)
  std::string hash;       // hex SHA-256 over prev_hash and this event's canonical bytes

  // The decoded event; throws event_decode_error / json_error when the stored bytes are not a valid event.
  [[nodiscard]] event to_event() const;
};

// One saga's log as returned by load_many.
using saga_log = std::pair<saga_id, std::vector<recorded_event>>;

// A saga instance's row: cheap listing and counting without reading events.
struct saga_summary {
  saga_id id;
  std::string type;
  std::uint32_t definition_version = 0;
  saga_status status = saga_status::running;
  std::uint64_t last_seq = 0;
  std::int32_t partition = 0;
  time_point started_at{};
  time_point updated_at{};
  std::string idempotency_key;
  std::string last_hash;  // hash of the last event (the head sagactl verify checks the log's end against)
};

// A saga type's recorded reply partition count and where its unfinished sagas are placed (sagactl partitions).
struct partition_placement {
  std::string type;
  std::optional<std::int32_t> recorded;  // the count reply_partition_count recorded; none before any was
  time_point recorded_at{};              // when it was recorded or last changed (the epoch when the store cannot tell)
  std::uint64_t unfinished = 0;          // sagas running, compensating or stuck
  std::optional<std::int32_t> highest_partition;  // the highest partition an unfinished saga is placed on
};

// Events to append to one saga after `expected_seq` (0 for a new saga, whose first event is saga_started).
struct append_request {
  saga_id saga;
  std::string saga_type;
  std::uint64_t expected_seq = 0;
  std::vector<event> events;
  saga_status status_after = saga_status::running;  // the saga's status once these events apply
  std::int32_t partition = 0;                       // the reply partition that owns the saga
  std::string metadata;                             // extra canonical JSON object merged into each event's metadata
};

struct append_result {
  std::uint64_t last_seq = 0;
  std::uint64_t last_position = 0;
};

using append_callback = std::function<void(std::exception_ptr error, append_result result)>;

// Which sagas a listing covers: those of `type` (empty = every type) on `partitions` (empty = all). Saga types
// number their reply partitions alike, so an owner of one type's partition lists with that type.
struct partition_filter {
  std::vector<std::int32_t> partitions{};
  std::string type{};
  [[nodiscard]] bool matches(const std::string& saga_type, std::int32_t p) const noexcept;
};

// Which sagas a listing returns (every field optional).
struct saga_query {
  std::string type;                                    // empty: any type
  std::optional<saga_status> status;                   // any status when absent
  std::optional<time_point> started_from, started_to;  // inclusive bounds on the start time
  std::size_t limit = 1000;
};

// The event store. Implementations are thread-safe.
class event_store {
 public:
  virtual ~event_store() = default;

  // Appends atomically; `done` runs once the append is durable, or with concurrency_conflict,
  // duplicate_idempotency_key or store_unavailable (retryable). May run on another thread.
  virtual void async_append(append_request request, append_callback done) = 0;
  // Blocking append: returns once durable; throws what async_append would report.
  append_result append(append_request request);
  // Every event of the saga in seq order (empty when unknown).
  [[nodiscard]] virtual std::vector<recorded_event> load(const saga_id& saga) = 0;
  // The logs of many sagas at once: one (id, events in seq order) per requested id, in request order (empty for
  // an unknown saga). Throws what load throws. The default calls load per saga; stores override it to read in bulk.
  [[nodiscard]] virtual std::vector<saga_log> load_many(std::span<const saga_id> sagas);
  // Up to `limit` events with position >= `from_position`, in global order.
  [[nodiscard]] virtual std::vector<recorded_event> read_all(std::uint64_t from_position, std::size_t limit) = 0;
  // Sagas that are running, compensating or stuck, of the filter's type in its partitions.
  [[nodiscard]] virtual std::vector<saga_summary> list_unfinished(const partition_filter& filter) = 0;
  // The saga's summary row, if it exists.
  [[nodiscard]] virtual std::optional<saga_summary> find(const saga_id& saga) = 0;
  // The saga of this type started with this idempotency key, if any.
  [[nodiscard]] virtual std::optional<saga_id> find_by_idempotency_key(const std::string& type,
                                                                       const std::string& key) = 0;
  // Sagas matching `query`, oldest start first, from the instances table (no event scan). Throws store_error
  // when the store cannot list (the default: not supported by this store).
  [[nodiscard]] virtual std::vector<saga_summary> list(const saga_query& query);
  // How many sagas (of `type`, or all when empty) are in each status, from the instances table.
  [[nodiscard]] virtual std::vector<std::pair<saga_status, std::uint64_t>> count_by_status(const std::string& type);
  // The number of reply partitions the sagas of `type` are placed over (saga_summary::partition). Records `current`
  // and returns it when nothing is recorded for the type, or when none of its sagas is unfinished (running,
  // compensating or stuck); otherwise returns the recorded count, which the caller compares with `current`: where
  // they differ, the unfinished sagas' partitions were computed over another count. Throws std::invalid_argument
  // when `current` is not positive, store_error when the store fails. The default records nothing and returns
  // `current` (a store that cannot tell).
  [[nodiscard]] virtual std::int32_t reply_partition_count(const std::string& type, std::int32_t current);
  // Every saga type (or only `type`, when not empty) that has a recorded reply partition count or an unfinished saga,
  // by name, with both. Reads only. Throws store_error when the store cannot tell (the default).
  [[nodiscard]] virtual std::vector<partition_placement> partition_placements(const std::string& type);
};

// Throws std::invalid_argument naming `type` when `count` is not a valid partition count (stores' argument check).
void check_partition_count(const std::string& type, std::int32_t count);

// Decodes a saga's stored events and folds them into its state.
[[nodiscard]] saga_state fold_recorded(const saga_id& saga, std::span<const recorded_event> log);

}  // namespace saga::storage
