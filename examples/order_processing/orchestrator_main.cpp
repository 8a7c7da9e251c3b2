// order-orchestrator — places orders and runs their sagas: PostgreSQL event store, Kafka to the participants.
// Prints progress, the summary (completed / compensated by reason / stuck, sagas/s) and checks the books.
// Options: --orders N, --in-flight N, --run NAME (order id prefix), --step-timeout-ms N (each step attempt's wait
// for its reply), --expect-outcomes (fail unless every order ended as its data says it must: see expected_ending),
// --resume-only (place nothing: recover the unfinished sagas, print "resumed ..." once every one of them was
// rebuilt and its pending commands re-sent, and exit when none is left), --check-all, --until-idle, --json.
// Environment: SAGA_PG_URL, SAGA_KAFKA_BROKERS (and SAGA_KAFKA_PREFIX, default "saga").
#include "order_saga.hpp"
#include "shop_schema.hpp"

#include <saga/runtime/orchestrator.hpp>
#include <saga/storage/migrate.hpp>
#include <saga/storage/postgres_event_store.hpp>
#include <saga/storage/postgres_session.hpp>
#include <saga/transport/kafka_transport.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>

using namespace order_processing;

namespace {

std::atomic<bool> interrupted{false};
extern "C" void on_signal(int) { interrupted = true; }

struct options {
  std::size_t orders = 1000;
  std::size_t in_flight = 200;
  std::string run;
  bool resume_only = false;
  bool check_all = false;
  bool until_idle = false;
  bool json = false;
  bool expect_outcomes = false;
  saga::duration step_timeout = saga::retry_policy{}.timeout;
};

options parse(int argc, char** argv) {
  options o;
  o.run = "run" + std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--orders")
      o.orders = std::stoul(value());
    else if (a == "--in-flight")
      o.in_flight = std::stoul(value());
    else if (a == "--run")
      o.run = value();
    else if (a == "--resume-only")
      o.resume_only = true;
    else if (a == "--json")
      o.json = true;
    else if (a == "--expect-outcomes")
      o.expect_outcomes = true;
    else if (a == "--step-timeout-ms")
      o.step_timeout = saga::duration{std::stol(value())};
    else if (a == "--check-all")
      o.check_all = true;
    else if (a == "--until-idle")
      o.until_idle = true;
    else
      throw std::invalid_argument("unknown option " + a);
  }
  return o;
}

order make_order(const std::string& run, std::size_t i) {
  order o;
  o.order_id = run + "-" + std::to_string(i + 1);
  o.customer = "cust-" + std::to_string(i % 100);
  o.sku = "sku-" + std::to_string(i % 10);
  o.quantity = 1 + static_cast<std::int64_t>(i % 4);
  o.amount_cents = 1000 + static_cast<std::int64_t>((i * 37) % 9000);
  o.address = i % 29 == 5 ? "1 Nowhere Lane" : std::to_string(i) + " Main Street";
  return o;
}

// The ending an order must reach when stock and balances suffice (participants seeded with --stock/--balance):
// customers whose name ends in 7 are declined at payment, "Nowhere" addresses are refused by shipping, and every
// other order completes. Returns the status and the reason the compensation must carry ("" when completed).
std::pair<saga::saga_status, std::string> expected_ending(const order& o) {
  if (o.customer.back() == '7') return {saga::saga_status::compensated, "card declined"};
  if (o.address.find("Nowhere") != std::string::npos)
    return {saga::saga_status::compensated, "shipping address invalid"};
  return {saga::saga_status::completed, ""};
}

void progress(std::size_t done, std::size_t total) {
  const std::size_t width = 40, filled = total ? width * done / total : width;
  std::printf("%s  [%s%s] %zu/%zu", isatty(1) ? "\r" : "\n", std::string(filled, '#').c_str(),
              std::string(width - filled, '.').c_str(), done, total);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const char* url = std::getenv("SAGA_PG_URL");
  if (!url) {
    std::cerr << "order-orchestrator: set SAGA_PG_URL\n";
    return 2;
  }
  try {
    const options opt = parse(argc, argv);
    (void)saga::storage::migrate(url);
    saga::storage::postgres_event_store store(url);
    if (opt.check_all) {  // every order saga in the store: ended, and the participants' books agree with its ending
      saga::storage::saga_query q;
      q.type = "order";
      q.limit = static_cast<std::size_t>(-1);
      std::vector<std::pair<std::string, std::string>> endings;
      std::size_t unfinished = 0;
      for (const auto& s : store.list(q)) {
        const auto state = saga::storage::fold_recorded(s.id, store.load(s.id));
        if (!saga::is_terminal(state.status)) {
          ++unfinished;
          std::cout << "UNFINISHED " << s.id.to_string() << " " << saga::to_string(state.status) << "\n";
          continue;
        }
        endings.emplace_back(saga::from_json<order>(state.input).order_id, saga::to_string(state.status));
      }
      order_processing::books b;
      saga::storage::postgres_session(url).run([&](saga::storage::transaction& tx) { b = check_books(tx, endings); });
      for (const auto& p : b.problems) std::cout << "PROBLEM " << p << "\n";
      std::cout << endings.size() << " sagas ended, " << unfinished << " unfinished; books "
                << (b.consistent() ? "consistent" : "BROKEN") << "\n";
      return unfinished == 0 && b.consistent() ? 0 : 1;
    }
    auto config = saga::transport::kafka_config::from_env();
    if (const char* prefix = std::getenv("SAGA_KAFKA_PREFIX")) config.topic_prefix = prefix;
    // A process that dies without leaving its group keeps its partitions until its session times out: keep that
    // short (6 s is the smallest a default broker accepts) so another process takes over soon.
    config.properties.emplace("consumer.session.timeout.ms", "6000");
    config.properties.emplace("consumer.heartbeat.interval.ms", "1000");
    config.group_id = "order-orchestrator";
    config.client_id = "order-orchestrator";
    config.source = "/order/orchestrator";
    saga::transport::kafka_transport bus(config);
    saga::runtime::orchestrator_options o;
    o.threads = 2;
    o.max_in_flight = opt.in_flight;
    o.reply_to = [prefix = config.topic_prefix](const std::string& type) { return prefix + "." + type + ".replies"; };
    saga::runtime::orchestrator orchestrator(store, bus, o);
    orchestrator.add(order_saga(opt.step_timeout));
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const auto started = std::chrono::steady_clock::now();
    const std::size_t to_resume = opt.resume_only ? store.list_unfinished({}).size() : 0;
    orchestrator.run();

    if (opt.resume_only) {  // recovery: finish what the log says is unfinished, then exit
      auto since_start = [&] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      };
      std::cout << "resuming " << to_resume << " unfinished sagas" << std::endl;
      // Every unfinished saga of the partitions this process was given is rebuilt and its pending commands re-sent
      // and timers re-armed (alone in the group, it is given every partition).
      while (!interrupted && orchestrator.stats().sagas_recovered.load() < to_resume)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::printf("resumed %zu sagas in %.3f s\n",
                  static_cast<std::size_t>(orchestrator.stats().sagas_recovered.load()), since_start());
      std::fflush(stdout);
      while (!interrupted && !store.list_unfinished({}).empty())
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      std::printf("finished in %.3f s\n", since_start());
      orchestrator.shutdown();
      return interrupted ? 130 : 0;
    }

    // Place orders once this process consumes replies (joining the consumer group takes a few seconds); alone in
    // the group it gets every partition, beside other processes a share; bounded in case it gets none.
    for (int i = 0; i < 300 && !interrupted && orchestrator.stats().reply_partitions_owned.load() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::cout << "placing " << opt.orders << " orders (run " << opt.run << ", up to " << opt.in_flight
              << " in flight)\n";
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::pair<order, saga::runtime::saga_handle>> placed;
    for (std::size_t i = 0; i < opt.orders && !interrupted; ++i) {
      const order ord = make_order(opt.run, i);
      placed.emplace_back(ord, orchestrator.start("order", saga::to_json(ord), ord.order_id));
      if ((i + 1) % (opt.orders / 10 == 0 ? 1 : opt.orders / 10) == 0) progress(i + 1, opt.orders);
    }
    std::map<std::string, std::size_t> by_reason;
    std::map<saga::saga_status, std::size_t> by_status;
    std::vector<std::pair<std::string, std::string>> endings;
    std::vector<double> latencies_ms;
    std::string example;
    std::size_t unexpected = 0;
    for (auto& [ord, handle] : placed) {
      while (!interrupted && handle.outcome.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
      }
      if (interrupted) break;
      const auto out = handle.outcome.get();
      ++by_status[out.status];
      if (out.status == saga::saga_status::compensated) {
        const auto colon = out.reason.rfind(": ");
        ++by_reason[colon == std::string::npos ? out.reason : out.reason.substr(colon + 2)];
        if (example.empty() && out.reason.find("card declined") != std::string::npos) example = handle.id.to_string();
      }
      if (const auto [status, reason] = expected_ending(ord);
          opt.expect_outcomes && (out.status != status || out.reason.find(reason) == std::string::npos)) {
        ++unexpected;
        std::cout << "\nUNEXPECTED ending of " << ord.order_id << " (saga " << handle.id.to_string()
                  << "): " << saga::to_string(out.status) << " " << out.reason << "; expected "
                  << saga::to_string(status) << " " << reason;
      }
      endings.emplace_back(ord.order_id, saga::to_string(out.status));
      latencies_ms.push_back(static_cast<double>(out.elapsed.count()) / 1000.0);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Stay until no saga is unfinished: sagas of another process that died are taken over with its partitions.
    for (int i = 0; opt.until_idle && !interrupted && i < 1200 && !store.list_unfinished({}).empty(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (interrupted) {
      std::cout << "\ninterrupted: shutting down cleanly (unfinished sagas resume on the next start)\n";
      orchestrator.shutdown();
      return 130;
    }
    std::cout << "\n\nsummary\n"
              << "  completed    " << by_status[saga::saga_status::completed] << "\n"
              << "  compensated  " << by_status[saga::saga_status::compensated] << "\n";
    for (const auto& [reason, n] : by_reason) std::cout << "    " << n << " x " << reason << "\n";
    const auto& m = orchestrator.stats();
    std::cout << "  stuck        " << by_status[saga::saga_status::stuck] << "\n"
              << "  throughput   " << static_cast<long>(static_cast<double>(placed.size()) / seconds) << " sagas/s, "
              << static_cast<long>(static_cast<double>(m.events_appended.load()) / seconds) << " events/s appended ("
              << seconds << " s)\n"
              << "  recovered    " << m.sagas_recovered.load() << " unfinished sagas taken over from their logs\n";
    saga::storage::postgres_session session(url);
    books b;
    session.run([&](saga::storage::transaction& tx) { b = check_books(tx, endings); });
    std::cout << "\nbooks\n"
              << "  stock    " << b.stock_on_hand << " on hand + " << b.stock_reserved
              << " shipped = " << b.stock_initial << "\n  money    " << b.money_balances << " in balances + "
              << b.money_charged << " kept charges = " << b.money_initial << "\n";
    for (const auto& p : b.problems) std::cout << "  PROBLEM: " << p << "\n";
    std::cout << "  "
              << (b.consistent() ? "OK: every reservation released or shipped, every charge refunded or kept"
                                 : "BROKEN")
              << "\n";
    if (!example.empty()) std::cout << "compensated example: " << example << "\n";
    if (opt.expect_outcomes)
      std::cout << "outcomes: " << placed.size() - unexpected << " of " << placed.size() << " ended as expected\n";
    orchestrator.shutdown();
    if (opt.json && !latencies_ms.empty()) {  // one line for scripts/bench
      std::sort(latencies_ms.begin(), latencies_ms.end());
      auto at = [&](double q) {
        return latencies_ms[static_cast<std::size_t>(q * static_cast<double>(latencies_ms.size() - 1))];
      };
      std::printf(
          "{\"sagas\":%zu,\"in_flight\":%zu,\"seconds\":%.3f,\"sagas_per_s\":%.1f,\"events_per_s\":%.1f,"
          "\"p50_ms\":%.2f,\"p99_ms\":%.2f}\n",
          placed.size(), opt.in_flight, seconds, static_cast<double>(placed.size()) / seconds,
          static_cast<double>(m.events_appended.load()) / seconds, at(0.50), at(0.99));
    }
    const bool all_terminal =
        by_status[saga::saga_status::completed] + by_status[saga::saga_status::compensated] == placed.size();
    return all_terminal && b.consistent() && unexpected == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "order-orchestrator: " << e.what() << "\n";
    return 1;
  }
}
