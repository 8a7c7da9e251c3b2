// saga/testing/scenario.hpp — given(events).when(trigger).then(events): test a definition's decisions, no I/O.
#pragma once

#include "saga/decide.hpp"

#include <string>
#include <vector>

namespace saga::testing {

// A one-line description of an event body: its type and canonical payload.
[[nodiscard]] std::string describe(const event_body& body);
// "" when `actual` holds exactly the bodies `expected` (compared by canonical encoding), else a readable diff.
[[nodiscard]] std::string diff(const std::vector<event>& actual, const std::vector<event_body>& expected);

// A saga's history and a trigger, decided with a fixed time and entropy.
class scenario {
 public:
  explicit scenario(definition def, saga_id id = saga_id::from_words(0x5a6a, 1));

  // Sets the time decisions see (and the time of `given` events added afterwards).
  scenario& at(time_point now);
  // Sets the entropy for retry jitter.
  scenario& entropy(std::uint64_t value);
  // Appends events to the history (seq numbers follow on).
  scenario& given(std::vector<event_body> history);
  // Decides `t` against the history; the history is left as it was.
  [[nodiscard]] decision when(const trigger& t) const;
  // Decides `t` and then appends the events it produced to the history (to chain whens).
  decision apply(const trigger& t);
  // "" when `t` produces exactly `expected`, else a diff (also when the trigger was rejected or ignored).
  [[nodiscard]] std::string then(const trigger& t, const std::vector<event_body>& expected) const;
  // The state folded from the history.
  [[nodiscard]] const saga_state& state() const noexcept { return state_; }
  // The command id the event at `seq` would carry.
  [[nodiscard]] std::string command_id(std::uint64_t seq) const { return make_command_id(state_.id, seq); }
  // The time decisions see.
  [[nodiscard]] time_point now() const noexcept { return ctx_.now; }
  // The history so far.
  [[nodiscard]] const std::vector<event>& history() const noexcept { return history_; }

 private:
  definition def_;
  decide_context ctx_;
  saga_state state_;
  std::vector<event> history_;
};

}  // namespace saga::testing
