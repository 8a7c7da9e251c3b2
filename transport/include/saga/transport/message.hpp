// saga/transport/message.hpp — commands and replies as they travel between orchestrator and participants.
#pragma once

#include "saga/decide.hpp"
#include "saga/effects.hpp"

#include <string>

namespace saga::transport {

// A command for a participant. `command_id` is stable across resends, so the participant can dedupe.
struct command_message {
  std::string command_id;
  saga_id saga;
  std::string saga_type;
  std::string step;
  bool compensation = false;
  std::uint32_t attempt = 0;
  std::string service;
  std::string command_type;
  std::string payload;      // JSON
  std::string compensates;  // for a compensation: the forward command id it undoes (the participant fences it)
  std::string reply_to;     // where the reply goes (a topic name for Kafka; the saga type for memory)
  std::string traceparent;  // W3C trace context, may be empty
  time_point time{};

  // The command an effect asks for, with `reply_to` filled in.
  [[nodiscard]] static command_message from(const effects::send_command& effect, std::string reply_to, time_point now);
  friend bool operator==(const command_message&, const command_message&) = default;
};

// A participant's answer, matched to its command by `command_id`.
struct reply_message {
  std::string command_id;
  saga_id saga;
  std::string saga_type;
  std::string step;
  std::uint32_t attempt = 0;
  triggers::outcome result = triggers::outcome::success;
  std::string payload;  // JSON
  std::string reason;   // failures
  std::string traceparent;
  time_point time{};

  // The reply to `command` (command id, saga, step and attempt copied from it) with this answer.
  [[nodiscard]] static reply_message answering(const command_message& command, triggers::outcome result,
                                               std::string payload, std::string reason, time_point now);
  // The reply trigger the orchestrator decides on.
  [[nodiscard]] triggers::reply to_trigger() const;
  friend bool operator==(const reply_message&, const reply_message&) = default;
};

}  // namespace saga::transport
