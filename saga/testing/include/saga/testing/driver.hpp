// saga/testing/driver.hpp — run sagas in-process on the memory store and transport with a manual clock.
#pragma once

#include "saga/effects.hpp"
#include "saga/storage/inbox.hpp"
#include "saga/storage/memory_event_store.hpp"
#include "saga/transport/memory_transport.hpp"

#include <functional>
#include <map>
#include <memory>
#include <unordered_map>

namespace saga::testing {

// A synchronous orchestrator for tests: every trigger is folded, decided, appended, and its effects performed
// before the call returns. Commands for services without a participant wait for the test to answer them.
// Time only moves when advance() is called. Not thread-safe.
class driver {
 public:
  // `seed` feeds the saga ids and the retry jitter, so a run is reproducible.
  explicit driver(std::uint64_t seed = 42, time_point start = time_point(std::chrono::milliseconds(1'700'000'000'000)));
  ~driver();
  driver(const driver&) = delete;
  driver& operator=(const driver&) = delete;

  // Registers a definition (by its type).
  void add(definition def);
  // Serves `service` with an in-process participant: `handler` runs once per command id (memory inbox dedup).
  void serve(const std::string& service,
             std::function<storage::stored_reply(const transport::command_message&)> handler);

  // Starts a saga of `type`; returns its id, or the existing id for a known idempotency key.
  // Throws std::invalid_argument with the reason when the start is refused.
  saga_id start(const std::string& type, const std::string& input_json, const std::string& idempotency_key = {});
  // Starts a saga with typed data (encoded with cereal).
  template <class Data>
  saga_id start_with(const std::string& type, const Data& data, const std::string& idempotency_key = {}) {
    return start(type, to_json(data), idempotency_key);
  }

  // Removes and returns the commands waiting for services without a participant.
  [[nodiscard]] std::vector<transport::command_message> take_commands(const std::string& service = {});
  // Answers a command through the transport, as its participant would; returns the decision it led to.
  decision reply(const transport::command_message& command, triggers::outcome result, const std::string& payload = "{}",
                 const std::string& reason = {});
  decision succeed(const transport::command_message& c, const std::string& payload = "{}") {
    return reply(c, triggers::outcome::success, payload);
  }
  decision fail(const transport::command_message& c, const std::string& reason) {
    return reply(c, triggers::outcome::failure, "{}", reason);
  }
  decision fail_retryable(const transport::command_message& c, const std::string& reason) {
    return reply(c, triggers::outcome::retryable_failure, "{}", reason);
  }

  // Moves the clock forward by `d`, firing every timer that comes due, each at its own time, in order.
  void advance(duration d);
  // The manual clock's time.
  [[nodiscard]] time_point now() const noexcept { return now_; }

  // Operator and service actions, through the same decide path as any trigger.
  decision cancel(const saga_id& id, const std::string& reason, const std::string& by = "test");
  decision retry(const saga_id& id, const std::string& reason = {}, const std::string& by = "test");
  decision skip(const saga_id& id, const std::string& step, const std::string& reason, const std::string& by = "test");
  // Any trigger for a saga.
  decision handle(const saga_id& id, const trigger& t);

  // Forgets everything held in memory (states, timers), as a crash would, then recovers every unfinished saga
  // from the store: replays its log, resends pending commands, re-arms timers. Returns how many it recovered.
  std::size_t crash_and_recover();

  // The state folded from the saga's stored log.
  [[nodiscard]] saga_state state(const saga_id& id);
  // The saga's decoded log.
  [[nodiscard]] std::vector<event> events(const saga_id& id);
  // Sagas that finished (completed, compensated, or stuck), in order.
  [[nodiscard]] const std::vector<effects::saga_finished>& finished() const noexcept { return finished_; }
  // Decisions that ignored their trigger, with the reason (stale replies, duplicates, …).
  [[nodiscard]] const std::vector<std::string>& ignored() const noexcept { return ignored_; }
  [[nodiscard]] storage::memory_event_store& store() noexcept { return store_; }
  [[nodiscard]] transport::memory_transport& bus() noexcept { return transport_; }

 private:
  const definition& definition_of(const std::string& type) const;
  decision process(const saga_id& id, const definition& def, const trigger& t);
  saga_state& cached(const saga_id& id);
  void perform(const std::vector<effect>& effects);
  void pump();

  std::uint64_t rng_;
  time_point now_;
  std::map<std::string, definition> definitions_;
  storage::memory_event_store store_;
  transport::memory_transport transport_;
  std::map<std::string, std::unique_ptr<storage::memory_inbox>> inboxes_;
  std::unordered_map<saga_id, saga_state> states_;
  std::multimap<time_point, std::pair<saga_id, triggers::timer>> timers_;
  std::vector<effects::saga_finished> finished_;
  std::vector<std::string> ignored_;
  bool pumping_ = false;
};

}  // namespace saga::testing
