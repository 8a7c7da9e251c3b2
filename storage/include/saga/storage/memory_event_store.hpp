// saga/storage/memory_event_store.hpp — an in-process event store for unit tests and users' tests.
#pragma once

#include "saga/storage/event_store.hpp"

#include <map>
#include <mutex>
#include <unordered_map>

namespace saga::storage {

// Same contract as the PostgreSQL store (optimistic appends, hash chain, idempotency keys), held in memory.
// Appends complete inline on the caller's thread. Thread-safe.
class memory_event_store final : public event_store {
 public:
  void async_append(append_request request, append_callback done) override;
  [[nodiscard]] std::vector<recorded_event> load(const saga_id& saga) override;
  [[nodiscard]] std::vector<recorded_event> read_all(std::uint64_t from_position, std::size_t limit) override;
  [[nodiscard]] std::vector<saga_summary> list_unfinished(const partition_filter& filter) override;
  [[nodiscard]] std::optional<saga_summary> find(const saga_id& saga) override;
  [[nodiscard]] std::optional<saga_id> find_by_idempotency_key(const std::string& type,
                                                               const std::string& key) override;
  [[nodiscard]] std::vector<saga_summary> list(const saga_query& query) override;
  [[nodiscard]] std::vector<std::pair<saga_status, std::uint64_t>> count_by_status(const std::string& type) override;
  [[nodiscard]] std::int32_t reply_partition_count(const std::string& type, std::int32_t current) override;
  [[nodiscard]] std::vector<partition_placement> partition_placements(const std::string& type) override;

  // Every saga's summary (tests).
  [[nodiscard]] std::vector<saga_summary> list_all();
  // Test hook: replaces a stored event as a tampering attacker would (bypasses the append-only rule).
  void tamper(const saga_id& saga, std::uint64_t seq, const std::function<void(recorded_event&)>& edit);

 private:
  std::mutex mutex_;
  std::vector<recorded_event> all_;  // index = position - 1
  std::unordered_map<saga_id, std::vector<std::size_t>> by_saga_;
  std::unordered_map<saga_id, saga_summary> summaries_;
  std::map<std::pair<std::string, std::string>, saga_id> keys_;
  std::map<std::string, std::int32_t> partition_counts_;  // by saga type
};

}  // namespace saga::storage
