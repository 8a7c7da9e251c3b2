#include "saga/storage/event_store.hpp"

#include "saga/json.hpp"

#include <future>
#include <stdexcept>
#include <string>

namespace saga::storage {

event recorded_event::to_event() const {
  event e;
  e.seq = seq;
  e.body = decode(type, schema_version, payload);
  const std::string at = json_member(metadata, "at");
  try {
    e.at = time_point(std::chrono::milliseconds(std::stoll(at)));
  } catch (const std::exception&) {
    throw event_decode_error("event " + type + " seq " + std::to_string(seq) + ": metadata 'at' is not a time: " + at);
  }
  return e;
}

bool partition_filter::matches(const std::string& saga_type, std::int32_t p) const noexcept {
  if (!type.empty() && saga_type != type) return false;
  if (partitions.empty()) return true;
  for (auto x : partitions)
    if (x == p) return true;
  return false;
}

append_result event_store::append(append_request request) {
  std::promise<append_result> promise;
  auto future = promise.get_future();
  async_append(std::move(request), [&promise](std::exception_ptr error, append_result result) {
    if (error)
      promise.set_exception(error);
    else
      promise.set_value(result);
  });
  return future.get();
}

std::vector<saga_log> event_store::load_many(std::span<const saga_id> sagas) {
  std::vector<saga_log> out;
  out.reserve(sagas.size());
  for (const auto& id : sagas) out.emplace_back(id, load(id));
  return out;
}

std::vector<saga_summary> event_store::list(const saga_query&) {
  throw store_error("this event store cannot list sagas");
}

std::vector<std::pair<saga_status, std::uint64_t>> event_store::count_by_status(const std::string&) {
  throw store_error("this event store cannot count sagas by status");
}

std::vector<partition_placement> event_store::partition_placements(const std::string&) {
  throw store_error("this event store cannot list reply partition counts");
}

std::int32_t event_store::reply_partition_count(const std::string& type, std::int32_t current) {
  check_partition_count(type, current);
  return current;
}

void check_partition_count(const std::string& type, std::int32_t count) {
  if (count <= 0)
    throw std::invalid_argument("reply partition count " + std::to_string(count) + " for saga type '" + type +
                                "': must be positive");
}

saga_state fold_recorded(const saga_id& saga, std::span<const recorded_event> log) {
  saga_state state;
  state.id = saga;
  for (const auto& r : log) apply(state, r.to_event());
  return state;
}

}  // namespace saga::storage
