// The participant inbox against a real server: the handler's writes and the reply commit together, once.
#include "postgres_support.hpp"

#include "saga/storage/postgres_inbox.hpp"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <map>
#include <set>
#include <thread>

namespace saga {
namespace {

using namespace pg_test;
using storage::stored_reply;

class postgres_inbox_test : public postgres_test {
 protected:
  void SetUp() override {
    postgres_test::SetUp();
    if (HasFatalFailure()) return;
    storage::postgres_session(url_).exec("CREATE TABLE stock (sku text PRIMARY KEY, reserved integer NOT NULL)");
  }
  std::optional<int> reserved(const std::string& sku) {
    auto rows = storage::postgres_session(url_).exec("SELECT reserved FROM stock WHERE sku = $1", {sku});
    if (rows.empty()) return std::nullopt;
    return std::stoi(*rows[0][0]);
  }
  static stored_reply reserve(storage::transaction& tx, const std::string& sku, int qty) {
    tx.exec(
        "INSERT INTO stock (sku, reserved) VALUES ($1, $2::integer)"
        " ON CONFLICT (sku) DO UPDATE SET reserved = stock.reserved + excluded.reserved",
        {sku, std::to_string(qty)});
    return {triggers::outcome::success, R"({"reservation": "r-1", "qty": )" + std::to_string(qty) + "}", ""};
  }
};

TEST_F(postgres_inbox_test, handler_writes_and_reply_commit_together_and_a_repeat_returns_the_stored_reply) {
  storage::postgres_inbox inbox(url_);
  const std::string cmd = "cmd-" + std::to_string(random_word());
  int runs = 0;
  bool first = false;
  const auto reply = inbox.process(
      cmd,
      [&](storage::transaction& tx) {
        ++runs;
        return reserve(tx, "A", 2);
      },
      &first);
  EXPECT_TRUE(first);
  EXPECT_EQ(reply.result, triggers::outcome::success);
  EXPECT_EQ(reply.payload, R"({"qty":2,"reservation":"r-1"})");
  EXPECT_EQ(reserved("A"), 2);

  const auto again = inbox.process(
      cmd,
      [&](storage::transaction& tx) {
        ++runs;
        return reserve(tx, "A", 2);
      },
      &first);
  EXPECT_FALSE(first);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(again, reply);
  EXPECT_EQ(reserved("A"), 2);
  EXPECT_EQ(inbox.find(cmd), reply);
  EXPECT_EQ(inbox.find("never-seen"), std::nullopt);

  // A business failure is stored too (with its reason) and answered again without running.
  const std::string refused = "cmd-" + std::to_string(random_word());
  const stored_reply no{triggers::outcome::failure, "", "out of stock"};
  EXPECT_EQ(inbox.process(refused, [&](storage::transaction&) { return no; }), no);
  EXPECT_EQ(inbox.process(refused, [&](storage::transaction&) -> stored_reply { throw std::logic_error("ran twice"); }),
            no);
}

TEST_F(postgres_inbox_test, a_retryable_failure_stores_nothing_and_rolls_back_the_handler_writes) {
  storage::postgres_inbox inbox(url_);
  const std::string cmd = "cmd-" + std::to_string(random_word());
  bool first = false;
  const auto reply = inbox.process(
      cmd,
      [&](storage::transaction& tx) {
        (void)reserve(tx, "B", 5);
        return stored_reply{triggers::outcome::retryable_failure, "", "warehouse busy"};
      },
      &first);
  EXPECT_TRUE(first);
  EXPECT_EQ(reply.result, triggers::outcome::retryable_failure);
  EXPECT_EQ(reserved("B"), std::nullopt);
  EXPECT_EQ(inbox.find(cmd), std::nullopt);
  // The resend runs the handler again.
  const auto later = inbox.process(
      cmd, [&](storage::transaction& tx) { return reserve(tx, "B", 5); }, &first);
  EXPECT_TRUE(first);
  EXPECT_EQ(later.result, triggers::outcome::success);
  EXPECT_EQ(reserved("B"), 5);
}

TEST_F(postgres_inbox_test, an_exception_rolls_back_the_handler_writes_and_propagates) {
  storage::postgres_inbox inbox(url_);
  const std::string cmd = "cmd-" + std::to_string(random_word());
  EXPECT_THROW(inbox.process(cmd,
                             [&](storage::transaction& tx) -> stored_reply {
                               (void)reserve(tx, "C", 1);
                               throw std::runtime_error("handler crashed");
                             }),
               std::runtime_error);
  EXPECT_EQ(reserved("C"), std::nullopt);
  EXPECT_EQ(inbox.find(cmd), std::nullopt);
  // A failing statement is a store_error naming the SQL state; it rolls back too.
  EXPECT_THROW(inbox.process(cmd,
                             [&](storage::transaction& tx) -> stored_reply {
                               (void)reserve(tx, "C", 1);
                               tx.exec("INSERT INTO no_such_table VALUES (1)");
                               return {};
                             }),
               storage::store_error);
  EXPECT_EQ(reserved("C"), std::nullopt);
  EXPECT_EQ(inbox.process(cmd, [&](storage::transaction& tx) { return reserve(tx, "C", 1); }).result,
            triggers::outcome::success);
  EXPECT_EQ(reserved("C"), 1);
}

TEST_F(postgres_inbox_test, concurrent_deliveries_of_one_command_run_the_handler_once) {
  storage::postgres_inbox inbox(url_, {8});
  constexpr int deliveries = 8;
  constexpr int commands = 20;
  std::atomic<int> runs{0};
  std::barrier sync(deliveries);
  std::vector<std::thread> threads;
  std::vector<std::string> ids;
  for (int c = 0; c < commands; ++c) ids.push_back("cmd-" + std::to_string(random_word()));
  for (int d = 0; d < deliveries; ++d)
    threads.emplace_back([&] {
      for (const auto& id : ids) {
        sync.arrive_and_wait();
        try {
          const auto r = inbox.process(id, [&](storage::transaction& tx) {
            ++runs;
            return reserve(tx, "D", 1);
          });
          EXPECT_EQ(r.result, triggers::outcome::success);
        } catch (const std::exception& e) {
          ADD_FAILURE() << e.what();
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(runs.load(), commands);
  EXPECT_EQ(reserved("D"), commands);
}

TEST_F(postgres_inbox_test, a_batch_commits_new_commands_answers_repeats_and_fences_compensations_once) {
  storage::postgres_inbox inbox(url_);
  const std::string w = std::to_string(random_word());
  const std::string stored = "stored-" + w, fresh = "fresh-" + w, refused = "refused-" + w;
  const std::string undo_stored = "undo-stored-" + w, undo_never = "undo-never-" + w, never = "never-" + w;
  (void)inbox.process(stored, [&](storage::transaction& tx) { return reserve(tx, "E", 1); });
  std::map<std::string, int> runs;
  std::set<std::string> transactions;  // the database transaction each handler ran in
  auto run = [&](const std::string& id, int qty) {
    return [&runs, &transactions, id, qty](storage::transaction& tx) {
      ++runs[id];
      transactions.insert(*tx.exec("SELECT txid_current()::text").at(0).at(0));
      return reserve(tx, "E", qty);
    };
  };
  std::vector<storage::inbox::command_work> batch{
      {fresh, "", run(fresh, 10)},
      {stored, "", run(stored, 100)},  // answered from the inbox
      {fresh, "", run(fresh, 10)},     // the same command again within the batch
      {refused, "",
       [&](storage::transaction&) {
         return stored_reply{triggers::outcome::failure, "", "no stock"};
       }},
      {undo_stored, stored, run(undo_stored, -1)},  // its forward command ran: the compensation runs
      {undo_never, never, run(undo_never, -1000)},  // its forward never ran: fenced, nothing to undo
      {never, "", run(never, 1000)},                // the fenced forward command arrives late: refused
  };
  const auto results = inbox.handle_batch(batch);
  ASSERT_EQ(results.size(), batch.size());
  for (const auto& r : results) EXPECT_FALSE(r.error);
  EXPECT_TRUE(results[0].ran);
  EXPECT_EQ(results[0].reply.payload, R"({"qty":10,"reservation":"r-1"})");
  EXPECT_FALSE(results[1].ran);
  EXPECT_EQ(results[1].reply.payload, R"({"qty":1,"reservation":"r-1"})");
  EXPECT_FALSE(results[2].ran);
  EXPECT_EQ(results[2].reply, results[0].reply);
  EXPECT_TRUE(results[3].ran);
  EXPECT_EQ(results[3].reply.reason, "no stock");
  EXPECT_TRUE(results[4].ran);
  EXPECT_EQ(results[4].reply.result, triggers::outcome::success);
  EXPECT_TRUE(results[5].ran);
  EXPECT_EQ(results[5].reply.payload, R"({"nothing_to_undo":true})");
  EXPECT_FALSE(results[6].ran);
  EXPECT_EQ(results[6].reply.result, triggers::outcome::failure);
  EXPECT_EQ(results[6].reply.reason, "compensated before it ran");
  EXPECT_EQ(runs, (std::map<std::string, int>{{fresh, 1}, {undo_stored, 1}}));
  EXPECT_EQ(transactions.size(), 1u) << "the batch's handlers ran in more than one transaction";
  EXPECT_EQ(reserved("E"), 1 + 10 - 1);
  // Everything the batch decided is stored, exactly as answered.
  for (std::size_t i = 0; i < batch.size(); ++i) EXPECT_EQ(inbox.find(batch[i].command_id), results[i].reply) << i;
  EXPECT_EQ(inbox.find(never)->reason, "compensated before it ran");
  // The whole batch again: nothing runs, every answer is the stored one.
  runs.clear();
  const auto again = inbox.handle_batch(batch);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    EXPECT_FALSE(again[i].ran) << i;
    EXPECT_EQ(again[i].reply, results[i].reply) << i;
  }
  EXPECT_TRUE(runs.empty());
  EXPECT_EQ(reserved("E"), 10);
}

TEST_F(postgres_inbox_test, a_retryable_or_throwing_handler_in_a_batch_costs_the_others_nothing) {
  storage::postgres_inbox inbox(url_);
  const std::string w = std::to_string(random_word());
  std::map<std::string, int> runs;
  auto ok = [&](const std::string& id) {
    return [&runs, id](storage::transaction& tx) {
      ++runs[id];
      return reserve(tx, "F", 1);
    };
  };
  std::vector<storage::inbox::command_work> batch{
      {"a-" + w, "", ok("a-" + w)},
      {"busy-" + w, "",
       [&](storage::transaction& tx) {
         ++runs["busy"];
         (void)reserve(tx, "F", 100);  // rolled back
         return stored_reply{triggers::outcome::retryable_failure, "{}", "locked"};
       }},
      {"b-" + w, "", ok("b-" + w)},
      {"boom-" + w, "",
       [&](storage::transaction& tx) -> stored_reply {
         ++runs["boom"];
         (void)reserve(tx, "F", 1000);  // rolled back
         throw std::runtime_error("handler bug");
       }},
      {"c-" + w, "", ok("c-" + w)},
  };
  const auto results = inbox.handle_batch(batch);
  ASSERT_EQ(results.size(), batch.size());
  for (std::size_t i : {0, 2, 4}) {
    EXPECT_FALSE(results[i].error) << i;
    EXPECT_TRUE(results[i].ran) << i;
    EXPECT_EQ(results[i].reply.result, triggers::outcome::success) << i;
  }
  EXPECT_FALSE(results[1].error);
  EXPECT_EQ(results[1].reply.result, triggers::outcome::retryable_failure);
  ASSERT_TRUE(results[3].error);
  try {
    std::rethrow_exception(results[3].error);
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "handler bug");
  }
  // Each effect exactly once (the rolled-back attempt of the whole batch left nothing), nothing stored for the
  // retryable or the throwing command.
  EXPECT_EQ(reserved("F"), 3);
  EXPECT_EQ(inbox.find("busy-" + w), std::nullopt);
  EXPECT_EQ(inbox.find("boom-" + w), std::nullopt);
  for (const auto& id : {"a-" + w, "b-" + w, "c-" + w}) EXPECT_TRUE(inbox.find(id)) << id;
}

TEST_F(postgres_inbox_test, concurrent_batches_with_overlapping_commands_run_each_handler_once) {
  storage::postgres_inbox inbox(url_, {8});
  constexpr int batches = 6;
  constexpr int commands = 120;
  std::atomic<int> runs{0};
  std::vector<std::string> ids;
  for (int c = 0; c < commands; ++c) ids.push_back("cmd-" + std::to_string(random_word()));
  std::barrier sync(batches);
  std::vector<std::thread> threads;
  for (int b = 0; b < batches; ++b)
    threads.emplace_back([&, b] {
      // Each thread sends every command in its own order, in batches of 40.
      std::vector<std::string> mine = ids;
      std::rotate(mine.begin(), mine.begin() + b * 17 % commands, mine.end());
      if (b % 2) std::reverse(mine.begin(), mine.end());
      for (std::size_t from = 0; from < mine.size(); from += 40) {
        std::vector<storage::inbox::command_work> batch;
        for (std::size_t i = from; i < from + 40 && i < mine.size(); ++i)
          batch.push_back({mine[i], "", [&](storage::transaction& tx) {
                             ++runs;
                             return reserve(tx, "G", 1);
                           }});
        sync.arrive_and_wait();
        for (const auto& r : inbox.handle_batch(batch)) {
          if (r.error) ADD_FAILURE() << "a command of the batch failed";
          EXPECT_EQ(r.reply.result, triggers::outcome::success);
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(reserved("G"), commands);  // committed effects: each command once (runs may include rolled-back ones)
  EXPECT_GE(runs.load(), commands);
}

// Handler statements are prepared on each connection on first use (parsed and planned once), DDL is not, and a
// prepared statement whose result columns changed under it fails once, retryably, then runs unprepared.
TEST_F(postgres_inbox_test, statements_are_prepared_once_per_connection_and_ddl_runs_unprepared) {
  storage::postgres_session session(url_);
  const std::string read = "SELECT reserved FROM stock WHERE sku = $1";
  session.exec("INSERT INTO stock (sku, reserved) VALUES ($1, 3)", {"P"});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(session.exec(read, {"P"}).at(0).at(0), "3");
  const auto prepared = session.exec("SELECT statement FROM pg_prepared_statements WHERE statement = $1", {read});
  EXPECT_EQ(prepared.size(), 1u) << "the read runs as one prepared statement on this connection";
  session.exec("CREATE TABLE unprepared_ddl (a integer)");
  EXPECT_TRUE(session
                  .exec("SELECT name FROM pg_prepared_statements WHERE statement ILIKE '%unprepared_ddl%' AND "
                        "statement NOT ILIKE '%pg_prepared_statements%'")
                  .empty());

  // A handler's statement on the inbox's own connection is prepared the same way.
  storage::postgres_inbox inbox(url_);
  inbox.process("cmd-" + std::to_string(random_word()), [&](storage::transaction& tx) {
    EXPECT_EQ(tx.exec(read, {"P"}).at(0).at(0), "3");
    EXPECT_EQ(tx.exec("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", {read}).at(0).at(0), "1");
    return stored_reply{};
  });
}

// SQL states that say "not now" rather than "never": a statement or lock timeout is retryable, a read-only server (a
// failover left the connection on a standby) and a lack of resources are an outage. They were errors of the statement,
// so a participant dead-lettered its commands through a full disk, and the orchestrator gave up on their appends.
TEST_F(postgres_inbox_test, timeouts_are_retryable_and_a_read_only_server_is_an_outage) {
  storage::postgres_session session(url_);
  session.exec("CREATE TABLE held (a integer)");
  session.exec("SET statement_timeout = 50");
  try {
    session.exec("SELECT pg_sleep(2)");
    ADD_FAILURE() << "the statement outlived statement_timeout";
  } catch (const storage::store_unavailable& e) {
    ADD_FAILURE() << "a timeout is not an outage: " << e.what();
  } catch (const storage::store_error& e) {
    EXPECT_TRUE(e.retryable()) << e.what();
    EXPECT_NE(std::string(e.what()).find("SQL state 57014"), std::string::npos) << e.what();
  }
  session.exec("SET statement_timeout = 0");
  {
    storage::postgres_session holder(url_);
    holder.run([&](storage::transaction& tx) {
      tx.exec("LOCK TABLE held IN ACCESS EXCLUSIVE MODE");
      session.exec("SET lock_timeout = 50");
      try {
        session.exec("INSERT INTO held VALUES (1)");
        ADD_FAILURE() << "the insert outlived lock_timeout";
      } catch (const storage::store_error& e) {
        EXPECT_TRUE(e.retryable()) << e.what();
        EXPECT_NE(std::string(e.what()).find("SQL state 55P03"), std::string::npos) << e.what();
      }
    });
  }
  session.exec("SET default_transaction_read_only = on");
  try {
    session.exec("INSERT INTO held VALUES (2)");
    ADD_FAILURE() << "a read-only session wrote";
  } catch (const storage::store_unavailable& e) {
    EXPECT_NE(std::string(e.what()).find("SQL state 25006"), std::string::npos) << e.what();
  }
  // That connection was let go: the next statement runs on a new one, which is not read-only.
  session.exec("INSERT INTO held VALUES (3)");
  EXPECT_EQ(session.exec("SELECT count(*) FROM held").at(0).at(0), "1");
}

TEST_F(postgres_inbox_test, a_prepared_statement_whose_table_changed_fails_once_retryably_then_runs_unprepared) {
  storage::postgres_session session(url_);
  session.exec("CREATE TABLE widening (a integer)");
  session.exec("INSERT INTO widening VALUES (1)");
  // A text of its own: the names are shared by every connection of the process.
  const std::string all = "SELECT * FROM widening /* " + std::to_string(random_word()) + " */";
  EXPECT_EQ(session.exec(all).at(0).size(), 1u);
  session.exec("ALTER TABLE widening ADD COLUMN b integer");
  try {
    session.exec(all);
    ADD_FAILURE() << "a prepared SELECT * over an altered table ran";
  } catch (const storage::store_error& e) {
    EXPECT_TRUE(e.retryable()) << e.what();
    EXPECT_NE(std::string(e.what()).find("no longer fits"), std::string::npos) << e.what();
  }
  const auto rows = session.exec(all);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].size(), 2u) << "the retry sees the new column";
}

// Statements are parsed once per connection but planned on every execution. PostgreSQL's default plan cache settles
// on a generic plan after five executions and keeps it: made while saga_inbox was small, the batch lookup's plan was
// a sequential scan, which then read the whole inbox for every batch as it grew (54 ms a batch at 50,000 rows).
TEST_F(postgres_inbox_test, a_batch_lookup_first_planned_while_the_inbox_was_small_uses_the_index_once_it_has_grown) {
  storage::postgres_inbox inbox(url_, {.connections = 1});
  storage::postgres_session session(url_);
  const std::string w = std::to_string(random_word());
  const auto add_rows = [&](const std::string& tag, int rows) {
    session.exec(
        "INSERT INTO saga_inbox (command_id, result, payload, reason)"
        " SELECT $1 || g, 'success', '{}', '' FROM generate_series(1, $2::integer) AS g",
        {tag + "-" + w + "-", std::to_string(rows)});
  };
  const auto batch_of = [&](const std::string& tag) {
    std::vector<storage::inbox::command_work> batch;
    for (int i = 0; i < 64; ++i)
      batch.push_back({tag + "-" + w + "-" + std::to_string(i), "", [](storage::transaction&) {
                         return stored_reply{triggers::outcome::success, "{}", ""};
                       }});
    return batch;
  };
  add_rows("small", 300);
  for (int round = 0; round < 8; ++round)
    for (const auto& r : inbox.handle_batch(batch_of("round" + std::to_string(round)))) ASSERT_FALSE(r.error);
  add_rows("grown", 50000);
  std::string plan;
  auto last = batch_of("after");
  last.back().work = [&](storage::transaction& tx) {
    // The inbox's own lookup, as this connection would run it now (pg_prepared_statements is per session).
    const auto names = tx.exec(
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE '%FROM saga_inbox WHERE command_id = ANY%'"
        " AND statement NOT LIKE '%pg_prepared_statements%'");
    EXPECT_EQ(names.size(), 1u) << "the batch lookup is prepared on this connection";
    if (!names.empty())
      for (const auto& row : tx.exec("EXPLAIN EXECUTE " + *names.at(0).at(0) + "('{a,b}')")) plan += *row.at(0) + "\n";
    return stored_reply{triggers::outcome::success, "{}", ""};
  };
  for (const auto& r : inbox.handle_batch(last)) ASSERT_FALSE(r.error);
  EXPECT_EQ(plan.find("Seq Scan"), std::string::npos) << plan;
  EXPECT_NE(plan.find("saga_inbox_pkey"), std::string::npos) << plan;
}

}  // namespace
}  // namespace saga
