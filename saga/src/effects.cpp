#include "saga/effects.hpp"

namespace saga {

namespace {

using namespace events;

// A compensation names the forward command it undoes, so the participant can fence that command.
std::string compensated_command(const saga_state& st, const std::string& step, bool compensation) {
  if (!compensation) return {};
  const step_state* s = st.find(step);
  return s ? s->forward.command_id : std::string();
}

template <class E>
effects::send_command send_of(const saga_state& st, const E& e, bool compensation) {
  return effects::send_command{
      st.id,        st.type,   e.step,         compensation, e.attempt,
      e.command_id, e.service, e.command_type, e.payload,    compensated_command(st, e.step, compensation)};
}

effects::send_command send_of(const saga_state& st, const step_state& s, bool compensation) {
  const action_state& a = compensation ? s.compensation : s.forward;
  return effects::send_command{
      st.id,        st.type,   s.name,         compensation, a.attempt,
      a.command_id, a.service, a.command_type, a.payload,    compensated_command(st, s.name, compensation)};
}

effects::arm_timer timer_of(const saga_state& st, const std::string& step, bool compensation, std::uint32_t attempt,
                            triggers::timer_kind kind, time_point due) {
  return effects::arm_timer{st.id, triggers::timer{step, compensation, attempt, kind}, due};
}

void add_finished(const saga_state& st, std::vector<effect>& out) {
  if (st.status == saga_status::completed)
    out.emplace_back(effects::saga_finished{st.id, st.status, st.data, ""});
  else if (st.status == saga_status::compensated)
    out.emplace_back(effects::saga_finished{st.id, st.status, "", st.reason});
  else if (st.status == saga_status::stuck)
    out.emplace_back(effects::saga_finished{st.id, st.status, "", st.stuck_reason});
}

}  // namespace

std::vector<effect> effects_of(const saga_state& after, std::span<const event> appended) {
  std::vector<effect> out;
  for (const auto& e : appended) {
    // Leaving `stuck`: everything pending was ignored meanwhile, so resend and re-arm all of it. An action that ends
    // the saga (skipping its last step or compensation) finishes it: recovery has nothing to do for an ended saga.
    if (std::holds_alternative<operator_action_recorded>(e.body)) {
      out = recovery_effects(after);
      if (is_terminal(after.status)) add_finished(after, out);
      return out;
    }
  }
  for (const auto& e : appended) {
    if (const auto* r = std::get_if<step_requested>(&e.body)) {
      out.emplace_back(send_of(after, *r, false));
      out.emplace_back(timer_of(after, r->step, false, r->attempt, triggers::timer_kind::deadline, r->deadline));
    } else if (const auto* c = std::get_if<compensation_requested>(&e.body)) {
      out.emplace_back(send_of(after, *c, true));
      out.emplace_back(timer_of(after, c->step, true, c->attempt, triggers::timer_kind::deadline, c->deadline));
    } else if (const auto* rs = std::get_if<retry_scheduled>(&e.body)) {
      out.emplace_back(
          timer_of(after, rs->step, rs->compensation, rs->next_attempt, triggers::timer_kind::retry, rs->due));
    }
  }
  if (!appended.empty()) {
    const auto& last = appended.back().body;
    if (std::holds_alternative<saga_completed>(last) || std::holds_alternative<saga_compensated>(last) ||
        std::holds_alternative<saga_stuck>(last))
      add_finished(after, out);
  }
  return out;
}

std::vector<effect> recovery_effects(const saga_state& st) {
  std::vector<effect> out;
  if (st.status == saga_status::not_started || is_terminal(st.status)) return out;
  if (st.status == saga_status::stuck) {
    add_finished(st, out);
    return out;
  }
  for (const auto& s : st.steps) {
    switch (s.phase) {
      case step_phase::running:
        out.emplace_back(send_of(st, s, false));
        out.emplace_back(
            timer_of(st, s.name, false, s.forward.attempt, triggers::timer_kind::deadline, s.forward.deadline));
        break;
      case step_phase::retry_wait:
        out.emplace_back(
            timer_of(st, s.name, false, s.forward.attempt + 1, triggers::timer_kind::retry, s.forward.retry_due));
        break;
      case step_phase::compensating:
        out.emplace_back(send_of(st, s, true));
        out.emplace_back(timer_of(st, s.name, true, s.compensation.attempt, triggers::timer_kind::deadline,
                                  s.compensation.deadline));
        break;
      case step_phase::compensation_retry_wait:
        out.emplace_back(timer_of(st, s.name, true, s.compensation.attempt + 1, triggers::timer_kind::retry,
                                  s.compensation.retry_due));
        break;
      default: break;
    }
  }
  return out;
}

}  // namespace saga
