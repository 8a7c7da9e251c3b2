// saga_kafka_test_participant — a participant service process for the Kafka integration tests.
//   --brokers B --prefix P --service S --group G --effects FILE --ready FILE [--inbox memory|postgres]
//   [--crash-after-commit N] [--session-timeout-ms MS] [--batch N] [--workers N]
// Command types: "reserve" (success, payload {"reserved":"<command id>"}), "refuse" (business failure),
// "explode" (always throws). Every handler run is recorded as an effect: a line in FILE (memory inbox) or a row in
// table kafka_test_effects in the same transaction as the inbox entry (postgres inbox). With --crash-after-commit N
// the process SIGKILLs itself after the Nth first execution is committed and before its reply is sent.
// --batch and --workers set participant_options::batch_size and workers (default: the library's).
// Runs until SIGTERM/SIGINT; writes FILE --ready once it owns partitions.
#include "saga/transport/kafka_transport.hpp"
#include "saga/transport/participant.hpp"

#if SAGA_HAVE_POSTGRES_INBOX
#include "saga/storage/migrate.hpp"
#include "saga/storage/postgres_inbox.hpp"
#endif

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace st = saga::transport;

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  auto arg = [&](const std::string& name, const std::string& fallback = {}) {
    auto it = args.find(name);
    if (it != args.end()) return it->second;
    if (fallback.empty()) {
      std::fprintf(stderr, "participant: missing %s\n", name.c_str());
      std::exit(2);
    }
    return fallback;
  };
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string effects_file = arg("--effects"), ready_file = arg("--ready"), inbox_kind = arg("--inbox", "memory");
  const long crash_after = std::stol(arg("--crash-after-commit", "0"));

  std::unique_ptr<saga::storage::inbox> inbox;
  bool postgres = false;
  if (inbox_kind == "postgres") {
#if SAGA_HAVE_POSTGRES_INBOX
    const char* url = std::getenv("SAGA_PG_URL");
    if (!url || !*url) {
      std::fprintf(stderr, "participant: --inbox postgres needs SAGA_PG_URL\n");
      return 2;
    }
    saga::storage::migrate(url);
    inbox = std::make_unique<saga::storage::postgres_inbox>(url);
    postgres = true;
#else
    std::fprintf(stderr, "participant: built without saga::postgres; --inbox postgres unavailable\n");
    return 2;
#endif
  } else {
    inbox = std::make_unique<saga::storage::memory_inbox>();
  }

  st::kafka_config config;
  config.bootstrap_servers = arg("--brokers");
  config.topic_prefix = arg("--prefix");
  config.group_id = arg("--group");
  config.client_id = "participant-" + std::to_string(::getpid());
  config.source = "/test/" + arg("--service");
  config.properties["consumer.session.timeout.ms"] = arg("--session-timeout-ms", "6000");
  config.properties["consumer.heartbeat.interval.ms"] = "500";
  config.revoke_timeout = std::chrono::milliseconds(std::stol(arg("--revoke-timeout-ms", "30000")));
  config.commit_interval =
      std::chrono::milliseconds(std::stol(arg("--commit-interval-ms", std::to_string(config.commit_interval.count()))));
  st::kafka_transport transport(config);
  std::atomic<bool> ready{false};
  transport.on_partitions_assigned([&](const std::vector<st::topic_partition>&) {
    if (!ready.exchange(true)) std::ofstream(ready_file) << ::getpid() << '\n';
  });

  std::mutex effects_mutex;
  std::ofstream effects(effects_file, std::ios::app);
  std::atomic<long> executions{0};

  st::participant_options options;
  options.service = arg("--service");
  options.max_handler_failures = 2;
  options.retry_backoff = std::chrono::milliseconds(1);
  options.batch_size = std::stoul(arg("--batch", std::to_string(options.batch_size)));
  options.workers = std::stoul(arg("--workers", std::to_string(options.workers)));
  if (crash_after > 0) {
    options.before_reply = [&](const st::command_message& c, const saga::storage::stored_reply&) {
      if (executions.load() >= crash_after) {
        std::fprintf(stderr, "participant: crashing after the commit of %s, before its reply\n", c.command_id.c_str());
        ::kill(::getpid(), SIGKILL);
      }
    };
  }
  st::participant p(transport, *inbox, options);
  auto record = [&](const st::command_message& c, saga::storage::transaction& tx) {
    if (postgres) {
      tx.exec("CREATE TABLE IF NOT EXISTS kafka_test_effects (command_id text NOT NULL, pid int NOT NULL)");
      tx.exec("INSERT INTO kafka_test_effects (command_id, pid) VALUES ($1, $2)",
              {c.command_id, std::to_string(::getpid())});
    } else {
      std::lock_guard lock(effects_mutex);
      effects << c.command_id << '\n' << std::flush;
    }
  };
  p.handle("reserve", [&](const st::command_message& c, saga::storage::transaction& tx) {
    record(c, tx);
    ++executions;
    return st::success(R"({"reserved":")" + c.command_id + R"("})");
  });
  p.handle("refuse", [&](const st::command_message& c, saga::storage::transaction& tx) {
    record(c, tx);
    ++executions;
    return st::failure("out of stock");
  });
  p.handle("explode", [](const st::command_message&, saga::storage::transaction&) -> saga::storage::stored_reply {
    throw std::runtime_error("boom");
  });
  p.start();

  int sig = 0;
  sigwait(&signals, &sig);
  transport.stop();
  auto s = p.stats();
  std::fprintf(stderr, "participant: stopping: executed=%llu duplicates=%llu dead_lettered=%llu replies=%llu\n",
               static_cast<unsigned long long>(s.executed), static_cast<unsigned long long>(s.duplicates),
               static_cast<unsigned long long>(s.dead_lettered), static_cast<unsigned long long>(s.replies_sent));
  return 0;
}
