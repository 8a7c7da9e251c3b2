// Property test: random schedules of replies (in any order, duplicated, stale, lost), timeouts, cancels, operator
// actions and crashes with replay, against a participant model that dedupes by command id as the SDK does.
// Invariants are checked on every event, after every handled trigger (replaying the stored log reproduces the
// state) and at the end of every schedule.
#include "test_definitions.hpp"

#include <saga/audit.hpp>
#include <saga/effects.hpp>
#include <saga/storage/inbox.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <random>
#include <set>

using namespace saga;
using namespace saga::events;
using triggers::outcome;

namespace {

struct sent {
  effects::send_command command;
};

class world {
 public:
  world(definition def, std::uint64_t seed) : def_(std::move(def)), rng_(seed) {
    state_.id = saga_id::from_words(seed, seed * 31 + 7);
    incremental_.id = state_.id;
    now_ = time_point(std::chrono::milliseconds(1'700'000'000'000));
  }

  void run() {
    handle(triggers::start{R"({"name":"p","trail":[]})", ""});
    const int chaos_steps = 20 + static_cast<int>(rng_() % 60);
    for (int i = 0; i < chaos_steps && !is_terminal(state_.status); ++i) chaos_step();
    drain();
    final_checks();
  }

  std::string failure;  // first broken invariant, with the seed's context
  // What the schedule went through, so the test can show it covered every path.
  [[nodiscard]] saga_status final_status() const noexcept { return state_.status; }
  [[nodiscard]] int operator_actions() const noexcept { return operator_actions_; }
  [[nodiscard]] int crashes() const noexcept { return crashes_; }
  [[nodiscard]] int cancelled_stuck() const noexcept { return cancelled_stuck_; }
  [[nodiscard]] long replay_checks() const noexcept { return replay_checks_; }

  // The log, one event a line, for failure reports.
  [[nodiscard]] std::string dump() const {
    std::string out;
    for (std::size_t i = 0; i < log_.size(); ++i)
      out += "  " + std::to_string(log_[i].seq) + " " + stored_[i].type + " " + stored_[i].payload + "\n";
    for (const auto& [id, n] : applied_) out += "  applied " + id + " x" + std::to_string(n) + "\n";
    return out;
  }

 private:
  // --- the system under test ----------------------------------------------------------------------------
  void handle(const trigger& t) {
    const decision d = decide(def_, state_, t, decide_context{now_, rng_()});
    if (is_terminal(state_.status) && !d.events.empty()) fail("a finished saga emitted events");
    for (const auto& e : d.events) {
      check_event(e);
      apply(state_, e);
      log_.push_back(e);
      stored_.push_back(encode(e.body));
      decoded_.push_back(
          event{e.seq, e.at, decode(stored_.back().type, stored_.back().schema_version, stored_.back().payload)});
    }
    if (!(d.after == state_)) fail("the state decide returned differs from applying its events to the state");
    for (const auto& fx : effects_of(state_, d.events)) perform(fx);
    check_replay();
  }

  // After every handled trigger, replaying the stored log reproduces the live state. The events decoded from their
  // stored bytes are folded both incrementally (each event once, as a follower would) and from scratch (as
  // recovery does); each fold must equal the state.
  void check_replay() {
    ++replay_checks_;
    for (; incrementally_replayed_ < decoded_.size(); ++incrementally_replayed_)
      apply(incremental_, decoded_[incrementally_replayed_]);
    if (!(incremental_ == state_))
      fail("after trigger #" + std::to_string(replay_checks_) +
           ", folding the stored log incrementally does not reproduce the state");
    if (!(fold(state_.id, decoded_) == state_))
      fail("after trigger #" + std::to_string(replay_checks_) +
           ", folding the stored log from scratch does not reproduce the state");
  }

  void perform(const effect& fx) {
    if (const auto* s = std::get_if<effects::send_command>(&fx)) {
      if (chance(8)) return;  // lost on the way
      commands_.push_back(*s);
      if (chance(15)) commands_.push_back(*s);  // delivered twice
    } else if (const auto* t = std::get_if<effects::arm_timer>(&fx)) {
      timers_.push_back(*t);
    }
  }

  // --- participants: one inbox per command id, like the SDK ---------------------------------------------
  void deliver_command(std::size_t i, bool calm) {
    const effects::send_command c = commands_[i];
    commands_.erase(commands_.begin() + static_cast<std::ptrdiff_t>(i));
    // The participant: the SDK's protocol (dedup + compensation fences) over an inbox whose handler draws
    // a random outcome the first time a command runs.
    bool ran = false;
    const storage::stored_reply reply = storage::handle_command(
        inbox_, c.command_id, c.compensates,
        [&](storage::transaction&) {
          const auto roll = rng_() % 100;
          if (calm || roll < 70) return storage::stored_reply{outcome::success, R"({"note":")" + c.step + R"("})", ""};
          if (roll < (c.compensation ? 73u : 82u)) return storage::stored_reply{outcome::failure, "{}", "no"};
          return storage::stored_reply{outcome::retryable_failure, "{}", "busy"};
        },
        &ran);
    if (ran && reply.result == outcome::success) ++applied_[c.command_id];
    const triggers::reply r{c.command_id, c.attempt, reply.result, reply.payload, reply.reason};
    if (!calm && chance(10)) return;  // reply lost
    replies_.push_back(r);
    if (!calm && chance(15)) replies_.push_back(r);  // duplicated
    command_meta_[c.command_id] = c;
  }

  // --- one random step ----------------------------------------------------------------------------------
  void chaos_step() {
    const auto roll = rng_() % 100;
    if (roll < 35 && !commands_.empty()) return deliver_command(pick(commands_.size()), false);
    if (roll < 65 && !replies_.empty()) return deliver_reply(pick(replies_.size()));
    if (roll < 82 && !timers_.empty()) return fire_timer(pick(timers_.size()));
    if (roll < 85) return handle(triggers::cancel{"random cancel", "prop"});
    if (roll < 90 && state_.status == saga_status::stuck) return operator_act();
    if (roll < 95) return crash();
    if (!seen_replies_.empty()) handle(seen_replies_[pick(seen_replies_.size())]);  // stale or duplicate, late
  }

  void deliver_reply(std::size_t i) {
    const triggers::reply r = replies_[i];
    replies_.erase(replies_.begin() + static_cast<std::ptrdiff_t>(i));
    seen_replies_.push_back(r);
    handle(r);
  }

  void fire_timer(std::size_t i) {
    const effects::arm_timer t = timers_[i];
    timers_.erase(timers_.begin() + static_cast<std::ptrdiff_t>(i));
    now_ = std::max(now_, t.due);
    handle(t.timer);
  }

  void operator_act() {
    ++operator_actions_;
    // Stuck going forward: the operator may cancel instead (refused past the pivot, then retry or skip follow).
    if (state_.status == saga_status::stuck && !state_.stuck_in_compensation && chance(35)) {
      handle(triggers::cancel{"operator cancelled", "prop"});
      cancelled_stuck_ += state_.status != saga_status::stuck;
      return;
    }
    if (operator_actions_ > 3 || chance(30))
      handle(triggers::operator_action{triggers::operator_verb::skip, {}, "operator skipped", "prop"});
    else
      handle(triggers::operator_action{triggers::operator_verb::retry, {}, "operator retried", "prop"});
  }

  // A crash loses memory (timers); the log and the messages already in the broker survive.
  void crash() {
    ++crashes_;
    saga_state replayed = replay(log_.size());
    if (!(replayed == state_)) fail("replaying the stored log does not reproduce the state");
    // Any prefix replays too, and equals the state as it was then (checked against a fresh fold).
    const std::size_t k = 1 + pick(log_.size());
    saga_state prefix = replay(k);
    saga_state direct = fold(state_.id, std::span<const event>(log_.data(), k));
    if (!(prefix == direct)) fail("replay of a prefix differs from folding it");
    state_ = std::move(replayed);
    timers_.clear();
    for (const auto& fx : recovery_effects(state_)) perform(fx);
  }

  saga_state replay(std::size_t n) {
    saga_state s;
    s.id = state_.id;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& enc = stored_[i];
      apply(s, event{log_[i].seq, log_[i].at, decode(enc.type, enc.schema_version, enc.payload)});
    }
    return s;
  }

  // Everything that is still pending is delivered, participants now succeed, operators retry then skip.
  void drain() {
    for (int guard = 0; guard < 5000 && !is_terminal(state_.status); ++guard) {
      if (!replies_.empty()) {
        deliver_reply(0);
      } else if (!commands_.empty()) {
        deliver_command(0, true);
      } else if (state_.status == saga_status::stuck) {
        operator_act();
      } else if (!timers_.empty()) {
        auto it = std::min_element(timers_.begin(), timers_.end(), [](auto& a, auto& b) { return a.due < b.due; });
        fire_timer(static_cast<std::size_t>(it - timers_.begin()));
      } else {
        // Nothing pending: everything was lost. A restart recovers it (resend + timers).
        crash();
        if (commands_.empty() && timers_.empty() && !is_terminal(state_.status) && state_.status != saga_status::stuck)
          return fail("saga is " + std::string(to_string(state_.status)) +
                      " with nothing pending: it can never finish");
      }
    }
    if (!is_terminal(state_.status))
      fail("saga did not finish after the drain: " + std::string(to_string(state_.status)));
  }

  // --- invariants ---------------------------------------------------------------------------------------
  void check_event(const event& e) {
    if (const auto* r = std::get_if<step_requested>(&e.body)) {
      if (state_.status != saga_status::running) fail("step requested while " + std::string(to_string(state_.status)));
      const auto* sd = def_.find(r->step);
      if (!sd) return fail("request for unknown step " + r->step);
      for (auto dep : sd->depends_on) {
        const auto* ds = state_.find(def_.steps()[dep].name);
        if (!ds || ds->phase != step_phase::succeeded)
          fail("step " + r->step + " requested before its dependency " + def_.steps()[dep].name + " succeeded");
      }
      if (r->attempt > 1 && state_.find(r->step)->forward.command_id != r->command_id)
        fail("a resend of step " + r->step + " changed its command id");
    }
    if (const auto* c = std::get_if<compensation_requested>(&e.body); c && c->attempt == 1) {
      const auto* me = state_.find(c->step);
      for (const auto& s : state_.steps) {
        const auto* sd = def_.find(s.name);
        if (&s != me && sd->compensation && (s.phase == step_phase::succeeded || s.phase == step_phase::uncertain) &&
            s.settled_seq > me->settled_seq)
          fail("compensation of " + c->step + " before " + s.name + ", which completed later");
      }
      if (pivot_succeeded_) fail("compensation after the pivot succeeded");
    }
    if (const auto* s = std::get_if<step_succeeded>(&e.body);
        s && def_.pivot() && def_.steps()[*def_.pivot()].name == s->step)
      pivot_succeeded_ = true;
    if (std::holds_alternative<compensation_started>(e.body) && pivot_succeeded_)
      fail("compensation started after the pivot");
  }

  void final_checks() {
    if (!(replay(log_.size()) == state_)) fail("final replay differs");
    // The audit replays every recorded trigger against the definition and finds the same events.
    if (const auto m = audit::check_definition(def_, state_.id, log_))
      fail("audit: seq " + std::to_string(m->seq) + " was " + m->recorded + ", the definition decides " + m->expected);
    for (const auto& [id, n] : applied_)
      if (n != 1) fail("command " + id + " applied " + std::to_string(n) + " times");
    // Late triggers after the end change nothing.
    for (const auto& r : seen_replies_) handle(r);
    handle(triggers::cancel{"late", "prop"});
    if (state_.status == saga_status::completed) {
      for (const auto& sd : def_.steps())
        if (!state_.find(sd.name) || state_.find(sd.name)->phase != step_phase::succeeded)
          fail("completed saga with step " + sd.name + " not succeeded");
    }
    if (state_.status == saga_status::compensated) {
      // Every compensatable step whose effect was applied was compensated (or skipped by an operator), once.
      std::map<std::string, int> compensated;
      std::set<std::string> skipped;
      for (const auto& e : log_) {
        if (const auto* c = std::get_if<compensation_succeeded>(&e.body)) ++compensated[c->step];
        if (const auto* o = std::get_if<operator_action_recorded>(&e.body); o && o->action == "skip" && o->compensation)
          skipped.insert(o->step);
      }
      for (const auto& [command_id, meta] : command_meta_) {
        if (meta.compensation || !applied_.count(command_id)) continue;
        const auto* sd = def_.find(meta.step);
        if (!sd->compensation) continue;
        if (compensated[meta.step] != 1 && !skipped.count(meta.step))
          fail("step " + meta.step + " was applied but compensated " + std::to_string(compensated[meta.step]) +
               " times");
      }
      for (const auto& [step, n] : compensated)
        if (n > 1) fail("step " + step + " compensated " + std::to_string(n) + " times");
    }
  }

  void fail(const std::string& why) {
    if (failure.empty()) failure = why;
  }
  bool chance(unsigned percent) { return rng_() % 100 < percent; }
  std::size_t pick(std::size_t n) { return static_cast<std::size_t>(rng_() % n); }

  definition def_;
  std::mt19937_64 rng_;
  time_point now_;
  saga_state state_;
  std::vector<event> log_;
  std::vector<encoded_event> stored_;
  std::vector<event> decoded_;  // stored_ decoded back, one event each, when appended
  saga_state incremental_;      // decoded_ folded so far, one event at a time
  std::size_t incrementally_replayed_ = 0;
  std::vector<effects::send_command> commands_;
  std::vector<triggers::reply> replies_, seen_replies_;
  std::vector<effects::arm_timer> timers_;
  storage::memory_inbox inbox_;
  std::map<std::string, int> applied_;
  std::map<std::string, effects::send_command> command_meta_;
  bool pivot_succeeded_ = false;
  int operator_actions_ = 0;
  int crashes_ = 0;
  int cancelled_stuck_ = 0;
  long replay_checks_ = 0;
};

TEST(property, ten_thousand_random_schedules_keep_every_invariant) {
  const std::vector<definition> definitions = {saga_test::linear(1),  saga_test::linear(3),  saga_test::diamond(1),
                                               saga_test::diamond(3), saga_test::blocked(1), saga_test::blocked(3)};
  constexpr std::uint64_t schedules = 10'000;
  std::map<saga_status, int> outcomes;
  int stuck_then_resolved = 0, crashed = 0, cancelled_stuck = 0;
  long replay_checks = 0;
  for (std::uint64_t seed = 1; seed <= schedules; ++seed) {
    world w(definitions[seed % definitions.size()], seed);
    w.run();
    ++outcomes[w.final_status()];
    stuck_then_resolved += w.operator_actions() > 0;
    crashed += w.crashes() > 0;
    cancelled_stuck += w.cancelled_stuck() > 0;
    replay_checks += w.replay_checks();
    ASSERT_EQ(w.failure, "") << "schedule seed " << seed << " on definition "
                             << definitions[seed % definitions.size()].type() << "\n"
                             << w.dump();
  }
  // The schedules must really cover both endings, operator actions and crash recovery.
  EXPECT_GT(outcomes[saga_status::completed], static_cast<int>(schedules / 20));
  EXPECT_GT(outcomes[saga_status::compensated], static_cast<int>(schedules / 20));
  EXPECT_GT(stuck_then_resolved, static_cast<int>(schedules / 100));
  EXPECT_GT(crashed, static_cast<int>(schedules / 5));
  EXPECT_GT(cancelled_stuck, static_cast<int>(schedules / 200));  // random cancels end most schedules before
  // The log was replayed after every handled trigger: at least a start and a few replies per schedule.
  EXPECT_GT(replay_checks, static_cast<long>(schedules) * 5);
  std::cout << "schedules: " << schedules << ", completed " << outcomes[saga_status::completed] << ", compensated "
            << outcomes[saga_status::compensated] << ", stuck then resolved by an operator " << stuck_then_resolved
            << ", cancelled while stuck " << cancelled_stuck << ", with crash+replay " << crashed
            << ", replays checked after a trigger " << replay_checks << "\n";
}

}  // namespace
