// transport_bench — request/reply through the embedded broker (or SAGA_KAFKA_BROKERS):
//   saga path: kafka_transport (envelope, idempotent producer, handled-offset commits) → participant (memory inbox)
//              → reply → kafka_transport; replies/s with N in flight, p50/p99 round trip with one in flight;
//   baseline:  a bare librdkafka producer/consumer pair doing the same, as the ceiling.
// Usage: transport_bench [--in-flight 200] [--total 20000] [--samples 1000] [--partitions 4] [--rounds 3]
//                        [--participant-workers N]   (participant_options::workers; default the library's)
//                        [--linger-ms N] [--max-in-flight N]   (kafka_config, for both paths; default the library's)
// Throughput runs alternate saga path and baseline for --rounds rounds; the best of each is reported (the machine
// may be shared: the best run is the one least disturbed), the medians too.
// Last output line: one JSON object with the figures.
#include "saga/transport/kafka_dev.hpp"
#include "saga/transport/kafka_transport.hpp"
#include "saga/transport/participant.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

namespace saga_bench {
struct baseline_result {
  double replies_per_s = 0;
  std::vector<double> rtt_ms;
};
baseline_result run_rdkafka_baseline(const std::string& brokers, const std::string& prefix, int in_flight, int total,
                                     int linger_ms, int max_in_flight, int fetch_wait_ms,
                                     const std::vector<std::pair<std::string, std::string>>& headers,
                                     const std::string& key, std::size_t value_size);
}  // namespace saga_bench

namespace st = saga::transport;
using clock_type = std::chrono::steady_clock;

namespace {

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// CPU seconds (user + system) this process used so far.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct saga_result {
  double replies_per_s = 0;
  std::vector<double> rtt_ms;
};

// Runs `total` commands keeping `in_flight` outstanding; replies deduplicated by command id.
saga_result run_saga_path(const st::kafka_config& base, const std::string& prefix, int in_flight, int total,
                          std::uint64_t seed, int participant_workers) {
  auto config = [&](const std::string& group) {
    auto c = base;
    c.topic_prefix = prefix;
    c.group_id = group + "-" + prefix;
    c.client_id = group;
    return c;
  };
  st::kafka_transport participant_side(config("inventory"));
  saga::storage::memory_inbox inbox;
  st::participant_options options;
  options.service = "inventory";
  options.log = st::stderr_logger(st::log_level::warning);
  if (participant_workers >= 0) options.workers = static_cast<std::size_t>(participant_workers);
  st::participant participant(participant_side, inbox, options);
  participant.handle("reserve",
                     [](const st::command_message& c, saga::storage::transaction&) { return st::success(c.payload); });
  participant.start();

  st::kafka_transport orchestrator(config("orchestrator"));
  std::mutex mutex;
  std::condition_variable cv;
  std::map<std::string, clock_type::time_point> outstanding;
  std::vector<double> rtts;
  rtts.reserve(static_cast<std::size_t>(total));
  int sent = 0, received = 0;
  // Warm-up (not measured): groups joined and settled, topics known, batches flowing.
  const int warmup = std::max(1, std::min(2000, total / 5));
  const int goal = warmup + total;
  clock_type::time_point start{};

  auto make = [&](int n) {
    st::command_message c;
    c.saga = saga::saga_id::from_words(seed, static_cast<std::uint64_t>(n));
    c.command_id = c.saga.to_string() + ":1";
    c.saga_type = "order";
    c.step = "reserve_inventory";
    c.attempt = 1;
    c.service = "inventory";
    c.command_type = "reserve";
    c.payload = R"({"sku":"A-1","qty":1})";
    c.reply_to = orchestrator.reply_topic("order");
    return c;
  };
  auto send_next = [&](std::unique_lock<std::mutex>& lock) {
    auto c = make(sent++);
    outstanding[c.command_id] = clock_type::now();
    lock.unlock();
    orchestrator.send_command(c, [](std::exception_ptr e) {
      if (e) std::fprintf(stderr, "send failed\n");
    });
    lock.lock();
  };
  orchestrator.on_reply("order", [&](st::reply_message r, st::handled_callback handled) {
    handled();
    std::unique_lock lock(mutex);
    auto it = outstanding.find(r.command_id);
    if (it == outstanding.end()) return;  // duplicate
    auto now = clock_type::now();
    double ms = std::chrono::duration<double, std::milli>(now - it->second).count();
    outstanding.erase(it);
    ++received;
    if (received == warmup) start = now;
    if (received > warmup) rtts.push_back(ms);
    if (sent < goal) send_next(lock);
    if (received >= goal) cv.notify_all();  // only then: a wake-up per reply would cost the path a context switch
  });
  std::unique_lock lock(mutex);
  while (sent < goal && static_cast<int>(outstanding.size()) < in_flight) send_next(lock);
  cv.wait(lock, [&] { return received >= goal; });
  saga_result result;
  result.replies_per_s = total / std::chrono::duration<double>(clock_type::now() - start).count();
  result.rtt_ms = rtts;
  lock.unlock();
  orchestrator.stop();
  participant_side.stop();
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  int in_flight = 200, total = 20000, samples = 1000, partitions = 4, rounds = 3, participant_workers = -1;
  st::kafka_config base;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int v = std::stoi(argv[i + 1]);
    if (a == "--in-flight")
      in_flight = v;
    else if (a == "--total")
      total = v;
    else if (a == "--samples")
      samples = v;
    else if (a == "--partitions")
      partitions = v;
    else if (a == "--rounds")
      rounds = std::max(1, v);
    else if (a == "--participant-workers")  // participant_options::workers (0: handled on the consumer thread)
      participant_workers = std::max(0, v);
    else if (a == "--linger-ms")  // kafka_config::linger_ms, for both paths
      base.linger_ms = v;
    else if (a == "--max-in-flight")  // kafka_config::max_in_flight_requests, for both paths
      base.max_in_flight_requests = v;
    else
      throw std::invalid_argument("transport_bench: unknown option " + a);
  }
  st::dev_broker broker(SAGA_KAFKA_DEV_PROGRAM);
  std::random_device rd;
  std::uint64_t seed = (static_cast<std::uint64_t>(rd()) << 32) | rd();
  std::string run = "bench" + std::to_string(seed % 100000);
  base.bootstrap_servers = broker.bootstrap_servers();
  base.log = st::stderr_logger(st::log_level::warning);
  auto topics = [&](const std::string& prefix, std::vector<std::string> names) {
    if (broker.control_address().empty()) return;
    for (auto& n : names) broker.control("create_topic " + prefix + "." + n + " " + std::to_string(partitions));
  };
  std::fprintf(stderr, "transport bench: %s, %d partitions, linger.ms=%d max.in.flight=%d fetch.wait.max.ms=%d\n",
               broker.bootstrap_servers().c_str(), partitions, base.linger_ms, base.max_in_flight_requests,
               base.fetch_wait_max_ms);

  // The baseline moves records of the same size: a command's key, headers and payload.
  st::command_message sample;
  sample.saga = saga::saga_id::from_words(seed, 1);
  sample.command_id = sample.saga.to_string() + ":1";
  sample.saga_type = "order";
  sample.step = "reserve_inventory";
  sample.attempt = 1;
  sample.service = "inventory";
  sample.command_type = "reserve";
  sample.payload = R"({"sku":"A-1","qty":1})";
  sample.reply_to = run + "-t.order.replies";
  auto record = st::encode(sample, base.source);
  std::vector<double> saga_runs, base_runs;
  for (int round = 0; round < rounds; ++round) {
    auto p = run + "-t" + std::to_string(round);
    topics(p, {"inventory.commands", "order.replies"});
    auto cpu = cpu_seconds();
    auto r =
        run_saga_path(base, p, in_flight, total, seed + 100 + static_cast<std::uint64_t>(round), participant_workers);
    std::fprintf(stderr,
                 "round %d: saga path %.0f replies/s with %d in flight (client CPU %.1f us/reply incl. setup)\n",
                 round + 1, r.replies_per_s, in_flight, (cpu_seconds() - cpu) * 1e6 / total);
    saga_runs.push_back(r.replies_per_s);
    auto b = run + "-bt" + std::to_string(round);
    topics(b, {"requests", "responses"});
    cpu = cpu_seconds();
    auto br = saga_bench::run_rdkafka_baseline(broker.bootstrap_servers(), b, in_flight, total, base.linger_ms,
                                               base.max_in_flight_requests, base.fetch_wait_max_ms, record.headers,
                                               record.key, record.value.size());
    std::fprintf(stderr,
                 "round %d: bare librdkafka %.0f replies/s with %d in flight (client CPU %.1f us/reply incl. setup)\n",
                 round + 1, br.replies_per_s, in_flight, (cpu_seconds() - cpu) * 1e6 / total);
    base_runs.push_back(br.replies_per_s);
  }
  saga_result throughput;
  throughput.replies_per_s = *std::max_element(saga_runs.begin(), saga_runs.end());
  saga_bench::baseline_result base_t;
  base_t.replies_per_s = *std::max_element(base_runs.begin(), base_runs.end());
  topics(run + "-l", {"inventory.commands", "order.replies"});
  auto latency = run_saga_path(base, run + "-l", 1, samples, seed + 1, participant_workers);
  double p50 = percentile(latency.rtt_ms, 0.5), p99 = percentile(latency.rtt_ms, 0.99);
  std::fprintf(stderr, "saga path: round trip p50 %.2f ms, p99 %.2f ms (one in flight)\n", p50, p99);

  topics(run + "-bl", {"requests", "responses"});
  auto base_l = saga_bench::run_rdkafka_baseline(broker.bootstrap_servers(), run + "-bl", 1, samples, base.linger_ms,
                                                 base.max_in_flight_requests, base.fetch_wait_max_ms, record.headers,
                                                 record.key, record.value.size());
  double bp50 = percentile(base_l.rtt_ms, 0.5), bp99 = percentile(base_l.rtt_ms, 0.99);
  std::fprintf(stderr, "bare librdkafka: round trip p50 %.2f ms, p99 %.2f ms\n", bp50, bp99);

  std::printf(
      "{\"replies_per_s\":%.0f,\"rtt_p50_ms\":%.3f,\"rtt_p99_ms\":%.3f,\"baseline_replies_per_s\":%.0f,"
      "\"baseline_rtt_p50_ms\":%.3f,\"baseline_rtt_p99_ms\":%.3f,\"ratio\":%.3f,\"in_flight\":%d,"
      "\"saga_median_replies_per_s\":%.0f,\"baseline_median_replies_per_s\":%.0f,\"rounds\":%d,\"total\":%d,"
      "\"samples\":%d,\"partitions\":%d,\"linger_ms\":%d,\"max_in_flight\":%d,\"fetch_wait_max_ms\":%d}\n",
      throughput.replies_per_s, p50, p99, base_t.replies_per_s, bp50, bp99,
      base_t.replies_per_s > 0 ? throughput.replies_per_s / base_t.replies_per_s : 0.0, in_flight, median(saga_runs),
      median(base_runs), rounds, total, samples, partitions, base.linger_ms, base.max_in_flight_requests,
      base.fetch_wait_max_ms);
  return 0;
}
