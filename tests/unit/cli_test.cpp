// sagactl on the memory store: show, replay, list, partitions, verify, export, and operator actions, with their errors.
#include "../../examples/order_processing/order_saga.hpp"

#include <saga/cli.hpp>
#include <saga/storage/export.hpp>
#include <saga/storage/hash_chain.hpp>
#include <saga/testing/driver.hpp>
#include <saga/timeline.hpp>

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

using namespace saga;
using order_processing::order;
using triggers::outcome;

namespace {

// Lends an existing store or transport to sagactl (which owns what it opens).
struct borrowed_store final : storage::event_store {
  explicit borrowed_store(storage::event_store& s) : s_(s) {}
  void async_append(storage::append_request r, storage::append_callback d) override {
    s_.async_append(std::move(r), std::move(d));
  }
  std::vector<storage::recorded_event> load(const saga_id& id) override {
    auto log = s_.load(id);
    if (damaged && id == *damaged && log.size() > 1) log[1].payload = "{";  // its second event cannot be decoded
    if (after_load && *after_load) std::exchange(*after_load, nullptr)();   // once, after the log was read
    return log;
  }
  std::vector<storage::recorded_event> read_all(std::uint64_t p, std::size_t n) override { return s_.read_all(p, n); }
  std::vector<storage::saga_summary> list_unfinished(const storage::partition_filter& f) override {
    return s_.list_unfinished(f);
  }
  std::optional<storage::saga_summary> find(const saga_id& id) override {
    if (rowless && id == *rowless) return std::nullopt;
    return s_.find(id);
  }
  std::optional<saga_id> find_by_idempotency_key(const std::string& t, const std::string& k) override {
    return s_.find_by_idempotency_key(t, k);
  }
  std::vector<storage::saga_summary> list(const storage::saga_query& q) override {
    auto rows = s_.list(q);
    if (rowless) std::erase_if(rows, [&](const storage::saga_summary& r) { return r.id == *rowless; });
    return rows;
  }
  std::vector<std::pair<saga_status, std::uint64_t>> count_by_status(const std::string& t) override {
    return s_.count_by_status(t);
  }
  std::int32_t reply_partition_count(const std::string& t, std::int32_t n) override {
    return s_.reply_partition_count(t, n);
  }
  std::vector<storage::partition_placement> partition_placements(const std::string& t) override {
    return s_.partition_placements(t);
  }
  storage::event_store& s_;
  std::optional<saga_id> damaged;
  std::optional<saga_id> rowless;               // its saga_instances row was deleted
  std::function<void()>* after_load = nullptr;  // runs once, after a log was read
};
struct borrowed_bus final : saga::transport::transport {
  explicit borrowed_bus(saga::transport::transport& b) : b_(b) {}
  void send_command(const saga::transport::command_message& c, saga::transport::delivery_callback d) override {
    b_.send_command(c, std::move(d));
  }
  void on_reply(const std::string& t, saga::transport::reply_handler h) override { b_.on_reply(t, std::move(h)); }
  void on_command(const std::string& s, saga::transport::command_handler h) override { b_.on_command(s, std::move(h)); }
  void send_reply(const std::string& to, const saga::transport::reply_message& r,
                  saga::transport::delivery_callback d) override {
    b_.send_reply(to, r, std::move(d));
  }
  saga::transport::transport& b_;
};

storage::stored_reply ok(std::string p = "{}") { return {outcome::success, std::move(p), ""}; }

struct fixture {
  saga::testing::driver d{3};
  bool refunds_fail = true;
  saga_id completed, compensated, stuck, running;
  cli::environment env;

  fixture() {
    d.add(order_processing::order_saga());
    d.serve("orders", [](const transport::command_message&) { return ok(); });
    d.serve("inventory", [](const transport::command_message&) { return ok(R"({"reservation_id":"r"})"); });
    d.serve("payments", [this](const transport::command_message& c) {
      if (c.command_type == "refund_payment" && refunds_fail)
        return storage::stored_reply{outcome::failure, "{}", "ledger closed"};
      if (c.command_type == "charge_payment" &&
          from_json<order_processing::charge_payment>(c.payload).customer == "declined")
        return storage::stored_reply{outcome::failure, "{}", "card declined"};
      return ok(R"({"payment_id":"p"})");
    });
    d.serve("shipping", [](const transport::command_message& c) {
      if (from_json<order_processing::ship_order>(c.payload).address == "nowhere")
        return storage::stored_reply{outcome::failure, "{}", "address invalid"};
      return ok(R"({"tracking_number":"t"})");
    });
    completed = d.start_with("order", make("ok", "1 Main St"), "a");
    compensated = d.start_with("order", make("declined", "1 Main St"), "b");
    stuck = d.start_with("order", make("ok", "nowhere"), "c");  // shipping fails, the refund fails: stuck
    env.open_store = [this](const std::string&) { return std::make_unique<borrowed_store>(d.store()); };
    env.open_transport = [this] { return std::make_unique<borrowed_bus>(d.bus()); };
    env.definitions = {order_processing::order_saga()};
    env.default_url = "postgresql://saga:secret@127.0.0.1/saga";
    env.user = "tester";
    env.now = [this] { return d.now(); };
  }

  static order make(const std::string& customer, const std::string& address) {
    order o;
    o.order_id = "o-" + customer + address;
    o.customer = customer;
    o.sku = "s";
    o.quantity = 1;
    o.amount_cents = 100;
    o.address = address;
    return o;
  }

  struct result {
    int status;
    std::string out, err;
  };
  result run(std::vector<std::string> args) {
    std::ostringstream out, err;
    const int status = cli::run(args, env, out, err);
    return {status, out.str(), err.str()};
  }
};

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(sagactl, show_prints_the_timeline_with_compensations_paired_and_the_state) {
  fixture f;
  const auto r = f.run({"show", f.compensated.to_string()});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "step_failed              charge_payment    #1  failed: card declined")) << r.out;
  EXPECT_TRUE(has(r.out, "(undoes reserve_inventory #5)")) << r.out;
  EXPECT_TRUE(has(r.out, "(undoes create_order #3)")) << r.out;
  EXPECT_TRUE(has(r.out, "status compensated  at seq 13")) << r.out;
  const auto json = f.run({"show", f.compensated.to_string(), "--json"});
  EXPECT_EQ(canonical_json(json.out).size() > 0, true);
}

// One unreadable log does not end the check of all the others (it did, naming neither the saga nor the seq).
TEST(sagactl, verify_definition_of_all_sagas_reports_an_unreadable_log_and_checks_the_rest) {
  fixture f;
  const auto bad = f.compensated;
  f.env.open_store = [&f, bad](const std::string&) {
    auto s = std::make_unique<borrowed_store>(f.d.store());
    s->damaged = bad;
    return s;
  };
  const auto r = f.run({"replay", "--all", "--verify-definition"});
  EXPECT_EQ(r.status, 1) << r.out << r.err;
  EXPECT_TRUE(has(r.out, bad.to_string() + ": unreadable: saga " + bad.to_string() + " seq 2: ")) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "2 of 3 sagas replay exactly")) << r.out << r.err;
  const auto json = f.run({"replay", "--all", "--verify-definition", "--json"});
  EXPECT_TRUE(has(json.out, "\"exact\":2,")) << json.out;
  EXPECT_TRUE(has(json.out, "\"unreadable\":[{\"saga\":\"" + bad.to_string() + "\"")) << json.out;
  // One saga alone still fails with the error, which names the saga and the seq.
  const auto one = f.run({"replay", bad.to_string(), "--verify-definition"});
  EXPECT_NE(one.status, 0);
  EXPECT_TRUE(has(one.err, "saga " + bad.to_string() + " seq 2: ")) << one.err;
}

// An argument a command does not take is refused, not ignored (`export ID` exported everything).
TEST(sagactl, a_saga_id_given_to_a_command_that_takes_none_is_refused) {
  fixture f;
  const std::string id = f.completed.to_string();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"export", id}, {"list", id}, {"verify", "--all", id}, {"replay", "--all", id, "--verify-definition"}}) {
    const auto r = f.run(args);
    EXPECT_EQ(r.status, 2) << args[0];
    EXPECT_TRUE(has(r.err, args[0] + " takes no argument '" + id + "'")) << r.err;
    EXPECT_EQ(r.out, "") << args[0];
  }
  EXPECT_TRUE(has(f.run({"frobnicate", id}).err, "unknown command 'frobnicate'"));
}

TEST(sagactl, replay_at_a_seq_or_time_folds_the_prefix) {
  fixture f;
  const auto r = f.run({"replay", f.compensated.to_string(), "--at", "5"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "status running  at seq 5")) << r.out;
  EXPECT_TRUE(has(r.out, "step reserve_inventory: succeeded")) << r.out;
  const auto at_time = f.run({"replay", f.compensated.to_string(), "--at", format_time(f.d.now())});
  EXPECT_TRUE(has(at_time.out, "status compensated")) << at_time.out;
  const auto bad = f.run({"replay", f.compensated.to_string(), "--at", "yesterday"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_TRUE(has(bad.err, "malformed time for --at 'yesterday'")) << bad.err;
}

TEST(sagactl, list_filters_and_counts_by_status) {
  fixture f;
  const auto counts = f.run({"list", "--counts", "--json"});
  ASSERT_EQ(counts.status, 0) << counts.err;
  EXPECT_EQ(counts.out, "{\"completed\":1,\"compensated\":1,\"stuck\":1}\n");
  const auto stuck = f.run({"list", "--status", "stuck"});
  EXPECT_TRUE(has(stuck.out, f.stuck.to_string())) << stuck.out;
  EXPECT_FALSE(has(stuck.out, f.completed.to_string()));
  EXPECT_EQ(f.run({"list", "--status", "weird"}).status, 2);
  EXPECT_EQ(f.run({"list", "--from", format_time(f.d.now() + duration{1})}).out, "");
}

TEST(sagactl, partitions_shows_each_types_recorded_count_and_flags_a_saga_placed_beyond_it) {
  fixture f;
  // The memory transport does not partition, so no orchestrator recorded a count: the stuck saga shows anyway.
  const auto none = f.run({"partitions"});
  ASSERT_EQ(none.status, 0) << none.err;
  EXPECT_EQ(none.out,
            "order  no reply partition count recorded (an orchestrator records it when it runs)  1 unfinished, highest "
            "partition 0\n");
  ASSERT_EQ(f.d.store().reply_partition_count("order", 4), 4);
  const auto recorded = f.run({"partitions", "--json"});
  ASSERT_EQ(recorded.status, 0) << recorded.err;
  EXPECT_EQ(recorded.out,
            "{\"type\":\"order\",\"recorded\":4,\"recorded_at\":null,\"unfinished\":1,\"highest_partition\":0,"
            "\"misplaced\":false}\n");
  // A saga of another type placed on partition 6 before its count was recorded as 4 (the topic shrank): nobody owns
  // it, and sagactl says so and exits 1.
  const saga_id lost = saga_id::from_words(7, 7);
  (void)f.d.store().append({lost,
                            "other",
                            0,
                            {event{1, f.d.now(), events::saga_started{"other", 1, "f", "{}", ""}}},
                            saga_status::running,
                            6,
                            {}});
  ASSERT_EQ(f.d.store().reply_partition_count("other", 4), 4);
  const auto misplaced = f.run({"partitions"});
  EXPECT_EQ(misplaced.status, 1);
  EXPECT_TRUE(has(misplaced.out, "order  placed over 4 reply partitions  1 unfinished, highest partition 0\n"))
      << misplaced.out;
  EXPECT_TRUE(has(misplaced.out,
                  "other  placed over 4 reply partitions  1 unfinished, highest partition 6\n  "
                  "MISPLACED: an unfinished saga is on partition 6, beyond the 4 recorded"))
      << misplaced.out;
  // Partition 4 is beyond a count of 4 (partitions 0-3) too.
  (void)f.d.store().append({saga_id::from_words(8, 8),
                            "edge",
                            0,
                            {event{1, f.d.now(), events::saga_started{"edge", 1, "f", "{}", ""}}},
                            saga_status::running,
                            4,
                            {}});
  ASSERT_EQ(f.d.store().reply_partition_count("edge", 4), 4);
  const auto edge = f.run({"partitions", "--type", "edge"});
  EXPECT_EQ(edge.status, 1);
  EXPECT_TRUE(has(edge.out, "MISPLACED: an unfinished saga is on partition 4, beyond the 4 recorded")) << edge.out;
  const auto one = f.run({"partitions", "--type", "order", "--json"});
  EXPECT_EQ(one.status, 0);
  EXPECT_EQ(one.out, recorded.out);
  // A type with neither a count nor an unfinished saga: said so, not an error.
  const auto unknown = f.run({"partitions", "--type", "nothing"});
  EXPECT_EQ(unknown.status, 0);
  EXPECT_EQ(unknown.out, "no saga type has a recorded reply partition count or an unfinished saga (type 'nothing')\n");
  EXPECT_EQ(f.run({"partitions", "extra"}).status, 2);
}

TEST(sagactl, verify_passes_untouched_and_names_saga_and_seq_when_altered) {
  fixture f;
  const auto ok = f.run({"verify", "--all"});
  EXPECT_EQ(ok.status, 0) << ok.out;
  EXPECT_TRUE(has(ok.out, "3 sagas checked; 0 broken")) << ok.out;
  f.d.store().tamper(f.compensated, 7, [](storage::recorded_event& e) { e.payload = R"({"reason":"card accepted"})"; });
  const auto broken = f.run({"verify", "--all"});
  EXPECT_EQ(broken.status, 1);
  EXPECT_TRUE(has(broken.out, "BROKEN saga " + f.compensated.to_string() + " at seq 7")) << broken.out;
  // The last event of another saga rewritten with its hash recomputed: the chain holds, the saga's row does not.
  const auto last = f.d.store().load(f.completed).back();
  f.d.store().tamper(f.completed, last.seq, [](storage::recorded_event& e) {
    e.payload = R"({"output":{"forged":true}})";
    e.hash = storage::chain_hash(e.prev_hash, e.type, e.seq, e.payload, e.metadata);
  });
  const auto rewritten = f.run({"verify", "--saga", f.completed.to_string()});
  EXPECT_EQ(rewritten.status, 1) << rewritten.out;
  EXPECT_TRUE(has(rewritten.out, "BROKEN saga " + f.completed.to_string() + " at seq " + std::to_string(last.seq)))
      << rewritten.out;
  EXPECT_TRUE(has(rewritten.out, "events rewritten at the end")) << rewritten.out;
}

TEST(sagactl, export_then_verify_file_round_trips_and_catches_one_changed_byte) {
  fixture f;
  const auto exported = f.run({"export"});
  ASSERT_EQ(exported.status, 0);
  const std::string path = std::string(SAGA_BINARY_DIR) + "/cli_test_export.jsonl";
  std::ofstream(path) << exported.out;
  const auto good = f.run({"verify", "--file", path});
  EXPECT_EQ(good.status, 0) << good.out;
  EXPECT_TRUE(has(good.out, "all chains verify")) << good.out;
  std::string altered = exported.out;
  const auto pos = altered.find("card declined");
  ASSERT_NE(pos, std::string::npos);
  altered[pos] = 'C';
  std::ofstream(path) << altered;
  const auto bad = f.run({"verify", "--file", path});
  EXPECT_EQ(bad.status, 1);
  EXPECT_TRUE(has(bad.out, "BROKEN saga " + f.compensated.to_string())) << bad.out;
  std::remove(path.c_str());
  // A directory is not an export (it read as an empty one: "0 events of 0 sagas checked; all chains verify").
  const auto folder = f.run({"verify", "--file", std::string(SAGA_BINARY_DIR)});
  EXPECT_NE(folder.status, 0) << folder.out;
  EXPECT_TRUE(has(folder.err, "is a directory")) << folder.err;
}

TEST(sagactl, retry_on_a_stuck_saga_whose_participant_now_succeeds_ends_compensated) {
  fixture f;
  ASSERT_EQ(f.d.state(f.stuck).status, saga_status::stuck);
  f.refunds_fail = false;
  const auto r = f.run({"retry", f.stuck.to_string(), "--reason", "ledger reopened"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "operator_action_recorded")) << r.out;
  EXPECT_TRUE(has(r.out, "sent 1 of 1 command(s)")) << r.out;
  f.d.bus().pump();  // the participant answers; the (driver) orchestrator takes it from there
  EXPECT_EQ(f.d.state(f.stuck).status, saga_status::compensated);
  const auto log = f.d.events(f.stuck);
  bool recorded = false;
  for (const auto& e : log)
    if (const auto* o = std::get_if<events::operator_action_recorded>(&e.body))
      recorded = o->operator_name == "tester" && o->reason == "ledger reopened";
  EXPECT_TRUE(recorded);
}

TEST(sagactl, skip_records_the_reason_and_the_saga_finishes) {
  fixture f;
  const auto r = f.run(
      {"skip", f.stuck.to_string(), "--step", "charge_payment", "--reason", "refunded by hand", "--operator", "ops"});
  ASSERT_EQ(r.status, 0) << r.err;
  f.d.bus().pump();
  EXPECT_EQ(f.d.state(f.stuck).status, saga_status::compensated);
  EXPECT_EQ(f.run({"skip", f.stuck.to_string(), "--step", "x"}).status, 2);  // no reason
}

TEST(sagactl, cancel_before_the_pivot_compensates_after_it_is_refused_with_the_reason) {
  fixture f;
  f.refunds_fail = false;
  // Charges go unanswered (the saga waits at charge_payment); refunds succeed.
  f.d.bus().on_command("payments", [&f](transport::command_message c, transport::handled_callback h) {
    if (c.command_type == "refund_payment")
      f.d.bus().send_reply(c.reply_to,
                           {c.command_id, c.saga, c.saga_type, c.step, c.attempt, outcome::success, "{}", "", {}, {}},
                           nullptr);
    h();
  });
  const saga_id waiting = f.d.start_with("order", fixture::make("ok", "1 Main St"), "w");
  const auto r = f.run({"cancel", waiting.to_string(), "--reason", "customer called"});
  ASSERT_EQ(r.status, 0) << r.err;
  f.d.advance(duration{31'000});  // the silent charge times out; compensation undoes it and the rest
  f.d.bus().pump();
  EXPECT_EQ(f.d.state(waiting).status, saga_status::compensated);
  EXPECT_EQ(f.d.state(waiting).reason, "cancelled by tester: customer called");
  const auto late = f.run({"cancel", f.completed.to_string(), "--reason", "too late"});
  EXPECT_EQ(late.status, 1);
  EXPECT_TRUE(has(late.err, "refused: saga " + f.completed.to_string() + " is completed")) << late.err;
  // A saga stuck in a compensation is not cancelled: its compensation is retried or skipped.
  const auto stuck = f.run({"cancel", f.stuck.to_string(), "--reason", "give up"});
  EXPECT_EQ(stuck.status, 1);
  EXPECT_TRUE(has(stuck.err, "stuck in the compensation of step 'charge_payment': retry or skip that compensation"))
      << stuck.err;
}

TEST(sagactl, errors_name_what_is_wrong_and_read_only_commands_write_nothing) {
  fixture f;
  const auto before = f.d.store().read_all(1, 100000).size();
  for (const auto& args : std::vector<std::vector<std::string>>{{"show", f.completed.to_string()},
                                                                {"list"},
                                                                {"partitions"},
                                                                {"replay", f.completed.to_string(), "--at", "3"},
                                                                {"verify", "--all"},
                                                                {"export"}})
    EXPECT_EQ(f.run(args).status, 0);
  EXPECT_EQ(f.d.store().read_all(1, 100000).size(), before);
  const auto unknown = f.run({"show", saga_id::from_words(5, 5).to_string()});
  EXPECT_EQ(unknown.status, 1);
  EXPECT_TRUE(has(unknown.err, "no saga " + saga_id::from_words(5, 5).to_string()));
  const auto malformed = f.run({"show", "not-a-uuid"});
  EXPECT_EQ(malformed.status, 2);
  EXPECT_TRUE(has(malformed.err, "'not-a-uuid' is not a saga id"));
  EXPECT_EQ(f.run({"frobnicate"}).status, 2);
  EXPECT_TRUE(has(f.run({"list", "--bogus"}).err, "unknown option --bogus"));
  f.env.open_store = [](const std::string&) -> std::unique_ptr<storage::event_store> {
    throw storage::store_unavailable("connection refused");
  };
  const auto down = f.run({"list"});
  EXPECT_EQ(down.status, 1);
  EXPECT_TRUE(has(down.err, "postgresql://saga:***@127.0.0.1/saga")) << down.err;
  EXPECT_FALSE(has(down.err, "secret"));
}

TEST(sagactl, each_command_prints_its_own_usage_with_help) {
  fixture f;
  const auto show = f.run({"show", "--help"});
  EXPECT_EQ(show.status, 0) << show.err;
  EXPECT_EQ(show.out.rfind("usage: sagactl [--db URL] show SAGA_ID [--json]\n", 0), 0u) << show.out;
  EXPECT_EQ(f.run({"help", "show"}).out, show.out);
  EXPECT_NE(f.run({"cancel", "--help"}).out, show.out);
  EXPECT_EQ(f.run({"nope", "--help"}).status, 2);
}

TEST(sagactl, verify_json_lists_each_broken_saga_with_its_first_bad_seq) {
  fixture f;
  EXPECT_EQ(f.run({"verify", "--all", "--json"}).out,
            "{\"ok\":true,\"sagas\":3,\"events\":" + std::to_string(f.d.store().read_all(1, 100000).size()) +
                ",\"broken\":[],\"unreadable\":[]}\n");
  f.d.store().tamper(f.stuck, 4, [](storage::recorded_event& e) { e.payload = "{}"; });
  const auto broken = f.run({"verify", "--all", "--json"});
  EXPECT_EQ(broken.status, 1);
  EXPECT_EQ(json_member(broken.out, "ok"), "false");
  const std::string list = json_member(broken.out, "broken");
  EXPECT_EQ(json_string_member(list.substr(1, list.size() - 2), "saga"), f.stuck.to_string()) << list;
  EXPECT_EQ(json_uint_member(list.substr(1, list.size() - 2), "seq"), 4u) << list;
}

}  // namespace

namespace {

// verify read a saga's log, then its row: an orchestrator appending in between put the row ahead of the log, and a
// live saga was reported as cut short ("events removed from the end"), exit 1.
TEST(sagactl, verify_of_a_saga_advanced_while_it_reads_reports_nothing_broken) {
  fixture f;
  std::function<void()> hook = [&f] {
    f.refunds_fail = true;
    ASSERT_EQ(f.run({"retry", f.stuck.to_string(), "--reason", "again"}).status, 0);  // appends two events
  };
  f.env.open_store = [&f, &hook](const std::string&) {
    auto s = std::make_unique<borrowed_store>(f.d.store());
    s->after_load = &hook;
    return s;
  };
  const auto before = f.d.store().load(f.stuck).size();
  const auto r = f.run({"verify", "--saga", f.stuck.to_string()});
  EXPECT_GT(f.d.store().load(f.stuck).size(), before) << "the hook did not append";
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "0 broken")) << r.out;
}

// saga_instances is not append-only: a saga whose row was deleted was left out of verify --all, which passed.
TEST(sagactl, verify_all_checks_a_log_whose_saga_row_was_deleted_and_reports_the_row_missing) {
  fixture f;
  f.env.open_store = [&f](const std::string&) {
    auto s = std::make_unique<borrowed_store>(f.d.store());
    s->rowless = f.compensated;
    return s;
  };
  const auto r = f.run({"verify", "--all"});
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_TRUE(has(r.out, "BROKEN saga " + f.compensated.to_string())) << r.out;
  EXPECT_TRUE(has(r.out, "the row was removed")) << r.out;
  EXPECT_TRUE(has(r.out, "3 sagas checked; 1 broken")) << r.out;
  const auto typed = f.run({"verify", "--all", "--type", "order"});
  EXPECT_TRUE(has(typed.out, "3 sagas checked; 1 broken")) << typed.out;
}

TEST(sagactl, options_that_do_not_apply_repeat_or_swallow_another_option_are_refused) {
  fixture f;
  const auto before = f.d.store().read_all(1, 100000).size();
  const std::string id = f.stuck.to_string();
  const auto refused = [&f](std::vector<std::string> args, const std::string& why) {
    const auto r = f.run(args);
    EXPECT_EQ(r.status, 2) << args[0] << ": " << r.out;
    EXPECT_TRUE(has(r.err, why)) << r.err;
  };
  refused({"cancel", id, "--reason", "--json"}, "option --reason needs a value, not the option --json");
  refused({"cancel", id, "--reason", "a", "--reason", "b"}, "option --reason is given twice");
  refused({"cancel", id, "--reason", "a", "--step", "x"}, "option --step does not apply to cancel");
  refused({"export", "--saga", id, "--since", "5"}, "option --saga cannot be combined with --since in export");
  refused({"list", "--counts", "--status", "stuck"}, "option --counts cannot be combined with --status in list");
  refused({"verify", "--file", "x", "--saga", id}, "cannot be combined");
  refused({"verify", "--saga", id, "--type", "order"}, "option --type applies to verify --all only");
  refused({"replay", "--all"}, "replay --all needs --verify-definition");
  refused({"show", id, "--since", "3"}, "option --since does not apply to show");
  // An empty step meant "whatever step it is stuck on": `--step "$STEP"` with STEP unset skipped that.
  refused({"skip", id, "--step", "", "--reason", "x"}, "option --step needs a non-empty value");
  EXPECT_EQ(f.d.store().read_all(1, 100000).size(), before);
  // A misspelt type checked nothing and passed.
  const auto typo = f.run({"verify", "--all", "--type", "ordr"});
  EXPECT_EQ(typo.status, 1);
  EXPECT_TRUE(has(typo.err, "no saga of type 'ordr'")) << typo.err;
  EXPECT_EQ(f.run({"replay", "--all", "--type", "ordr", "--verify-definition"}).status, 1);
}

// Output that cannot be written (`sagactl export > /dev/full`) exited 0 with the archive cut short.
TEST(sagactl, output_that_cannot_be_written_fails) {
  fixture f;
  std::ostringstream out, err;
  out.setstate(std::ios::badbit);
  EXPECT_EQ(cli::run({"export"}, f.env, out, err), 1);
  EXPECT_TRUE(has(err.str(), "writing the output failed")) << err.str();
}

// The action is committed before the transport opens: a transport that fails is a note, and the exit is 0 (it was
// 1, and a script's rerun was then refused as the saga was no longer stuck).
TEST(sagactl, an_action_recorded_whose_commands_cannot_be_sent_exits_zero_with_a_note) {
  fixture f;
  f.env.open_transport = []() -> std::unique_ptr<transport::transport> {
    throw std::runtime_error("kafka: bad config");
  };
  const auto r = f.run({"retry", f.stuck.to_string(), "--reason", "again"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "recorded seq")) << r.out;
  EXPECT_TRUE(has(r.out, "the transport failed (kafka: bad config)")) << r.out;
}

}  // namespace

namespace {

// An export ends with each saga's head and a count: a chain alone does not show an export cut short at a line,
// nor a saga's last events removed (it passed as "all chains verify", as did an empty file).
TEST(sagactl, verify_file_finds_an_export_cut_short_or_missing_a_sagas_last_events) {
  fixture f;
  const auto exported = f.run({"export"});
  ASSERT_EQ(exported.status, 0);
  const std::string path = std::string(SAGA_BINARY_DIR) + "/cli_test_export_cut.jsonl";
  const auto verify = [&](const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
    return f.run({"verify", "--file", path});
  };
  std::vector<std::string> lines;
  {
    std::istringstream in(exported.out);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
  }
  const auto join = [](const std::vector<std::string>& ls) {
    std::string out;
    for (const auto& l : ls) out += l + "\n";
    return out;
  };
  ASSERT_TRUE(has(lines.back(), "\"export_end\"")) << lines.back();
  EXPECT_EQ(verify(exported.out).status, 0);
  // Cut short at a line boundary: the end record is gone.
  auto cut = lines;
  cut.resize(cut.size() / 2);
  const auto short_one = verify(join(cut));
  EXPECT_EQ(short_one.status, 1) << short_one.out;
  EXPECT_TRUE(has(short_one.out, "no export_end record")) << short_one.out;
  EXPECT_EQ(verify("").status, 1);
  // The completed saga's last event removed, and the end record's count fixed to match: its head says otherwise.
  const auto last = f.d.store().load(f.completed).back();
  auto dropped = lines;
  std::erase_if(dropped, [&](const std::string& l) {
    return !has(l, "export_head") &&
           has(l, "\"saga\":\"" + f.completed.to_string() + "\",\"seq\":" + std::to_string(last.seq) + ",");
  });
  ASSERT_EQ(dropped.size(), lines.size() - 1);
  const auto count = f.d.store().read_all(1, 100000).size();
  dropped.back() = storage::export_end_line(count - 1, 3);
  const auto missing = verify(join(dropped));
  EXPECT_EQ(missing.status, 1) << missing.out;
  EXPECT_TRUE(has(missing.out, "BROKEN saga " + f.completed.to_string() + " at seq " + std::to_string(last.seq)))
      << missing.out;
  EXPECT_TRUE(has(missing.out, "events missing from the end")) << missing.out;
  // Left with the old count, the end record gives it away too.
  dropped.back() = lines.back();
  EXPECT_TRUE(has(verify(join(dropped)).out, "records removed or added"));
  // One saga alone carries its head.
  const auto one = f.run({"export", "--saga", f.stuck.to_string()});
  EXPECT_TRUE(has(one.out, "\"export_head\":{\"saga\":\"" + f.stuck.to_string())) << one.out;
  EXPECT_EQ(verify(one.out).status, 0);
  std::remove(path.c_str());
}

}  // namespace

namespace {

// list stopped at its default 1,000 without a word. The note goes to stderr (a pipeline reading the ids from stdout
// took "(the" for one), and only when more sagas exist than are shown.
TEST(sagactl, list_says_when_its_default_limit_cut_it_short) {
  fixture f;
  for (int i = 0; i < 997; ++i) (void)f.d.start_with("order", fixture::make("ok", "a" + std::to_string(i)), "");
  const auto lines = [](const std::string& s) { return std::count(s.begin(), s.end(), '\n'); };
  const auto exactly = f.run({"list"});
  ASSERT_EQ(lines(exactly.out), 1000) << exactly.err;  // all of them: nothing was cut
  EXPECT_EQ(exactly.err, "");
  (void)f.d.start_with("order", fixture::make("ok", "one-more"), "");
  const auto all = f.run({"list"});
  EXPECT_EQ(all.status, 0);
  EXPECT_EQ(lines(all.out), 1000);
  EXPECT_FALSE(has(all.out, "shown")) << all.out.substr(all.out.size() - 200);
  EXPECT_TRUE(has(all.err, "the first 1000 shown; --limit N shows more")) << all.err;
  EXPECT_TRUE(has(f.run({"list", "--json"}).err, "the first 1000 shown"));
  EXPECT_EQ(lines(f.run({"list", "--limit", "1001"}).out), 1001);
  EXPECT_EQ(f.run({"list", "--limit", "1001"}).err, "");
  EXPECT_EQ(f.run({"list", "--status", "stuck"}).err, "");
}

}  // namespace
