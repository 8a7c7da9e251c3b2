// Kills the PostgreSQL server (pg_ctl stop -m immediate) in the middle of a load and restarts it: no acknowledged
// append may be lost and no event may be stored twice. Runs alone (RUN_SERIAL): it stops the shared test server.
#include "postgres_support.hpp"

#include "saga/storage/hash_chain.hpp"
#include "saga/storage/postgres_event_store.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

namespace saga {
namespace {

using namespace pg_test;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// Runs a PostgreSQL binary as the server's owner; returns its exit status.
int run_pg(const std::string& args) {
  const std::string runas = env("SAGA_PG_RUNAS");
  const std::string command =
      (runas.empty() ? std::string() : "runuser -u " + runas + " -- ") + env("SAGA_PG_BIN") + "/pg_ctl " + args;
  return std::system(command.c_str());
}

void stop_server() { ASSERT_EQ(run_pg("-D " + env("SAGA_PG_DATA") + " -m immediate -w stop >/dev/null"), 0); }

int start_server() {
  const std::string data = env("SAGA_PG_DATA");
  return run_pg("-D " + data + " -l " + data + "/../server.log -w -t 120 -o \"-c listen_addresses=127.0.0.1 -p " +
                env("SAGA_PG_PORT") + " -k " + env("SAGA_PG_SOCKET") +
                " -c max_connections=200 -c shared_buffers=256MB\" start >/dev/null");
}

// Makes sure the server runs again when the test ends, whatever happened.
struct restart_guard {
  bool stopped = false;
  ~restart_guard() {
    if (stopped) (void)start_server();
  }
};

class postgres_crash : public postgres_test {};

TEST_F(postgres_crash, killing_the_server_mid_load_loses_no_acknowledged_append_and_duplicates_nothing) {
  for (const char* name : {"SAGA_PG_BIN", "SAGA_PG_DATA", "SAGA_PG_PORT", "SAGA_PG_SOCKET"})
    if (env(name).empty())
      GTEST_SKIP() << name
                   << " is not set: this test restarts the server, so it needs the private server that "
                      "scripts/test starts (SAGA_PG_URL alone points at a server it must not kill)";

  storage::postgres_event_store_options options;
  options.reconnect_backoff_min = std::chrono::milliseconds(20);
  options.reconnect_backoff_max = std::chrono::milliseconds(200);
  options.in_doubt_timeout = std::chrono::seconds(120);
  storage::postgres_event_store store(url_, options);

  constexpr int writers = 16;
  constexpr int sagas_per_writer = 4;
  constexpr std::uint64_t events_per_saga = 150;

  struct acknowledged {
    std::uint64_t seq;
    std::string marker;
  };
  std::mutex mutex;
  std::condition_variable progress;
  std::map<saga_id, std::vector<acknowledged>> acked;
  std::size_t acked_count = 0, failures = 0;
  restart_guard guard;

  auto writer = [&](int w) {
    std::vector<saga_id> ids(sagas_per_writer);
    for (auto& id : ids) id = random_saga_id();
    std::vector<std::uint64_t> next(sagas_per_writer, 1);  // next logical event (= marker number) per saga
    std::vector<std::uint64_t> head(sagas_per_writer, 0);  // last seq we know of
    for (bool work = true; work;) {
      work = false;
      for (int s = 0; s < sagas_per_writer; ++s) {
        if (next[s] > events_per_saga) continue;
        work = true;
        const std::string marker = "w" + std::to_string(w) + "-s" + std::to_string(s) + "-n" + std::to_string(next[s]);
        auto request = head[s] == 0 ? start_request(ids[s]) : next_request(ids[s], head[s], 1, marker);
        if (head[s] == 0) request.metadata = R"({"marker":")" + marker + R"("})";
        try {
          const auto result = store.append(request);
          head[s] = result.last_seq;
          ++next[s];
          std::lock_guard lock(mutex);
          acked[ids[s]].push_back({result.last_seq, marker});
          ++acked_count;
          progress.notify_all();
        } catch (const storage::store_error& e) {
          ASSERT_TRUE(e.retryable()) << e.what();
          {
            std::lock_guard lock(mutex);
            ++failures;
            progress.notify_all();
          }
          // Outcome unclear to us: reload (retrying while the server is down) and see whether it landed.
          for (;;) {
            try {
              const auto log = store.load(ids[s]);
              head[s] = log.empty() ? 0 : log.back().seq;
              if (!log.empty() && log.back().metadata.find(marker) != std::string::npos)
                ++next[s];
              else if (!log.empty() && log.back().payload.find(marker) != std::string::npos)
                ++next[s];
              break;
            } catch (const storage::store_unavailable&) {
              std::this_thread::sleep_for(std::chrono::milliseconds(20));  // outage: not a hot path
            }
          }
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) threads.emplace_back(writer, w);

  {  // Kill once a good part of the load is acknowledged, restart once writers have seen the outage.
    std::unique_lock lock(mutex);
    progress.wait(lock, [&] { return acked_count >= writers * sagas_per_writer * events_per_saga / 3; });
  }
  guard.stopped = true;
  stop_server();
  {  // The outage is noticed by a failed append or by a commit cut off in flight (its batch waits for the server).
    std::unique_lock lock(mutex);
    while (failures == 0 && store.stats().in_doubt == 0) progress.wait_for(lock, std::chrono::milliseconds(10));
  }
  ASSERT_EQ(start_server(), 0) << "could not restart PostgreSQL";
  guard.stopped = false;
  for (auto& t : threads) t.join();

  std::size_t checked = 0;
  for (const auto& [id, list] : acked) {
    const auto log = store.load(id);
    ASSERT_EQ(log.size(), events_per_saga) << id.to_string();
    const auto broken = storage::verify_chain(log);
    EXPECT_EQ(broken, std::nullopt) << id.to_string() << " seq " << broken->seq << ": " << broken->why;
    // Every logical event is stored exactly once, in order.
    for (std::size_t i = 0; i < log.size(); ++i) {
      const std::string text = log[i].payload + log[i].metadata;
      const std::string expected = "-n" + std::to_string(i + 1) + "\"";
      EXPECT_NE(text.find(expected), std::string::npos) << id.to_string() << " seq " << i + 1 << ": " << text;
    }
    for (const auto& a : list) {
      ASSERT_LE(a.seq, log.size());
      const auto& stored = log[a.seq - 1];
      EXPECT_NE((stored.payload + stored.metadata).find(a.marker + "\""), std::string::npos)
          << "acknowledged " << a.marker << " lost at seq " << a.seq;
      ++checked;
    }
  }
  EXPECT_EQ(checked, acked_count);
  EXPECT_GT(failures + store.stats().in_doubt, 0u) << "the kill must have been noticed";
  std::printf("acknowledged %zu appends, %zu failed during the outage, %llu in-doubt commits read back\n", acked_count,
              failures, static_cast<unsigned long long>(store.stats().in_doubt));
}

// Runs SQL outside a transaction block with psql (ALTER SYSTEM cannot run inside one).
// Each statement is its own -c, so each runs alone (psql wraps one multi-statement -c in a transaction).
int run_psql(std::initializer_list<std::string> statements) {
  std::string command = env("SAGA_PG_BIN") + "/psql \"" + env("SAGA_PG_URL") + "\" -qAt";
  for (const auto& sql : statements) command += " -c \"" + sql + "\"";
  return std::system((command + " >/dev/null").c_str());
}

// Puts synchronous_standby_names back however the test ends.
struct sync_standby_guard {
  bool set = false;
  ~sync_standby_guard() {
    if (set) (void)run_psql({"ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"});
  }
};

TEST_F(postgres_crash, a_commit_cut_off_after_it_became_durable_is_read_back_not_repeated) {
  if (env("SAGA_PG_BIN").empty()) GTEST_SKIP() << "SAGA_PG_BIN is not set (needs the server scripts/test starts)";
  storage::postgres_event_store store(url_);
  const auto id = random_saga_id();
  store.append(start_request(id));

  // Every COMMIT now waits for a standby that does not exist: it is durable locally but never returns.
  sync_standby_guard guard;
  guard.set = true;
  ASSERT_EQ(run_psql({"ALTER SYSTEM SET synchronous_standby_names = 'no_such_standby'", "SELECT pg_reload_conf()"}), 0);
  storage::postgres_session watcher(base_url_);
  // pg_reload_conf() only signals: wait until this backend sees the new value.
  while (*watcher.exec("SELECT current_setting('synchronous_standby_names')").at(0).at(0) != "no_such_standby") {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  std::promise<std::pair<std::exception_ptr, storage::append_result>> promise;
  auto future = promise.get_future();
  store.async_append(next_request(id, 1, 2, "in-doubt"), [&](std::exception_ptr e, storage::append_result r) {
    promise.set_value({e, r});
  });
  // Wait for the writer's COMMIT to hang in SyncRep, then cut its connection.
  std::string pid;
  while (pid.empty()) {
    const auto rows = watcher.exec("SELECT pid::text FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
    if (!rows.empty())
      pid = *rows[0][0];
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  watcher.exec("SELECT pg_terminate_backend($1::integer)", {pid});
  ASSERT_EQ(run_psql({"ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"}), 0);
  guard.set = false;

  const auto [error, result] = future.get();
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      FAIL() << "the append committed, so it must be reported as done: " << e.what();
    }
  }
  EXPECT_EQ(result.last_seq, 3u);
  EXPECT_EQ(store.stats().in_doubt, 1u);
  const auto log = store.load(id);
  ASSERT_EQ(log.size(), 3u) << "stored exactly once";
  EXPECT_EQ(result.last_position, log.back().position);
  EXPECT_EQ(storage::verify_chain(log), std::nullopt);
  // The store goes on writing after the reconnect.
  EXPECT_EQ(store.append(next_request(id, 3)).last_seq, 4u);
}

// A loopback TCP proxy to the test server whose connections can be cut on the client's side only: the server's
// side stays open, as when a network path breaks, so the server process goes on with what it was doing.
class cutting_proxy {
 public:
  explicit cutting_proxy(int server_port) : server_port_(server_port) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listener_, 16) != 0 || ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("cutting_proxy: cannot listen on loopback");
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~cutting_proxy() {
    ::shutdown(listener_, SHUT_RDWR);
    acceptor_.join();
    std::lock_guard lock(mutex_);
    for (const auto& [client, server] : pairs_) {
      ::shutdown(client, SHUT_RDWR);
      ::shutdown(server, SHUT_RDWR);
    }
    for (auto& t : pumps_) t.join();
    for (const auto& [client, server] : pairs_) ::close(client), ::close(server);
    ::close(listener_);
  }
  [[nodiscard]] int port() const { return port_; }
  // Cuts every connection made so far on the client's side; new ones go through.
  void cut() {
    std::lock_guard lock(mutex_);
    for (const auto& [client, server] : pairs_) ::shutdown(client, SHUT_RDWR);
  }

 private:
  void accept_loop() {
    for (;;) {
      const int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) return;
      const int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<std::uint16_t>(server_port_));
      if (server < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(client);
        if (server >= 0) ::close(server);
        continue;
      }
      std::lock_guard lock(mutex_);
      pairs_.emplace_back(client, server);
      pumps_.emplace_back([client, server] { pump(client, server); });
      pumps_.emplace_back([client, server] { pump(server, client); });
    }
  }
  static void pump(int from, int to) {
    char buffer[16384];
    for (;;) {
      const auto n = ::read(from, buffer, sizeof buffer);
      if (n <= 0) return;
      for (ssize_t done = 0; done < n;) {
        const auto w = ::send(to, buffer + done, static_cast<std::size_t>(n - done), MSG_NOSIGNAL);
        if (w <= 0) return;
        done += w;
      }
    }
  }

  int server_port_;
  int listener_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  std::mutex mutex_;
  std::vector<std::pair<int, int>> pairs_;
  std::vector<std::thread> pumps_;
};

// The connection of a batch waiting for a row lock is lost. PostgreSQL does not notice a lost client while a statement
// waits, so the server process goes on and commits once the lock is free. Before, the store read the saga back at
// once on a new connection, found nothing and said "not committed, retrying is safe"; then the batch committed. The
// old server process is now ended first, and what the store says is what the log holds.
TEST_F(postgres_crash, a_batch_cut_off_while_its_server_process_still_runs_is_not_reported_unwritten_and_then_written) {
  if (env("SAGA_PG_PORT").empty()) GTEST_SKIP() << "SAGA_PG_PORT is not set (needs the server scripts/test starts)";
  cutting_proxy proxy(std::stoi(env("SAGA_PG_PORT")));
  storage::postgres_event_store_options options;
  options.writer_connections = 1;
  options.in_doubt_timeout = std::chrono::seconds(60);
  storage::postgres_event_store store(
      url_with_schema("postgresql://saga@127.0.0.1:" + std::to_string(proxy.port()) + "/saga", schema_), options);
  const auto id = random_saga_id();
  store.append(start_request(id));

  // Another session locks the saga's row, so the writer's statement waits inside the server.
  std::promise<std::string> locked;
  std::promise<void> release;
  std::thread locker([&, done = release.get_future()] {
    storage::postgres_session s(url_);
    s.run([&](storage::transaction& tx) {
      const auto me =
          tx.exec("SELECT pg_backend_pid()::text FROM saga_instances WHERE id = $1::uuid FOR UPDATE", {id.to_string()});
      locked.set_value(*me.at(0).at(0));
      done.wait();
    });
  });
  const std::string locker_pid = locked.get_future().get();
  std::promise<std::exception_ptr> answered;
  store.async_append(next_request(id, 1, 1, "cut off"),
                     [&](std::exception_ptr e, storage::append_result) { answered.set_value(e); });
  storage::postgres_session watcher(url_);
  while (watcher.exec("SELECT 1 FROM pg_stat_activity WHERE $1::integer = ANY(pg_blocking_pids(pid))", {locker_pid})
             .empty())
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  proxy.cut();

  auto answer = answered.get_future();
  const auto error = answer.get();
  release.set_value();
  locker.join();
  ASSERT_NE(error, nullptr) << "the append cannot have committed while the row was locked";
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("not committed"), std::string::npos) << e.what();
  }
  // Whatever the old server process could still do, it had two seconds for it now that the lock is free.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(store.load(id).size(), 1u) << "reported not committed, but the batch committed";
  EXPECT_EQ(store.stats().in_doubt, 1u);
  EXPECT_EQ(store.append(next_request(id, 1, 1, "retried")).last_seq, 2u) << "retrying is safe";
}

}  // namespace
}  // namespace saga
