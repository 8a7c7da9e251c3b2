// saga/effects.hpp — effects as values: what the runtime must do once the events that ask for it are durable.
#pragma once

#include "saga/decide.hpp"

#include <span>
#include <variant>
#include <vector>

namespace saga {

namespace effects {
// Send a command to a participant (a resend carries the same command id).
struct send_command {
  saga_id saga;
  std::string saga_type;
  std::string step;
  bool compensation = false;
  std::uint32_t attempt = 0;
  std::string command_id;
  std::string service;
  std::string command_type;
  std::string payload;
  std::string compensates;  // for a compensation: the command id of the forward command it undoes
  friend bool operator==(const send_command&, const send_command&) = default;
};
// Fire `timer` as a trigger for `saga` at `due`.
struct arm_timer {
  saga_id saga;
  triggers::timer timer;
  time_point due{};
  friend bool operator==(const arm_timer&, const arm_timer&) = default;
};
// The saga reached completed, compensated or stuck: wake whoever awaits it.
struct saga_finished {
  saga_id saga;
  saga_status status = saga_status::running;
  std::string output;  // final data when completed
  std::string reason;  // why, when compensated or stuck
  friend bool operator==(const saga_finished&, const saga_finished&) = default;
};
}  // namespace effects

using effect = std::variant<effects::send_command, effects::arm_timer, effects::saga_finished>;

// The effects of events just appended; `after` is the state with them applied.
[[nodiscard]] std::vector<effect> effects_of(const saga_state& after, std::span<const event> appended);
// What recovery must do for a saga rebuilt from its log: resend commands in flight, re-arm every timer.
[[nodiscard]] std::vector<effect> recovery_effects(const saga_state& state);

}  // namespace saga
