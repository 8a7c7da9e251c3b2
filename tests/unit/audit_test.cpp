// Audit: state at a point of the log, and the definition replay gate, on the golden order logs.
#include "../../examples/order_processing/order_saga.hpp"
#include "test_definitions.hpp"

#include <saga/audit.hpp>
#include <saga/json.hpp>
#include <saga/timeline.hpp>

#include <gtest/gtest.h>

#include <fstream>
#include <limits>

using namespace saga;
using order_processing::order;

namespace {

std::vector<event> golden(const std::string& name) {
  std::ifstream in(std::string(SAGA_SOURCE_DIR) + "/tests/golden/" + name + ".jsonl");
  std::vector<event> log;
  std::string line;
  while (std::getline(in, line)) {
    event e;
    e.seq = std::stoull(json_member(line, "seq"));
    e.at = time_point(std::chrono::milliseconds(std::stoll(json_member(line, "at"))));
    const std::string type = json_member(line, "type");
    e.body = decode(type.substr(1, type.size() - 2), 1, json_member(line, "payload"));
    log.push_back(std::move(e));
  }
  return log;
}

// The saga's id, as its first command id carries it.
saga_id id_of(const std::vector<event>& log) {
  const auto& cmd = std::get<events::step_requested>(log.at(1).body).command_id;
  return *saga_id::parse(cmd.substr(0, cmd.find(':')));
}
const saga_id id = saga_id::from_words(1, 1);
const std::vector<std::string> names = {"order_completed", "order_card_declined", "order_shipping_slow",
                                        "order_refund_stuck_then_skipped"};

TEST(audit, state_at_any_seq_or_time_is_the_fold_of_that_prefix) {
  const auto log = golden("order_card_declined");
  ASSERT_GE(log.size(), 8u);
  const auto at5 = audit::state_at_seq(id, log, 5);
  EXPECT_EQ(at5.seq, 5u);
  EXPECT_EQ(at5.status, saga_status::running);
  EXPECT_EQ(at5.find("reserve_inventory")->phase, step_phase::succeeded);
  EXPECT_EQ(audit::state_at_seq(id, log, 999).status, saga_status::compensated);
  EXPECT_EQ(audit::state_at_time(id, log, log.front().at - duration{1}).status, saga_status::not_started);
  EXPECT_EQ(audit::state_at_time(id, log, log.back().at).status, saga_status::compensated);
}

TEST(audit, every_golden_log_is_what_the_current_definition_decides) {
  for (const auto& name : names) {
    const auto log = golden(name);
    const auto mismatch = audit::check_definition(order_processing::order_saga(), id_of(log), log);
    EXPECT_FALSE(mismatch) << name << ": seq " << mismatch->seq << "\n expected " << mismatch->expected
                           << "\n recorded " << mismatch->recorded;
  }
}

// Runs `t` through decide and appends what it decided to `log` (and to `state`).
void decide_into(const definition& def, saga_state& state, std::vector<event>& log, const trigger& t) {
  const decision d = decide(def, state, t, decide_context{time_point(std::chrono::seconds(1'700'000'000)), 7});
  ASSERT_TRUE(d.rejected.empty()) << d.rejected;
  for (const auto& e : d.events) {
    apply(state, e);
    log.push_back(e);
  }
}

std::string requested_id(const saga_state& state, const std::string& step) {
  return state.find(step)->forward.command_id;
}

// A success reply the orchestrator cannot read (a duplicate key, a number beyond a double, text that is not JSON)
// is recorded as {} with the reader's error in the next event's reason. Replayed, the recorded {} reads (and
// here merges) fine, so the check used to flag a valid log; it now decides such a reply as unreadable.
TEST(audit, a_reply_recorded_as_unreadable_replays_as_recorded) {
  const auto def = order_processing::order_saga();
  for (const std::string bad :
       {R"({"reservation_id":"r","reservation_id":"s"})", R"({"reservation_id":1e999})", R"({"reservation_id":)"}) {
    SCOPED_TRACE(bad);
    saga_state state;
    state.id = id;
    std::vector<event> log;
    order o;
    o.order_id = "o-1";
    o.customer = "c";
    o.sku = "s";
    o.quantity = 1;
    o.amount_cents = 100;
    o.address = "a";
    decide_into(def, state, log, triggers::start{to_json(o), "k"});
    decide_into(def, state, log,
                triggers::reply{requested_id(state, "create_order"), 1, triggers::outcome::success, "{}", ""});
    decide_into(def, state, log,
                triggers::reply{requested_id(state, "reserve_inventory"), 1, triggers::outcome::success, bad, ""});
    ASSERT_EQ(state.status, saga_status::compensating);
    ASSERT_NE(state.reason.find("reply is not valid JSON"), std::string::npos) << state.reason;
    const auto mismatch = audit::check_definition(def, id, log);
    EXPECT_FALSE(mismatch) << "seq " << mismatch->seq << "\n expected " << mismatch->expected << "\n recorded "
                           << mismatch->recorded;
    // Only a reply recorded as {} can have been unreadable (the error's own text cannot be checked: the reply's
    // text is not in the log). One recorded with content read fine, and its decision was another.
    auto forged = log;
    std::get<events::step_succeeded>(forged.at(4).body).reply = R"({"reservation_id":"r"})";
    EXPECT_TRUE(audit::check_definition(def, id, forged));
  }
}

// The same while the saga compensates (a step in flight beside the one that failed): nothing quotes the reader's
// error then, since the saga is already compensating; the reply recorded as {} without merged data is all there is.
struct anything {  // a reply type that {} reads as
  template <class A>
  void serialize(A&) {}
};
TEST(audit, a_reply_recorded_as_unreadable_while_compensating_replays_as_recorded) {
  using namespace saga_test;
  const auto def = define<data>("parallel", 1)
                       .step("a")
                       .invoke("svc", "do_a", payload_for("a"))
                       .compensate("svc", "undo_a", payload_for("undo_a"))
                       .step("b")
                       .after("a")
                       .invoke("svc", "do_b", payload_for("b"))
                       .on_reply([](data& d, const anything&) { d.trail.push_back("b"); })
                       .compensate("svc", "undo_b", payload_for("undo_b"))
                       .step("c")
                       .after("a")
                       .invoke("svc", "do_c", payload_for("c"))
                       .compensate("svc", "undo_c", payload_for("undo_c"))
                       .build();
  saga_state state;
  state.id = id;
  std::vector<event> log;
  decide_into(def, state, log, triggers::start{R"({"name":"n","trail":[]})", ""});
  decide_into(def, state, log, triggers::reply{requested_id(state, "a"), 1, triggers::outcome::success, "{}", ""});
  decide_into(def, state, log, triggers::reply{requested_id(state, "c"), 1, triggers::outcome::failure, "", "no"});
  ASSERT_EQ(state.status, saga_status::compensating);
  decide_into(def, state, log, triggers::reply{requested_id(state, "b"), 1, triggers::outcome::success, "{", ""});
  const auto mismatch = audit::check_definition(def, id, log);
  EXPECT_FALSE(mismatch) << "seq " << mismatch->seq << "\n expected " << mismatch->expected << "\n recorded "
                         << mismatch->recorded;
}

TEST(audit, a_renamed_step_is_flagged_at_its_first_request) {
  // The same saga with "reserve_inventory" renamed: a deploy that would strand running sagas.
  const auto renamed =
      define<order>("order", 1)
          .step("create_order")
          .invoke("orders", "create_order",
                  [](const order& o) {
                    return order_processing::create_order{o.order_id, o.customer, o.amount_cents};
                  })
          .compensate("orders", "cancel_order", [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .step("reserve_stock")
          .invoke("inventory", "reserve_inventory",
                  [](const order& o) {
                    return order_processing::reserve_inventory{o.order_id, o.sku, o.quantity};
                  })
          .compensate("inventory", "release_inventory",
                      [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .build();
  const auto log = golden("order_completed");
  const auto mismatch = audit::check_definition(renamed, id_of(log), log);
  ASSERT_TRUE(mismatch);
  EXPECT_EQ(mismatch->seq, 4u);
  EXPECT_NE(mismatch->expected.find("\"step\":\"reserve_stock\""), std::string::npos);
  EXPECT_NE(mismatch->recorded.find("\"step\":\"reserve_inventory\""), std::string::npos);
}

TEST(audit, reordered_steps_are_flagged) {
  const auto reordered =
      define<order>("order", 1)
          .step("reserve_inventory")
          .invoke("inventory", "reserve_inventory",
                  [](const order& o) {
                    return order_processing::reserve_inventory{o.order_id, o.sku, o.quantity};
                  })
          .compensate("inventory", "release_inventory",
                      [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .step("create_order")
          .invoke("orders", "create_order",
                  [](const order& o) {
                    return order_processing::create_order{o.order_id, o.customer, o.amount_cents};
                  })
          .compensate("orders", "cancel_order", [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .build();
  const auto log = golden("order_card_declined");
  const auto mismatch = audit::check_definition(reordered, id_of(log), log);
  ASSERT_TRUE(mismatch);
  EXPECT_EQ(mismatch->seq, 2u);  // the first request already goes elsewhere
  EXPECT_NE(mismatch->expected.find("\"step\":\"reserve_inventory\""), std::string::npos);
  EXPECT_NE(mismatch->recorded.find("\"step\":\"create_order\""), std::string::npos);
}

TEST(timeline, time_since_the_previous_event_is_signed_when_writers_clocks_disagree) {
  auto at = [](std::int64_t ms) { return time_point(std::chrono::milliseconds(ms)); };
  const std::vector<event> log{
      {1, at(1'700'000'000'000), events::cancel_requested{"first", "a"}},
      {2, at(1'700'000'002'500), events::cancel_requested{"later", "b"}},
      {3, at(1'700'000'001'000), events::cancel_requested{"earlier clock", "c"}},
      {4, at(1'700'000'000'700), events::cancel_requested{"a bit earlier", "d"}},
  };
  const std::string text = format_timeline(log);
  EXPECT_NE(text.find("2   2023-11-14T22:13:22.500Z +2.5s    cancel_requested"), std::string::npos) << text;
  EXPECT_NE(text.find("3   2023-11-14T22:13:21.000Z -1.5s    cancel_requested"), std::string::npos) << text;
  EXPECT_NE(text.find("4   2023-11-14T22:13:20.700Z -300ms   cancel_requested"), std::string::npos) << text;
}

// Times at the ends of the range (a damaged or forged log) are printed without overflowing (UBSan found both).
TEST(timeline, times_at_the_ends_of_the_range_do_not_overflow) {
  const auto lowest = time_point(duration{std::numeric_limits<duration::rep>::min()});
  const auto highest = time_point(duration{std::numeric_limits<duration::rep>::max()});
  EXPECT_FALSE(format_time(lowest).empty());
  const std::vector<event> log{
      {1, highest, events::cancel_requested{"first", "a"}},
      {2, lowest, events::cancel_requested{"far back", "b"}},
      {3, highest, events::cancel_requested{"far on", "c"}},
  };
  const std::string text = format_timeline(log);
  EXPECT_NE(text.find("-18446744073709551.6s"), std::string::npos) << text;
  EXPECT_NE(text.find("+18446744073709551.6s"), std::string::npos) << text;
}

}  // namespace
