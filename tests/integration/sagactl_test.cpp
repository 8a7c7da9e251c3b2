// sagactl against a real PostgreSQL. The logs come from real runs: the orchestrator over the PostgreSQL event
// store, its participants answering over the memory transport, time from a manual clock (so times are exact).
// Each test has its own schema (pg_test::postgres_test). Most tests run the sagactl program itself; the
// definition replay gate runs saga::cli in-process because it needs definitions the program does not have.
#include "../../examples/order_processing/order_saga.hpp"
#include "postgres_support.hpp"

#include <saga/cli.hpp>
#include <saga/json.hpp>
#include <saga/runtime/orchestrator.hpp>
#include <saga/storage/inbox.hpp>
#include <saga/storage/postgres_event_store.hpp>
#include <saga/timeline.hpp>
#include <saga/transport/kafka_dev.hpp>
#include <saga/transport/kafka_transport.hpp>
#include <saga/transport/memory_transport.hpp>

#include <gtest/gtest.h>
#include <cereal/types/vector.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

extern char** environ;

using namespace saga;
using namespace std::chrono_literals;
using order_processing::order;
using triggers::outcome;

namespace {

struct result {
  int status = -1;
  std::string out, err;
};

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs the sagactl program with `args`; `env` sets (or, with nullopt, removes) environment variables. Kafka is
// never configured unless a test sets SAGA_KAFKA_BROKERS.
result sagactl(const std::vector<std::string>& args, std::map<std::string, std::optional<std::string>> env = {}) {
  env.emplace("SAGA_KAFKA_BROKERS", std::nullopt);
  env.emplace("SAGA_PG_URL", std::nullopt);
  std::vector<std::string> vars;
  for (char** e = environ; *e; ++e) {
    const std::string var = *e;
    if (!env.count(var.substr(0, var.find('=')))) vars.push_back(var);
  }
  for (const auto& [k, v] : env)
    if (v) vars.push_back(k + "=" + *v);
  std::vector<char*> envp, argv;
  for (auto& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  std::vector<std::string> all{SAGACTL_PATH};
  all.insert(all.end(), args.begin(), args.end());
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);

  const std::string base = std::string(SAGA_BINARY_DIR) + "/sagactl_test_" + std::to_string(::getpid());
  const std::string out_path = base + ".out", err_path = base + ".err";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = 0;
  result r;
  const int rc = posix_spawn(&pid, SAGACTL_PATH, &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    ADD_FAILURE() << "cannot start " << SAGACTL_PATH << ": " << std::strerror(rc);
    return r;
  }
  int wstatus = 0;
  ::waitpid(pid, &wstatus, 0);
  r.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  std::remove(out_path.c_str());
  std::remove(err_path.c_str());
  return r;
}

// The start of the manual clock: 2023-11-14T22:13:20.000Z.
constexpr std::int64_t t0_ms = 1'700'000'000'000;

order make_order(const std::string& id, const std::string& customer, const std::string& address) {
  order o;
  o.order_id = id;
  o.customer = customer;
  o.sku = "s";
  o.quantity = 1;
  o.amount_cents = 100;
  o.address = address;
  return o;
}

// What `verify --json` prints (decoded with cereal: the test parses the output, it does not search it).
struct break_json {
  std::string saga;
  std::uint64_t seq = 0;
  std::string why;
  template <class A>
  void serialize(A& a) {
    a(CEREAL_NVP(saga), CEREAL_NVP(seq), CEREAL_NVP(why));
  }
};
struct verify_json {
  bool ok = false;
  std::uint64_t sagas = 0, events = 0;
  std::vector<break_json> broken;
  std::vector<std::string> unreadable;
  template <class A>
  void serialize(A& a) {
    a(CEREAL_NVP(ok), CEREAL_NVP(sagas), CEREAL_NVP(events), CEREAL_NVP(broken), CEREAL_NVP(unreadable));
  }
};
// What `replay --verify-definition --json` prints.
struct mismatch_json {
  std::string saga;
  std::uint64_t seq = 0;
  std::string expected, recorded;
  template <class A>
  void serialize(A& a) {
    a(CEREAL_NVP(saga), CEREAL_NVP(seq), CEREAL_NVP(expected), CEREAL_NVP(recorded));
  }
};
struct unchecked_json {
  std::string saga, type;
  std::uint32_t version = 0;
  template <class A>
  void serialize(A& a) {
    a(CEREAL_NVP(saga), CEREAL_NVP(type), CEREAL_NVP(version));
  }
};
struct definition_check_json {
  bool ok = false;
  std::uint64_t sagas = 0, exact = 0;
  std::vector<mismatch_json> mismatches;
  std::vector<unchecked_json> unchecked;
  template <class A>
  void serialize(A& a) {
    a(CEREAL_NVP(ok), CEREAL_NVP(sagas), CEREAL_NVP(exact), CEREAL_NVP(mismatches), CEREAL_NVP(unchecked));
  }
};

// Lends the test's transport to saga::cli (which owns and stops what it opens).
struct lent_bus final : saga::transport::transport {
  explicit lent_bus(saga::transport::transport& b) : b_(b) {}
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

class sagactl_pg : public pg_test::postgres_test {
 protected:
  void SetUp() override {
    postgres_test::SetUp();
    if (HasFatalFailure() || url_.empty()) return;
    if (migrate_on_setup()) store_ = std::make_unique<storage::postgres_event_store>(url_);
    for (const std::string service : {"orders", "inventory", "payments", "shipping"})
      bus_.on_command(service, [this](transport::command_message c, transport::handled_callback handled) {
        if (held_types_.count(c.command_type)) {  // never answered (until a test answers it by hand)
          held_.push_back(c);
          return handled();
        }
        const auto stored = storage::handle_command(inbox_, c.command_id, c.compensates,
                                                    [&](storage::transaction&) { return answer(c); });
        bus_.send_reply(
            c.reply_to,
            transport::reply_message::answering(c, stored.result, stored.payload, stored.reason, clock_->now()),
            nullptr);
        handled();
      });
  }

  void TearDown() override {
    stop_orchestrator();
    store_.reset();
    postgres_test::TearDown();
  }

  // The participants' business rules.
  storage::stored_reply answer(const transport::command_message& c) {
    if (c.command_type == "reserve_inventory") return {outcome::success, R"({"reservation_id":"r-1"})", ""};
    if (c.command_type == "charge_payment") {
      if (from_json<order_processing::charge_payment>(c.payload).customer == "declined")
        return {outcome::failure, "{}", "card declined"};
      return {outcome::success, R"({"payment_id":"p-1"})", ""};
    }
    if (c.command_type == "refund_payment" && refunds_fail_) return {outcome::failure, "{}", "ledger closed"};
    if (c.command_type == "ship_order" && from_json<order_processing::ship_order>(c.payload).address == "nowhere")
      return {outcome::failure, "{}", "address invalid"};
    if (c.command_type == "ship_order") return {outcome::success, R"({"tracking_number":"t-1"})", ""};
    return {outcome::success, "{}", ""};
  }

  void start_orchestrator() {
    runtime::orchestrator_options o;
    o.threads = 2;
    o.clock = clock_;
    o.entropy = [seed = pg_test::random_word(), m = std::make_shared<std::mutex>()]() mutable {
      std::lock_guard lock(*m);
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      return seed;
    };
    orchestrator_ = std::make_unique<runtime::orchestrator>(*store_, bus_, o);
    orchestrator_->add(order_processing::order_saga());
    orchestrator_->run();
  }
  void stop_orchestrator() {
    if (orchestrator_) orchestrator_->shutdown();
    orchestrator_.reset();
  }

  // Delivers messages until `done` holds; bounded so a bug fails instead of hanging.
  template <class P>
  bool pump_until(P done) {
    for (int i = 0; i < 20'000; ++i) {
      bus_.pump();
      if (done()) return true;
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }

  saga_state state(const saga_id& id) { return storage::fold_recorded(id, store_->load(id)); }

  // Places an order and runs its saga until it ends (completed, compensated or stuck).
  saga_id run_order(const order& o, saga_status expected) {
    const auto h = orchestrator_->start("order", to_json(o), o.order_id);
    EXPECT_TRUE(pump_until([&] { return h.outcome.wait_for(0s) == std::future_status::ready; })) << o.order_id;
    EXPECT_EQ(h.outcome.get().status, expected) << o.order_id << ": " << h.outcome.get().reason;
    return h.id;
  }

  // Places an order and runs it until the command `held_type` (held by its participant) was sent.
  saga_id run_until_held(const order& o, const std::string& held_type) {
    held_types_.insert(held_type);
    const auto h = orchestrator_->start("order", to_json(o), o.order_id);
    EXPECT_TRUE(pump_until([&] {
      for (const auto& c : held_)
        if (c.saga == h.id && c.command_type == held_type) return true;
      return false;
    })) << held_type;
    return h.id;
  }

  // A compensated order (card declined) at t0, and a stuck one (shipping fails, so does the refund) at t0 + 60 s.
  void run_compensated_and_stuck() {
    start_orchestrator();
    compensated_ = run_order(make_order("o-declined", "declined", "1 Main St"), saga_status::compensated);
    clock_->advance(60s);
    stuck_ = run_until_held(make_order("o-nowhere", "ok", "nowhere"), "ship_order");
    clock_->advance(2s);
    answer_held("ship_order", outcome::failure, "address invalid");
    ASSERT_TRUE(pump_until([&] { return state(stuck_).status == saga_status::stuck; }));
  }

  // Answers the held commands of `type` now, as their participant would.
  void answer_held(const std::string& type, outcome result, const std::string& reason = {},
                   const std::string& payload = "{}") {
    held_types_.erase(type);
    for (const auto& c : held_)
      if (c.command_type == type)
        bus_.send_reply(c.reply_to, transport::reply_message::answering(c, result, payload, reason, clock_->now()),
                        nullptr);
  }

  // Runs one statement on this test's schema.
  void sql(const std::string& statement) { (void)storage::postgres_session(url_).exec(statement); }
  // Runs `statements` with the append-only trigger disabled (re-enabled afterwards, in the same transaction).
  void tamper(const std::vector<std::string>& statements) {
    storage::postgres_session(url_).run([&](storage::transaction& tx) {
      tx.exec("ALTER TABLE saga_events DISABLE TRIGGER saga_events_append_only");
      for (const auto& s : statements) tx.exec(s);
      tx.exec("ALTER TABLE saga_events ENABLE TRIGGER saga_events_append_only");
    });
  }
  std::string count(const std::string& table) {
    return *storage::postgres_session(url_).exec("SELECT count(*) FROM " + table).at(0).at(0);
  }

  // saga::cli in-process on this test's database, deciding with `definitions`.
  result cli(const std::vector<std::string>& args, std::vector<definition> definitions) {
    cli::environment env;
    env.open_store = [](const std::string& url) { return std::make_unique<storage::postgres_event_store>(url); };
    env.definitions = std::move(definitions);
    env.default_url = url_;
    env.user = "tester";
    env.now = [this] { return clock_->now(); };
    std::ostringstream out, err;
    result r;
    r.status = cli::run(args, env, out, err);
    r.out = out.str();
    r.err = err.str();
    return r;
  }

  std::unique_ptr<storage::postgres_event_store> store_;
  transport::memory_transport bus_;
  std::shared_ptr<runtime::manual_clock> clock_ = std::make_shared<runtime::manual_clock>();
  storage::memory_inbox inbox_;
  std::unique_ptr<runtime::orchestrator> orchestrator_;
  std::set<std::string> held_types_;
  std::vector<transport::command_message> held_;
  bool refunds_fail_ = true;
  saga_id compensated_, stuck_;
};

std::string lines(const std::vector<std::string>& ls) {
  std::string out;
  for (const auto& l : ls) out += l + "\n";
  return out;
}

// The compensated order's input, as recorded (canonical JSON) and as the saga's data at the end.
const std::string declined_input =
    R"({"address":"1 Main St","amount_cents":100,"customer":"declined","order_id":"o-declined","payment_id":"","quantity":1,"reservation_id":"","sku":"s","tracking_number":""})";
const std::string declined_data =
    R"({"address":"1 Main St","amount_cents":100,"customer":"declined","order_id":"o-declined","payment_id":"","quantity":1,"reservation_id":"r-1","sku":"s","tracking_number":""})";
const std::string nowhere_data =
    R"({"address":"nowhere","amount_cents":100,"customer":"ok","order_id":"o-nowhere","payment_id":"p-1","quantity":1,"reservation_id":"r-1","sku":"s","tracking_number":""})";

TEST_F(sagactl_pg, show_prints_the_timeline_and_state_of_a_compensated_and_a_stuck_order) {
  run_compensated_and_stuck();
  const std::string c = compensated_.to_string(), k = stuck_.to_string();
  const auto r = sagactl({"--db", url_, "show", c});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string t = "2023-11-14T22:13:20.000Z";
  EXPECT_EQ(
      r.out,
      lines({
          "1   " + t + "          saga_started                                   order v1 input " + declined_input +
              " key o-declined",
          "2   " + t +
              R"( +0ms     step_requested           create_order      #1  -> orders create_order {"amount_cents":100,"customer":"declined","order_id":"o-declined"}  [)" +
              c + ":2]",
          "3   " + t + " +0ms     step_succeeded           create_order      #1  reply {}  [" + c + ":2]",
          "4   " + t +
              R"( +0ms     step_requested           reserve_inventory #1  -> inventory reserve_inventory {"order_id":"o-declined","quantity":1,"sku":"s"}  [)" +
              c + ":4]",
          "5   " + t + R"( +0ms     step_succeeded           reserve_inventory #1  reply {"reservation_id":"r-1"}  [)" +
              c + ":4]",
          "6   " + t +
              R"( +0ms     step_requested           charge_payment    #1  -> payments charge_payment {"amount_cents":100,"customer":"declined","order_id":"o-declined"}  [)" +
              c + ":6]",
          "7   " + t + " +0ms     step_failed              charge_payment    #1  failed: card declined  [" + c + ":6]",
          "8   " + t +
              " +0ms     compensation_started     charge_payment        step 'charge_payment' failed after 1 attempt: "
              "card declined",
          "9   " + t +
              R"( +0ms     compensation_requested   reserve_inventory #1  -> inventory release_inventory {"order_id":"o-declined"}  (undoes reserve_inventory #5)  [)" +
              c + ":9]",
          "10  " + t + " +0ms     compensation_succeeded   reserve_inventory #1  undone  [" + c + ":9]",
          "11  " + t +
              R"( +0ms     compensation_requested   create_order      #1  -> orders cancel_order {"order_id":"o-declined"}  (undoes create_order #3)  [)" +
              c + ":11]",
          "12  " + t + " +0ms     compensation_succeeded   create_order      #1  undone  [" + c + ":11]",
          "13  " + t +
              " +0ms     saga_compensated                               step 'charge_payment' failed after 1 attempt: "
              "card declined",
          "",
          "saga " + c + "  order v1  status compensated  at seq 13",
          "  reason: step 'charge_payment' failed after 1 attempt: card declined",
          "  data: " + declined_data,
          "  step create_order: compensated (attempt 1, compensation attempt 1)",
          "  step reserve_inventory: compensated (attempt 1, compensation attempt 1)",
          "  step charge_payment: failed (attempt 1)",
      }));

  const auto s = sagactl({"--db", url_, "show", k});
  ASSERT_EQ(s.status, 0) << s.err;
  const std::string t1 = "2023-11-14T22:14:20.000Z", t2 = "2023-11-14T22:14:22.000Z";
  std::istringstream in(s.out);
  std::vector<std::string> got;
  for (std::string l; std::getline(in, l);) got.push_back(l);
  ASSERT_EQ(got.size(), 22u) << s.out;
  EXPECT_EQ(
      got[0],
      "1   " + t1 + "          saga_started                                   order v1 input " +
          R"({"address":"nowhere","amount_cents":100,"customer":"ok","order_id":"o-nowhere","payment_id":"","quantity":1,"reservation_id":"","sku":"s","tracking_number":""})" +
          " key o-nowhere");
  EXPECT_EQ(
      got[7],
      "8   " + t1 +
          R"( +0ms     step_requested           ship_order        #1  -> shipping ship_order {"address":"nowhere","order_id":"o-nowhere","quantity":1,"sku":"s"}  [)" +
          k + ":8]");
  EXPECT_EQ(
      got[8],
      "9   " + t2 + " +2.0s    step_failed              ship_order        #1  failed: address invalid  [" + k + ":8]");
  EXPECT_EQ(got[9], "10  " + t2 +
                        " +0ms     compensation_started     ship_order            step 'ship_order' failed after 1 "
                        "attempt: address invalid");
  EXPECT_EQ(
      got[10],
      "11  " + t2 +
          R"( +0ms     compensation_requested   charge_payment    #1  -> payments refund_payment {"order_id":"o-nowhere"}  (undoes charge_payment #7)  [)" +
          k + ":11]");
  EXPECT_EQ(got[11], "12  " + t2 + " +0ms     compensation_failed      charge_payment    #1  failed: ledger closed  [" +
                         k + ":11]");
  EXPECT_EQ(got[12], "13  " + t2 +
                         " +0ms     saga_stuck               charge_payment        compensation of step "
                         "'charge_payment' failed: ledger closed");
  EXPECT_EQ(std::vector<std::string>(got.begin() + 13, got.end()),
            (std::vector<std::string>{
                "",
                "saga " + k + "  order v1  status stuck  at seq 13",
                "  reason: step 'ship_order' failed after 1 attempt: address invalid",
                "  stuck at charge_payment: compensation of step 'charge_payment' failed: ledger closed",
                "  data: " + nowhere_data,
                "  step create_order: succeeded (attempt 1)",
                "  step reserve_inventory: succeeded (attempt 1)",
                "  step charge_payment: compensation_failed (attempt 1, compensation attempt 1)",
                "  step ship_order: failed (attempt 1)",
            }));

  // --json: the state and every stored event, with its hash.
  const auto j = sagactl({"--db", url_, "show", k, "--json"});
  ASSERT_EQ(j.status, 0) << j.err;
  const std::string state = json_member(j.out, "state");
  EXPECT_EQ(json_string_member(state, "status"), "stuck");
  EXPECT_EQ(json_uint_member(state, "seq"), 13u);
  EXPECT_EQ(json_string_member(state, "stuck_reason"), "compensation of step 'charge_payment' failed: ledger closed");
}

TEST_F(sagactl_pg, replay_at_a_seq_or_a_time_prints_the_state_as_it_was_then) {
  run_compensated_and_stuck();
  const std::string c = compensated_.to_string(), k = stuck_.to_string();
  const auto at9 = sagactl({"--db", url_, "replay", c, "--at", "9"});
  ASSERT_EQ(at9.status, 0) << at9.err;
  EXPECT_EQ(at9.out, lines({
                         "saga " + c + "  order v1  status compensating  at seq 9",
                         "  reason: step 'charge_payment' failed after 1 attempt: card declined",
                         "  data: " + declined_data,
                         "  step create_order: succeeded (attempt 1)",
                         "  step reserve_inventory: compensating (attempt 1, compensation attempt 1)",
                         "  step charge_payment: failed (attempt 1)",
                     }));
  // One second after the stuck order was placed: shipping had not answered yet (it did at +2 s).
  const auto at_time = sagactl({"--db", url_, "replay", k, "--at", "2023-11-14T22:14:21Z"});
  ASSERT_EQ(at_time.status, 0) << at_time.err;
  EXPECT_EQ(
      at_time.out,
      lines({
          "saga " + k + "  order v1  status running  at seq 8",
          "  data: " +
              std::string(
                  R"({"address":"nowhere","amount_cents":100,"customer":"ok","order_id":"o-nowhere","payment_id":"p-1","quantity":1,"reservation_id":"r-1","sku":"s","tracking_number":""})"),
          "  step create_order: succeeded (attempt 1)",
          "  step reserve_inventory: succeeded (attempt 1)",
          "  step charge_payment: succeeded (attempt 1)",
          "  step ship_order: running (attempt 1)",
      }));
  // Milliseconds since the epoch name the same instant; --json is the same state as data.
  const auto ms = sagactl({"--db", url_, "replay", k, "--at", std::to_string(t0_ms + 61'000), "--json"});
  ASSERT_EQ(ms.status, 0) << ms.err;
  EXPECT_EQ(json_string_member(ms.out, "status"), "running");
  EXPECT_EQ(json_uint_member(ms.out, "seq"), 8u);

  const auto bad = sagactl({"--db", url_, "replay", k, "--at", "2023-11-14 22:14"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_TRUE(has(bad.err, "malformed time for --at '2023-11-14 22:14'")) << bad.err;
}

TEST_F(sagactl_pg, list_filters_by_type_status_and_start_time_and_counts_by_status) {
  run_compensated_and_stuck();
  const std::string cl = compensated_.to_string() + "  order v1  compensated  seq 13  started 2023-11-14T22:13:20.000Z";
  const std::string kl = stuck_.to_string() + "  order v1  stuck  seq 13  started 2023-11-14T22:14:20.000Z";
  auto list = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"--db", url_, "list"});
    const auto r = sagactl(args);
    EXPECT_EQ(r.status, 0) << r.err;
    return r.out;
  };
  EXPECT_EQ(list({}), lines({cl, kl}));
  EXPECT_EQ(list({"--type", "order"}), lines({cl, kl}));
  EXPECT_EQ(list({"--type", "refund"}), "");
  EXPECT_EQ(list({"--status", "stuck"}), lines({kl}));
  EXPECT_EQ(list({"--status", "compensated"}), lines({cl}));
  EXPECT_EQ(list({"--status", "running"}), "");
  EXPECT_EQ(list({"--from", "2023-11-14T22:13:00Z", "--to", "2023-11-14T22:14:00Z"}), lines({cl}));
  EXPECT_EQ(list({"--from", "2023-11-14T22:14:00Z", "--to", "2023-11-14T22:15:00Z"}), lines({kl}));
  EXPECT_EQ(list({"--from", "2023-11-14T22:13:20.000Z", "--to", "2023-11-14T22:14:20.000Z"}), lines({cl, kl}));
  EXPECT_EQ(list({"--from", "2023-11-14T22:14:21Z"}), "");
  EXPECT_EQ(list({"--status", "stuck", "--to", "2023-11-14T22:14:00Z"}), "");
  EXPECT_EQ(list({"--limit", "1"}), lines({cl}));
  EXPECT_EQ(list({"--counts"}), "compensated\t1\nstuck\t1\n");
  EXPECT_EQ(list({"--counts", "--json"}), "{\"compensated\":1,\"stuck\":1}\n");
  EXPECT_EQ(list({"--counts", "--type", "refund", "--json"}), "{}\n");
  const auto js = list({"--status", "stuck", "--json"});
  EXPECT_EQ(json_string_member(js, "id"), stuck_.to_string());
  EXPECT_EQ(json_string_member(js, "started_at"), "2023-11-14T22:14:20.000Z");
  EXPECT_EQ(json_uint_member(js, "last_seq"), 13u);

  const auto bad = sagactl({"--db", url_, "list", "--from", "yesterday"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_TRUE(has(bad.err, "malformed time for --from 'yesterday'")) << bad.err;
}

TEST_F(sagactl_pg, partitions_shows_the_recorded_count_and_exits_1_for_a_saga_placed_beyond_it) {
  run_compensated_and_stuck();  // over the memory transport, which records no count: the stuck order shows anyway
  const auto none = sagactl({"--db", url_, "partitions"});
  EXPECT_EQ(none.status, 0) << none.err;
  EXPECT_EQ(none.out,
            "order  no reply partition count recorded (an orchestrator records it when it runs)  1 unfinished, highest "
            "partition 0\n");
  ASSERT_EQ(store_->reply_partition_count("order", 3), 3);
  const auto recorded = sagactl({"--db", url_, "partitions", "--json"});
  EXPECT_EQ(recorded.status, 0) << recorded.err;
  EXPECT_TRUE(has(recorded.out, "{\"type\":\"order\",\"recorded\":3,\"recorded_at\":\"20")) << recorded.out;
  EXPECT_TRUE(has(recorded.out, "\"unfinished\":1,\"highest_partition\":0,\"misplaced\":false}\n")) << recorded.out;
  // A running saga of another type on partition 5, whose type's count is then recorded as 2 (the topic shrank while
  // it was unfinished): no orchestrator owns it, and sagactl says so.
  (void)store_->append({saga_id::from_words(9, 9),
                        "other",
                        0,
                        {event{1, clock_->now(), events::saga_started{"other", 1, "f", "{}", ""}}},
                        saga_status::running,
                        5,
                        {}});
  ASSERT_EQ(store_->reply_partition_count("other", 2), 2);
  const auto misplaced = sagactl({"--db", url_, "partitions"});
  EXPECT_EQ(misplaced.status, 1);
  EXPECT_TRUE(has(misplaced.out, "order  placed over 3 reply partitions (since 20")) << misplaced.out;
  EXPECT_TRUE(has(misplaced.out, "other  placed over 2 reply partitions (since ")) << misplaced.out;
  EXPECT_TRUE(has(misplaced.out,
                  "1 unfinished, highest partition 5\n  MISPLACED: an unfinished saga is on partition 5, "
                  "beyond the 2 recorded"))
      << misplaced.out;
  const auto one = sagactl({"--db", url_, "partitions", "--type", "order"});
  EXPECT_EQ(one.status, 0) << one.out;
  EXPECT_TRUE(has(one.out, "order  placed over 3 reply partitions (since 20")) << one.out;
  EXPECT_TRUE(has(one.out, "1 unfinished, highest partition 0\n")) << one.out;
  EXPECT_FALSE(has(one.out, "other")) << one.out;
  // The other saga ends: nothing of its type is unfinished, and the record stays.
  (void)store_->append({saga_id::from_words(9, 9),
                        "other",
                        1,
                        {event{2, clock_->now(), events::saga_completed{"{}"}}},
                        saga_status::completed,
                        5,
                        {}});
  const auto done = sagactl({"--db", url_, "partitions", "--type", "other", "--json"});
  EXPECT_EQ(done.status, 0) << done.out;
  EXPECT_TRUE(has(done.out, "\"recorded\":2,")) << done.out;
  EXPECT_TRUE(has(done.out, "\"unfinished\":0,\"highest_partition\":null,\"misplaced\":false}\n")) << done.out;
}

// Untouched, then after one act of tampering (`statements`, run with the append-only trigger disabled):
// verify names the saga and the first bad seq, as text and as JSON, and exits 1.
class sagactl_tamper : public sagactl_pg {
 protected:
  void check(const std::function<std::vector<std::string>(const std::string& saga)>& statements, std::uint64_t bad_seq,
             const std::string& why_part) {
    run_compensated_and_stuck();
    const auto ok = sagactl({"--db", url_, "verify", "--all"});
    EXPECT_EQ(ok.status, 0) << ok.out << ok.err;
    EXPECT_EQ(ok.out, "26 events of 2 sagas checked; 0 broken\n");
    const auto ok_json = sagactl({"--db", url_, "verify", "--all", "--json"});
    EXPECT_EQ(ok_json.status, 0);
    const auto okj = from_json<verify_json>(ok_json.out);
    EXPECT_TRUE(okj.ok);
    EXPECT_EQ(okj.sagas, 2u);
    EXPECT_EQ(okj.events, 26u);
    EXPECT_TRUE(okj.broken.empty());

    const std::string c = compensated_.to_string();
    tamper(statements(c));
    // The trigger is back: the log refuses changes again.
    EXPECT_THROW(sql("DELETE FROM saga_events WHERE saga_id = '" + c + "'"), storage::store_error);

    const auto all = sagactl({"--db", url_, "verify", "--all"});
    EXPECT_EQ(all.status, 1) << all.out;
    EXPECT_TRUE(has(all.out, "BROKEN saga " + c + " at seq " + std::to_string(bad_seq) + ": " + why_part)) << all.out;
    EXPECT_FALSE(has(all.out, "BROKEN saga " + stuck_.to_string())) << all.out;
    EXPECT_TRUE(has(all.out, " events of 2 sagas checked; 1 broken\n")) << all.out;

    const auto one = sagactl({"--db", url_, "verify", "--saga", c, "--json"});
    EXPECT_EQ(one.status, 1) << one.out;
    const auto j = from_json<verify_json>(one.out);
    EXPECT_FALSE(j.ok);
    EXPECT_EQ(j.sagas, 1u);
    ASSERT_EQ(j.broken.size(), 1u) << one.out;
    EXPECT_EQ(j.broken[0].saga, c);
    EXPECT_EQ(j.broken[0].seq, bad_seq);
    EXPECT_TRUE(has(j.broken[0].why, why_part)) << j.broken[0].why;
    EXPECT_EQ(sagactl({"--db", url_, "verify", "--saga", stuck_.to_string()}).status, 0);
  }
};

TEST_F(sagactl_tamper, verify_names_the_saga_and_seq_after_a_row_is_altered) {
  check(
      [](const std::string& c) {
        return std::vector<std::string>{
            "UPDATE saga_events SET payload = jsonb_set(payload, '{reason}', "
            "'\"card accepted\"') WHERE saga_id = '" +
            c + "' AND seq = 7"};
      },
      7, "hash does not match the event's contents (altered)");
}

TEST_F(sagactl_tamper, verify_names_the_saga_and_seq_after_a_row_is_deleted) {
  check(
      [](const std::string& c) {
        return std::vector<std::string>{"DELETE FROM saga_events WHERE saga_id = '" + c + "' AND seq = 5"};
      },
      5, "expected seq 5 but found seq 6 (events missing)");
}

TEST_F(sagactl_tamper, verify_names_the_saga_and_seq_after_two_rows_seqs_are_swapped) {
  check(
      [](const std::string& c) {
        const std::string where = " WHERE saga_id = '" + c + "' AND seq = ";
        return std::vector<std::string>{"UPDATE saga_events SET seq = 1000" + where + "5",
                                        "UPDATE saga_events SET seq = 5" + where + "6",
                                        "UPDATE saga_events SET seq = 6" + where + "1000"};
      },
      5, "prev_hash does not match the hash of seq 4");
}

TEST_F(sagactl_pg, export_then_verify_file_round_trips_and_one_changed_byte_is_caught) {
  run_compensated_and_stuck();
  const auto exported = sagactl({"--db", url_, "export"});
  ASSERT_EQ(exported.status, 0) << exported.err;
  // 26 events, the two sagas' heads and the end record.
  EXPECT_EQ(std::count(exported.out.begin(), exported.out.end(), '\n'), 26 + 2 + 1);
  const std::string path =
      std::string(SAGA_BINARY_DIR) + "/sagactl_test_export_" + std::to_string(::getpid()) + ".jsonl";
  std::ofstream(path) << exported.out;
  // No database needed: SAGA_PG_URL is unset and no --db is given.
  const auto good = sagactl({"verify", "--file", path});
  EXPECT_EQ(good.status, 0) << good.out << good.err;
  EXPECT_EQ(good.out, "26 events of 2 sagas checked; all chains verify\n");

  std::string altered = exported.out;
  const auto pos = altered.find("ledger closed");
  ASSERT_NE(pos, std::string::npos);
  altered[pos] = 'L';  // one byte, in the stuck saga's compensation_failed event
  std::ofstream(path) << altered;
  const auto bad = sagactl({"verify", "--file", path});
  EXPECT_EQ(bad.status, 1) << bad.out;
  EXPECT_TRUE(has(bad.out, "BROKEN saga " + stuck_.to_string() + " at seq 12: ")) << bad.out;
  EXPECT_TRUE(has(bad.out, "the export is NOT intact")) << bad.out;
  const auto bad_json = sagactl({"verify", "--file", path, "--json"});
  EXPECT_EQ(bad_json.status, 1);
  const auto j = from_json<verify_json>(bad_json.out);
  EXPECT_FALSE(j.ok);
  EXPECT_EQ(j.events, 26u);
  ASSERT_EQ(j.broken.size(), 1u) << bad_json.out;
  EXPECT_EQ(j.broken[0].saga, stuck_.to_string());
  EXPECT_EQ(j.broken[0].seq, 12u);

  const auto one = sagactl({"--db", url_, "export", "--saga", compensated_.to_string()});
  EXPECT_EQ(std::count(one.out.begin(), one.out.end(), '\n'), 13 + 1 + 1);
  EXPECT_FALSE(has(one.out, stuck_.to_string()));
  std::remove(path.c_str());
}

TEST_F(sagactl_pg, retry_without_kafka_records_it_and_the_orchestrator_sends_the_refund_when_it_recovers) {
  run_compensated_and_stuck();
  refunds_fail_ = false;  // the ledger reopened
  const auto r =
      sagactl({"--db", url_, "retry", stuck_.to_string(), "--reason", "ledger reopened", "--operator", "ops"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "recorded seq 14 operator_action_recorded\n")) << r.out;
  EXPECT_TRUE(has(r.out,
                  "note: no transport configured (SAGA_KAFKA_BROKERS is not set); 1 command(s) recorded but "
                  "not sent: an orchestrator that holds this saga sends them at its next reply or deadline for it"))
      << r.out;
  EXPECT_TRUE(has(r.out, "saga " + stuck_.to_string() + " is now compensating\n")) << r.out;
  // The running orchestrator was not told; it sends the refund when it recovers the saga (here: its restart).
  const auto sent_before = bus_.sent_commands().size();
  stop_orchestrator();
  start_orchestrator();
  ASSERT_TRUE(pump_until([&] { return state(stuck_).status == saga_status::compensated; }));
  const auto sent = bus_.sent_commands();
  ASSERT_GT(sent.size(), sent_before);
  EXPECT_EQ(sent[sent_before].command_type, "refund_payment");
  const auto log = store_->load(stuck_);
  const auto action = std::get<events::operator_action_recorded>(log.at(13).to_event().body);
  EXPECT_EQ(action.action, "retry");
  EXPECT_EQ(action.operator_name, "ops");
  EXPECT_EQ(action.reason, "ledger reopened");
  const auto show = sagactl({"--db", url_, "show", stuck_.to_string()});
  EXPECT_TRUE(
      has(show.out, "operator_action_recorded charge_payment        retry compensation by ops: ledger reopened"))
      << show.out;
  EXPECT_TRUE(has(show.out, "status compensated")) << show.out;
}

// The same retry made in-process on the orchestrator's clock: the running orchestrator is not told, and its orphan
// sweep (PostgreSQL's listing of unfinished sagas, by the time of their last event) finds the saga once it has been
// unchanged for orchestrator_options::orphan_sweep and sends the refund, without a restart.
TEST_F(sagactl_pg, retry_without_kafka_is_sent_by_the_running_orchestrators_orphan_sweep) {
  run_compensated_and_stuck();
  refunds_fail_ = false;
  const auto r = cli({"retry", stuck_.to_string(), "--reason", "ledger reopened"}, {order_processing::order_saga()});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_TRUE(has(r.out, "recorded but not sent")) << r.out;
  const auto sent_before = bus_.sent_commands().size();
  ASSERT_TRUE(pump_until([&] {
    clock_->advance(1s);
    return state(stuck_).status == saga_status::compensated;
  })) << "the running orchestrator never sent the refund the retry recorded";
  const auto sent = bus_.sent_commands();
  ASSERT_GT(sent.size(), sent_before);
  EXPECT_EQ(sent[sent_before].command_type, "refund_payment");
  EXPECT_EQ(orchestrator_->stats().sagas_swept.load(), 1u);
}

TEST_F(sagactl_pg, retry_with_a_transport_sends_the_refund_and_the_running_orchestrator_finishes_the_saga) {
  run_compensated_and_stuck();
  refunds_fail_ = false;
  auto env_cli = [this](const std::vector<std::string>& args) {
    cli::environment env;
    env.open_store = [](const std::string& url) { return std::make_unique<storage::postgres_event_store>(url); };
    env.open_transport = [this] { return std::make_unique<lent_bus>(bus_); };
    env.definitions = {order_processing::order_saga()};
    env.default_url = url_;
    env.user = "tester";
    env.now = [this] { return clock_->now(); };
    std::ostringstream out, err;
    const int status = cli::run(args, env, out, err);
    return result{status, out.str(), err.str()};
  };
  const auto r = env_cli({"retry", stuck_.to_string(), "--reason", "ledger reopened"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "sent 1 of 1 command(s)")) << r.out;
  ASSERT_TRUE(pump_until([&] { return state(stuck_).status == saga_status::compensated; }));
}

// The sagactl program with SAGA_KAFKA_BROKERS (the embedded broker, or the cluster the variable names): the
// refund a retry asks for reaches the payments service's topic, answering to the orchestrators' reply topic.
TEST_F(sagactl_pg, retry_with_kafka_sends_the_command_to_the_participants_topic) {
  transport::dev_broker broker(SAGA_KAFKA_DEV_PROGRAM);
  const std::string prefix =
      "sagactl" + std::to_string(::getpid()) + "-" + std::to_string(pg_test::random_word() % 100000);
  run_compensated_and_stuck();
  refunds_fail_ = false;

  transport::kafka_config config;
  config.bootstrap_servers = broker.bootstrap_servers();
  config.topic_prefix = prefix;
  config.group_id = "payments-" + prefix;
  config.client_id = "payments";
  config.properties["consumer.auto.offset.reset"] = "earliest";  // whatever arrives before the group settles
  config.log = transport::stderr_logger(transport::log_level::warning);
  transport::kafka_transport payments(config);
  std::mutex m;
  std::condition_variable cv;
  std::vector<transport::command_message> received;
  payments.on_command("payments", [&](transport::command_message c, transport::handled_callback handled) {
    {
      std::lock_guard lock(m);
      received.push_back(std::move(c));
    }
    cv.notify_all();
    handled();
  });

  const auto r = sagactl({"--db", url_, "retry", stuck_.to_string(), "--reason", "ledger reopened"},
                         {{"SAGA_KAFKA_BROKERS", broker.bootstrap_servers()}, {"SAGA_KAFKA_PREFIX", prefix}});
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "sent 1 of 1 command(s)\n")) << r.out;
  EXPECT_FALSE(has(r.out, "note:")) << r.out;

  std::unique_lock lock(m);
  ASSERT_TRUE(cv.wait_for(lock, 60s, [&] { return !received.empty(); }))
      << "no command on " << prefix << ".payments.commands";
  const auto& c = received.front();
  EXPECT_EQ(c.saga, stuck_);
  EXPECT_EQ(c.command_type, "refund_payment");
  EXPECT_EQ(c.reply_to, prefix + ".order.replies");
  const auto log = store_->load(stuck_);
  const auto requested = std::get<events::compensation_requested>(log.back().to_event().body);
  EXPECT_EQ(c.command_id, requested.command_id);
  lock.unlock();
  payments.stop();
}

TEST_F(sagactl_pg, skip_records_the_reason_and_the_saga_finishes) {
  run_compensated_and_stuck();
  const auto r = sagactl({"--db", url_, "skip", stuck_.to_string(), "--step", "charge_payment", "--reason",
                          "refunded by hand", "--operator", "ops"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "recorded seq 14 operator_action_recorded\n")) << r.out;
  // The remaining compensations are left to the orchestrator (no Kafka here): it recovers the saga on restart.
  stop_orchestrator();
  start_orchestrator();
  ASSERT_TRUE(pump_until([&] { return state(stuck_).status == saga_status::compensated; }));
  const auto st = state(stuck_);
  EXPECT_EQ(to_string(st.find("charge_payment")->phase), std::string("compensation_skipped"));
  const auto show = sagactl({"--db", url_, "show", stuck_.to_string()});
  EXPECT_TRUE(has(show.out, "skip compensation by ops: refunded by hand")) << show.out;
  EXPECT_TRUE(has(show.out, "status compensated")) << show.out;
  const auto again = sagactl({"--db", url_, "skip", stuck_.to_string(), "--step", "charge_payment"});
  EXPECT_EQ(again.status, 2);
  EXPECT_TRUE(has(again.err, "skip needs --step STEP and --reason R")) << again.err;
}

TEST_F(sagactl_pg, cancel_before_the_pivot_compensates) {
  refunds_fail_ = false;
  start_orchestrator();
  const saga_id id = run_until_held(make_order("o-cancel", "ok", "1 Main St"), "charge_payment");
  const auto r = sagactl({"--db", url_, "cancel", id.to_string(), "--reason", "customer called", "--operator", "ops"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(has(r.out, "cancel_requested")) << r.out;
  // The charge answers late; the saga has been cancelled meanwhile, so everything done is undone.
  answer_held("charge_payment", outcome::success, {}, R"({"payment_id":"p-1"})");
  ASSERT_TRUE(pump_until([&] { return state(id).status == saga_status::compensated; }))
      << sagactl({"--db", url_, "show", id.to_string()}).out;
  EXPECT_EQ(state(id).reason, "cancelled by ops: customer called");
}

TEST_F(sagactl_pg, cancel_after_the_pivot_is_refused_with_the_reason) {
  start_orchestrator();
  // Shipped (the pivot ran), waiting for approve_order: running, not finished.
  const saga_id id = run_until_held(make_order("o-late", "ok", "1 Main St"), "approve_order");
  ASSERT_EQ(state(id).status, saga_status::running);
  const auto before = count("saga_events");
  const auto r = sagactl({"--db", url_, "cancel", id.to_string(), "--reason", "too late"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "sagactl: refused: cannot cancel saga " + id.to_string() +
                       ": pivot step 'ship_order' was already requested, so the saga can only go forward\n");
  EXPECT_EQ(count("saga_events"), before);
}

TEST_F(sagactl_pg, replay_verify_definition_flags_a_renamed_and_a_reordered_step) {
  run_compensated_and_stuck();
  const auto same = cli({"replay", "--all", "--verify-definition"}, {order_processing::order_saga()});
  EXPECT_EQ(same.status, 0) << same.out << same.err;
  EXPECT_EQ(same.out, "2 of 2 sagas replay exactly under the registered definitions\n");

  // Version 1 again, with reserve_inventory renamed to reserve_stock.
  const auto renamed =
      saga::define<order>("order", 1)
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
          .on_reply([](order& o, const order_processing::inventory_reserved& reply) {
            o.reservation_id = reply.reservation_id;
          })
          .compensate("inventory", "release_inventory",
                      [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .step("charge_payment")
          .invoke("payments", "charge_payment",
                  [](const order& o) {
                    return order_processing::charge_payment{o.order_id, o.customer, o.amount_cents};
                  })
          .on_reply([](order& o, const order_processing::payment_charged& reply) { o.payment_id = reply.payment_id; })
          .compensate("payments", "refund_payment",
                      [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .step("ship_order")
          .pivot()
          .invoke("shipping", "ship_order",
                  [](const order& o) {
                    return order_processing::ship_order{o.order_id, o.sku, o.address, o.quantity};
                  })
          .step("approve_order")
          .retriable()
          .invoke("orders", "approve_order", [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .build();
  const auto r = cli({"replay", compensated_.to_string(), "--verify-definition"}, {renamed});
  EXPECT_EQ(r.status, 1) << r.out << r.err;
  EXPECT_TRUE(has(r.out, compensated_.to_string() + ": seq 4 differs\n")) << r.out;
  EXPECT_TRUE(has(r.out, "reserve_stock")) << r.out;
  EXPECT_TRUE(has(r.out, "0 of 1 sagas replay exactly")) << r.out;

  // Version 1 again, with reserve_inventory and charge_payment swapped.
  const auto reordered =
      saga::define<order>("order", 1)
          .step("create_order")
          .invoke("orders", "create_order",
                  [](const order& o) {
                    return order_processing::create_order{o.order_id, o.customer, o.amount_cents};
                  })
          .compensate("orders", "cancel_order", [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .step("charge_payment")
          .invoke("payments", "charge_payment",
                  [](const order& o) {
                    return order_processing::charge_payment{o.order_id, o.customer, o.amount_cents};
                  })
          .on_reply([](order& o, const order_processing::payment_charged& reply) { o.payment_id = reply.payment_id; })
          .compensate("payments", "refund_payment",
                      [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .step("reserve_inventory")
          .invoke("inventory", "reserve_inventory",
                  [](const order& o) {
                    return order_processing::reserve_inventory{o.order_id, o.sku, o.quantity};
                  })
          .on_reply([](order& o, const order_processing::inventory_reserved& reply) {
            o.reservation_id = reply.reservation_id;
          })
          .compensate("inventory", "release_inventory",
                      [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .step("ship_order")
          .pivot()
          .invoke("shipping", "ship_order",
                  [](const order& o) {
                    return order_processing::ship_order{o.order_id, o.sku, o.address, o.quantity};
                  })
          .step("approve_order")
          .retriable()
          .invoke("orders", "approve_order", [](const order& o) { return order_processing::order_ref{o.order_id}; })
          .build();
  const auto j = cli({"replay", "--all", "--verify-definition", "--json"}, {reordered});
  EXPECT_EQ(j.status, 1) << j.out << j.err;
  const auto report = from_json<definition_check_json>(j.out);
  EXPECT_FALSE(report.ok);
  EXPECT_EQ(report.sagas, 2u);
  EXPECT_EQ(report.exact, 0u);
  ASSERT_EQ(report.mismatches.size(), 2u) << j.out;
  EXPECT_EQ(report.mismatches[0].saga, compensated_.to_string());
  EXPECT_EQ(report.mismatches[0].seq, 4u);
  EXPECT_TRUE(has(report.mismatches[0].expected, "charge_payment")) << report.mismatches[0].expected;
  EXPECT_TRUE(has(report.mismatches[0].recorded, "reserve_inventory")) << report.mismatches[0].recorded;
  EXPECT_EQ(report.mismatches[1].saga, stuck_.to_string());
  EXPECT_EQ(report.mismatches[1].seq, 4u);
  EXPECT_TRUE(report.unchecked.empty());

  const auto none = cli({"replay", "--all", "--verify-definition", "--json"}, {});
  EXPECT_EQ(none.status, 1);
  const auto unchecked = from_json<definition_check_json>(none.out);
  ASSERT_EQ(unchecked.unchecked.size(), 2u) << none.out;
  EXPECT_EQ(unchecked.unchecked[0].type, "order");
  EXPECT_EQ(unchecked.unchecked[0].version, 1u);
}

class sagactl_fresh : public sagactl_pg {
 protected:
  [[nodiscard]] bool migrate_on_setup() const override { return false; }
};

TEST_F(sagactl_fresh, migrate_applies_the_migrations_and_is_a_no_op_the_second_time) {
  const auto first = sagactl({"--db", url_, "migrate"});
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_EQ(first.out, "applied: 0001_event_log.sql 0002_participant_inbox.sql 0003_reply_partition_counts.sql\n");
  EXPECT_EQ(count("saga_events"), "0");
  const auto second = sagactl({"migrate"}, {{"SAGA_PG_URL", url_}});  // the URL from the environment this time
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_EQ(second.out, "the schema is up to date\n");
}

// A migration lock held by another session (a hung service start) made `sagactl migrate` wait five minutes with
// no way to say less.
TEST_F(sagactl_fresh, migrate_waits_at_most_lock_wait_for_another_sessions_lock_and_names_it) {
  storage::postgres_session holder(url_);
  const std::string pid = *holder.exec("SELECT pg_backend_pid()").at(0).at(0);
  (void)holder.exec("SELECT pg_advisory_lock(8314040054174280039)");  // the key migrate.cpp uses
  const auto busy = sagactl({"--db", url_, "migrate", "--lock-wait", "1"});
  EXPECT_EQ(busy.status, 1) << busy.out << busy.err;
  EXPECT_TRUE(has(busy.err, "held the migration lock for longer than 1000 ms")) << busy.err;
  EXPECT_TRUE(has(busy.err, "pid " + pid)) << busy.err;
  EXPECT_EQ(busy.out, "");
  EXPECT_EQ(count("pg_tables WHERE tablename = 'saga_migrations' AND schemaname = current_schema()"),
            "0");  // nothing applied
  for (const std::string bad : {"", "-1", "1.5", "soon", "86401"}) {
    const auto r = sagactl({"--db", url_, "migrate", "--lock-wait", bad});
    EXPECT_EQ(r.status, 2) << bad << ": " << r.err;
    EXPECT_TRUE(has(r.err, "--lock-wait")) << r.err;
  }
  (void)holder.exec("SELECT pg_advisory_unlock(8314040054174280039)");
  const auto free = sagactl({"--db", url_, "migrate", "--lock-wait", "0"});
  EXPECT_EQ(free.status, 0) << free.err;
  EXPECT_TRUE(has(free.out, "applied: 0001_event_log.sql")) << free.out;
}

TEST(sagactl_program, each_subcommand_has_its_own_help) {
  for (const std::string command :
       {"migrate", "list", "show", "replay", "verify", "export", "retry", "skip", "cancel"}) {
    const auto r = sagactl({command, "--help"});
    EXPECT_EQ(r.status, 0) << command << ": " << r.err;
    EXPECT_EQ(r.out.rfind("usage: sagactl [--db URL] " + command, 0), 0u) << r.out;
    EXPECT_FALSE(has(r.out, "commands:")) << r.out;  // that command's usage, not the whole list
    EXPECT_EQ(sagactl({"help", command}).out, r.out);
  }
  EXPECT_TRUE(has(sagactl({"verify", "--help"}).out, "--json")) << sagactl({"verify", "--help"}).out;
  const auto all = sagactl({"--help"});
  EXPECT_EQ(all.status, 0);
  EXPECT_TRUE(has(all.out, "commands:"));
  const auto none = sagactl({});
  EXPECT_EQ(none.status, 2);
  const auto unknown = sagactl({"frobnicate", "--help"});
  EXPECT_EQ(unknown.status, 2);
  EXPECT_TRUE(has(unknown.err, "unknown command 'frobnicate'")) << unknown.err;
}

TEST_F(sagactl_pg, errors_name_what_is_wrong_and_read_only_commands_write_nothing) {
  run_compensated_and_stuck();
  stop_orchestrator();
  auto snapshot = [this] {
    return *storage::postgres_session(url_)
                .exec(
                    "SELECT count(*)::text || ' ' || coalesce(max(position), 0)::text || ' ' || "
                    "(SELECT string_agg(id::text || status || last_seq || updated_at, ',' ORDER BY id) "
                    "FROM saga_instances) FROM saga_events")
                .at(0)
                .at(0);
  };
  const std::string before = snapshot();
  const std::string k = stuck_.to_string();
  for (const auto& args : std::vector<std::vector<std::string>>{{"show", k},
                                                                {"show", k, "--json"},
                                                                {"list"},
                                                                {"list", "--counts"},
                                                                {"replay", k, "--at", "3"},
                                                                {"replay", "--all", "--verify-definition"},
                                                                {"verify", "--all"},
                                                                {"export"}}) {
    std::vector<std::string> with_db{"--db", url_};
    with_db.insert(with_db.end(), args.begin(), args.end());
    EXPECT_EQ(sagactl(with_db).status, 0) << args[0];
  }
  EXPECT_EQ(snapshot(), before);

  const std::string missing = pg_test::random_saga_id().to_string();
  const auto unknown = sagactl({"--db", url_, "show", missing});
  EXPECT_EQ(unknown.status, 1);
  EXPECT_EQ(unknown.err, "sagactl: no saga " + missing + "\n");
  EXPECT_EQ(sagactl({"--db", url_, "retry", missing}).err, "sagactl: no saga " + missing + "\n");
  const auto malformed = sagactl({"--db", url_, "show", "not-a-uuid"});
  EXPECT_EQ(malformed.status, 2);
  EXPECT_TRUE(has(malformed.err, "'not-a-uuid' is not a saga id")) << malformed.err;
  const auto no_db = sagactl({"list"});
  EXPECT_EQ(no_db.status, 2);
  EXPECT_TRUE(has(no_db.err, "no database: give --db URL or set SAGA_PG_URL")) << no_db.err;
  // Nothing listens on port 1.
  const auto down = sagactl({"--db", "postgresql://saga:secret@127.0.0.1:1/saga", "list"});
  EXPECT_EQ(down.status, 1);
  EXPECT_TRUE(has(down.err, "postgresql://saga:***@127.0.0.1:1/saga")) << down.err;
  EXPECT_TRUE(has(down.err, "sagactl: the database at postgresql://saga:***@127.0.0.1:1/saga is unreachable: "))
      << down.err;
  EXPECT_FALSE(has(down.err, "secret")) << down.err;
  EXPECT_EQ(snapshot(), before);
}

}  // namespace
