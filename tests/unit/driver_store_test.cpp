// The in-memory driver end to end, the memory event store's contract and the hash chain.
#include "test_definitions.hpp"

#include <saga/storage/hash_chain.hpp>
#include <saga/testing/driver.hpp>

#include <gtest/gtest.h>

using namespace saga;
using saga::testing::driver;
using triggers::outcome;

namespace {

constexpr const char* input = R"({"name":"n","trail":[]})";

storage::stored_reply ok_note(const std::string& note) {
  return {outcome::success, R"({"note":")" + note + R"("})", ""};
}

TEST(driver, runs_a_saga_through_in_process_participants_to_completion) {
  driver d;
  d.add(saga_test::linear());
  std::map<std::string, int> calls;
  for (const std::string svc : {"svc_a", "svc_b", "svc_c", "svc_d"})
    d.serve(svc, [&calls, svc](const transport::command_message& c) {
      ++calls[c.command_type];
      return ok_note(svc);
    });
  const saga_id id = d.start("linear", input);
  const saga_state st = d.state(id);
  EXPECT_EQ(st.status, saga_status::completed);
  EXPECT_EQ(st.data, R"({"name":"n","trail":["svc_a","svc_b"]})");
  EXPECT_EQ(calls, (std::map<std::string, int>{{"do_a", 1}, {"do_b", 1}, {"do_c", 1}, {"do_d", 1}}));
  ASSERT_EQ(d.finished().size(), 1u);
  EXPECT_EQ(d.finished()[0].status, saga_status::completed);
}

TEST(driver, manual_answers_timeouts_and_recovery_after_a_crash) {
  driver d;
  d.add(saga_test::linear(3));
  const saga_id id = d.start("linear", input, "order-1");
  EXPECT_EQ(d.start("linear", input, "order-1"), id);  // idempotency key: the same saga
  auto cmds = d.take_commands();
  ASSERT_EQ(cmds.size(), 1u);
  d.succeed(cmds[0], R"({"note":"A"})");
  cmds = d.take_commands();
  ASSERT_EQ(cmds.size(), 1u);
  EXPECT_EQ(cmds[0].command_type, "do_b");
  // No reply: the deadline passes, the same command is resent after the backoff.
  d.advance(duration{1000});  // deadline of attempt 1
  d.advance(duration{300});   // backoff before attempt 2 (100 ms +/- 50%)
  auto resent = d.take_commands();
  ASSERT_EQ(resent.size(), 1u);
  EXPECT_EQ(resent[0].command_id, cmds[0].command_id);
  EXPECT_EQ(resent[0].attempt, 2u);
  // Crash: memory is lost; recovery replays the log and resends what is pending, with the same id.
  EXPECT_EQ(d.crash_and_recover(), 1u);
  auto recovered = d.take_commands();
  ASSERT_EQ(recovered.size(), 1u);
  EXPECT_EQ(recovered[0].command_id, cmds[0].command_id);
  d.succeed(recovered[0], R"({"note":"B"})");
  // A duplicate reply changes nothing and is recorded as ignored.
  d.succeed(recovered[0], R"({"note":"B"})");
  EXPECT_NE(d.ignored().back().find("already settled"), std::string::npos);
  EXPECT_EQ(d.state(id).find("b")->phase, step_phase::succeeded);
}

TEST(driver, refused_starts_throw_with_the_reason) {
  driver d;
  d.add(saga_test::linear());
  EXPECT_THROW((void)d.start("nope", input), std::invalid_argument);
  try {
    (void)d.start("linear", "{broken");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("saga input is not valid JSON"), std::string::npos);
  }
}

TEST(memory_event_store, optimistic_appends_conflict_and_the_chain_verifies) {
  driver d;
  d.add(saga_test::linear());
  const saga_id id = d.start("linear", input);
  auto& store = d.store();
  const auto log = store.load(id);
  ASSERT_EQ(log.size(), 2u);
  EXPECT_FALSE(storage::verify_chain(log));
  EXPECT_EQ(log[1].prev_hash, log[0].hash);
  // A second writer with a stale expected seq loses.
  storage::append_request stale{
      id, "linear", 1, {event{2, {}, events::cancel_requested{"x", "y"}}}, saga_status::running, 0, {}};
  try {
    (void)store.append(stale);
    FAIL();
  } catch (const storage::concurrency_conflict& c) {
    EXPECT_EQ(c.expected(), 1u);
    EXPECT_EQ(c.actual(), 2u);
  }
  // Tampering is detected with the saga and the seq.
  store.tamper(id, 2, [](storage::recorded_event& r) { r.payload = R"({"attempt":1,"command_id":"x"})"; });
  const auto broken = storage::verify_chain(store.load(id));
  ASSERT_TRUE(broken);
  EXPECT_EQ(broken->saga, id);
  EXPECT_EQ(broken->seq, 2u);
}

TEST(hash_chain, detects_removed_reordered_and_relinked_events) {
  driver d;
  d.add(saga_test::linear());
  d.serve("svc_a", [](const transport::command_message&) { return ok_note("a"); });
  const saga_id id = d.start("linear", input);
  auto log = d.store().load(id);
  ASSERT_GE(log.size(), 4u);
  auto removed = log;
  removed.erase(removed.begin() + 1);
  EXPECT_EQ(storage::verify_chain(removed)->seq, 2u);
  auto swapped = log;
  std::swap(swapped[1], swapped[2]);
  EXPECT_EQ(storage::verify_chain(swapped)->seq, 2u);
  auto relinked = log;
  relinked[2].prev_hash = std::string(64, '0');
  EXPECT_EQ(storage::verify_chain(relinked)->seq, 3u);
  // jsonb-style reformatting (key order, spacing) does not break the chain.
  auto reformatted = log;
  reformatted[0].metadata = " { \"at\" : " + json_member(log[0].metadata, "at") + " } ";
  EXPECT_FALSE(storage::verify_chain(reformatted));
}

}  // namespace
