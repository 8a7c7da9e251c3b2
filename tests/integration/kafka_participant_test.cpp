// The participant helper over the in-memory transport and inbox: dedup, stored replies, dead letters, retries.
#include "saga/storage/event_store.hpp"
#include "saga/transport/memory_transport.hpp"
#include "saga/transport/participant.hpp"

#include <gtest/gtest.h>

namespace st = saga::transport;

namespace {

st::command_message command(std::string type, std::uint64_t n = 1) {
  st::command_message c;
  c.saga = saga::saga_id::from_words(7, n);
  c.command_id = c.saga.to_string() + ":1";
  c.saga_type = "order";
  c.step = "reserve";
  c.attempt = 1;
  c.service = "inventory";
  c.command_type = std::move(type);
  c.payload = "{}";
  c.reply_to = "order";
  return c;
}

struct kafka_participant_memory : ::testing::Test {
  st::memory_transport transport;
  saga::storage::memory_inbox inbox;
  std::vector<st::reply_message> replies;
  int runs = 0;
  int throws_left = 0;
  int conflicts_left = 0;
  std::unique_ptr<st::participant> p;
  std::vector<std::string> log;

  void SetUp() override {
    st::participant_options o;
    o.service = "inventory";
    o.max_handler_failures = 2;
    o.retry_backoff = std::chrono::milliseconds(0);
    o.workers = 0;  // handled on the delivering thread: transport.pump() returns with every reply sent
    o.log = [this](st::log_level, std::string_view line) { log.emplace_back(line); };
    p = std::make_unique<st::participant>(transport, inbox, o);
    p->handle("reserve", [this](const st::command_message& c, saga::storage::transaction&) {
      ++runs;
      if (throws_left > 0) {
        --throws_left;
        throw std::runtime_error("database hiccup");
      }
      return st::success(R"({"id":")" + c.command_id + R"("})");
    });
    p->handle("huge", [this](const st::command_message&, saga::storage::transaction&) {
      ++runs;
      return st::success("\"" + std::string(1'000'000, 'x') + "\"");
    });
    p->handle("wordy", [this](const st::command_message&, saga::storage::transaction&) {
      ++runs;
      return st::failure(std::string(500'000, 'r'), "\"" + std::string(500'000, 'p') + "\"");
    });
    p->handle("contended", [this](const st::command_message&, saga::storage::transaction&) {
      ++runs;
      if (conflicts_left > 0) {
        --conflicts_left;
        throw saga::storage::store_error("SQL state 40P01: deadlock detected", /*retryable=*/true);
      }
      return st::success();
    });
    p->handle("foreign",
              [this](const st::command_message&, saga::storage::transaction&) -> saga::storage::stored_reply {
                ++runs;
                throw 42;  // what a library that does not derive from std::exception may throw
              });
    p->handle("busy", [this](const st::command_message&, saga::storage::transaction&) {
      ++runs;
      return st::retryable("locked");
    });
    p->start();
    transport.on_reply("order", [this](st::reply_message r, st::handled_callback h) {
      replies.push_back(std::move(r));
      h();
    });
  }
  void send(const st::command_message& c) {
    transport.send_command(c, nullptr);
    transport.pump();
  }
};

}  // namespace

TEST_F(kafka_participant_memory, first_delivery_runs_the_handler_and_repeats_get_the_stored_reply) {
  auto c = command("reserve");
  for (int i = 0; i < 3; ++i) send(c);
  EXPECT_EQ(runs, 1);
  ASSERT_EQ(replies.size(), 3u);
  for (const auto& r : replies) {
    EXPECT_EQ(r.command_id, c.command_id);
    EXPECT_EQ(r.saga, c.saga);
    EXPECT_EQ(r.step, "reserve");
    EXPECT_EQ(r.attempt, 1u);
    EXPECT_EQ(r.result, saga::triggers::outcome::success);
    EXPECT_EQ(r.payload, R"({"id":")" + c.command_id + R"("})");
  }
  EXPECT_EQ(p->stats().executed, 1u);
  EXPECT_EQ(p->stats().duplicates, 2u);
  EXPECT_EQ(p->stats().replies_sent, 3u);
}

TEST_F(kafka_participant_memory, unknown_command_type_is_dead_lettered_and_the_next_one_is_processed) {
  send(command("teleport", 1));
  send(command("reserve", 2));
  auto dead = transport.dead_letters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].first.command_type, "teleport");
  EXPECT_EQ(
      dead[0].second,
      "unknown command type 'teleport' for service inventory (known: busy, contended, foreign, huge, reserve, wordy)");
  EXPECT_EQ(p->stats().dead_lettered, 1u);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].command_id, command("reserve", 2).command_id);
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log[0].find("dead letter"), std::string::npos);
}

TEST_F(kafka_participant_memory, a_handler_that_throws_is_retried_then_dead_lettered) {
  throws_left = 2;  // two failures are within max_handler_failures
  send(command("reserve", 1));
  EXPECT_EQ(runs, 3);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_TRUE(transport.dead_letters().empty());

  runs = 0;
  throws_left = 100;
  send(command("reserve", 2));
  EXPECT_EQ(runs, 3);  // more than 2 failures: parked
  ASSERT_EQ(transport.dead_letters().size(), 1u);
  EXPECT_EQ(transport.dead_letters()[0].second, "handler for reserve threw 3 times; last: database hiccup");
  EXPECT_EQ(replies.size(), 1u);
}

// A handler that throws something that is not a std::exception was left unhandled at once and for good: not
// retried, not dead-lettered, its offset never committed (the partition's committed offset stayed behind it).
TEST_F(kafka_participant_memory, a_handler_that_throws_a_non_standard_exception_is_retried_then_dead_lettered) {
  send(command("foreign", 1));
  EXPECT_EQ(runs, 3);
  ASSERT_EQ(transport.dead_letters().size(), 1u);
  EXPECT_EQ(transport.dead_letters()[0].second,
            "handler for foreign threw 3 times; last: an exception that is not a std::exception");
  EXPECT_EQ(p->stats().handler_exceptions, 3u);
  send(command("reserve", 2));  // the next command is processed
  EXPECT_EQ(replies.size(), 1u);
}

// A transaction the database rolled back (a deadlock with another worker, a serialization failure) is contention,
// not a bad command: it runs again without using up max_handler_failures (2 here). It was dead-lettered after 3,
// and its step lost an attempt.
TEST_F(kafka_participant_memory, a_transaction_rolled_back_by_the_database_runs_again_without_counting_as_a_failure) {
  conflicts_left = 5;
  send(command("contended", 1));
  EXPECT_EQ(runs, 6);
  EXPECT_TRUE(transport.dead_letters().empty());
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].result, saga::triggers::outcome::success);
  EXPECT_EQ(p->stats().handler_exceptions, 0u);
  // Past max_conflict_retries in a row it counts as a failure, as before.
  runs = 0;
  conflicts_left = 1000;
  send(command("contended", 2));
  EXPECT_EQ(runs, static_cast<int>(st::participant::max_conflict_retries) + 3);
  ASSERT_EQ(transport.dead_letters().size(), 1u);
  EXPECT_NE(transport.dead_letters()[0].second.find("deadlock detected"), std::string::npos);
}

TEST_F(kafka_participant_memory, a_reply_too_large_to_travel_is_rolled_back_and_dead_lettered_naming_the_sizes) {
  const auto big = command("huge");
  send(big);
  EXPECT_EQ(runs, 1);  // the same every time: not retried
  EXPECT_TRUE(replies.empty());
  EXPECT_FALSE(inbox.find(big.command_id).has_value()) << "nothing is stored for a reply that cannot travel";
  ASSERT_EQ(transport.dead_letters().size(), 1u);
  EXPECT_EQ(transport.dead_letters()[0].second,
            "the reply payload of 1000002 bytes to huge exceeds participant_options::max_reply_bytes (900000)");
  send(command("reserve", 2));  // the consumer moves on
  EXPECT_EQ(replies.size(), 1u);
}

// The reason travels in the reply too: payload and reason together must fit.
TEST_F(kafka_participant_memory, a_reason_that_makes_the_reply_too_large_is_counted_with_the_payload) {
  const auto wordy = command("wordy");
  send(wordy);
  EXPECT_EQ(runs, 1);
  EXPECT_TRUE(replies.empty());
  EXPECT_FALSE(inbox.find(wordy.command_id).has_value());
  ASSERT_EQ(transport.dead_letters().size(), 1u);
  EXPECT_EQ(transport.dead_letters()[0].second,
            "the reply payload of 500002 bytes and reason of 500000 bytes to wordy exceed "
            "participant_options::max_reply_bytes (900000)");
}

// A reply the transport refuses for good would be refused again at every redelivery (the inbox answers the same):
// its command is dead-lettered, so that its partition moves on, and the reply stays stored.
TEST_F(kafka_participant_memory, a_reply_refused_for_good_dead_letters_its_command_and_keeps_the_stored_reply) {
  const auto c = command("reserve");
  transport.send_command(c, nullptr);
  transport.fail_next_send(1, /*retryable=*/false);
  transport.pump();
  EXPECT_TRUE(replies.empty());
  EXPECT_EQ(p->stats().reply_failures, 1u) << "not sent again";
  ASSERT_EQ(transport.dead_letters().size(), 1u);
  EXPECT_EQ(transport.dead_letters()[0].second, "its reply cannot be sent: injected send failure");
  EXPECT_TRUE(inbox.find(c.command_id).has_value());
  send(command("reserve", 2));  // the consumer moves on
  EXPECT_EQ(replies.size(), 1u);
}

TEST_F(kafka_participant_memory, retryable_answers_store_nothing_so_a_resend_runs_again) {
  auto c = command("busy");
  send(c);
  send(c);
  EXPECT_EQ(runs, 2);
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[1].result, saga::triggers::outcome::retryable_failure);
  EXPECT_EQ(replies[1].reason, "locked");
  EXPECT_FALSE(inbox.find(c.command_id));
}

TEST_F(kafka_participant_memory, a_failed_reply_send_is_retried) {
  transport.send_command(command("reserve"), nullptr);
  transport.fail_next_send(2);  // the first two reply sends fail
  transport.pump();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(p->stats().reply_failures, 2u);
}

TEST(kafka_participant, rejects_bad_registrations) {
  st::memory_transport t;
  saga::storage::memory_inbox inbox;
  EXPECT_THROW(st::participant(t, inbox, {}), std::invalid_argument);
  st::participant_options o;
  o.service = "s";
  st::participant p(t, inbox, o);
  EXPECT_THROW(p.start(), std::logic_error);
  auto h = [](const st::command_message&, saga::storage::transaction&) { return st::success(); };
  p.handle("a", h);
  EXPECT_THROW(p.handle("a", h), std::invalid_argument);
  p.start();
  EXPECT_THROW(p.handle("b", h), std::logic_error);
}
