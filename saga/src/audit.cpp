#include "saga/audit.hpp"

namespace saga::audit {

saga_state state_at_seq(const saga_id& id, std::span<const event> log, std::uint64_t seq) {
  saga_state s;
  s.id = id;
  for (const auto& e : log) {
    if (e.seq > seq) break;
    apply(s, e);
  }
  return s;
}

saga_state state_at_time(const saga_id& id, std::span<const event> log, time_point t) {
  saga_state s;
  s.id = id;
  for (const auto& e : log) {
    if (e.at > t) break;
    apply(s, e);
  }
  return s;
}

namespace {

using namespace events;

// The trigger that made the decision whose first event is `e`; nullopt when no trigger starts with such an event.
std::optional<trigger> trigger_of(const event& e) {
  return std::visit(
      [&](const auto& x) -> std::optional<trigger> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, saga_started>) {
          return triggers::start{x.input, x.idempotency_key};
        } else if constexpr (std::is_same_v<T, step_succeeded> || std::is_same_v<T, compensation_succeeded>) {
          return triggers::reply{x.command_id, x.attempt, triggers::outcome::success, x.reply, ""};
        } else if constexpr (std::is_same_v<T, step_failed> || std::is_same_v<T, compensation_failed>) {
          return triggers::reply{x.command_id, x.attempt,
                                 x.retryable ? triggers::outcome::retryable_failure : triggers::outcome::failure, "",
                                 x.reason};
        } else if constexpr (std::is_same_v<T, step_timed_out>) {
          return triggers::timer{x.step, false, x.attempt, triggers::timer_kind::deadline};
        } else if constexpr (std::is_same_v<T, compensation_timed_out>) {
          return triggers::timer{x.step, true, x.attempt, triggers::timer_kind::deadline};
        } else if constexpr (std::is_same_v<T, step_requested> || std::is_same_v<T, compensation_requested>) {
          // A later attempt that opens a decision was fired by its retry timer (an operator's retry is
          // preceded by operator_action_recorded in the same decision).
          if (x.attempt > 1)
            return triggers::timer{x.step, std::is_same_v<T, compensation_requested>, x.attempt,
                                   triggers::timer_kind::retry};
          return std::nullopt;
        } else if constexpr (std::is_same_v<T, cancel_requested>) {
          return triggers::cancel{x.reason, x.by};
        } else if constexpr (std::is_same_v<T, operator_action_recorded>) {
          return triggers::operator_action{
              x.action == "skip" ? triggers::operator_verb::skip : triggers::operator_verb::retry, x.step, x.reason,
              x.operator_name};
        } else {
          return std::nullopt;
        }
      },
      e.body);
}

// An event's comparable text: retry jitter (seed and due time) comes from entropy and is left out.
std::string comparable(const event_body& body) {
  if (const auto* st = std::get_if<saga_started>(&body)) {  // the fingerprint changes with any change at all
    saga_started x = *st;
    x.definition_fingerprint.clear();
    x.definition_version = 0;
    return std::string(type_name(body)) + " " + encode(x).payload;
  }
  if (const auto* r = std::get_if<retry_scheduled>(&body)) {
    retry_scheduled x = *r;
    x.seed = 0;
    x.due = time_point{};
    return std::string(type_name(body)) + " " + encode(x).payload;
  }
  return std::string(type_name(body)) + " " + encode(body).payload;
}

}  // namespace

std::optional<replay_mismatch> check_definition(const definition& def, const saga_id& id, std::span<const event> log) {
  saga_state state;
  state.id = id;
  std::size_t i = 0;
  while (i < log.size()) {
    const auto t = trigger_of(log[i]);
    if (!t) return replay_mismatch{log[i].seq, "(an event caused by a trigger)", comparable(log[i].body)};
    // Retries are timed by the recorded due time; the decision is replayed at the recorded time.
    const decision d = decide(def, state, *t, decide_context{log[i].at, 0});
    if (d.events.empty())
      return replay_mismatch{log[i].seq, "(nothing: " + (d.rejected.empty() ? d.ignored : d.rejected) + ")",
                             comparable(log[i].body)};
    for (std::size_t k = 0; k < d.events.size(); ++k) {
      if (i + k >= log.size()) return replay_mismatch{log.back().seq + 1, comparable(d.events[k].body), "(end of log)"};
      const std::string expected = comparable(d.events[k].body), recorded = comparable(log[i + k].body);
      if (expected != recorded) return replay_mismatch{log[i + k].seq, expected, recorded};
    }
    for (std::size_t k = 0; k < d.events.size(); ++k) apply(state, log[i + k]);
    // Decide what-if: as though the log had run under `def` from the start.
    state.definition_version = def.version();
    state.definition_fingerprint = def.fingerprint();
    i += d.events.size();
  }
  return std::nullopt;
}

}  // namespace saga::audit
