#include "saga/storage/memory_event_store.hpp"

#include "saga/storage/hash_chain.hpp"

#include <algorithm>

namespace saga::storage {

void memory_event_store::async_append(append_request request, append_callback done) {
  std::exception_ptr error;
  append_result result;
  try {
    std::lock_guard lock(mutex_);
    auto& indexes = by_saga_[request.saga];
    const std::uint64_t actual = indexes.size();
    if (actual != request.expected_seq) throw concurrency_conflict(request.saga, request.expected_seq, actual);
    const std::string prev = indexes.empty() ? std::string() : all_[indexes.back()].hash;
    auto records = seal(request, prev);
    if (request.expected_seq == 0) {
      const auto& started = std::get<events::saga_started>(request.events.front().body);
      if (!started.idempotency_key.empty()) {
        const auto key = std::make_pair(request.saga_type, started.idempotency_key);
        if (auto it = keys_.find(key); it != keys_.end()) {
          if (indexes.empty()) by_saga_.erase(request.saga);
          throw duplicate_idempotency_key(request.saga_type, started.idempotency_key, it->second);
        }
        keys_.emplace(key, request.saga);
      }
      summaries_[request.saga] = saga_summary{request.saga,
                                              request.saga_type,
                                              started.definition_version,
                                              request.status_after,
                                              0,
                                              request.partition,
                                              request.events.front().at,
                                              {},
                                              started.idempotency_key,
                                              {}};
    }
    const auto now = std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
    for (auto& r : records) {
      r.position = all_.size() + 1;
      r.recorded_at = now;
      indexes.push_back(all_.size());
      all_.push_back(std::move(r));
    }
    auto& summary = summaries_[request.saga];
    summary.status = request.status_after;
    summary.last_seq = all_[indexes.back()].seq;
    summary.last_hash = all_[indexes.back()].hash;
    summary.updated_at = request.events.back().at;
    result = append_result{summary.last_seq, all_.size()};
  } catch (...) {
    error = std::current_exception();
  }
  done(error, result);
}

std::vector<recorded_event> memory_event_store::load(const saga_id& saga) {
  std::lock_guard lock(mutex_);
  std::vector<recorded_event> out;
  if (auto it = by_saga_.find(saga); it != by_saga_.end())
    for (auto i : it->second) out.push_back(all_[i]);
  return out;
}

std::vector<recorded_event> memory_event_store::read_all(std::uint64_t from_position, std::size_t limit) {
  std::lock_guard lock(mutex_);
  std::vector<recorded_event> out;
  for (std::size_t i = from_position == 0 ? 0 : from_position - 1; i < all_.size() && out.size() < limit; ++i)
    out.push_back(all_[i]);
  return out;
}

std::vector<saga_summary> memory_event_store::list_unfinished(const partition_filter& filter) {
  std::lock_guard lock(mutex_);
  std::vector<saga_summary> out;
  for (const auto& [id, s] : summaries_)
    if (!is_terminal(s.status) && filter.matches(s.type, s.partition)) out.push_back(s);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.started_at < b.started_at; });
  return out;
}

std::vector<saga_summary> memory_event_store::list_all() {
  std::lock_guard lock(mutex_);
  std::vector<saga_summary> out;
  for (const auto& [id, s] : summaries_) out.push_back(s);
  return out;
}

std::vector<saga_summary> memory_event_store::list(const saga_query& q) {
  std::lock_guard lock(mutex_);
  std::vector<saga_summary> out;
  for (const auto& [id, s] : summaries_) {
    if (!q.type.empty() && s.type != q.type) continue;
    if (q.status && s.status != *q.status) continue;
    if (q.started_from && s.started_at < *q.started_from) continue;
    if (q.started_to && s.started_at > *q.started_to) continue;
    out.push_back(s);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.started_at != b.started_at ? a.started_at < b.started_at : a.id < b.id;
  });
  if (out.size() > q.limit) out.resize(q.limit);
  return out;
}

std::vector<std::pair<saga_status, std::uint64_t>> memory_event_store::count_by_status(const std::string& type) {
  std::lock_guard lock(mutex_);
  std::map<saga_status, std::uint64_t> counts;
  for (const auto& [id, s] : summaries_)
    if (type.empty() || s.type == type) ++counts[s.status];
  return {counts.begin(), counts.end()};
}

std::int32_t memory_event_store::reply_partition_count(const std::string& type, std::int32_t current) {
  check_partition_count(type, current);
  std::lock_guard lock(mutex_);
  auto [it, inserted] = partition_counts_.try_emplace(type, current);
  if (inserted || it->second == current) return current;
  const bool unfinished = std::any_of(summaries_.begin(), summaries_.end(), [&](const auto& entry) {
    return entry.second.type == type && !is_terminal(entry.second.status);
  });
  if (!unfinished) it->second = current;
  return it->second;
}

std::vector<partition_placement> memory_event_store::partition_placements(const std::string& type) {
  std::lock_guard lock(mutex_);
  std::map<std::string, partition_placement> by_type;
  for (const auto& [name, count] : partition_counts_)
    if (type.empty() || name == type) by_type[name].recorded = count;
  for (const auto& [id, s] : summaries_) {
    if ((!type.empty() && s.type != type) || is_terminal(s.status)) continue;
    auto& p = by_type[s.type];
    ++p.unfinished;
    p.highest_partition = std::max(p.highest_partition.value_or(s.partition), s.partition);
  }
  std::vector<partition_placement> out;
  for (auto& [name, p] : by_type) {
    p.type = name;
    out.push_back(std::move(p));
  }
  return out;
}

std::optional<saga_summary> memory_event_store::find(const saga_id& saga) {
  std::lock_guard lock(mutex_);
  if (auto it = summaries_.find(saga); it != summaries_.end()) return it->second;
  return std::nullopt;
}

std::optional<saga_id> memory_event_store::find_by_idempotency_key(const std::string& type, const std::string& key) {
  std::lock_guard lock(mutex_);
  if (auto it = keys_.find({type, key}); it != keys_.end()) return it->second;
  return std::nullopt;
}

void memory_event_store::tamper(const saga_id& saga, std::uint64_t seq,
                                const std::function<void(recorded_event&)>& edit) {
  std::lock_guard lock(mutex_);
  auto& indexes = by_saga_.at(saga);
  edit(all_.at(indexes.at(seq - 1)));
}

}  // namespace saga::storage
