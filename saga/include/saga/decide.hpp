// saga/decide.hpp — triggers and the pure decision function: (definition, state, trigger, now) -> events.
#pragma once

#include "saga/definition.hpp"
#include "saga/state.hpp"

#include <string>
#include <variant>
#include <vector>

namespace saga {

namespace triggers {
// Begin the saga (its id is the state's id) with this input (JSON saga data).
struct start {
  std::string input;
  std::string idempotency_key;
};
enum class outcome { success, failure, retryable_failure };
[[nodiscard]] const char* to_string(outcome o) noexcept;
// A participant's answer to a command.
struct reply {
  std::string command_id;
  std::uint32_t attempt = 0;
  outcome result = outcome::success;
  std::string payload;  // JSON (success) — may be empty for failures
  std::string reason;   // failures
};
enum class timer_kind { deadline, retry };
// An armed timer came due: a reply deadline or a retry wait of a step (or of its compensation).
struct timer {
  std::string step;
  bool compensation = false;
  std::uint32_t attempt = 0;  // deadline: the attempt waited for; retry: the attempt to make
  timer_kind kind = timer_kind::deadline;
  friend bool operator==(const timer&, const timer&) = default;
};
// Someone asks to stop the saga and undo what it did: a running saga, or one stuck going forward (recorded as an
// operator's action, which unsticks it); refused once the pivot was requested, while compensating and at the end.
struct cancel {
  std::string reason;
  std::string by;
};
enum class operator_verb { retry, skip };
// An operator acts on a stuck saga: retry the stuck action, or skip it (recorded with the reason).
struct operator_action {
  operator_verb verb = operator_verb::retry;
  std::string step;  // optional: must name the stuck step when given
  std::string reason;
  std::string by;
};
}  // namespace triggers

using trigger =
    std::variant<triggers::start, triggers::reply, triggers::timer, triggers::cancel, triggers::operator_action>;

// Everything a decision may depend on besides state and definition: the time, and entropy for retry jitter.
struct decide_context {
  time_point now{};
  std::uint64_t entropy = 0;
};

// What a trigger leads to.
struct decision {
  std::vector<event> events;  // to append right after state.seq (seq and time assigned), in this order
  std::string ignored;        // set when the trigger changed nothing and that is normal (stale, duplicate, …)
  std::string rejected;       // set when the trigger was refused; the caller should be told why
  // The state with `events` applied (the given state when there are none): what folding the log will give once they
  // are appended, so that a caller need not copy the state and apply them again.
  saga_state after;
  [[nodiscard]] bool changed() const noexcept { return !events.empty(); }
};

// Decides what happens when `t` meets `state` under `def`. Pure: the same inputs always give the same events.
// Never throws for a trigger that does not fit (it is ignored or rejected with a reason).
[[nodiscard]] decision decide(const definition& def, const saga_state& state, const trigger& t,
                              const decide_context& ctx);

}  // namespace saga
