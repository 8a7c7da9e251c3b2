#include "saga/audit.hpp"

#include "saga/json.hpp"

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
          if (x.action == "cancel") return triggers::cancel{x.reason, x.operator_name};
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

// A success reply the orchestrator could not read (invalid JSON, a duplicate key, a number out of range) is
// recorded as an empty reply, {}, without merged data; its text is not in the log. While the saga runs, the next
// event of the same decision quotes the reader's error in its reason; while it compensates, nothing does. When
// log[i] may be such a reply, returns the recorded error ("" when none is quoted).
constexpr std::string_view not_json = "reply is not valid JSON: ";
std::optional<std::string> unreadable_reply_error(std::span<const event> log, std::size_t i) {
  const auto* ok = std::get_if<step_succeeded>(&log[i].body);
  if (!ok || ok->data || ok->reply != "{}") return std::nullopt;
  if (i + 1 >= log.size()) return std::string();
  const std::string prefix = "reply of step '" + ok->step + "' could not be merged: " + std::string(not_json);
  const std::string* reason = nullptr;
  if (const auto* c = std::get_if<compensation_started>(&log[i + 1].body)) reason = &c->reason;
  if (const auto* k = std::get_if<saga_stuck>(&log[i + 1].body)) reason = &k->reason;
  if (!reason || reason->rfind(prefix, 0) != 0) return std::string();
  return reason->substr(prefix.size());
}

// The decision on that reply: decided on a reply that cannot be read, with the reader's error replaced by the
// recorded one wherever the decision quotes it.
decision decide_unreadable(const definition& def, const saga_state& state, const triggers::reply& recorded,
                           const std::string& error, time_point at) {
  const std::string unreadable = "\x01";
  std::string ours;
  try {
    (void)canonical_json(unreadable);
  } catch (const json_error& e) {
    ours = std::string(not_json) + e.what();
  }
  triggers::reply r = recorded;
  r.payload = unreadable;
  decision d = decide(def, state, r, decide_context{at, 0});
  const std::string theirs = std::string(not_json) + error;
  for (auto& e : d.events)
    std::visit(
        [&](auto& x) {
          if constexpr (requires { x.reason; }) {
            if (ours.empty()) return;
            for (auto p = x.reason.find(ours); p != std::string::npos; p = x.reason.find(ours, p + theirs.size()))
              x.reason.replace(p, ours.size(), theirs);
          }
        },
        e.body);
  return d;
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
    decision d = decide(def, state, *t, decide_context{log[i].at, 0});
    const auto mismatch = [&](const decision& x) -> std::optional<replay_mismatch> {
      if (x.events.empty())
        return replay_mismatch{log[i].seq, "(nothing: " + (x.rejected.empty() ? x.ignored : x.rejected) + ")",
                               comparable(log[i].body)};
      for (std::size_t k = 0; k < x.events.size(); ++k) {
        if (i + k >= log.size())
          return replay_mismatch{log.back().seq + 1, comparable(x.events[k].body), "(end of log)"};
        const std::string expected = comparable(x.events[k].body), recorded = comparable(log[i + k].body);
        if (expected != recorded) return replay_mismatch{log[i + k].seq, expected, recorded};
      }
      return std::nullopt;
    };
    if (auto m = mismatch(d)) {
      // Read back, a reply recorded as unreadable is {}, which may read (and merge) fine: decide it as unreadable.
      const auto error = unreadable_reply_error(log, i);
      if (!error) return m;
      decision u = decide_unreadable(def, state, std::get<triggers::reply>(*t), *error, log[i].at);
      if (mismatch(u)) return m;
      d = std::move(u);
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
