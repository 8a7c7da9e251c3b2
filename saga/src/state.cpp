#include "saga/state.hpp"

#include <type_traits>

namespace saga {

const char* to_string(saga_status status) noexcept {
  switch (status) {
    case saga_status::not_started: return "not_started";
    case saga_status::running: return "running";
    case saga_status::compensating: return "compensating";
    case saga_status::completed: return "completed";
    case saga_status::compensated: return "compensated";
    case saga_status::stuck: return "stuck";
  }
  return "unknown";
}

bool is_terminal(saga_status status) noexcept {
  return status == saga_status::completed || status == saga_status::compensated;
}

const char* to_string(step_phase phase) noexcept {
  switch (phase) {
    case step_phase::pending: return "pending";
    case step_phase::running: return "running";
    case step_phase::retry_wait: return "retry_wait";
    case step_phase::succeeded: return "succeeded";
    case step_phase::failed: return "failed";
    case step_phase::uncertain: return "uncertain";
    case step_phase::compensating: return "compensating";
    case step_phase::compensation_failed: return "compensation_failed";
    case step_phase::compensation_retry_wait: return "compensation_retry_wait";
    case step_phase::compensated: return "compensated";
    case step_phase::compensation_skipped: return "compensation_skipped";
  }
  return "unknown";
}

const step_state* saga_state::find(std::string_view step) const noexcept {
  for (const auto& s : steps)
    if (s.name == step) return &s;
  return nullptr;
}

step_state* saga_state::find(std::string_view step) noexcept {
  for (auto& s : steps)
    if (s.name == step) return &s;
  return nullptr;
}

const step_state* saga_state::find_by_command(std::string_view command_id, bool* compensation) const noexcept {
  for (const auto& s : steps) {
    if (s.forward.command_id == command_id) {
      if (compensation) *compensation = false;
      return &s;
    }
    if (!s.compensation.command_id.empty() && s.compensation.command_id == command_id) {
      if (compensation) *compensation = true;
      return &s;
    }
  }
  return nullptr;
}

namespace {

using namespace events;

struct applier {
  saga_state& st;
  const event& ev;

  [[noreturn]] void illegal(const std::string& why) const {
    throw illegal_transition("saga " + st.id.to_string() + " (" + to_string(st.status) + ") cannot apply " +
                             std::string(type_name(ev.body)) + " at seq " + std::to_string(ev.seq) + ": " + why);
  }

  step_state& known(const std::string& name) const {
    auto* s = st.find(name);
    if (!s) illegal("unknown step '" + name + "'");
    return *s;
  }

  void check_command(const action_state& a, const std::string& command_id) const {
    if (a.command_id != command_id)
      illegal("command id " + command_id + " is not the current one (" + a.command_id + ")");
  }

  // A log that evolve folds is one decide could have written: an event that settles an action needs that action
  // in flight (a forged or buggy log, even with a valid chain, could otherwise undo a compensation or wedge the saga).
  void check_phase(const step_state& s, std::initializer_list<step_phase> allowed) const {
    for (auto p : allowed)
      if (s.phase == p) return;
    illegal("step '" + s.name + "' is " + to_string(s.phase));
  }

  void operator()(const saga_started& e) const {
    st.type = e.saga_type;
    st.definition_version = e.definition_version;
    st.definition_fingerprint = e.definition_fingerprint;
    st.idempotency_key = e.idempotency_key;
    st.input = e.input;
    st.data = e.input;
    st.status = saga_status::running;
    st.started_at = ev.at;
  }

  template <class E>
  void request(step_state& s, action_state& a, const E& e) const {
    if (e.attempt == 0) illegal("attempt numbers start at 1");
    if (e.attempt == 1) {
      a = action_state{};
    } else if (e.attempt != a.attempt + 1) {
      illegal("attempt " + std::to_string(e.attempt) + " does not follow attempt " + std::to_string(a.attempt));
    } else {
      check_command(a, e.command_id);
    }
    a.attempt = e.attempt;
    a.command_id = e.command_id;
    a.service = e.service;
    a.command_type = e.command_type;
    a.payload = e.payload;
    a.deadline = e.deadline;
    (void)s;
  }

  void operator()(const step_requested& e) const {
    if (st.status != saga_status::running) illegal("only a running saga requests steps");
    auto* s = st.find(e.step);
    if (!s) {
      if (e.attempt != 1) illegal("first request of step '" + e.step + "' is not attempt 1");
      st.steps.push_back(step_state{});
      s = &st.steps.back();
      s->name = e.step;
    }
    request(*s, s->forward, e);
    s->phase = step_phase::running;
  }
  void operator()(const step_succeeded& e) const {
    auto& s = known(e.step);
    check_command(s.forward, e.command_id);
    check_phase(s, {step_phase::running, step_phase::retry_wait});
    s.phase = step_phase::succeeded;
    s.settled_seq = ev.seq;
    if (e.data) st.data = *e.data;
  }
  void operator()(const step_failed& e) const {
    auto& s = known(e.step);
    check_command(s.forward, e.command_id);
    check_phase(s, {step_phase::running, step_phase::retry_wait});
    if (!e.retryable) s.forward.rejected = true;
    settle_unsuccessful(s);
  }
  void operator()(const step_timed_out& e) const {
    auto& s = known(e.step);
    check_command(s.forward, e.command_id);
    check_phase(s, {step_phase::running});
    settle_unsuccessful(s);
  }
  void settle_unsuccessful(step_state& s) const {
    s.phase = s.forward.rejected ? step_phase::failed : step_phase::uncertain;
    if (s.phase == step_phase::uncertain) s.settled_seq = ev.seq;
  }
  void operator()(const retry_scheduled& e) const {
    auto& s = known(e.step);
    auto& a = e.compensation ? s.compensation : s.forward;
    if (e.next_attempt != a.attempt + 1)
      illegal("retry of attempt " + std::to_string(e.next_attempt) + " is out of order");
    a.retry_due = e.due;
    s.phase = e.compensation ? step_phase::compensation_retry_wait : step_phase::retry_wait;
  }
  void operator()(const compensation_started& e) const {
    if (st.status != saga_status::running) illegal("only a running saga starts compensating");
    st.status = saga_status::compensating;
    st.reason = e.reason;
    st.failed_step = e.failed_step;
    for (auto& s : st.steps)  // scheduled retries are abandoned
      if (s.phase == step_phase::retry_wait) settle_unsuccessful(s);
  }
  void operator()(const compensation_requested& e) const {
    auto& s = known(e.step);
    request(s, s.compensation, e);
    s.phase = step_phase::compensating;
  }
  void operator()(const compensation_succeeded& e) const {
    auto& s = known(e.step);
    check_command(s.compensation, e.command_id);
    check_phase(s, {step_phase::compensating, step_phase::compensation_retry_wait});
    s.phase = step_phase::compensated;
  }
  void operator()(const compensation_failed& e) const {
    auto& s = known(e.step);
    check_command(s.compensation, e.command_id);
    check_phase(s, {step_phase::compensating, step_phase::compensation_retry_wait});
    if (!e.retryable) s.compensation.rejected = true;
    s.phase = step_phase::compensation_failed;
  }
  void operator()(const compensation_timed_out& e) const {
    auto& s = known(e.step);
    check_command(s.compensation, e.command_id);
    check_phase(s, {step_phase::compensating});
    s.phase = step_phase::compensation_failed;
  }
  void operator()(const cancel_requested&) const { st.cancel_requested = true; }
  void operator()(const saga_completed& e) const {
    if (st.status != saga_status::running) illegal("only a running saga completes");
    for (const auto& s : st.steps)
      if (s.phase != step_phase::succeeded) illegal("step '" + s.name + "' is " + to_string(s.phase));
    st.status = saga_status::completed;
    st.data = e.output;
  }
  void operator()(const saga_compensated& e) const {
    if (st.status != saga_status::compensating) illegal("only a compensating saga ends compensated");
    for (const auto& s : st.steps)
      if (s.phase == step_phase::running || s.phase == step_phase::retry_wait || s.phase == step_phase::compensating ||
          s.phase == step_phase::compensation_retry_wait || s.phase == step_phase::compensation_failed)
        illegal("step '" + s.name + "' is " + to_string(s.phase));
    st.status = saga_status::compensated;
    st.reason = e.reason;
  }
  void operator()(const saga_stuck& e) const {
    if (st.status != saga_status::running && st.status != saga_status::compensating)
      illegal("only a running or compensating saga gets stuck");  // twice stuck, stuck_from was stuck: wedged
    st.stuck_from = st.status;
    st.status = saga_status::stuck;
    st.stuck_step = e.step;
    st.stuck_in_compensation = e.compensation;
    st.stuck_reason = e.reason;
  }
  void operator()(const operator_action_recorded& e) const {
    if (st.status != saga_status::stuck) illegal("operator actions apply to stuck sagas");
    if (e.step != st.stuck_step) illegal("saga is stuck at step '" + st.stuck_step + "', not '" + e.step + "'");
    if (e.compensation != st.stuck_in_compensation)
      illegal(std::string("saga is stuck in its ") + (st.stuck_in_compensation ? "compensation" : "forward") +
              " action, not its " + (e.compensation ? "compensation" : "forward") + " one");
    if (e.action == "cancel") {  // the saga goes on as it was before it got stuck: decide compensates it next
      if (e.compensation || st.stuck_from != saga_status::running)
        illegal("only a saga stuck going forward is cancelled by an operator");
      return unstick();
    }
    if (!st.find(e.step)) {  // stuck before its first request (its payload builder threw)
      st.steps.push_back(step_state{});
      st.steps.back().name = e.step;
    }
    auto& s = *st.find(e.step);
    auto& a = e.compensation ? s.compensation : s.forward;
    if (e.action == "retry") {
      a.budget_from = a.attempt + 1;
    } else if (e.action == "skip") {
      if (e.compensation) {
        s.phase = step_phase::compensation_skipped;
      } else {
        s.phase = step_phase::succeeded;
        s.skipped = true;
        s.settled_seq = ev.seq;
      }
    } else {
      illegal("unknown operator action '" + e.action + "'");
    }
    unstick();
  }
  void unstick() const {
    st.status = st.stuck_from;
    st.stuck_step.clear();
    st.stuck_reason.clear();
    st.stuck_in_compensation = false;
  }
};

}  // namespace

void apply(saga_state& state, const event& e) {
  if (e.seq != state.seq + 1)
    throw illegal_transition("saga " + state.id.to_string() + ": event seq " + std::to_string(e.seq) +
                             " does not follow seq " + std::to_string(state.seq));
  const bool is_start = std::holds_alternative<saga_started>(e.body);
  if (state.status == saga_status::not_started && !is_start)
    throw illegal_transition("saga " + state.id.to_string() + ": log does not begin with saga_started");
  if (state.status != saga_status::not_started && is_start)
    throw illegal_transition("saga " + state.id.to_string() + ": saga_started at seq " + std::to_string(e.seq));
  if (is_terminal(state.status))
    throw illegal_transition("saga " + state.id.to_string() + " is " + to_string(state.status) + "; " +
                             std::string(type_name(e.body)) + " at seq " + std::to_string(e.seq) + " follows its end");
  // While stuck, decide ignores replies and timers and refuses cancel: only an operator's action moves it on.
  if (state.status == saga_status::stuck && !std::holds_alternative<operator_action_recorded>(e.body))
    throw illegal_transition("saga " + state.id.to_string() + " is stuck; " + std::string(type_name(e.body)) +
                             " at seq " + std::to_string(e.seq) + " can only follow an operator's action");
  std::visit(applier{state, e}, e.body);
  state.seq = e.seq;
  state.updated_at = e.at;
}

saga_state evolve(saga_state state, const event& e) {
  apply(state, e);
  return state;
}

saga_state fold(const saga_id& id, std::span<const event> log) {
  saga_state state;
  state.id = id;
  for (const auto& e : log) apply(state, e);
  return state;
}

}  // namespace saga
