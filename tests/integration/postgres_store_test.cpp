// PostgresEventStore against a real server: round trips, optimistic concurrency, group commit, idempotency keys,
// append-only enforcement and tamper detection.
#include "postgres_support.hpp"

#include "../../storage/src/postgres/pg_detail.hpp"
#include "saga/storage/hash_chain.hpp"
#include "saga/storage/postgres_event_store.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <future>
#include <memory>
#include <set>
#include <stdexcept>
#include <thread>

namespace saga {
namespace {

using namespace pg_test;
using storage::append_request;
using storage::postgres_event_store;

class postgres_store : public postgres_test {};

TEST_F(postgres_store, every_event_type_round_trips_through_append_and_load) {
  postgres_event_store store(url_);
  const auto id = random_saga_id();
  const auto bodies = every_event_type(id);
  std::set<std::size_t> kinds;
  for (const auto& b : bodies) kinds.insert(b.index());
  ASSERT_EQ(kinds.size(), std::variant_size_v<event_body>) << "the test must cover every event type";

  // First the start alone, then the rest one append at a time, then all read back.
  std::vector<event> written;
  std::uint64_t seq = 0;
  for (const auto& body : bodies) {
    append_request r;
    r.saga = id;
    r.saga_type = "order";
    r.expected_seq = seq;
    r.partition = 7;
    r.metadata = R"({"trace_id":"t-1","causation_id":"c-)" + std::to_string(seq) + R"("})";
    r.events.push_back(make_event(++seq, body));
    written.push_back(r.events.back());
    const auto result = store.append(r);
    EXPECT_EQ(result.last_seq, seq);
    EXPECT_GT(result.last_position, 0u);
  }

  const auto log = store.load(id);
  ASSERT_EQ(log.size(), bodies.size());
  std::uint64_t last_position = 0;
  for (std::size_t i = 0; i < log.size(); ++i) {
    SCOPED_TRACE(std::string(type_name(written[i].body)));
    const auto& r = log[i];
    EXPECT_EQ(r.saga, id);
    EXPECT_EQ(r.seq, i + 1);
    EXPECT_GT(r.position, last_position);
    last_position = r.position;
    const auto expected = encode(written[i].body);
    EXPECT_EQ(r.type, expected.type);
    EXPECT_EQ(r.schema_version, expected.schema_version);
    EXPECT_EQ(r.payload, expected.payload);
    EXPECT_EQ(json_member(r.metadata, "trace_id"), "\"t-1\"");
    const event back = r.to_event();
    EXPECT_EQ(back.seq, written[i].seq);
    EXPECT_EQ(back.at, written[i].at);
    EXPECT_EQ(encode(back.body).payload, expected.payload);
    EXPECT_EQ(back.body.index(), written[i].body.index());
    EXPECT_GT(r.recorded_at.time_since_epoch().count(), 0);
  }
  EXPECT_EQ(storage::verify_chain(log), std::nullopt);

  const auto summary = store.find(id);
  ASSERT_TRUE(summary.has_value());
  EXPECT_EQ(summary->type, "order");
  EXPECT_EQ(summary->definition_version, 3u);
  EXPECT_EQ(summary->last_seq, bodies.size());
  EXPECT_EQ(summary->last_hash, log.back().hash);
  EXPECT_EQ(summary->partition, 7);
  EXPECT_EQ(summary->idempotency_key, "key-" + id.to_string());
  EXPECT_EQ(summary->started_at, written.front().at);
  EXPECT_EQ(summary->updated_at, written.back().at);

  const auto all = store.read_all(log.front().position, 1000);
  ASSERT_EQ(all.size(), log.size());
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].hash, log[i].hash);
  EXPECT_EQ(store.read_all(log.front().position, 3).size(), 3u);
  EXPECT_TRUE(store.load(random_saga_id()).empty());
  EXPECT_FALSE(store.find(random_saga_id()).has_value());
}

TEST_F(postgres_store, concurrent_appenders_on_one_saga_exactly_one_wins_each_seq) {
  postgres_event_store store(url_);
  const auto id = random_saga_id();
  store.append(start_request(id));
  constexpr int writers = 8;
  constexpr std::uint64_t rounds = 30;
  std::barrier sync(writers);
  std::vector<std::vector<std::uint64_t>> won(writers);
  std::atomic<int> conflicts{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w)
    threads.emplace_back([&, w] {
      for (std::uint64_t round = 1; round <= rounds; ++round) {
        sync.arrive_and_wait();  // everyone appends after seq `round` at once
        try {
          store.append(next_request(id, round, 1, "writer-" + std::to_string(w)));
          won[w].push_back(round + 1);
        } catch (const storage::concurrency_conflict& c) {
          EXPECT_EQ(c.saga(), id);
          EXPECT_EQ(c.expected(), round);
          EXPECT_EQ(c.actual(), round + 1);
          EXPECT_TRUE(c.retryable());
          ++conflicts;
        }
        sync.arrive_and_wait();
      }
    });
  for (auto& t : threads) t.join();
  std::multiset<std::uint64_t> seqs;
  for (const auto& w : won) seqs.insert(w.begin(), w.end());
  for (std::uint64_t seq = 2; seq <= rounds + 1; ++seq) EXPECT_EQ(seqs.count(seq), 1u) << "seq " << seq;
  EXPECT_EQ(conflicts.load(), static_cast<int>((writers - 1) * rounds));
  const auto log = store.load(id);
  ASSERT_EQ(log.size(), rounds + 1);
  EXPECT_EQ(storage::verify_chain(log), std::nullopt);
  EXPECT_EQ(store.find(id)->last_seq, rounds + 1);
}

TEST_F(postgres_store, a_thousand_sagas_from_32_threads_are_group_committed_gap_free_and_chained) {
  postgres_event_store store(url_);
  constexpr int threads_count = 32;
  constexpr int sagas = 1000;
  constexpr std::uint64_t appends_per_saga = 5;  // the start, then four single-event appends
  std::vector<saga_id> ids(sagas);
  for (auto& id : ids) id = random_saga_id();
  std::atomic<int> next{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < threads_count; ++t)
    threads.emplace_back([&] {
      for (int i = next++; i < sagas; i = next++) {
        try {
          store.append(start_request(ids[i], "", 1));
          for (std::uint64_t seq = 2; seq < appends_per_saga + 1; ++seq) store.append(next_request(ids[i], seq));
        } catch (const std::exception& e) {
          ++failures;
          ADD_FAILURE() << e.what();
        }
      }
    });
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  const auto stats = store.stats();
  EXPECT_EQ(stats.appends, sagas * appends_per_saga);
  EXPECT_LT(stats.batches, stats.appends) << "appends from many threads must share transactions";
  for (const auto& id : ids) {
    const auto log = store.load(id);
    ASSERT_EQ(log.size(), appends_per_saga + 1);
    for (std::size_t i = 0; i < log.size(); ++i) {
      EXPECT_EQ(log[i].seq, i + 1);
      if (i > 0) {
        EXPECT_GT(log[i].position, log[i - 1].position);
      }
    }
    const auto broken = storage::verify_chain(log);
    EXPECT_EQ(broken, std::nullopt) << id.to_string() << " seq " << broken->seq << ": " << broken->why;
  }
  // The global order holds every event exactly once.
  std::size_t total = 0;
  std::uint64_t from = 0, last = 0;
  for (;;) {
    const auto page = store.read_all(from, 997);
    if (page.empty()) break;
    for (const auto& e : page) {
      EXPECT_GT(e.position, last);
      last = e.position;
    }
    total += page.size();
    from = page.back().position + 1;
  }
  EXPECT_EQ(total, sagas * (appends_per_saga + 1));
}

// Several writer connections (here two stores, as two processes would have) commit batches side by side. A reader
// that tails read_all from the last position it saw must still see every event: a position must never commit after
// a higher one was already readable.
TEST_F(postgres_store, a_reader_tailing_read_all_never_skips_a_position_while_writer_connections_overlap) {
  storage::postgres_event_store_options options;
  options.writer_connections = 2;
  postgres_event_store first(url_, options), second(url_, options);
  constexpr int threads_count = 16;
  constexpr int sagas = 400;
  constexpr std::uint64_t appends_per_saga = 8;
  std::vector<saga_id> ids(sagas);
  for (auto& id : ids) id = random_saga_id();
  // The tail starts at the log's current end: this database holds other tests' events too.
  std::uint64_t from = 1;
  for (auto page = first.read_all(from, 100000); !page.empty(); page = first.read_all(from, 100000))
    from = page.back().position + 1;
  const std::uint64_t start = from;
  std::atomic<int> next{0};
  std::atomic<bool> writing{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < threads_count; ++t)
    threads.emplace_back([&, t] {
      auto& store = t % 2 == 0 ? first : second;
      for (int i = next++; i < sagas; i = next++) {
        try {
          store.append(start_request(ids[i]));
          for (std::uint64_t seq = 1; seq < appends_per_saga; ++seq) store.append(next_request(ids[i], seq));
        } catch (const std::exception& e) {
          ADD_FAILURE() << e.what();
        }
      }
    });
  std::set<std::uint64_t> seen;
  std::thread tail([&] {
    for (bool last_round = false;;) {
      const auto page = first.read_all(from, 1000);
      for (const auto& e : page) seen.insert(e.position);
      if (!page.empty()) from = page.back().position + 1;
      if (last_round && page.empty()) break;
      if (!writing) last_round = true;
    }
  });
  for (auto& t : threads) t.join();
  writing = false;
  tail.join();
  std::vector<std::uint64_t> skipped;
  std::size_t total = 0;
  for (std::uint64_t at = start;;) {
    const auto page = first.read_all(at, 5000);
    if (page.empty()) break;
    for (const auto& e : page)
      if (!seen.contains(e.position)) skipped.push_back(e.position);
    total += page.size();
    at = page.back().position + 1;
  }
  EXPECT_EQ(total, static_cast<std::size_t>(sagas) * appends_per_saga);
  EXPECT_TRUE(skipped.empty()) << skipped.size() << " events committed below a position the reader had passed, e.g. "
                               << skipped.front();
  EXPECT_GT(first.stats().batches + second.stats().batches, 0u);
}

TEST_F(postgres_store, a_new_saga_over_an_existing_one_and_a_wrong_seq_conflict) {
  postgres_event_store store(url_);
  const auto id = random_saga_id();
  store.append(start_request(id, "", 2));
  try {
    store.append(start_request(id));
    FAIL() << "starting an existing saga must conflict";
  } catch (const storage::concurrency_conflict& c) {
    EXPECT_EQ(c.expected(), 0u);
    EXPECT_EQ(c.actual(), 3u);
  }
  EXPECT_THROW(store.append(next_request(id, 5)), storage::concurrency_conflict);
  EXPECT_THROW(store.append(next_request(random_saga_id(), 1)), storage::concurrency_conflict);
  // A malformed request fails alone with store_error, not retryable.
  auto bad = next_request(id, 3);
  bad.events.front().seq = 9;
  try {
    store.append(bad);
    FAIL() << "a seq gap must be refused";
  } catch (const storage::concurrency_conflict&) {
    FAIL() << "not a conflict";
  } catch (const storage::store_error& e) {
    EXPECT_FALSE(e.retryable());
  }
  EXPECT_EQ(store.append(next_request(id, 3)).last_seq, 4u);
}

TEST_F(postgres_store, one_conflict_fails_only_its_own_append_in_a_batch) {
  // One writer connection: while it is held up, the next appends must queue into one batch.
  storage::postgres_event_store_options one_writer;
  one_writer.writer_connections = 1;
  postgres_event_store store(url_, one_writer);
  const auto blocker = random_saga_id(), good1 = random_saga_id(), good2 = random_saga_id(), stale = random_saga_id();
  for (const auto& id : {blocker, good1, good2, stale}) store.append(start_request(id));
  store.append(next_request(stale, 1));
  const auto batches_before = store.stats().batches;

  std::vector<std::future<std::exception_ptr>> results;
  auto submit = [&](append_request request) {
    auto promise = std::make_shared<std::promise<std::exception_ptr>>();
    results.push_back(promise->get_future());
    store.async_append(std::move(request),
                       [promise](std::exception_ptr error, storage::append_result) { promise->set_value(error); });
  };
  storage::postgres_session locker(url_), watcher(url_);
  locker.run([&](storage::transaction& tx) {
    // Hold the blocker saga's row: the writer's next batch (the blocker's append) waits for it mid-statement.
    tx.exec("SELECT 1 FROM saga_instances WHERE id = $1::uuid FOR UPDATE", {blocker.to_string()});
    const std::string xid = *tx.exec("SELECT mod(pg_current_xact_id()::text::numeric, 4294967296)::text")[0][0];
    submit(next_request(blocker, 1));
    while (*watcher.exec("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
                         " AND transactionid::text = $1",
                         {xid})[0][0] == "0") {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // waiting to observe the writer blocked
    }
    // The writer is stuck, so these three queue up and go out together as the next batch.
    submit(next_request(good1, 1));
    submit(next_request(stale, 1));
    submit(next_request(good2, 1));
  });
  EXPECT_EQ(results[0].get(), nullptr);
  EXPECT_EQ(results[1].get(), nullptr);
  auto conflict = results[2].get();
  ASSERT_NE(conflict, nullptr);
  try {
    std::rethrow_exception(conflict);
  } catch (const storage::concurrency_conflict& c) {
    EXPECT_EQ(c.saga(), stale);
    EXPECT_EQ(c.actual(), 2u);
  }
  EXPECT_EQ(results[3].get(), nullptr);
  EXPECT_EQ(store.stats().batches - batches_before, 2u) << "the three appends shared one transaction";
  EXPECT_EQ(store.load(good1).size(), 2u);
  EXPECT_EQ(store.load(good2).size(), 2u);
  EXPECT_EQ(store.load(stale).size(), 2u);
  for (const auto& id : {blocker, good1, good2, stale}) EXPECT_EQ(storage::verify_chain(store.load(id)), std::nullopt);
}

TEST_F(postgres_store, a_head_moved_by_another_store_is_a_conflict_then_appends_continue) {
  postgres_event_store first(url_), second(url_);
  const auto id = random_saga_id();
  first.append(start_request(id));
  second.append(next_request(id, 1));  // `first` still remembers seq 1 as the head
  EXPECT_THROW(first.append(next_request(id, 1)), storage::concurrency_conflict);
  EXPECT_EQ(first.append(next_request(id, 2)).last_seq, 3u);
  EXPECT_EQ(second.append(next_request(id, 3)).last_seq, 4u);
  const auto log = first.load(id);
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(storage::verify_chain(log), std::nullopt);
}

TEST_F(postgres_store, an_idempotency_key_returns_the_existing_saga) {
  postgres_event_store store(url_);
  const auto first = random_saga_id(), second = random_saga_id();
  const std::string key = "checkout-" + std::to_string(random_word());
  store.append(start_request(first, key));
  try {
    store.append(start_request(second, key));
    FAIL() << "a second saga with the same key must be refused";
  } catch (const storage::duplicate_idempotency_key& e) {
    EXPECT_EQ(e.existing(), first);
  }
  EXPECT_TRUE(store.load(second).empty());
  EXPECT_FALSE(store.find(second).has_value());
  EXPECT_EQ(store.find_by_idempotency_key("order", key), first);
  EXPECT_EQ(store.find_by_idempotency_key("order", "no-such-key"), std::nullopt);
  EXPECT_EQ(store.find_by_idempotency_key("other-type", key), std::nullopt);
  // Sagas without a key never collide.
  store.append(start_request(random_saga_id()));
  store.append(start_request(random_saga_id()));
}

TEST_F(postgres_store, concurrent_starts_with_one_key_yield_one_saga) {
  postgres_event_store store(url_);
  const std::string key = "k-" + std::to_string(random_word());
  constexpr int starters = 16;
  std::vector<saga_id> ids(starters);
  for (auto& id : ids) id = random_saga_id();
  std::vector<std::future<std::exception_ptr>> results;
  for (const auto& id : ids) {
    auto promise = std::make_shared<std::promise<std::exception_ptr>>();
    results.push_back(promise->get_future());
    store.async_append(start_request(id, key),
                       [promise](std::exception_ptr e, storage::append_result) { promise->set_value(e); });
  }
  int winners = 0;
  for (auto& r : results) {
    auto error = r.get();
    if (!error) {
      ++winners;
      continue;
    }
    EXPECT_THROW(std::rethrow_exception(error), storage::duplicate_idempotency_key);
  }
  EXPECT_EQ(winners, 1);
  const auto owner = store.find_by_idempotency_key("order", key);
  ASSERT_TRUE(owner.has_value());
  for (const auto& id : ids) EXPECT_EQ(store.find(id).has_value(), id == *owner);
}

TEST_F(postgres_store, list_unfinished_follows_status_partition_and_type) {
  postgres_event_store store(url_);
  const auto a = random_saga_id(), b = random_saga_id(), c = random_saga_id(), d = random_saga_id();
  store.append(start_request(a, "", 0, 1));
  auto linear = start_request(d, "", 0, 1);  // another type, on its own partition 1
  linear.saga_type = "linear";
  linear.events.front() = make_event(1, started("linear"));
  store.append(linear);
  store.append(start_request(b, "", 0, 2));
  store.append(start_request(c, "", 0, 1));
  auto done = next_request(c, 1);
  done.events.front().body = events::saga_completed{"{}"};
  done.status_after = saga_status::completed;
  done.partition = 1;
  store.append(done);
  auto stuck = next_request(b, 1);
  stuck.events.front().body = events::saga_stuck{"reserve", false, "operator needed"};
  stuck.status_after = saga_status::stuck;
  store.append(stuck);

  auto ids_of = [](const std::vector<storage::saga_summary>& list) {
    std::set<saga_id> out;
    for (const auto& s : list) out.insert(s.id);
    return out;
  };
  EXPECT_EQ(ids_of(store.list_unfinished({})), (std::set<saga_id>{a, b, d}));
  EXPECT_EQ(ids_of(store.list_unfinished({{1}})), (std::set<saga_id>{a, d}));
  EXPECT_EQ(ids_of(store.list_unfinished({{2, 3}})), (std::set<saga_id>{b}));
  EXPECT_EQ(ids_of(store.list_unfinished({{1}, "order"})), (std::set<saga_id>{a}));
  EXPECT_EQ(ids_of(store.list_unfinished({{1}, "linear"})), (std::set<saga_id>{d}));
  EXPECT_EQ(ids_of(store.list_unfinished({{}, "order"})), (std::set<saga_id>{a, b}));
  EXPECT_EQ(ids_of(store.list_unfinished({{2}, "linear"})), (std::set<saga_id>{}));
  EXPECT_EQ(store.find(b)->status, saga_status::stuck);
  EXPECT_EQ(store.find(c)->status, saga_status::completed);
}

TEST_F(postgres_store, list_and_count_by_status_read_the_instances_table) {
  postgres_event_store store(url_);
  std::vector<saga_id> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(random_saga_id());
    auto start = start_request(ids.back());
    start.events.front().at = at_ms(1'700'000'000'000 + i * 1000);
    store.append(start);
  }
  auto done = next_request(ids[1], 1);
  done.events.front().body = events::saga_completed{"{}"};
  done.status_after = saga_status::completed;
  store.append(done);
  auto other_type = start_request(random_saga_id());
  other_type.saga_type = "refund";
  store.append(other_type);

  const auto all_orders = store.list({"order", std::nullopt, std::nullopt, std::nullopt, 100});
  ASSERT_EQ(all_orders.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(all_orders[i].id, ids[i]) << "oldest start first";
  EXPECT_EQ(store.list({"", std::nullopt, std::nullopt, std::nullopt, 100}).size(), 6u);
  const auto completed = store.list({"order", saga_status::completed, std::nullopt, std::nullopt, 100});
  ASSERT_EQ(completed.size(), 1u);
  EXPECT_EQ(completed[0].id, ids[1]);
  const auto window = store.list({"order", std::nullopt, at_ms(1'700'000'001'000), at_ms(1'700'000'003'000), 100});
  ASSERT_EQ(window.size(), 3u);
  EXPECT_EQ(window.front().id, ids[1]);
  EXPECT_EQ(window.back().id, ids[3]);
  EXPECT_EQ(store.list({"order", std::nullopt, std::nullopt, std::nullopt, 2}).size(), 2u);

  using counts = std::vector<std::pair<saga_status, std::uint64_t>>;
  EXPECT_EQ(store.count_by_status("order"), (counts{{saga_status::running, 4}, {saga_status::completed, 1}}));
  EXPECT_EQ(store.count_by_status(""), (counts{{saga_status::running, 5}, {saga_status::completed, 1}}));
  EXPECT_EQ(store.count_by_status("nothing"), counts{});
}

TEST_F(postgres_store, a_reply_partition_count_changes_only_while_no_saga_of_its_type_is_unfinished) {
  postgres_event_store store(url_);
  EXPECT_EQ(store.reply_partition_count("order", 4), 4);  // nothing recorded: recorded now
  EXPECT_EQ(store.reply_partition_count("order", 4), 4);
  EXPECT_EQ(store.reply_partition_count("order", 6), 6);  // no saga of the type yet: the new count is recorded
  const auto a = random_saga_id();
  store.append(start_request(a));  // an unfinished order, placed over 6
  EXPECT_EQ(store.reply_partition_count("order", 8), 6) << "refused while the order is unfinished";
  EXPECT_EQ(store.reply_partition_count("refund", 8), 8) << "another type is not held by it";
  auto stuck = next_request(a, 1);
  stuck.events.front().body = events::saga_stuck{"reserve", false, "operator needed"};
  stuck.status_after = saga_status::stuck;
  store.append(stuck);
  EXPECT_EQ(store.reply_partition_count("order", 8), 6) << "a stuck saga is unfinished too";
  auto skipped = next_request(a, 2);
  skipped.events.front().body = events::saga_compensated{"skipped by operator"};
  skipped.status_after = saga_status::compensated;
  store.append(skipped);
  EXPECT_EQ(store.reply_partition_count("order", 8), 8) << "finished: the count may change";
  EXPECT_EQ(store.reply_partition_count("order", 6), 6);
  EXPECT_THROW((void)store.reply_partition_count("order", 0), std::invalid_argument);
  EXPECT_EQ(store.reply_partition_count("order", 6), 6) << "the refused call changed nothing";

  // Many processes asking at once (as the members of a group do at the rebalance that follows a resize): each gets
  // the count that is recorded once it asked, never an older one. First the first count of a type, then a change.
  for (const std::int32_t count : {12, 16}) {
    constexpr int processes = 8;
    std::vector<std::unique_ptr<postgres_event_store>> stores;
    for (int t = 0; t < processes; ++t) stores.push_back(std::make_unique<postgres_event_store>(url_));
    std::barrier together(processes);
    std::atomic<int> agreed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < processes; ++t)
      threads.emplace_back([&, t] {
        together.arrive_and_wait();
        if (stores[t]->reply_partition_count("shipment", count) == count) ++agreed;
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(agreed.load(), processes) << count;
  }
}

TEST_F(postgres_store, update_delete_and_truncate_of_events_are_refused) {
  postgres_event_store store(url_);
  const auto id = random_saga_id();
  store.append(start_request(id, "", 2));
  storage::postgres_session sql(url_);
  for (const std::string statement : {"UPDATE saga_events SET payload = '{}'::jsonb WHERE saga_id = $1::uuid",
                                      "DELETE FROM saga_events WHERE saga_id = $1::uuid"}) {
    try {
      sql.exec(statement, {id.to_string()});
      ADD_FAILURE() << "must be refused: " << statement;
    } catch (const storage::store_error& e) {
      EXPECT_NE(std::string(e.what()).find("append-only"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("23001"), std::string::npos) << e.what();
    }
  }
  try {
    sql.exec("TRUNCATE saga_events");
    ADD_FAILURE() << "TRUNCATE must be refused";
  } catch (const storage::store_error& e) {
    EXPECT_NE(std::string(e.what()).find("append-only: TRUNCATE"), std::string::npos) << e.what();
  }
  EXPECT_EQ(store.load(id).size(), 3u);
  EXPECT_EQ(storage::verify_chain(store.load(id)), std::nullopt);
}

TEST_F(postgres_store, a_row_altered_behind_the_trigger_is_caught_by_chain_verification) {
  postgres_event_store store(url_);
  const auto id = random_saga_id();
  const auto other = random_saga_id();
  store.append(start_request(id, "", 3));
  store.append(start_request(other, "", 3));
  storage::postgres_session sql(url_);
  // An attacker with owner rights switches the trigger off, edits seq 3's payload and switches it back on.
  sql.run([&](storage::transaction& tx) {
    tx.exec("ALTER TABLE saga_events DISABLE TRIGGER saga_events_append_only");
    tx.exec(
        "UPDATE saga_events SET payload = payload || jsonb_build_object('service', $2::text)"
        " WHERE saga_id = $1::uuid AND seq = 3",
        {id.to_string(), std::string("attacker")});
    tx.exec("ALTER TABLE saga_events ENABLE TRIGGER saga_events_append_only");
  });
  const auto broken = storage::verify_chain(store.load(id));
  ASSERT_TRUE(broken.has_value());
  EXPECT_EQ(broken->saga, id);
  EXPECT_EQ(broken->seq, 3u);
  EXPECT_NE(broken->why.find("altered"), std::string::npos) << broken->why;
  EXPECT_EQ(storage::verify_chain(store.load(other)), std::nullopt);

  // Removing an event (trigger off again) is caught as a gap at that seq.
  sql.run([&](storage::transaction& tx) {
    tx.exec("ALTER TABLE saga_events DISABLE TRIGGER saga_events_append_only");
    tx.exec("DELETE FROM saga_events WHERE saga_id = $1::uuid AND seq = 2", {other.to_string()});
    tx.exec("ALTER TABLE saga_events ENABLE TRIGGER saga_events_append_only");
  });
  const auto gap = storage::verify_chain(store.load(other));
  ASSERT_TRUE(gap.has_value());
  EXPECT_EQ(gap->saga, other);
  EXPECT_EQ(gap->seq, 2u);
}

TEST_F(postgres_store, the_destructor_fails_or_finishes_every_queued_append) {
  std::vector<std::future<std::exception_ptr>> results;
  {
    postgres_event_store store(url_);
    for (int i = 0; i < 200; ++i) {
      auto promise = std::make_shared<std::promise<std::exception_ptr>>();
      results.push_back(promise->get_future());
      store.async_append(start_request(random_saga_id()),
                         [promise](std::exception_ptr e, storage::append_result) { promise->set_value(e); });
    }
  }
  for (auto& r : results) {
    ASSERT_EQ(r.wait_for(std::chrono::seconds(0)), std::future_status::ready)
        << "every callback ran before the destructor returned";
    if (auto error = r.get()) {
      EXPECT_THROW(std::rethrow_exception(error), storage::store_unavailable);
    }
  }
}

// Everything load_many returns for one saga must be what load returns for it, field by field.
void expect_same_log(const std::vector<storage::recorded_event>& bulk, const std::vector<storage::recorded_event>& one,
                     const saga_id& id) {
  SCOPED_TRACE(id.to_string());
  ASSERT_EQ(bulk.size(), one.size());
  for (std::size_t i = 0; i < one.size(); ++i) {
    EXPECT_EQ(bulk[i].saga, one[i].saga);
    EXPECT_EQ(bulk[i].seq, one[i].seq);
    EXPECT_EQ(bulk[i].position, one[i].position);
    EXPECT_EQ(bulk[i].type, one[i].type);
    EXPECT_EQ(bulk[i].schema_version, one[i].schema_version);
    EXPECT_EQ(bulk[i].payload, one[i].payload);
    EXPECT_EQ(bulk[i].metadata, one[i].metadata);
    EXPECT_EQ(bulk[i].recorded_at, one[i].recorded_at);
    EXPECT_EQ(bulk[i].prev_hash, one[i].prev_hash);
    EXPECT_EQ(bulk[i].hash, one[i].hash);
  }
}

TEST_F(postgres_store, load_many_returns_what_load_returns_for_each_saga_in_request_order) {
  postgres_event_store store(url_);
  // 2,345 sagas of 1 to 6 events (more than two chunks of the default 1,000), one with every event type, appended
  // in an interleaved order so that positions of one saga are not contiguous.
  std::vector<saga_id> ids(2345);
  for (auto& id : ids) id = random_saga_id();
  for (std::size_t round = 0; round < 6; ++round) {
    std::vector<std::future<void>> done;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (round > 0 && i % 6 < round) continue;
      auto p = std::make_shared<std::promise<void>>();
      done.push_back(p->get_future());
      store.async_append(round == 0 ? start_request(ids[i]) : next_request(ids[i], round, 1, std::to_string(i)),
                         [p](std::exception_ptr e, storage::append_result) {
                           if (e)
                             p->set_exception(e);
                           else
                             p->set_value();
                         });
    }
    for (auto& f : done) ASSERT_NO_THROW(f.get());
  }
  const auto every = random_saga_id();
  std::uint64_t seq = 0;
  for (const auto& body : every_event_type(every)) {
    append_request r;
    r.saga = every;
    r.saga_type = "order";
    r.expected_seq = seq;
    r.events.push_back(make_event(++seq, body));
    store.append(r);
  }

  // The request: a saga with every event type, an unknown id in the middle, a saga asked for twice, then the rest
  // in an order unrelated to the ids' sort order.
  std::vector<saga_id> request{every};
  request.insert(request.end(), ids.rbegin(), ids.rbegin() + 1000);
  const auto unknown = random_saga_id();
  request.push_back(unknown);
  request.push_back(ids.front());
  request.insert(request.end(), ids.begin(), ids.end() - 1000);

  const auto logs = store.load_many(request);
  ASSERT_EQ(logs.size(), request.size());
  std::size_t events = 0;
  for (std::size_t i = 0; i < request.size(); ++i) {
    ASSERT_EQ(logs[i].first, request[i]) << "position " << i;
    expect_same_log(logs[i].second, store.load(request[i]), request[i]);
    events += logs[i].second.size();
  }
  EXPECT_TRUE(logs[1001].second.empty()) << "an unknown saga has an empty log";
  EXPECT_EQ(logs[0].second.size(), every_event_type(every).size());
  EXPECT_EQ(storage::verify_chain(logs[0].second), std::nullopt);
  EXPECT_GT(events, request.size() * 3);

  // Small chunks give the same answer, also for a saga asked for again in another chunk (its events were added
  // twice); an empty request reads nothing.
  storage::postgres_event_store_options small;
  small.load_many_chunk = 7;
  postgres_event_store chunked(url_, small);
  std::vector<saga_id> some(request.begin(), request.begin() + 50);
  some.push_back(request[1]);
  const auto again = chunked.load_many(some);
  ASSERT_EQ(again.size(), some.size());
  for (std::size_t i = 0; i < some.size(); ++i) {
    ASSERT_EQ(again[i].first, some[i]);
    expect_same_log(again[i].second, logs[i < 50 ? i : 1].second, some[i]);
  }
  EXPECT_TRUE(store.load_many({}).empty());
}

TEST_F(postgres_store, an_unreachable_server_is_store_unavailable) {
  EXPECT_THROW(postgres_event_store("postgresql://saga@127.0.0.1:1/saga?connect_timeout=2"),
               storage::store_unavailable);
}

// A server that accepts connections on loopback and never answers (a frozen server, a host gone behind a proxy).
struct silent_server {
  int fd = -1;
  int port = 0;
  silent_server() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd, 16) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("cannot listen on loopback");
    port = ntohs(a.sin_port);  // the kernel completes handshakes into the backlog; nothing is ever read or sent
  }
  ~silent_server() { ::close(fd); }
};

// libpq waited for such a server as long as the operating system let it (for good here: the connection is open,
// the server just never answers). Unless the URL says otherwise, the store now gives up after connect_timeout
// (10 s) with store_unavailable.
TEST_F(postgres_store, a_server_that_never_answers_is_store_unavailable_after_the_connect_timeout) {
  silent_server silent;
  auto outcome = std::make_shared<std::promise<std::string>>();
  auto result = outcome->get_future();
  std::thread([outcome, url = "postgresql://saga@127.0.0.1:" + std::to_string(silent.port) + "/saga"] {
    try {
      postgres_event_store store(url);
      outcome->set_value("connected");
    } catch (const storage::store_unavailable& e) {
      outcome->set_value(std::string("store_unavailable: ") + e.what());
    } catch (const std::exception& e) {
      outcome->set_value(std::string("other error: ") + e.what());
    }
  }).detach();  // if it never returns, the test fails below and the thread goes with the process
  ASSERT_EQ(result.wait_for(std::chrono::seconds(90)), std::future_status::ready)
      << "still connecting after 90 s to a server that never answers";
  const std::string what = result.get();
  EXPECT_EQ(what.rfind("store_unavailable: ", 0), 0u) << what;
  EXPECT_NE(what.find("timeout"), std::string::npos) << what;
}

TEST(postgres_connection_defaults, bound_waiting_unless_the_connection_string_sets_it) {
  using storage::detail::with_connection_defaults;
  const std::string all =
      "connect_timeout=10&keepalives_idle=30&keepalives_interval=10&keepalives_count=3&"
      "tcp_user_timeout=60000";
  if (std::getenv("PGCONNECT_TIMEOUT")) GTEST_SKIP() << "PGCONNECT_TIMEOUT is set here";
  EXPECT_EQ(with_connection_defaults("postgresql://u@h/db"), "postgresql://u@h/db?" + all);
  EXPECT_EQ(with_connection_defaults("postgres://u@h/db?sslmode=disable"), "postgres://u@h/db?sslmode=disable&" + all);
  EXPECT_EQ(with_connection_defaults("postgresql://u@h/db?connect_timeout=2&tcp_user_timeout=5"),
            "postgresql://u@h/db?connect_timeout=2&tcp_user_timeout=5&keepalives_idle=30&keepalives_interval=10&"
            "keepalives_count=3");
  EXPECT_EQ(with_connection_defaults("host=h dbname=db connect_timeout = 3"),
            "host=h dbname=db connect_timeout = 3 keepalives_idle=30 keepalives_interval=10 keepalives_count=3 "
            "tcp_user_timeout=60000");
  EXPECT_EQ(with_connection_defaults(""),
            "connect_timeout=10 keepalives_idle=30 keepalives_interval=10 keepalives_count=3 tcp_user_timeout=60000");
  // A key inside another value is not the key.
  EXPECT_EQ(with_connection_defaults("postgresql://u@h/db?application_name=xconnect_timeout=1"),
            "postgresql://u@h/db?application_name=xconnect_timeout=1&" + all);
}

// The server's reason reaches the caller: before, every refused connection said only "cannot connect to PostgreSQL
// at the given URL", whether the database, the role or the server was missing.
TEST_F(postgres_store, a_refused_connection_says_why) {
  try {
    postgres_event_store store(url_ + "&dbname=no_such_database_for_saga");
    ADD_FAILURE() << "connected to a database that does not exist";
  } catch (const storage::store_unavailable& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_database_for_saga"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace saga
