// saga-fault-replies MODE TOPIC — forges replies on a reply topic for the fault matrix, over Kafka, the way a
// misbehaving network or participant would. It reads TOPIC in a consumer group of its own (so the orchestrator still
// receives everything) and, for every genuine reply it sees:
//   duplicate  produces the same record twice more (same key, headers and value);
//   stale      produces a late non-retryable failure for the same command (the attempt before it when there was
//              one); it lands after the genuine answer in the saga's partition, so the command is settled by then;
//   unknown    produces a well-formed reply for a saga id that does not exist.
// Forged records carry the header saga_fault_forged, and the tool never forges from a forged record. It runs until
// SIGTERM/SIGINT and prints how many genuine replies it saw and how many records it forged.
// Environment: SAGA_KAFKA_BROKERS.
#include "saga/transport/envelope.hpp"
#include "saga/transport/kafka_transport.hpp"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <random>
#include <string>
#include <thread>

namespace st = saga::transport;

namespace {

std::atomic<bool> stop{false};
extern "C" void on_signal(int) { stop = true; }

constexpr std::string_view forged_header = "saga_fault_forged";

bool forged(const st::header_list& headers) {
  for (const auto& [k, v] : headers)
    if (k == forged_header) return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: saga-fault-replies duplicate|stale|unknown TOPIC\n";
    return 2;
  }
  const std::string mode = argv[1], topic = argv[2];
  if (mode != "duplicate" && mode != "stale" && mode != "unknown") {
    std::cerr << "saga-fault-replies: unknown mode '" << mode << "' (duplicate, stale or unknown)\n";
    return 2;
  }
  try {
    auto config = st::kafka_config::from_env("saga-fault-replies-" + mode);
    config.client_id = "saga-fault-replies";
    config.source = "/saga/fault-replies";
    config.log = st::stderr_logger(st::log_level::warning);
    // Declared before the transport: its callbacks use them until it is destroyed.
    std::atomic<std::uint64_t> seen{0}, sent{0};
    std::mt19937_64 random(std::random_device{}());
    std::mutex random_mutex;
    st::kafka_transport bus(config);
    auto produce = [&](const std::string& key, st::header_list headers, const std::string& value) {
      headers.emplace_back(std::string(forged_header), mode);
      bus.send_raw(topic, key, headers, value, [&](std::exception_ptr e) {
        if (!e) ++sent;
      });
    };
    bus.on_raw(topic, [&](st::raw_record r, st::handled_callback handled) {
      if (forged(r.headers)) return handled();
      auto reply = st::decode_reply(r.headers, r.value);
      if (!reply.message) return handled();  // not a reply: the orchestrator dead-letters it
      ++seen;
      if (mode == "duplicate") {
        produce(r.key, r.headers, r.value);
        produce(r.key, r.headers, r.value);
      } else if (mode == "stale") {
        auto late = *reply.message;
        late.attempt = late.attempt > 1 ? late.attempt - 1 : late.attempt;
        late.result = saga::triggers::outcome::failure;
        late.payload = "{}";
        late.reason = "forged by the fault matrix: a late failure after the genuine answer";
        const auto e = st::encode(late, config.source);
        produce(e.key, e.headers, e.value);
      } else {
        auto ghost = *reply.message;
        {
          std::lock_guard lock(random_mutex);
          ghost.saga = saga::saga_id::from_words(random(), random());
        }
        ghost.command_id = ghost.saga.to_string() + ":2";
        const auto e = st::encode(ghost, config.source);
        produce(e.key, e.headers, e.value);
      }
      handled();
    });
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::cout << "saga-fault-replies: " << mode << " on " << topic << "\n" << std::flush;
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (void)bus.flush(std::chrono::seconds(10));
    bus.stop();
    std::cout << "saga-fault-replies: saw " << seen << " replies, forged " << sent << " records\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "saga-fault-replies: " << e.what() << "\n";
    return 1;
  }
}
