// evolve (illegal transitions are typed errors) and effects planning / recovery.
#include "test_definitions.hpp"

#include <saga/effects.hpp>
#include <saga/testing/scenario.hpp>

#include <gtest/gtest.h>

using namespace saga;
using namespace saga::events;
using saga::testing::scenario;

namespace {

constexpr const char* input = R"({"name":"n","trail":[]})";
const saga_id id = saga_id::from_words(9, 9);

event at(std::uint64_t seq, event_body body) { return event{seq, time_point{}, std::move(body)}; }

std::string illegal(const std::vector<event>& log) {
  try {
    (void)fold(id, log);
  } catch (const illegal_transition& e) {
    return e.what();
  }
  return "(legal)";
}

TEST(evolve, illegal_logs_are_typed_errors_naming_state_and_event) {
  EXPECT_EQ(illegal({at(1, step_timed_out{"s", 1, "c"})}),
            "saga " + id.to_string() + ": log does not begin with saga_started");
  EXPECT_EQ(illegal({at(1, saga_started{"t", 1, "f", "{}", ""}), at(3, saga_completed{"{}"})}),
            "saga " + id.to_string() + ": event seq 3 does not follow seq 1");
  EXPECT_EQ(illegal({at(1, saga_started{"t", 1, "f", "{}", ""}), at(2, step_timed_out{"s", 1, "c"})}),
            "saga " + id.to_string() + " (running) cannot apply step_timed_out at seq 2: unknown step 's'");
  EXPECT_EQ(
      illegal({at(1, saga_started{"t", 1, "f", "{}", ""}), at(2, saga_completed{"{}"}), at(3, saga_compensated{""})}),
      "saga " + id.to_string() + " is completed; saga_compensated at seq 3 follows its end");
  EXPECT_EQ(
      illegal({at(1, saga_started{"t", 1, "f", "{}", ""}), at(2, step_requested{"s", 2, "c", "v", "x", "{}", {}})}),
      "saga " + id.to_string() +
          " (running) cannot apply step_requested at seq 2: first request of step 's' is not attempt 1");
  EXPECT_EQ(illegal({at(1, saga_started{"t", 1, "f", "{}", ""}), at(2, step_requested{"s", 1, "c", "v", "x", "{}", {}}),
                     at(3, step_succeeded{"s", 1, "other", "{}", std::nullopt})}),
            "saga " + id.to_string() +
                " (running) cannot apply step_succeeded at seq 3: command id other is not the current one (c)");
}

// evolve folds only what decide could have written: an event that settles an action needs that action in flight, an
// end needs the state it ends. A chain-valid log from a buggy writer (or forged with its hashes recomputed) was
// folded into a state that compensated a step twice, completed while compensating, or was wedged for good.
TEST(evolve, refuses_sequences_decide_never_writes) {
  const auto started = at(1, saga_started{"t", 1, "f", "{}", ""});
  const auto requested = at(2, step_requested{"a", 1, "c1", "v", "do_a", "{}", {}});
  const auto succeeded = at(3, step_succeeded{"a", 1, "c1", "{}", std::nullopt});
  const auto compensating = at(4, compensation_started{"b failed", "b"});
  const auto undo = at(5, compensation_requested{"a", 1, "c5", "v", "undo_a", "{}", {}});
  const auto undone = at(6, compensation_succeeded{"a", 1, "c5", "{}"});
  const std::string prefix = "saga " + id.to_string();
  // a's success again after its compensation: it was succeeded once more, to be compensated twice.
  EXPECT_EQ(illegal({started, requested, succeeded, compensating, undo, undone,
                     at(7, step_succeeded{"a", 1, "c1", "{}", std::nullopt})}),
            prefix + " (compensating) cannot apply step_succeeded at seq 7: step 'a' is compensated");
  EXPECT_EQ(illegal({started, requested, succeeded, compensating, undo, undone, at(7, saga_completed{"{}"})}),
            prefix + " (compensating) cannot apply saga_completed at seq 7: only a running saga completes");
  EXPECT_EQ(illegal({started, requested, at(3, saga_completed{"{}"})}),
            prefix + " (running) cannot apply saga_completed at seq 3: step 'a' is running");
  EXPECT_EQ(illegal({started, requested, succeeded, at(4, saga_compensated{""})}),
            prefix + " (running) cannot apply saga_compensated at seq 4: only a compensating saga ends compensated");
  EXPECT_EQ(illegal({started, requested, succeeded, compensating, undo, at(6, saga_compensated{""})}),
            prefix + " (compensating) cannot apply saga_compensated at seq 6: step 'a' is compensating");
  EXPECT_EQ(illegal({started, requested, succeeded, compensating, undo, undone,
                     at(7, compensation_succeeded{"a", 1, "c5", "{}"})}),
            prefix + " (compensating) cannot apply compensation_succeeded at seq 7: step 'a' is compensated");
  EXPECT_EQ(
      illegal({started, requested, succeeded, compensating, at(5, step_requested{"b", 1, "c", "v", "x", "{}", {}})}),
      prefix + " (compensating) cannot apply step_requested at seq 5: only a running saga requests steps");
  // Stuck twice: stuck_from became stuck, and no operator action could ever move it on.
  EXPECT_EQ(illegal({started, requested, at(3, saga_stuck{"a", false, "x"}), at(4, saga_stuck{"a", false, "y"})}),
            prefix + " is stuck; saga_stuck at seq 4 can only follow an operator's action");
  EXPECT_EQ(illegal({started, requested, at(3, saga_stuck{"a", false, "x"}),
                     at(4, operator_action_recorded{"skip", "a", true, "r", "ops"})}),
            prefix +
                " (stuck) cannot apply operator_action_recorded at seq 4: saga is stuck in its forward action, "
                "not its compensation one");
  EXPECT_EQ(illegal({started, requested, at(3, saga_stuck{"a", false, "x"}),
                     at(4, operator_action_recorded{"skip", "a", false, "r", "ops"})}),
            "(legal)");
}

TEST(evolve, incremental_fold_equals_all_at_once) {
  scenario s = scenario(saga_test::diamond());
  s.apply(triggers::start{input, ""});
  s.apply(triggers::reply{s.command_id(2), 1, triggers::outcome::success, "{}", ""});
  s.apply(triggers::reply{s.command_id(4), 1, triggers::outcome::failure, "", "no"});
  saga_state incremental;
  incremental.id = s.state().id;
  for (const auto& e : s.history()) incremental = evolve(incremental, e);
  EXPECT_EQ(incremental, fold(s.state().id, s.history()));
  EXPECT_EQ(incremental, s.state());
}

TEST(effects, requests_send_commands_and_arm_deadlines_and_finishing_wakes_the_awaiter) {
  scenario s(saga_test::linear());
  const decision d = s.apply(triggers::start{input, ""});
  const auto fx = effects_of(s.state(), d.events);
  ASSERT_EQ(fx.size(), 2u);
  const auto& send = std::get<effects::send_command>(fx[0]);
  EXPECT_EQ(send.command_id, s.command_id(2));
  EXPECT_EQ(send.service, "svc_a");
  EXPECT_EQ(send.saga_type, "linear");
  const auto& timer = std::get<effects::arm_timer>(fx[1]);
  EXPECT_EQ(timer.timer, (triggers::timer{"a", false, 1, triggers::timer_kind::deadline}));
  EXPECT_EQ(timer.due, s.now() + duration{1000});

  const decision fail = s.apply(triggers::reply{s.command_id(2), 1, triggers::outcome::failure, "", "x"});
  const auto done = effects_of(s.state(), fail.events);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(std::get<effects::saga_finished>(done[0]).status, saga_status::compensated);
}

TEST(effects, recovery_resends_in_flight_commands_with_the_same_ids_and_rearms_timers) {
  scenario s(saga_test::diamond(3));
  s.apply(triggers::start{input, ""});
  s.apply(triggers::reply{s.command_id(2), 1, triggers::outcome::success, "{}", ""});              // b@4, c@5 in flight
  s.apply(triggers::reply{s.command_id(5), 1, triggers::outcome::retryable_failure, "", "busy"});  // c waits for retry
  const auto fx = recovery_effects(fold(s.state().id, s.history()));
  ASSERT_EQ(fx.size(), 3u);
  EXPECT_EQ(std::get<effects::send_command>(fx[0]).command_id, s.command_id(4));
  EXPECT_EQ(std::get<effects::arm_timer>(fx[1]).timer.kind, triggers::timer_kind::deadline);
  const auto& retry = std::get<effects::arm_timer>(fx[2]);
  EXPECT_EQ(retry.timer, (triggers::timer{"c", false, 2, triggers::timer_kind::retry}));
  EXPECT_EQ(retry.due, s.state().find("c")->forward.retry_due);
}

TEST(effects, a_finished_saga_needs_no_recovery) {
  scenario s(saga_test::linear());
  s.apply(triggers::start{input, ""});
  s.apply(triggers::reply{s.command_id(2), 1, triggers::outcome::failure, "", "x"});
  EXPECT_TRUE(recovery_effects(s.state()).empty());
}

}  // namespace
