// Golden logs: order-saga histories recorded by this test into tests/golden/ (SAGA_UPDATE_GOLDEN=1) and
// checked on every run: each stored log decodes, replays to its recorded final state, needs no new effect,
// and running the same scenario today produces exactly the same log (a change of behaviour shows as a diff).
#include "../../examples/order_processing/order_saga.hpp"

#include <saga/effects.hpp>
#include <saga/testing/driver.hpp>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

using namespace saga;
using order_processing::order;
using triggers::outcome;

namespace {

const std::string golden_dir = std::string(SAGA_SOURCE_DIR) + "/tests/golden/";

std::string to_line(const event& e) {
  const auto enc = encode(e.body);
  return R"({"at":)" + std::to_string(e.at.time_since_epoch().count()) + R"(,"payload":)" + enc.payload +
         R"(,"schema_version":)" + std::to_string(enc.schema_version) + R"(,"seq":)" + std::to_string(e.seq) +
         R"(,"type":")" + enc.type + R"("})";
}

event from_line(const std::string& line) {
  event e;
  e.seq = std::stoull(json_member(line, "seq"));
  e.at = time_point(std::chrono::milliseconds(std::stoll(json_member(line, "at"))));
  const std::string type = json_member(line, "type");
  e.body =
      decode(type.substr(1, type.size() - 2),
             static_cast<std::uint32_t>(std::stoul(json_member(line, "schema_version"))), json_member(line, "payload"));
  return e;
}

std::string state_summary(const saga_state& s) {
  return canonical_json(R"({"status":")" + std::string(to_string(s.status)) + R"(","data":)" + s.data + R"(,"steps":)" +
                        std::to_string(s.steps.size()) + "}");
}

order sample() {
  order o;
  o.order_id = "o-1";
  o.customer = "c-1";
  o.sku = "sku-1";
  o.quantity = 2;
  o.amount_cents = 4200;
  o.address = "1 Main St";
  return o;
}

using script = std::function<void(saga::testing::driver&, const saga_id&)>;

struct golden_case {
  std::string name;
  std::map<std::string, std::function<storage::stored_reply(const transport::command_message&)>> participants;
  script after_start;
};

storage::stored_reply ok(std::string payload = "{}") { return {outcome::success, std::move(payload), ""}; }

std::vector<golden_case> cases() {
  auto all_ok = [](const transport::command_message& c) {
    if (c.command_type == "reserve_inventory") return ok(R"({"reservation_id":"r-1"})");
    if (c.command_type == "charge_payment") return ok(R"({"payment_id":"p-1"})");
    if (c.command_type == "ship_order") return ok(R"({"tracking_number":"t-1"})");
    return ok();
  };
  std::vector<golden_case> out;
  out.push_back(
      {"order_completed", {{"orders", all_ok}, {"inventory", all_ok}, {"payments", all_ok}, {"shipping", all_ok}}, {}});
  out.push_back({"order_card_declined",
                 {{"orders", all_ok},
                  {"inventory", all_ok},
                  {"payments",
                   [](const transport::command_message& c) {
                     if (c.command_type == "charge_payment")
                       return storage::stored_reply{outcome::failure, "{}", "card declined"};
                     return ok();
                   }}},
                 {}});
  // Shipping never answers at first: timeouts, a resend with the same id, then success.
  out.push_back({"order_shipping_slow",
                 {{"orders", all_ok}, {"inventory", all_ok}, {"payments", all_ok}},
                 [](saga::testing::driver& d, const saga_id&) {
                   d.advance(duration{30'000});
                   d.advance(duration{5'000});
                   auto cmds = d.take_commands("shipping");
                   d.succeed(cmds.back(), R"({"tracking_number":"t-9"})");
                 }});
  // The refund keeps failing: the saga is stuck until an operator skips it with a reason.
  out.push_back({"order_refund_stuck_then_skipped",
                 {{"orders", all_ok},
                  {"inventory", all_ok},
                  {"payments",
                   [](const transport::command_message& c) {
                     if (c.command_type == "refund_payment")
                       return storage::stored_reply{outcome::failure, "{}", "ledger closed"};
                     return ok(R"({"payment_id":"p-1"})");
                   }},
                  {"shipping",
                   [](const transport::command_message&) {
                     return storage::stored_reply{outcome::failure, "{}", "address invalid"};
                   }}},
                 [](saga::testing::driver& d, const saga_id& id) {
                   d.skip(id, "charge_payment", "refunded by hand, ticket 7", "ops");
                 }});
  return out;
}

std::vector<event> run_case(const golden_case& c) {
  saga::testing::driver d(7);
  d.add(order_processing::order_saga());
  for (const auto& [service, handler] : c.participants) d.serve(service, handler);
  const saga_id id = d.start_with("order", sample(), "golden-" + c.name);
  if (c.after_start) c.after_start(d, id);
  return d.events(id);
}

TEST(golden, stored_logs_replay_to_their_state_and_match_todays_behaviour) {
  const bool update = std::getenv("SAGA_UPDATE_GOLDEN") != nullptr;
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::vector<event> today = run_case(c);
    std::string log_text;
    for (const auto& e : today) log_text += to_line(e) + "\n";
    const saga_state today_state = fold(saga_id::from_words(1, 1), today);
    if (update) {
      std::ofstream(golden_dir + c.name + ".jsonl") << log_text;
      std::ofstream(golden_dir + c.name + ".state.json") << state_summary(today_state) << "\n";
      continue;
    }
    std::ifstream log_file(golden_dir + c.name + ".jsonl"), state_file(golden_dir + c.name + ".state.json");
    ASSERT_TRUE(log_file && state_file) << "missing golden files for " << c.name << " (run with SAGA_UPDATE_GOLDEN=1)";
    std::vector<event> golden;
    std::string line, stored_text;
    while (std::getline(log_file, line)) {
      golden.push_back(from_line(line));
      stored_text += line + "\n";
    }
    std::string expected_state;
    std::getline(state_file, expected_state);
    const saga_state replayed = fold(saga_id::from_words(1, 1), golden);
    EXPECT_EQ(state_summary(replayed), expected_state);
    EXPECT_TRUE(is_terminal(replayed.status));
    EXPECT_TRUE(recovery_effects(replayed).empty()) << "a finished golden saga must need nothing more";
    EXPECT_EQ(log_text, stored_text) << "today's behaviour differs from the golden log";
  }
}

std::vector<event> load_golden(const std::string& name) {
  std::ifstream log_file(golden_dir + name + ".jsonl");
  std::vector<event> out;
  std::string line;
  while (std::getline(log_file, line)) out.push_back(from_line(line));
  return out;
}

// Every trigger that could still arrive after the log's end: each reply the log saw again (and its opposite),
// every deadline and retry timer of every step and compensation, a cancel, operator actions, a second start.
std::vector<trigger> late_triggers(const std::vector<event>& log) {
  std::vector<trigger> out;
  auto replies_for = [&](const std::string& command_id, std::uint32_t attempt) {
    out.push_back(triggers::reply{command_id, attempt, outcome::success, "{}", ""});
    out.push_back(triggers::reply{command_id, attempt, outcome::failure, "{}", "late"});
    out.push_back(triggers::reply{command_id, attempt, outcome::retryable_failure, "{}", "late"});
  };
  std::set<std::string> steps;
  for (const auto& e : log) {
    if (const auto* r = std::get_if<events::step_requested>(&e.body)) {
      replies_for(r->command_id, r->attempt);
      steps.insert(r->step);
    }
    if (const auto* r = std::get_if<events::compensation_requested>(&e.body)) {
      replies_for(r->command_id, r->attempt);
      steps.insert(r->step);
    }
  }
  for (const auto& step : steps)
    for (bool compensation : {false, true})
      for (std::uint32_t attempt = 1; attempt <= 4; ++attempt)
        for (auto kind : {triggers::timer_kind::deadline, triggers::timer_kind::retry})
          out.push_back(triggers::timer{step, compensation, attempt, kind});
  out.push_back(triggers::cancel{"late cancel", "golden"});
  out.push_back(triggers::operator_action{triggers::operator_verb::retry, {}, "late retry", "golden"});
  for (const auto& step : steps)
    out.push_back(triggers::operator_action{triggers::operator_verb::skip, step, "late skip", "golden"});
  out.push_back(triggers::start{to_json(sample()), "again"});
  return out;
}

// Replaying a golden log, as a restarted orchestrator does, sends no command, arms no timer and reports no saga
// as newly finished; and no trigger that may still arrive afterwards adds an event or an effect.
TEST(golden, replaying_each_stored_log_emits_no_new_effect) {
  if (std::getenv("SAGA_UPDATE_GOLDEN") != nullptr) GTEST_SKIP() << "updating golden files";
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::vector<event> golden = load_golden(c.name);
    ASSERT_GE(golden.size(), 2u) << "missing or empty golden log for " << c.name;
    const auto* first_request = std::get_if<events::step_requested>(&golden[1].body);
    ASSERT_NE(first_request, nullptr);
    const auto id = saga_id::parse(first_request->command_id.substr(0, first_request->command_id.find(':')));
    ASSERT_TRUE(id.has_value());
    const saga_state replayed = fold(*id, golden);
    ASSERT_TRUE(is_terminal(replayed.status)) << to_string(replayed.status);

    // Pure level: nothing to recover, and no late trigger changes anything.
    EXPECT_TRUE(recovery_effects(replayed).empty());
    for (const auto& t : late_triggers(golden)) {
      const decision d = decide(order_processing::order_saga(), replayed, t, decide_context{golden.back().at, 99});
      EXPECT_TRUE(d.events.empty()) << "trigger #" << t.index() << " added " << d.events.size() << " event(s)";
      EXPECT_TRUE(effects_of(replayed, d.events).empty());
    }

    // Runtime level: the test kit's orchestrator, holding only this log, recovers and sees the late triggers.
    saga::testing::driver d(7);
    d.add(order_processing::order_saga());
    int commands_handled = 0;
    for (const std::string service : {"orders", "inventory", "payments", "shipping"})
      d.serve(service, [&](const transport::command_message&) {
        ++commands_handled;
        return ok();
      });
    storage::append_request request;
    request.saga = *id;
    request.saga_type = "order";
    request.events = golden;
    request.status_after = replayed.status;
    (void)d.store().append(std::move(request));
    EXPECT_EQ(d.crash_and_recover(), 0u);
    for (const auto& t : late_triggers(golden)) (void)d.handle(*id, t);
    d.advance(duration{24 * 3600 * 1000});
    EXPECT_EQ(commands_handled, 0);
    EXPECT_TRUE(d.take_commands().empty());
    EXPECT_TRUE(d.finished().empty());
    EXPECT_EQ(d.events(*id).size(), golden.size());
    EXPECT_TRUE(d.state(*id) == replayed);
  }
}

}  // namespace
