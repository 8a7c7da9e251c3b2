// saga/state.hpp — a saga's state, rebuilt only by folding its events (evolve). Pure: no I/O, no clock.
#pragma once

#include "saga/event.hpp"

#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace saga {

enum class saga_status {
  not_started,   // no event yet
  running,       // going forward
  compensating,  // undoing completed steps
  completed,     // every step succeeded (terminal)
  compensated,   // every completed compensatable step was undone (terminal)
  stuck,         // waiting for an operator (retry, skip, or cancel going forward); visible, never dropped
};
[[nodiscard]] const char* to_string(saga_status status) noexcept;
// True for completed and compensated.
[[nodiscard]] bool is_terminal(saga_status status) noexcept;

// Where one step is.
enum class step_phase {
  pending,                  // not requested yet
  running,                  // command sent, waiting for a reply
  retry_wait,               // last attempt failed or timed out; another is scheduled
  succeeded,                // the participant applied it
  failed,                   // the participant definitively rejected it (a stored reply): it was not applied
  uncertain,                // no definite answer (timeouts, retryable failures): it may have been applied, or may
                            // still be by a delayed duplicate, so it is compensated like a success
  compensating,             // compensation sent, waiting for its reply
  compensation_failed,      // the last compensation attempt failed or timed out (retry, or stuck)
  compensation_retry_wait,  // another compensation attempt is scheduled
  compensated,              // compensation applied
  compensation_skipped,     // an operator skipped the compensation (with a reason)
};
[[nodiscard]] const char* to_string(step_phase phase) noexcept;

// One participant command in progress: a step's forward action or its compensation.
struct action_state {
  std::uint32_t attempt = 0;      // attempts made so far (the current one included)
  std::uint32_t budget_from = 1;  // first attempt of the current retry budget (an operator retry resets it)
  std::string command_id;         // the same for every attempt
  std::string service;
  std::string command_type;
  std::string payload;
  time_point deadline{};   // reply due by (running)
  time_point retry_due{};  // next attempt due at (retry wait)
  bool rejected = false;   // the participant answered a definite (non-retryable) failure, which it stored

  friend bool operator==(const action_state&, const action_state&) = default;
};

struct step_state {
  std::string name;
  step_phase phase = step_phase::pending;
  action_state forward;
  action_state compensation;
  std::uint64_t settled_seq = 0;  // seq of the event that made it succeeded/uncertain (compensation order)
  bool skipped = false;           // an operator skipped it forward

  friend bool operator==(const step_state&, const step_state&) = default;
};

struct saga_state {
  saga_id id;
  std::string type;
  std::uint32_t definition_version = 0;
  std::string definition_fingerprint;
  std::string idempotency_key;
  saga_status status = saga_status::not_started;
  saga_status stuck_from = saga_status::not_started;  // what it was doing when it got stuck
  std::uint64_t seq = 0;                              // last applied event
  time_point started_at{};
  time_point updated_at{};
  std::string input;
  std::string data;          // current saga data (JSON)
  std::string reason;        // why it is compensating or compensated
  std::string stuck_reason;  // why it is stuck (cleared when an operator acts)
  std::string failed_step;
  std::string stuck_step;
  bool stuck_in_compensation = false;
  bool cancel_requested = false;
  std::vector<step_state> steps;  // in order of first request

  // The step with this name, or nullptr.
  [[nodiscard]] const step_state* find(std::string_view step) const noexcept;
  [[nodiscard]] step_state* find(std::string_view step) noexcept;
  // The step whose forward or compensation command has this id, or nullptr.
  [[nodiscard]] const step_state* find_by_command(std::string_view command_id, bool* compensation) const noexcept;

  friend bool operator==(const saga_state&, const saga_state&) = default;
};

// Thrown when an event cannot follow the state (a corrupt or foreign log); names state, event and why.
class illegal_transition : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// Applies one event in place. `id` is needed only for the first event. Throws illegal_transition.
void apply(saga_state& state, const event& e);
// Decider-style evolve: the state after `e`.
[[nodiscard]] saga_state evolve(saga_state state, const event& e);
// Folds a whole log (or a prefix of one) from the initial state.
[[nodiscard]] saga_state fold(const saga_id& id, std::span<const event> log);

}  // namespace saga
