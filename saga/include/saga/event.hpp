// saga/event.hpp — the events of a saga's log (past tense, versioned schema) and their JSON encoding.
#pragma once

#include "saga/uuid.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>

namespace saga {

// Milliseconds since the Unix epoch; every time in the core comes in as an argument of this type.
using time_point = std::chrono::sys_time<std::chrono::milliseconds>;

// Version of the event payload schema written by this build.
inline constexpr std::uint32_t event_schema_version = 1;

namespace events {
// A saga instance began. `input` is the saga data (JSON) it started with.
struct saga_started {
  std::string saga_type;
  std::uint32_t definition_version = 0;
  std::string definition_fingerprint;
  std::string input;
  std::string idempotency_key;
};
// A step's command was (re)sent. Every attempt of one step carries the same command id.
struct step_requested {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
  std::string service;
  std::string command_type;
  std::string payload;  // JSON
  time_point deadline{};
};
// A step's participant answered success. `data` is the saga data after merging the reply, when it changed.
struct step_succeeded {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
  std::string reply;  // JSON
  std::optional<std::string> data;
};
// A step's participant answered failure; `retryable` says whether it may succeed if tried again.
struct step_failed {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
  std::string reason;
  bool retryable = false;
};
// No reply came for a step's attempt before its deadline.
struct step_timed_out {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
};
// Another attempt of a step (or of its compensation) is due at `due`; `seed` drew its jitter.
struct retry_scheduled {
  std::string step;
  bool compensation = false;
  std::uint32_t next_attempt = 0;
  time_point due{};
  std::uint64_t seed = 0;
};
// The saga stopped going forward and began undoing its completed steps.
struct compensation_started {
  std::string reason;
  std::string failed_step;  // empty when cancelled
};
// A compensation command was (re)sent.
struct compensation_requested {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
  std::string service;
  std::string command_type;
  std::string payload;
  time_point deadline{};
};
// A compensation's participant answered success.
struct compensation_succeeded {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
  std::string reply;
};
// A compensation's participant answered failure.
struct compensation_failed {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
  std::string reason;
  bool retryable = false;
};
// No reply came for a compensation's attempt before its deadline.
struct compensation_timed_out {
  std::string step;
  std::uint32_t attempt = 0;
  std::string command_id;
};
// Someone asked to cancel the saga.
struct cancel_requested {
  std::string reason;
  std::string by;
};
// Every step succeeded; `output` is the final saga data.
struct saga_completed {
  std::string output;
};
// Every completed compensatable step was undone.
struct saga_compensated {
  std::string reason;
};
// The saga cannot go on without an operator: `step`'s action (or its compensation) failed past its policy.
struct saga_stuck {
  std::string step;
  bool compensation = false;
  std::string reason;
};
// An operator acted on a stuck saga: `action` is "retry" or "skip" (of `step`'s stuck action), or "cancel" (a saga
// stuck going forward, before its pivot, stops and compensates; cancel_requested and compensation_started follow).
struct operator_action_recorded {
  std::string action;
  std::string step;
  bool compensation = false;
  std::string reason;
  std::string operator_name;
};
}  // namespace events

using event_body =
    std::variant<events::saga_started, events::step_requested, events::step_succeeded, events::step_failed,
                 events::step_timed_out, events::retry_scheduled, events::compensation_started,
                 events::compensation_requested, events::compensation_succeeded, events::compensation_failed,
                 events::compensation_timed_out, events::cancel_requested, events::saga_completed,
                 events::saga_compensated, events::saga_stuck, events::operator_action_recorded>;

// One event of one saga's log: its 1-based position in that log, the time it was decided, and what happened.
struct event {
  std::uint64_t seq = 0;
  time_point at{};
  event_body body;
};

// Thrown when stored bytes do not decode into an event; the message names the type and the field.
class event_decode_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The event's type name as stored ("step_requested", …).
[[nodiscard]] std::string_view type_name(const event_body& body) noexcept;

// An event in its stored form: type name, schema version and canonical JSON payload.
struct encoded_event {
  std::string type;
  std::uint32_t schema_version = event_schema_version;
  std::string payload;
};

// Encodes an event body to its stored form (canonical JSON, so it hashes the same after a round trip).
[[nodiscard]] encoded_event encode(const event_body& body);
// Decodes a stored event body; throws event_decode_error naming the type or field that is wrong.
[[nodiscard]] event_body decode(std::string_view type, std::uint32_t schema_version, std::string_view payload);

// The command id of the command requested by the event at `seq` of saga `id`: stable across resends.
[[nodiscard]] std::string make_command_id(const saga_id& id, std::uint64_t seq);

}  // namespace saga
