// The participant inbox against a real server: the handler's writes and the reply commit together, once.
#include "postgres_support.hpp"

#include "saga/storage/postgres_inbox.hpp"

#include <atomic>
#include <barrier>
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

}  // namespace
}  // namespace saga
