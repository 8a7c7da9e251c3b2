#include "saga/decide.hpp"

#include "saga/json.hpp"

#include <exception>

namespace saga {

const char* triggers::to_string(outcome o) noexcept {
  switch (o) {
    case outcome::success: return "success";
    case outcome::failure: return "failure";
    case outcome::retryable_failure: return "retryable_failure";
  }
  return "unknown";
}

namespace {

using namespace events;
using triggers::outcome;

std::uint64_t mix(std::uint64_t z) noexcept {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

bool settled_forward(step_phase p) { return p != step_phase::running && p != step_phase::retry_wait; }

// Works on a copy of the state: every emitted event is applied at once, so later rules see its effect.
class decider {
 public:
  decider(const definition& def, const saga_state& state, const decide_context& ctx)
      : def_(def), st_(state), ctx_(ctx) {}

  // The state with every emitted event applied (after run).
  saga_state take_state() { return std::move(st_); }

  decision run(const trigger& t) {
    if (st_.status != saga_status::not_started) {
      if (st_.type != def_.type() || st_.definition_version != def_.version())
        return reject("saga " + st_.id.to_string() + " runs definition " + st_.type + " v" +
                      std::to_string(st_.definition_version) + ", not " + def_.type() + " v" +
                      std::to_string(def_.version()));
      if (st_.definition_fingerprint != def_.fingerprint())
        return reject("definition " + def_.type() + " v" + std::to_string(def_.version()) +
                      " changed without a version bump (fingerprint " + def_.fingerprint() + ", saga started with " +
                      st_.definition_fingerprint + ")");
    }
    std::visit([this](const auto& x) { on(x); }, t);
    return std::move(out_);
  }

 private:
  decision reject(std::string why) {
    out_.rejected = std::move(why);
    return std::move(out_);
  }
  void ignore(std::string why) { out_.ignored = std::move(why); }
  void refuse(std::string why) { out_.rejected = std::move(why); }

  void emit(event_body body) {
    event e{st_.seq + 1, ctx_.now, std::move(body)};
    apply(st_, e);
    out_.events.push_back(std::move(e));
  }

  std::uint64_t next_seed() { return mix(ctx_.entropy ^ mix(st_.seq + 1)); }

  // "<name> cannot be stored: <why>" for the first text the event log cannot hold (invalid UTF-8, NUL); empty if none.
  static std::string unstorable(std::initializer_list<std::pair<const char*, std::string_view>> texts) {
    for (const auto& [name, text] : texts)
      if (auto why = unstorable_text(text, false); !why.empty()) return std::string(name) + " cannot be stored: " + why;
    return {};
  }

  // An input or reply as recorded: canonical JSON, {} for none. JSON null is none too: the event codec stores an
  // absent value as null, so a recorded null read back as none, and replay and fold disagreed with this decision.
  static std::string canonical_value(const std::string& text) {
    std::string c = canonical_json(text.empty() ? "{}" : text);
    return c == "null" ? "{}" : c;
  }

  // --- triggers -----------------------------------------------------------------------------------------
  void on(const triggers::start& t) {
    if (st_.status != saga_status::not_started) return refuse("saga " + st_.id.to_string() + " has already started");
    if (st_.id.is_nil()) return refuse("a saga needs a non-nil id");
    std::string input;
    try {
      input = canonical_value(t.input);
    } catch (const json_error& e) {
      return refuse(std::string("saga input is not valid JSON: ") + e.what());
    }
    // Text the event log cannot hold (invalid UTF-8, NUL) is refused here, naming it, rather than by the store.
    if (auto why = unstorable_text(input, true); !why.empty()) return refuse("saga input cannot be stored: " + why);
    if (auto why = unstorable_text(t.idempotency_key, false); !why.empty())
      return refuse("idempotency key cannot be stored: " + why);
    emit(saga_started{def_.type(), def_.version(), def_.fingerprint(), std::move(input), t.idempotency_key});
    advance();
  }

  void on(const triggers::reply& r) {
    if (st_.status == saga_status::not_started)
      return ignore("reply " + r.command_id + " for a saga that never started");
    if (is_terminal(st_.status)) return ignore("reply " + r.command_id + ": saga is already " + to_string(st_.status));
    if (st_.status == saga_status::stuck)
      return ignore("reply " + r.command_id + ": saga is stuck; the operator's action will resend what is pending");
    bool comp = false;
    const step_state* found = st_.find_by_command(r.command_id, &comp);
    if (!found) return ignore("reply for unknown command id " + r.command_id);
    step_state& s = *st_.find(found->name);
    const action_state& a = comp ? s.compensation : s.forward;
    if (r.attempt == 0 || r.attempt > a.attempt)
      return ignore("reply " + r.command_id + " for attempt " + std::to_string(r.attempt) + ", which was never sent");
    const bool in_flight = comp
                               ? (s.phase == step_phase::compensating || s.phase == step_phase::compensation_retry_wait)
                               : !settled_forward(s.phase);
    if (!in_flight) return ignore("reply " + r.command_id + ": already settled (" + to_string(s.phase) + ")");
    const bool current = r.attempt == a.attempt && s.phase == (comp ? step_phase::compensating : step_phase::running);
    if (r.result == outcome::retryable_failure && !current)
      return ignore("stale reply " + r.command_id + " from attempt " + std::to_string(r.attempt) + " (now at attempt " +
                    std::to_string(a.attempt) + ")");
    std::string payload;
    if (r.result == outcome::success) {
      try {
        payload = canonical_value(r.payload);
      } catch (const json_error& e) {
        payload = "{}";
        if (comp) {
          emit(compensation_succeeded{s.name, r.attempt, r.command_id, payload});
        } else {
          emit(step_succeeded{s.name, r.attempt, r.command_id, payload, std::nullopt});
          unmergeable(s.name, std::string("reply is not valid JSON: ") + e.what());
        }
        return advance();
      }
    }
    if (comp)
      on_compensation_reply(s.name, r, payload);
    else
      on_forward_reply(s.name, r, payload);
    advance();
  }

  void on_forward_reply(const std::string& name, const triggers::reply& r, const std::string& payload) {
    const step_definition* sd = def_.find(name);
    switch (r.result) {
      case outcome::success: {
        std::optional<std::string> data;
        std::string merge_error;
        if (sd && sd->on_reply) {
          try {
            data = sd->on_reply(st_.data, payload);
          } catch (const std::exception& e) {
            merge_error = e.what();
          }
        }
        emit(step_succeeded{name, r.attempt, r.command_id, payload, std::move(data)});
        if (!merge_error.empty()) unmergeable(name, merge_error);
        return;
      }
      case outcome::failure:
        emit(step_failed{name, r.attempt, r.command_id, r.reason, false});
        return forward_unsuccessful(name, true, r.reason);
      case outcome::retryable_failure:
        emit(step_failed{name, r.attempt, r.command_id, r.reason, true});
        return forward_unsuccessful(name, false, r.reason);
    }
  }

  void on_compensation_reply(const std::string& name, const triggers::reply& r, const std::string& payload) {
    switch (r.result) {
      case outcome::success: return emit(compensation_succeeded{name, r.attempt, r.command_id, payload});
      case outcome::failure:
        emit(compensation_failed{name, r.attempt, r.command_id, r.reason, false});
        return emit(saga_stuck{name, true, "compensation of step '" + name + "' failed: " + r.reason});
      case outcome::retryable_failure:
        emit(compensation_failed{name, r.attempt, r.command_id, r.reason, true});
        return compensation_unsuccessful(name, r.reason);
    }
  }

  void on(const triggers::timer& t) {
    if (st_.status == saga_status::not_started || is_terminal(st_.status) || st_.status == saga_status::stuck)
      return ignore("timer for step '" + t.step + "': saga is " + to_string(st_.status));
    step_state* s = st_.find(t.step);
    if (!s) return ignore("timer for step '" + t.step + "', which was never requested");
    const action_state& a = t.compensation ? s->compensation : s->forward;
    const std::string name = s->name;
    if (t.kind == triggers::timer_kind::deadline) {
      const step_phase waiting = t.compensation ? step_phase::compensating : step_phase::running;
      if (s->phase != waiting || t.attempt != a.attempt)
        return ignore("stale deadline of step '" + name + "' attempt " + std::to_string(t.attempt));
      // Attempt numbers start again at 1 for an operator's fresh command: a deadline armed for an earlier command
      // with the same number is not this one's, which is due later.
      if (ctx_.now < a.deadline)
        return ignore("deadline of step '" + name + "' attempt " + std::to_string(t.attempt) +
                      " is not due yet: the timer was armed for an earlier command");
      const std::string why =
          "no reply to attempt " + std::to_string(a.attempt) + " within " +
          std::to_string(
              (t.compensation ? def_.find(name)->compensation->retry : def_.find(name)->invoke.retry).timeout.count()) +
          " ms";
      if (t.compensation) {
        emit(compensation_timed_out{name, a.attempt, a.command_id});
        compensation_unsuccessful(name, why);
      } else {
        emit(step_timed_out{name, a.attempt, a.command_id});
        forward_unsuccessful(name, false, why);
      }
    } else {
      const step_phase waiting = t.compensation ? step_phase::compensation_retry_wait : step_phase::retry_wait;
      if (s->phase != waiting || t.attempt != a.attempt + 1)
        return ignore("stale retry timer of step '" + name + "' attempt " + std::to_string(t.attempt));
      if (ctx_.now < a.retry_due)
        return ignore("retry of step '" + name + "' attempt " + std::to_string(t.attempt) +
                      " is not due yet: the timer was armed for an earlier wait");
      if (t.compensation)
        request_compensation(name, t.attempt);
      else
        request_step(*def_.find(name), t.attempt);
    }
    advance();
  }

  void on(const triggers::cancel& c) {
    // A saga stuck going forward before its pivot (a payload builder that throws every time) could only be skipped
    // forward or retried into the same wall; cancelling it undoes what it did instead. Steps declared without a
    // compensation are left as they are, as when a running saga is cancelled.
    if (auto why = unstorable({{"the cancel's reason", c.reason}, {"the cancel's operator", c.by}}); !why.empty())
      return refuse(why);
    const bool stuck_forward = st_.status == saga_status::stuck && !st_.stuck_in_compensation;
    if (st_.status == saga_status::stuck && !stuck_forward)
      return refuse("saga " + st_.id.to_string() + " is stuck in the compensation of step '" + st_.stuck_step +
                    "': retry or skip that compensation; only a running saga, or one stuck going forward, can be "
                    "cancelled");
    if (st_.status != saga_status::running && !stuck_forward)
      return refuse("saga " + st_.id.to_string() + " is " + to_string(st_.status) +
                    "; only a running saga, or one stuck going forward, can be cancelled");
    if (const auto p = def_.pivot()) {
      const auto& pivot = def_.steps()[*p];
      if (const auto* ps = st_.find(pivot.name); ps && ps->phase != step_phase::pending)
        return refuse("cannot cancel saga " + st_.id.to_string() + ": pivot step '" + pivot.name +
                      "' was already requested, so the saga can only go forward");
    }
    if (stuck_forward) emit(operator_action_recorded{"cancel", st_.stuck_step, false, c.reason, c.by});
    emit(cancel_requested{c.reason, c.by});
    emit(compensation_started{"cancelled by " + (c.by.empty() ? std::string("unknown") : c.by) + ": " + c.reason, ""});
    advance();
  }

  void on(const triggers::operator_action& o) {
    if (st_.status != saga_status::stuck)
      return refuse("saga " + st_.id.to_string() + " is " + to_string(st_.status) +
                    ", not stuck; retry and skip apply to stuck sagas");
    const std::string step = st_.stuck_step;
    const bool comp = st_.stuck_in_compensation;
    if (!o.step.empty() && o.step != step)
      return refuse("saga " + st_.id.to_string() + " is stuck at step '" + step + "', not '" + o.step + "'");
    if (o.reason.empty() && o.verb == triggers::operator_verb::skip) return refuse("skip needs a reason");
    if (auto why = unstorable({{"the action's reason", o.reason}, {"the action's operator", o.by}}); !why.empty())
      return refuse(why);
    const step_definition* sd = def_.find(step);
    if (!sd) return refuse("stuck step '" + step + "' is not in definition " + def_.type());
    const bool retry = o.verb == triggers::operator_verb::retry;
    if (const step_state* s = st_.find(step); retry && !comp && s && s->phase == step_phase::succeeded)
      return refuse("step '" + step + "' of saga " + st_.id.to_string() +
                    " succeeded, but its reply could not be merged into the saga's data; a retry would resend "
                    "nothing and go on without that data: skip it to go on without the reply's data");
    emit(operator_action_recorded{retry ? "retry" : "skip", step, comp, o.reason, o.by});
    if (retry) {
      if (const step_state* s = st_.find(step)) {
        const action_state& a = comp ? s->compensation : s->forward;
        // The same command id again, unless the participant definitively rejected it: its inbox stored that
        // reply, which a resend would only repeat, so a fresh command is sent.
        const std::uint32_t attempt = a.rejected || a.attempt == 0 ? 1 : a.attempt + 1;
        if (comp)
          request_compensation(step, attempt);
        else if (s->phase == step_phase::failed || s->phase == step_phase::uncertain)
          request_step(*sd, attempt);
      }
    }
    advance();
  }

  // --- rules --------------------------------------------------------------------------------------------
  void request_step(const step_definition& sd, std::uint32_t attempt) {
    const step_state* s = st_.find(sd.name);
    std::string command_id, payload;
    if (attempt > 1 && s) {
      command_id = s->forward.command_id;
      payload = s->forward.payload;
    } else {
      command_id = make_command_id(st_.id, st_.seq + 1);
      try {
        payload = sd.invoke.build(st_.data);
      } catch (const std::exception& e) {
        return emit(saga_stuck{sd.name, false, "payload builder of step '" + sd.name + "' threw: " + e.what()});
      }
      if (auto why = unstorable_text(payload, true); !why.empty())
        return emit(saga_stuck{
            sd.name, false, "payload builder of step '" + sd.name + "' built a payload the log cannot store: " + why});
    }
    emit(step_requested{sd.name, attempt, std::move(command_id), sd.invoke.service, sd.invoke.command_type,
                        std::move(payload), ctx_.now + sd.invoke.retry.timeout});
  }

  void request_compensation(const std::string& name, std::uint32_t attempt) {
    const step_definition& sd = *def_.find(name);
    const step_state* s = st_.find(name);
    std::string command_id, payload;
    if (attempt > 1) {
      command_id = s->compensation.command_id;
      payload = s->compensation.payload;
    } else {
      command_id = make_command_id(st_.id, st_.seq + 1);
      try {
        payload = sd.compensation->build(st_.data);
      } catch (const std::exception& e) {
        return emit(saga_stuck{name, true, "payload builder of the compensation of '" + name + "' threw: " + e.what()});
      }
      if (auto why = unstorable_text(payload, true); !why.empty())
        return emit(saga_stuck{
            name, true,
            "payload builder of the compensation of '" + name + "' built a payload the log cannot store: " + why});
    }
    emit(compensation_requested{name, attempt, std::move(command_id), sd.compensation->service,
                                sd.compensation->command_type, std::move(payload),
                                ctx_.now + sd.compensation->retry.timeout});
  }

  bool budget_left(const action_state& a, const retry_policy& p) const {
    return a.attempt - a.budget_from + 1 < p.max_attempts;
  }

  void schedule_retry(const std::string& name, bool comp, const action_state& a, const retry_policy& p) {
    const std::uint64_t seed = next_seed();
    const std::uint32_t next = a.attempt + 1;
    emit(retry_scheduled{name, comp, next, ctx_.now + p.backoff(next, seed), seed});
  }

  // A forward attempt did not succeed: retry within the policy, else fail the step by its kind.
  void forward_unsuccessful(const std::string& name, bool permanent, const std::string& reason) {
    if (st_.status != saga_status::running) return;  // compensating: no more forward attempts
    const step_definition& sd = *def_.find(name);
    const step_state& s = *st_.find(name);
    if (!permanent && budget_left(s.forward, sd.invoke.retry))
      return schedule_retry(name, false, s.forward, sd.invoke.retry);
    const std::string why = "step '" + name + "' failed after " + std::to_string(s.forward.attempt) +
                            (s.forward.attempt == 1 ? " attempt: " : " attempts: ") + reason;
    switch (sd.kind) {
      case step_kind::compensatable: return emit(compensation_started{why, name});
      case step_kind::pivot:
        if (s.phase == step_phase::uncertain)
          return emit(saga_stuck{name, false, why + " (the pivot may have been applied; an operator must decide)"});
        return emit(compensation_started{why, name});
      case step_kind::retriable: return emit(saga_stuck{name, false, why});
    }
  }

  void compensation_unsuccessful(const std::string& name, const std::string& reason) {
    const step_definition& sd = *def_.find(name);
    const step_state& s = *st_.find(name);
    if (budget_left(s.compensation, sd.compensation->retry))
      return schedule_retry(name, true, s.compensation, sd.compensation->retry);
    emit(saga_stuck{name, true,
                    "compensation of step '" + name + "' failed after " + std::to_string(s.compensation.attempt) +
                        " attempts: " + reason});
  }

  // The participant applied the step but its reply cannot be merged into the data: the saga cannot go on.
  void unmergeable(const std::string& name, const std::string& why) {
    const std::string reason = "reply of step '" + name + "' could not be merged: " + why;
    const step_definition& sd = *def_.find(name);
    if (sd.kind == step_kind::compensatable && st_.status == saga_status::running)
      emit(compensation_started{reason, name});
    else if (st_.status == saga_status::running)
      emit(saga_stuck{name, false, reason});
  }

  // Moves the saga on as far as the state allows: next steps, completion, next compensation, compensated.
  void advance() {
    if (st_.status == saga_status::running) {
      bool all_succeeded = true;
      for (const auto& sd : def_.steps()) {
        const step_state* s = st_.find(sd.name);
        if (s && s->phase == step_phase::succeeded) continue;
        all_succeeded = false;
        if (s && s->phase != step_phase::pending) continue;
        bool ready = true;
        for (auto d : sd.depends_on) {
          const step_state* ds = st_.find(def_.steps()[d].name);
          ready = ready && ds && ds->phase == step_phase::succeeded;
        }
        if (ready) {
          request_step(sd, 1);
          if (st_.status != saga_status::running) return;
        }
      }
      if (all_succeeded) emit(saga_completed{st_.data});
    } else if (st_.status == saga_status::compensating) {
      const step_state* next = nullptr;
      for (const auto& s : st_.steps) {
        switch (s.phase) {
          case step_phase::running:  // wait: a step in flight may still succeed and need undoing
          case step_phase::compensating:
          case step_phase::compensation_retry_wait:
          case step_phase::compensation_failed: return;
          case step_phase::succeeded:
          case step_phase::uncertain:
            if (const auto* sd = def_.find(s.name);
                sd && sd->compensation && (!next || s.settled_seq > next->settled_seq))
              next = &s;
            break;
          default: break;
        }
      }
      if (next && next->skipped && next->forward.command_id.empty())
        // Skipped by an operator before any command went out: its participant has no record of it, so a
        // compensation could not be fenced and would undo what that participant never did.
        emit(saga_stuck{next->name, true,
                        "step '" + next->name +
                            "' was skipped by an operator before any command was sent, so its participant has "
                            "nothing on record to undo: undo it by hand and skip its compensation, or retry to send "
                            "the compensation anyway"});
      else if (next)
        request_compensation(next->name, 1);
      else
        emit(saga_compensated{st_.reason});
    }
  }

  const definition& def_;
  saga_state st_;
  const decide_context& ctx_;
  decision out_;
};

}  // namespace

decision decide(const definition& def, const saga_state& state, const trigger& t, const decide_context& ctx) {
  decider d(def, state, ctx);
  decision out = d.run(t);
  out.after = d.take_state();
  return out;
}

}  // namespace saga
