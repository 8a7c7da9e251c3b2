// decide: given(events).when(trigger).then(events), on small definitions. No I/O.
#include "test_definitions.hpp"

#include <saga/audit.hpp>
#include <saga/effects.hpp>
#include <saga/event.hpp>
#include <saga/testing/scenario.hpp>

#include <gtest/gtest.h>

using namespace saga;
using namespace saga::events;
using saga::testing::scenario;
using triggers::outcome;

namespace {

constexpr const char* input = R"({"name":"n","trail":[]})";
const time_point t0 = time_point(std::chrono::milliseconds(1'700'000'000'000));
duration ms(std::int64_t v) { return duration{v}; }

std::string payload(const std::string& step) { return R"({"name":"n","step":")" + step + R"("})"; }

step_requested request(const scenario& s, const std::string& step, std::uint32_t attempt, std::uint64_t cmd_seq,
                       const std::string& service, time_point deadline) {
  return step_requested{step, attempt, s.command_id(cmd_seq), service, "do_" + step, payload(step), deadline};
}
compensation_requested undo(const scenario& s, const std::string& step, std::uint32_t attempt, std::uint64_t cmd_seq,
                            const std::string& service, time_point deadline) {
  return compensation_requested{
      step, attempt, s.command_id(cmd_seq), service, "undo_" + step, payload("undo_" + step), deadline};
}
triggers::reply ok(const std::string& command_id, std::uint32_t attempt = 1, const std::string& note = "") {
  return triggers::reply{command_id, attempt, outcome::success, R"({"note":")" + note + R"("})", ""};
}
triggers::reply failed(const std::string& command_id, const std::string& why, std::uint32_t attempt = 1) {
  return triggers::reply{command_id, attempt, outcome::failure, "", why};
}
triggers::reply transient(const std::string& command_id, const std::string& why, std::uint32_t attempt = 1) {
  return triggers::reply{command_id, attempt, outcome::retryable_failure, "", why};
}

// Runs the linear saga until steps a and b succeeded; c (pivot) is then requested at seq 6.
scenario linear_after_b() {
  scenario s(saga_test::linear());
  s.at(t0);
  s.apply(triggers::start{input, "key-1"});
  s.apply(ok(s.command_id(2), 1, "A"));
  s.apply(ok(s.command_id(4), 1, "B"));
  return s;
}

TEST(decide, start_records_the_start_and_requests_the_first_step) {
  scenario s(saga_test::linear());
  s.at(t0);
  const auto def = saga_test::linear();
  EXPECT_EQ(s.then(triggers::start{input, "key-1"}, {saga_started{"linear", 1, def.fingerprint(), input, "key-1"},
                                                     request(s, "a", 1, 2, "svc_a", t0 + ms(1000))}),
            "");
}

TEST(decide, start_is_refused_twice_and_for_invalid_input) {
  scenario s(saga_test::linear());
  s.apply(triggers::start{input, ""});
  EXPECT_NE(s.when(triggers::start{input, ""}).rejected.find("has already started"), std::string::npos);
  scenario fresh(saga_test::linear());
  EXPECT_NE(fresh.when(triggers::start{"{not json", ""}).rejected.find("saga input is not valid JSON"),
            std::string::npos);
}

TEST(decide, replies_move_the_saga_forward_merging_data_and_it_completes) {
  scenario s = linear_after_b();
  EXPECT_EQ(s.state().data, R"({"name":"n","trail":["A","B"]})");
  ASSERT_EQ(s.history().size(), 6u);
  EXPECT_EQ(saga::testing::describe(s.history()[5].body),
            saga::testing::describe(request(s, "c", 1, 6, "svc_c", t0 + ms(1000))));
  s.apply(ok(s.command_id(6)));
  EXPECT_EQ(s.then(ok(s.command_id(8)), {step_succeeded{"d", 1, s.command_id(8), R"({"note":""})", std::nullopt},
                                         saga_completed{R"({"name":"n","trail":["A","B"]})"}}),
            "");
}

TEST(decide, a_failure_compensates_completed_steps_in_reverse_order) {
  scenario s = linear_after_b();
  EXPECT_EQ(s.then(failed(s.command_id(6), "address invalid"),
                   {step_failed{"c", 1, s.command_id(6), "address invalid", false},
                    compensation_started{"step 'c' failed after 1 attempt: address invalid", "c"},
                    undo(s, "b", 1, 9, "svc_b", t0 + ms(1000))}),
            "");
  s.apply(failed(s.command_id(6), "address invalid"));
  EXPECT_EQ(s.then(ok(s.command_id(9)), {compensation_succeeded{"b", 1, s.command_id(9), R"({"note":""})"},
                                         undo(s, "a", 1, 11, "svc_a", t0 + ms(1000))}),
            "");
  s.apply(ok(s.command_id(9)));
  EXPECT_EQ(s.then(ok(s.command_id(11)), {compensation_succeeded{"a", 1, s.command_id(11), R"({"note":""})"},
                                          saga_compensated{"step 'c' failed after 1 attempt: address invalid"}}),
            "");
}

TEST(decide, retryable_failure_backs_off_then_resends_the_same_command) {
  scenario s(saga_test::linear(3));
  s.at(t0).entropy(11);
  s.apply(triggers::start{input, ""});
  const decision d = s.apply(transient(s.command_id(2), "busy"));
  ASSERT_EQ(d.events.size(), 2u);
  const auto& scheduled = std::get<retry_scheduled>(d.events[1].body);
  EXPECT_EQ(scheduled.next_attempt, 2u);
  EXPECT_EQ(scheduled.due, t0 + saga_test::policy(3).backoff(2, scheduled.seed));
  // A stale timer, and one for the wrong attempt, are ignored.
  EXPECT_NE(s.when(triggers::timer{"a", false, 3, triggers::timer_kind::retry}).ignored, "");
  s.at(scheduled.due);
  EXPECT_EQ(s.then(triggers::timer{"a", false, 2, triggers::timer_kind::retry},
                   {request(s, "a", 2, 2, "svc_a", scheduled.due + ms(1000))}),
            "");
}

TEST(decide, jitter_is_drawn_from_the_context_and_recorded) {
  scenario a(saga_test::linear(3)), b(saga_test::linear(3));
  a.entropy(1).apply(triggers::start{input, ""});
  b.entropy(2).apply(triggers::start{input, ""});
  const auto da = a.when(transient(a.command_id(2), "busy"));
  const auto db = b.when(transient(b.command_id(2), "busy"));
  EXPECT_NE(std::get<retry_scheduled>(da.events[1].body).seed, std::get<retry_scheduled>(db.events[1].body).seed);
  EXPECT_EQ(
      saga::testing::diff(a.when(transient(a.command_id(2), "busy")).events, {da.events[0].body, da.events[1].body}),
      "");
}

TEST(decide, timeouts_resend_with_the_same_id_then_fail_and_compensate_the_uncertain_step) {
  scenario s(saga_test::linear(2));
  s.at(t0);
  s.apply(triggers::start{input, ""});
  s.at(t0 + ms(1000));
  const decision d = s.apply(triggers::timer{"a", false, 1, triggers::timer_kind::deadline});
  ASSERT_EQ(d.events.size(), 2u);
  EXPECT_EQ(saga::testing::describe(d.events[0].body),
            saga::testing::describe(step_timed_out{"a", 1, s.command_id(2)}));
  const auto due = std::get<retry_scheduled>(d.events[1].body).due;
  s.at(due);
  s.apply(triggers::timer{"a", false, 2, triggers::timer_kind::retry});
  EXPECT_EQ(s.state().find("a")->forward.command_id, s.command_id(2));
  s.at(due + ms(1000));
  // Attempts exhausted: the step may have been applied, so it is compensated although it never answered.
  EXPECT_EQ(s.then(triggers::timer{"a", false, 2, triggers::timer_kind::deadline},
                   {step_timed_out{"a", 2, s.command_id(2)},
                    compensation_started{"step 'a' failed after 2 attempts: no reply to attempt 2 within 1000 ms", "a"},
                    undo(s, "a", 1, 8, "svc_a", due + ms(2000))}),
            "");
}

TEST(decide, success_from_an_earlier_attempt_is_accepted_but_its_stale_failure_is_not) {
  scenario s(saga_test::linear(3));
  s.apply(triggers::start{input, ""});
  s.apply(transient(s.command_id(2), "busy"));
  s.at(s.state().find("a")->forward.retry_due);
  s.apply(triggers::timer{"a", false, 2, triggers::timer_kind::retry});
  EXPECT_NE(s.when(transient(s.command_id(2), "late busy", 1)).ignored.find("stale reply"), std::string::npos);
  EXPECT_EQ(s.then(ok(s.command_id(2), 1, "late"),
                   {step_succeeded{"a", 1, s.command_id(2), R"({"note":"late"})", R"({"name":"n","trail":["late"]})"},
                    request(s, "b", 1, 7, "svc_b", s.now() + ms(1000))}),
            "");
}

TEST(decide, duplicate_unknown_and_future_replies_are_ignored_with_a_reason) {
  scenario s(saga_test::linear());
  s.apply(triggers::start{input, ""});
  s.apply(ok(s.command_id(2)));
  const decision dup = s.when(ok(s.command_id(2)));
  EXPECT_TRUE(dup.events.empty());
  EXPECT_NE(dup.ignored.find("already settled"), std::string::npos);
  EXPECT_NE(s.when(ok("nope:1")).ignored.find("unknown command id"), std::string::npos);
  EXPECT_NE(s.when(ok(s.command_id(4), 5)).ignored.find("never sent"), std::string::npos);
  scenario unstarted(saga_test::linear());
  EXPECT_NE(unstarted.when(ok("x:1")).ignored.find("never started"), std::string::npos);
}

TEST(decide, cancel_before_the_pivot_compensates) {
  scenario s(saga_test::linear());
  s.at(t0);
  s.apply(triggers::start{input, ""});
  s.apply(ok(s.command_id(2)));
  // b is in flight: compensation waits for it, then undoes b (if it succeeded) and a.
  EXPECT_EQ(s.then(triggers::cancel{"customer changed mind", "alice"},
                   {cancel_requested{"customer changed mind", "alice"},
                    compensation_started{"cancelled by alice: customer changed mind", ""}}),
            "");
  s.apply(triggers::cancel{"customer changed mind", "alice"});
  EXPECT_EQ(s.then(ok(s.command_id(4)),
                   {step_succeeded{"b", 1, s.command_id(4), R"({"note":""})", R"({"name":"n","trail":["",""]})"},
                    undo(s, "b", 1, 8, "svc_b", t0 + ms(1000))}),
            "");
}

TEST(decide, cancel_after_the_pivot_is_refused_with_the_reason) {
  scenario s = linear_after_b();
  const decision d = s.when(triggers::cancel{"too late", "bob"});
  EXPECT_TRUE(d.events.empty());
  EXPECT_EQ(d.rejected, "cannot cancel saga " + s.state().id.to_string() +
                            ": pivot step 'c' was already requested, so the saga can only go forward");
}

TEST(decide, a_compensation_that_keeps_failing_parks_the_saga_stuck_until_an_operator_acts) {
  scenario s = linear_after_b();
  s.apply(failed(s.command_id(6), "declined"));  // -> compensating, undo b requested at seq 9
  const decision first = s.apply(transient(s.command_id(9), "db down"));
  const auto due = std::get<retry_scheduled>(first.events[1].body).due;
  s.at(due);
  s.apply(triggers::timer{"b", true, 2, triggers::timer_kind::retry});
  EXPECT_EQ(s.then(transient(s.command_id(9), "db still down", 2),
                   {compensation_failed{"b", 2, s.command_id(9), "db still down", true},
                    saga_stuck{"b", true, "compensation of step 'b' failed after 2 attempts: db still down"}}),
            "");
  s.apply(transient(s.command_id(9), "db still down", 2));
  EXPECT_EQ(s.state().status, saga_status::stuck);
  // Stuck: replies and timers wait for the operator; a cancel is refused.
  EXPECT_NE(s.when(ok(s.command_id(9), 2)).ignored.find("stuck"), std::string::npos);
  EXPECT_NE(s.when(triggers::cancel{"x", "y"}).rejected, "");
  // The operator retries: same command id (the last attempt may have been applied), attempt 3, budget renewed.
  EXPECT_EQ(s.then(triggers::operator_action{triggers::operator_verb::retry, "", "db is back", "ops"},
                   {operator_action_recorded{"retry", "b", true, "db is back", "ops"},
                    undo(s, "b", 3, 9, "svc_b", due + ms(1000))}),
            "");
  // Or skips it with a reason, and compensation goes on with a.
  EXPECT_EQ(s.then(triggers::operator_action{triggers::operator_verb::skip, "b", "refunded by hand", "ops"},
                   {operator_action_recorded{"skip", "b", true, "refunded by hand", "ops"},
                    undo(s, "a", 1, 16, "svc_a", due + ms(1000))}),
            "");
  EXPECT_NE(s.when(triggers::operator_action{triggers::operator_verb::skip, "a", "x", "ops"}).rejected.find("not 'a'"),
            std::string::npos);
  EXPECT_NE(s.when(triggers::operator_action{triggers::operator_verb::skip, "", "", "ops"}).rejected, "");
}

TEST(decide, a_non_retryable_compensation_failure_is_stuck_at_once_and_retry_uses_a_fresh_command) {
  scenario s = linear_after_b();
  s.apply(failed(s.command_id(6), "declined"));
  s.apply(failed(s.command_id(9), "ledger closed"));
  EXPECT_EQ(s.state().status, saga_status::stuck);
  EXPECT_EQ(s.state().stuck_reason, "compensation of step 'b' failed: ledger closed");
  EXPECT_EQ(s.state().reason, "step 'c' failed after 1 attempt: declined");
  const decision d = s.when(triggers::operator_action{triggers::operator_verb::retry, "b", "reopened", "ops"});
  ASSERT_EQ(d.events.size(), 2u);
  EXPECT_EQ(std::get<compensation_requested>(d.events[1].body).command_id, s.command_id(13));
}

TEST(decide, operators_cannot_act_on_a_saga_that_is_not_stuck) {
  scenario s = linear_after_b();
  EXPECT_NE(s.when(triggers::operator_action{triggers::operator_verb::retry, "", "", "ops"}).rejected.find("not stuck"),
            std::string::npos);
}

TEST(decide, pivot_outcome_unknown_after_timeouts_is_stuck_not_compensated) {
  scenario s = linear_after_b();  // c requested at seq 6, linear(2): two attempts
  s.at(s.state().find("c")->forward.deadline);
  s.apply(triggers::timer{"c", false, 1, triggers::timer_kind::deadline});
  s.at(s.state().find("c")->forward.retry_due);
  s.apply(triggers::timer{"c", false, 2, triggers::timer_kind::retry});
  s.at(s.state().find("c")->forward.deadline);
  const decision d = s.apply(triggers::timer{"c", false, 2, triggers::timer_kind::deadline});
  EXPECT_EQ(s.state().status, saga_status::stuck);
  EXPECT_NE(s.state().stuck_reason.find("the pivot may have been applied"), std::string::npos);
  // An operator who checked that the parcel left skips the pivot forward; the saga goes on.
  const decision skip = s.apply(triggers::operator_action{triggers::operator_verb::skip, "c", "parcel left", "ops"});
  ASSERT_EQ(skip.events.size(), 2u);
  EXPECT_EQ(std::get<step_requested>(skip.events[1].body).step, "d");
  (void)d;
}

TEST(decide, a_retriable_step_is_never_compensated_its_failure_parks_the_saga) {
  scenario s = linear_after_b();
  s.apply(ok(s.command_id(6)));
  EXPECT_EQ(s.then(failed(s.command_id(8), "rejected"),
                   {step_failed{"d", 1, s.command_id(8), "rejected", false},
                    saga_stuck{"d", false, "step 'd' failed after 1 attempt: rejected"}}),
            "");
  s.apply(failed(s.command_id(8), "rejected"));
  // Retry after a definite failure sends a fresh command (the stored reply would only repeat the failure).
  const decision d = s.when(triggers::operator_action{triggers::operator_verb::retry, "", "fixed", "ops"});
  ASSERT_EQ(d.events.size(), 2u);
  EXPECT_EQ(std::get<step_requested>(d.events[1].body).command_id, s.command_id(12));
}

// JSON null as an input or a reply is recorded as none ({}), as an empty one is. The event codec stores none as null,
// so a recorded null came back as none: replaying the stored log decided {} where the log held null (a valid log
// flagged by sagactl's definition check), and folding it gave other data than the decision's.
TEST(decide, a_null_input_or_reply_is_recorded_as_none_so_the_stored_log_replays_exactly) {
  scenario fresh(saga_test::linear());
  fresh.at(t0);
  const decision started = fresh.when(triggers::start{"null", ""});
  ASSERT_FALSE(started.events.empty()) << started.rejected;
  EXPECT_EQ(std::get<saga_started>(started.events.front().body).input, "{}");

  scenario s(saga_test::linear());
  s.at(t0);
  s.apply(triggers::start{input, ""});
  s.apply(triggers::reply{s.command_id(2), 1, outcome::success, "null", ""});
  std::vector<event> stored;  // what the store gives back
  for (const auto& e : s.history()) {
    const auto encoded = encode(e.body);
    stored.push_back(event{e.seq, e.at, decode(encoded.type, encoded.schema_version, encoded.payload)});
  }
  const auto mismatch = audit::check_definition(saga_test::linear(), saga::saga_id::from_words(0x5a6a, 1), stored);
  EXPECT_FALSE(mismatch) << "seq " << mismatch->seq << "\n expected " << mismatch->expected << "\n recorded "
                         << mismatch->recorded;
}

// An operator's skip of the last step ends the saga, and ending it is an effect: the awaiting caller is woken and
// the ending counted. Before, the action's effects were only recovery's, which has nothing for an ended saga.
TEST(decide, skipping_the_last_stuck_step_finishes_the_saga) {
  scenario s = linear_after_b();
  s.apply(ok(s.command_id(6)));
  s.apply(failed(s.command_id(8), "rejected"));  // d, the last step: stuck
  const decision d = s.when(triggers::operator_action{triggers::operator_verb::skip, "d", "sent by hand", "ops"});
  ASSERT_EQ(d.after.status, saga_status::completed);
  const auto effects = effects_of(d.after, d.events);
  ASSERT_EQ(effects.size(), 1u);
  const auto* finished = std::get_if<effects::saga_finished>(&effects.front());
  ASSERT_NE(finished, nullptr);
  EXPECT_EQ(finished->status, saga_status::completed);
}

TEST(decide, parallel_branches_start_together_and_join) {
  scenario s(saga_test::diamond());
  s.at(t0);
  s.apply(triggers::start{input, ""});
  const decision after_a = s.apply(ok(s.command_id(2)));
  ASSERT_EQ(after_a.events.size(), 3u);
  EXPECT_EQ(std::get<step_requested>(after_a.events[1].body).step, "b");
  EXPECT_EQ(std::get<step_requested>(after_a.events[2].body).step, "c");
  const decision after_c = s.apply(ok(s.command_id(5)));
  ASSERT_EQ(after_c.events.size(), 1u);  // d waits for b
  const decision after_b = s.apply(ok(s.command_id(4)));
  ASSERT_EQ(after_b.events.size(), 2u);
  EXPECT_EQ(std::get<step_requested>(after_b.events[1].body).step, "d");
}

TEST(decide, failure_in_one_branch_waits_for_the_other_then_undoes_in_reverse_completion_order) {
  scenario s(saga_test::diamond());
  s.at(t0);
  s.apply(triggers::start{input, ""});
  s.apply(ok(s.command_id(2)));  // a; b@4 and c@5 requested
  const decision fail_b = s.apply(failed(s.command_id(4), "no"));
  ASSERT_EQ(fail_b.events.size(), 2u);  // step_failed, compensation_started; c still in flight
  const decision c_done = s.apply(ok(s.command_id(5)));
  EXPECT_EQ(saga::testing::diff(c_done.events, {step_succeeded{"c", 1, s.command_id(5), R"({"note":""})", std::nullopt},
                                                compensation_requested{"c", 1, s.command_id(9), "svc", "undo_c",
                                                                       payload("undo_c"), t0 + ms(1000)}}),
            "");
  const decision c_undone = s.apply(ok(s.command_id(9)));
  EXPECT_EQ(std::get<compensation_requested>(c_undone.events[1].body).step, "a");
  const decision a_undone = s.apply(ok(s.command_id(11)));
  EXPECT_EQ(saga::testing::describe(a_undone.events.back().body),
            saga::testing::describe(saga_compensated{"step 'b' failed after 1 attempt: no"}));
}

TEST(decide, a_finished_saga_emits_nothing_more) {
  scenario s = linear_after_b();
  s.apply(ok(s.command_id(6)));
  s.apply(ok(s.command_id(8)));
  ASSERT_EQ(s.state().status, saga_status::completed);
  EXPECT_TRUE(s.when(ok(s.command_id(8))).events.empty());
  EXPECT_TRUE(s.when(triggers::timer{"d", false, 1, triggers::timer_kind::deadline}).events.empty());
  EXPECT_NE(s.when(triggers::cancel{"x", "y"}).rejected, "");
}

TEST(decide, a_reply_that_cannot_be_merged_compensates_instead_of_crashing) {
  scenario s(saga_test::linear());
  s.apply(triggers::start{input, ""});
  const decision d = s.apply(triggers::reply{s.command_id(2), 1, outcome::success, R"({"note":42})", ""});
  ASSERT_GE(d.events.size(), 3u);
  EXPECT_TRUE(std::holds_alternative<step_succeeded>(d.events[0].body));
  EXPECT_NE(std::get<compensation_started>(d.events[1].body).reason.find("could not be merged"), std::string::npos);
  EXPECT_EQ(std::get<compensation_requested>(d.events[2].body).step, "a");
}

TEST(decide, a_throwing_payload_builder_parks_the_saga_with_the_reason) {
  const auto def =
      define<saga_test::data>("thrower", 1)
          .step("x")
          .invoke("s", "t", [](const saga_test::data&) -> saga_test::cmd { throw std::runtime_error("boom"); })
          .no_compensation()
          .build();
  scenario s(def);
  const decision d = s.apply(triggers::start{input, ""});
  EXPECT_EQ(s.state().status, saga_status::stuck);
  EXPECT_EQ(s.state().stuck_reason, "payload builder of step 'x' threw: boom");
  ASSERT_EQ(d.events.size(), 2u);
}

// Text the event log cannot hold (invalid UTF-8, NUL) is refused or parks the saga in decide, naming it. Before, the
// store refused the append: a start failed with the store's error, and a step's payload built on a reply or deadline
// was refused again at every try.
TEST(decide, text_the_log_cannot_store_is_refused_or_parks_the_saga_naming_it) {
  const auto def = define<saga_test::data>("texts", 1)
                       .step("x")
                       .invoke("s", "t",
                               [](const saga_test::data& d) {
                                 return saga_test::cmd{"x", d.name};
                               })
                       .compensate("s", "u",
                                   [](const saga_test::data&) {
                                     return saga_test::cmd{"u", "caf\xc3"};
                                   })
                       .step("y")
                       .after("x")
                       .invoke("s", "t",
                               [](const saga_test::data&) {
                                 return saga_test::cmd{"y", std::string("a\0b", 3)};
                               })
                       .no_compensation()
                       .build();
  {
    scenario s(def);
    const decision d = s.apply(triggers::start{"{\"name\":\"n\xff\",\"trail\":[]}", ""});
    EXPECT_EQ(d.rejected, "saga input cannot be stored: invalid UTF-8 at byte 10 (PostgreSQL stores UTF-8 text only)");
    EXPECT_TRUE(d.events.empty());
    EXPECT_EQ(s.apply(triggers::start{input, std::string("k\0", 2)}).rejected,
              "idempotency key cannot be stored: a NUL byte at byte 1 (PostgreSQL text cannot hold NUL)");
  }
  scenario s(def);
  s.apply(triggers::start{input, ""});
  ASSERT_EQ(s.state().status, saga_status::running);
  EXPECT_EQ(s.apply(triggers::cancel{"card \xff", "ops"}).rejected,
            "the cancel's reason cannot be stored: invalid UTF-8 at byte 5 (PostgreSQL stores UTF-8 text only)");
  s.apply(ok(s.command_id(2)));  // x succeeded: y's payload holds a NUL, which cereal writes as \u0000
  EXPECT_EQ(s.state().status, saga_status::stuck);
  EXPECT_EQ(s.state().stuck_reason,
            "payload builder of step 'y' built a payload the log cannot store: the JSON escape \\u0000 (NUL) at byte "
            "10 (PostgreSQL jsonb cannot hold NUL)");
  EXPECT_EQ(s.apply(triggers::operator_action{triggers::operator_verb::skip, "y", "done \xc0", "ops"}).rejected,
            "the action's reason cannot be stored: invalid UTF-8 at byte 5 (PostgreSQL stores UTF-8 text only)");
  // A compensation's payload likewise: x is cancelled while in flight, and compensated once it succeeds.
  scenario c(def);
  c.apply(triggers::start{input, ""});
  ASSERT_TRUE(c.apply(triggers::cancel{"changed my mind", "ops"}).rejected.empty());
  c.apply(ok(c.command_id(2)));
  EXPECT_EQ(c.state().status, saga_status::stuck);
  EXPECT_TRUE(c.state().stuck_in_compensation);
  EXPECT_EQ(c.state().stuck_reason,
            "payload builder of the compensation of 'x' built a payload the log cannot store: invalid UTF-8 at byte 12 "
            "(PostgreSQL stores UTF-8 text only)");
}

TEST(decide, a_saga_keeps_its_definition_version) {
  scenario s(saga_test::linear());
  s.apply(triggers::start{input, ""});
  const auto v2 = define<saga_test::data>("linear", 2)
                      .step("a")
                      .invoke("s", "t", saga_test::payload_for("a"))
                      .no_compensation()
                      .build();
  const decision d = decide(v2, s.state(), ok(s.command_id(2)), decide_context{});
  EXPECT_NE(d.rejected.find("runs definition linear v1, not linear v2"), std::string::npos);
  const auto changed = define<saga_test::data>("linear", 1)
                           .step("a")
                           .invoke("s", "t", saga_test::payload_for("a"))
                           .no_compensation()
                           .build();
  EXPECT_NE(decide(changed, s.state(), ok(s.command_id(2)), decide_context{}).rejected.find("without a version bump"),
            std::string::npos);
}

}  // namespace

namespace {

// An operator's retry after a definite rejection sends a fresh command as attempt 1 again; the deadline timer armed
// for the rejected attempt 1 still fires (timers are never cancelled) and must not time out the new command.
TEST(decide, a_deadline_armed_for_an_earlier_command_does_not_time_out_the_operators_fresh_one) {
  scenario s(saga_test::linear());
  s.at(t0);
  s.apply(triggers::start{input, ""});
  s.apply(ok(s.command_id(2)));
  s.apply(ok(s.command_id(4)));
  s.apply(ok(s.command_id(6)));            // d requested at seq 8, deadline t0 + 1000
  s.apply(failed(s.command_id(8), "no"));  // d is retriable: stuck
  ASSERT_EQ(s.state().status, saga_status::stuck);
  s.at(t0 + ms(900));
  const decision retry = s.apply(triggers::operator_action{triggers::operator_verb::retry, "", "fixed", "ops"});
  ASSERT_EQ(std::get<step_requested>(retry.events.at(1).body).deadline, t0 + ms(1900));
  s.at(t0 + ms(1000));  // the rejected command's timer
  const decision early = s.when(triggers::timer{"d", false, 1, triggers::timer_kind::deadline});
  EXPECT_TRUE(early.events.empty());
  EXPECT_NE(early.ignored.find("not due yet"), std::string::npos) << early.ignored;
  s.at(t0 + ms(1900));  // the fresh command's own deadline still times it out
  const decision due = s.when(triggers::timer{"d", false, 1, triggers::timer_kind::deadline});
  ASSERT_FALSE(due.events.empty());
  EXPECT_TRUE(std::holds_alternative<step_timed_out>(due.events[0].body));
}

TEST(decide, a_deadline_armed_for_an_earlier_compensation_does_not_time_out_the_operators_fresh_one) {
  scenario s(saga_test::linear());
  s.at(t0);
  s.apply(triggers::start{input, ""});
  s.apply(ok(s.command_id(2)));
  s.apply(ok(s.command_id(4)));
  s.apply(failed(s.command_id(6), "declined"));  // undo b requested at seq 9, deadline t0 + 1000
  s.apply(failed(s.command_id(9), "no"));        // a definite failure of a compensation: stuck
  ASSERT_EQ(s.state().status, saga_status::stuck);
  s.at(t0 + ms(900));
  s.apply(triggers::operator_action{triggers::operator_verb::retry, "", "reopened", "ops"});
  s.at(t0 + ms(1000));
  const decision early = s.when(triggers::timer{"b", true, 1, triggers::timer_kind::deadline});
  EXPECT_TRUE(early.events.empty());
  EXPECT_NE(early.ignored.find("not due yet"), std::string::npos) << early.ignored;
}

}  // namespace

namespace {

// A compensatable step skipped before any command went out (its payload builder threw) has nothing on record at its
// participant: its compensation would go out with no forward command to fence against and undo what never happened.
// Compensating the saga parks it there for an operator instead.
TEST(decide, a_step_skipped_before_any_command_went_out_is_not_compensated_without_an_operator) {
  const auto def =
      define<saga_test::data>("skipped", 1)
          .step("a")
          .invoke("svc_a", "do_a", [](const saga_test::data&) -> saga_test::cmd { throw std::runtime_error("boom"); })
          .compensate("svc_a", "undo_a", saga_test::payload_for("undo_a"))
          .step("b")
          .invoke("svc_b", "do_b", saga_test::payload_for("b"))
          .no_compensation()
          .build();
  scenario s(def);
  s.apply(triggers::start{input, ""});
  ASSERT_EQ(s.state().status, saga_status::stuck);
  s.apply(triggers::operator_action{triggers::operator_verb::skip, "a", "not needed", "ops"});
  const decision d = s.apply(failed(s.state().find("b")->forward.command_id, "declined"));
  for (const auto& e : d.events) EXPECT_FALSE(std::holds_alternative<compensation_requested>(e.body));
  ASSERT_EQ(s.state().status, saga_status::stuck);
  EXPECT_EQ(s.state().stuck_step, "a");
  EXPECT_TRUE(s.state().stuck_in_compensation);
  EXPECT_NE(s.state().stuck_reason.find("skipped by an operator before any command was sent"), std::string::npos);
  // The operator undid it by hand (or found nothing to undo) and skips the compensation: the saga ends.
  s.apply(triggers::operator_action{triggers::operator_verb::skip, "a", "nothing to undo", "ops"});
  EXPECT_EQ(s.state().status, saga_status::compensated);
  // Or retries, and the compensation goes out on the operator's word.
  scenario t(def);
  t.apply(triggers::start{input, ""});
  t.apply(triggers::operator_action{triggers::operator_verb::skip, "a", "not needed", "ops"});
  t.apply(failed(t.state().find("b")->forward.command_id, "declined"));
  const decision retry = t.apply(triggers::operator_action{triggers::operator_verb::retry, "a", "undo anyway", "ops"});
  ASSERT_EQ(retry.events.size(), 2u);
  EXPECT_EQ(std::get<compensation_requested>(retry.events[1].body).command_type, "undo_a");
}

}  // namespace

namespace {

// A pivot whose success reply could not be merged parks the saga. "Retry" resent nothing there and went on as if
// the step were skipped, without the reply's data and without saying so: it is refused, naming skip.
TEST(decide, retry_of_a_step_stuck_on_an_unmergeable_reply_is_refused_naming_skip) {
  const auto def = define<saga_test::data>("pivot_merge", 1)
                       .step("p")
                       .pivot()
                       .invoke("svc_p", "do_p", saga_test::payload_for("p"))
                       .on_reply(saga_test::merge_note())
                       .step("d")
                       .retriable()
                       .invoke("svc_d", "do_d", saga_test::payload_for("d"))
                       .build();
  scenario s(def);
  s.apply(triggers::start{input, ""});
  s.apply(triggers::reply{s.command_id(2), 1, outcome::success, R"({"note":42})", ""});
  ASSERT_EQ(s.state().status, saga_status::stuck);
  const decision retry = s.when(triggers::operator_action{triggers::operator_verb::retry, "", "again", "ops"});
  EXPECT_TRUE(retry.events.empty());
  EXPECT_NE(retry.rejected.find("could not be merged"), std::string::npos) << retry.rejected;
  EXPECT_NE(retry.rejected.find("skip it"), std::string::npos) << retry.rejected;
  const decision skip = s.apply(triggers::operator_action{triggers::operator_verb::skip, "p", "no note", "ops"});
  ASSERT_EQ(skip.events.size(), 2u);
  EXPECT_EQ(std::get<step_requested>(skip.events[1].body).step, "d");
}

}  // namespace

namespace {

// A saga stuck going forward (a payload builder that throws every time) could be retried into the same wall or
// skipped forward without its step; cancel, which a customer's call asks for, was refused. It is recorded as the
// operator's action, and the saga compensates what it did, the step still in flight included.
TEST(decide, cancel_of_a_saga_stuck_going_forward_compensates_it) {
  scenario s(saga_test::blocked());
  s.at(t0);
  s.apply(triggers::start{input, ""});
  s.apply(ok(s.command_id(2)));  // a succeeded; c is requested, b sticks (before the pivot p)
  ASSERT_EQ(s.state().status, saga_status::stuck);
  ASSERT_EQ(s.state().stuck_step, "b");
  ASSERT_NE(s.state().find("c"), nullptr);
  ASSERT_EQ(s.state().find("c")->phase, step_phase::running);
  const decision d = s.apply(triggers::cancel{"customer called", "ops"});
  ASSERT_EQ(d.events.size(), 3u) << d.rejected;
  const auto& action = std::get<operator_action_recorded>(d.events[0].body);
  EXPECT_EQ(action.action, "cancel");
  EXPECT_EQ(action.step, "b");
  EXPECT_EQ(action.reason, "customer called");
  EXPECT_EQ(action.operator_name, "ops");
  EXPECT_TRUE(std::holds_alternative<cancel_requested>(d.events[1].body));
  EXPECT_EQ(std::get<compensation_started>(d.events[2].body).reason, "cancelled by ops: customer called");
  EXPECT_EQ(s.state().status, saga_status::compensating);
  EXPECT_EQ(s.state().stuck_step, "");
  // c's reply was ignored while stuck: leaving stuck resends it, and compensation waits for it.
  const auto fx = effects_of(d.after, d.events);
  ASSERT_EQ(fx.size(), 2u);
  EXPECT_EQ(std::get<effects::send_command>(fx[0]).step, "c");
  EXPECT_TRUE(std::holds_alternative<effects::arm_timer>(fx[1]));
  const decision c_done = s.apply(ok(s.state().find("c")->forward.command_id));
  ASSERT_EQ(std::get<compensation_requested>(c_done.events.at(1).body).step, "c");
  s.apply(ok(s.state().find("c")->compensation.command_id));
  const decision a_undo = s.apply(ok(s.state().find("a")->compensation.command_id));
  EXPECT_EQ(s.state().status, saga_status::compensated);
  EXPECT_EQ(s.state().reason, "cancelled by ops: customer called");
  for (const auto& e : a_undo.events) EXPECT_FALSE(std::holds_alternative<compensation_requested>(e.body));
  // The audit replays the cancel from the recorded action and finds the same events.
  EXPECT_EQ(audit::check_definition(saga_test::blocked(), s.state().id, s.history()), std::nullopt);
}

TEST(decide, cancel_is_refused_for_a_saga_stuck_in_a_compensation_or_past_its_pivot) {
  scenario comp(saga_test::linear());
  comp.apply(triggers::start{input, ""});
  comp.apply(ok(comp.command_id(2)));
  comp.apply(failed(comp.command_id(4), "declined"));  // undo a requested at seq 7
  comp.apply(failed(comp.command_id(7), "no"));        // stuck in a's compensation
  ASSERT_EQ(comp.state().status, saga_status::stuck);
  const decision c = comp.when(triggers::cancel{"customer called", "ops"});
  EXPECT_TRUE(c.events.empty());
  EXPECT_NE(c.rejected.find("stuck in the compensation of step 'a': retry or skip that compensation"),
            std::string::npos)
      << c.rejected;
  // Stuck on the retriable step after the pivot: forward only.
  scenario fwd(saga_test::linear());
  fwd.apply(triggers::start{input, ""});
  fwd.apply(ok(fwd.command_id(2)));
  fwd.apply(ok(fwd.command_id(4)));
  fwd.apply(ok(fwd.command_id(6)));
  fwd.apply(failed(fwd.command_id(8), "no"));
  ASSERT_EQ(fwd.state().status, saga_status::stuck);
  EXPECT_NE(fwd.when(triggers::cancel{"customer called", "ops"}).rejected.find("pivot step 'c' was already requested"),
            std::string::npos);
}

// evolve takes an operator's cancel only where decide writes one.
TEST(decide, evolve_refuses_an_operators_cancel_of_a_saga_stuck_in_a_compensation) {
  scenario comp(saga_test::linear());
  comp.apply(triggers::start{input, ""});
  comp.apply(ok(comp.command_id(2)));
  comp.apply(failed(comp.command_id(4), "declined"));
  comp.apply(failed(comp.command_id(7), "no"));
  ASSERT_TRUE(comp.state().stuck_in_compensation);
  saga_state st = comp.state();
  const event forged{st.seq + 1, t0, operator_action_recorded{"cancel", "a", true, "why", "ops"}};
  EXPECT_THROW(apply(st, forged), illegal_transition);
}

}  // namespace
