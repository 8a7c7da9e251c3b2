// order-orchestrator — places orders and runs their sagas: PostgreSQL event store, Kafka to the participants.
// Prints progress (sagas finished so far), the summary (completed / compensated by reason / stuck, sagas/s) and checks
// the books, and that every ending agrees with the business rules (contradicts_rules).
// Options: --orders N, --in-flight N, --run NAME (order id prefix), --step-timeout-ms N (each step attempt's wait
// for its reply), --expect-outcomes (fail unless every order ended exactly as its data says it must when stock and
// balances suffice: see expected_ending), --resume-only (place nothing: recover the unfinished sagas, print
// "resumed ..." once every one of them was rebuilt and its pending commands re-sent, and exit when none is left),
// --check-all, --until-idle, --json, --clock-jump BY_S (the clock steps BY_S forward on SIGUSR1: the
// fault matrix's clock-jump cell), --rate N (orders
// per second, steady), --placers N (threads placing orders, default 32) and --window S (a JSON line per S seconds:
// sagas finished, p50/p99 latency; scripts/bench soak), --static-partitions M/N (own the reply partitions p with
// p % N == M instead of joining the consumer group: kafka_config::static_assignment). Environment: SAGA_PG_URL,
// SAGA_KAFKA_BROKERS (and SAGA_KAFKA_PREFIX, default "saga").
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
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

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
  std::chrono::milliseconds jump_by{0};  // --clock-jump: the fault matrix's clock-jump cell
  bool expect_outcomes = false;
  double rate = 0;                 // --rate: orders placed per second (0: as fast as starts return)
  std::chrono::seconds window{0};  // --window: a JSON line of the sagas that finished in each window
  std::size_t placers = 32;        // --placers: threads placing orders (each start waits for its commit)
  saga::duration step_timeout = saga::retry_policy{}.timeout;
  // --static-partitions M/N: own reply partitions p % N == M instead of joining the consumer group
  std::optional<saga::transport::kafka_config::static_partitions> static_partitions;
};

// The wall clock, stepping forward by `by` when the process receives SIGUSR1 (the fault matrix sends it once enough
// sagas are in flight): every timer the jump makes due fires at once, as it would if the machine's clock were
// stepped, and the fault matrix checks that sagas still end rightly.
std::atomic<bool> clock_jumped{false};
extern "C" void on_jump_signal(int) { clock_jumped = true; }

class jumping_clock final : public saga::runtime::clock {
 public:
  explicit jumping_clock(std::chrono::milliseconds by) : by_(by), thread_([this] { loop(); }) {
    std::signal(SIGUSR1, on_jump_signal);
  }
  ~jumping_clock() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  saga::time_point now() override {
    const auto wall = std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
    return saga::time_point((wall + (clock_jumped ? by_ : decltype(by_){})).time_since_epoch());
  }
  void schedule(saga::time_point due, std::function<void()> fire) override {
    {
      std::lock_guard lock(mutex_);
      queue_.emplace(due, std::move(fire));
    }
    changed_.notify_all();
  }

 private:
  void loop() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      const auto t = now();
      if (!queue_.empty() && queue_.begin()->first <= t) {
        auto node = queue_.extract(queue_.begin());
        lock.unlock();
        node.mapped()();
        lock.lock();
        continue;
      }
      auto wait = std::chrono::milliseconds(100);  // notices the jump within 0.1 s
      if (!queue_.empty())
        wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(queue_.begin()->first - t));
      changed_.wait_for(lock, wait);
    }
  }
  const std::chrono::milliseconds by_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::multimap<saga::time_point, std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
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
    else if (a == "--placers")
      o.placers = std::max<std::size_t>(1, std::stoul(value()));
    else if (a == "--rate")
      o.rate = std::stod(value());
    else if (a == "--window")
      o.window = std::chrono::seconds(std::stol(value()));
    else if (a == "--expect-outcomes")
      o.expect_outcomes = true;
    else if (a == "--step-timeout-ms")
      o.step_timeout = saga::duration{std::stol(value())};
    else if (a == "--check-all")
      o.check_all = true;
    else if (a == "--until-idle")
      o.until_idle = true;
    else if (a == "--static-partitions") {
      const std::string v = value();
      const auto slash = v.find('/');
      std::size_t used_m = 0, used_n = 0;
      saga::transport::kafka_config::static_partitions share;
      try {
        if (slash == std::string::npos) throw std::invalid_argument("no slash");
        share.member = std::stoi(v.substr(0, slash), &used_m);
        share.members = std::stoi(v.substr(slash + 1), &used_n);
      } catch (const std::exception&) {
        throw std::invalid_argument("--static-partitions wants MEMBER/MEMBERS (e.g. 0/1), not '" + v + "'");
      }
      if (used_m != slash || used_n != v.size() - slash - 1)
        throw std::invalid_argument("--static-partitions wants MEMBER/MEMBERS (e.g. 0/1), not '" + v + "'");
      o.static_partitions = share;
    } else if (a == "--clock-jump")  // BY_S: on SIGUSR1 the clock steps BY_S seconds forward
      o.jump_by = std::chrono::milliseconds(static_cast<long>(std::stod(value()) * 1000));
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

// The example's business rules, as the participants apply them (participant_main.cpp): a customer whose id ends
// in 7 has their card declined; an address on "Nowhere" Lane cannot be shipped to. Running out of stock or funds
// depends on what earlier orders (and earlier runs) consumed, and a step can time out, so those may end any
// order early. Returns why `status`/`reason` contradict the rules, or "" when they agree.
std::string contradicts_rules(const order& o, saga::saga_status status, const std::string& reason) {
  const bool declined = card_declined(o.customer);
  const bool bad_address = address_invalid(o.address);
  auto says = [&](const char* what) { return reason.find(what) != std::string::npos; };
  if (status != saga::saga_status::completed && status != saga::saga_status::compensated)
    return std::string("ended ") + saga::to_string(status);
  if (status == saga::saga_status::completed)
    return declined      ? "completed although the card is declined"
           : bad_address ? "completed although the address is invalid"
                         : "";
  // Compensated: the reason may only name a rule the order breaks, or stock, funds, or a timeout.
  if (says("card declined") && !declined) return "compensated for a declined card, but the card is fine";
  if (says("shipping address invalid") && !bad_address)
    return "compensated for an invalid address, but the address is fine";
  if (says("insufficient funds") && declined) return "insufficient funds, but the card is declined before that";
  if (says("shipping address invalid") && declined) return "reached shipping, but the card is declined";
  return "";
}

// The ending an order must reach when stock and balances suffice (participants seeded with --stock/--balance):
// customers whose name ends in 7 are declined at payment, "Nowhere" addresses are refused by shipping, and every
// other order completes. Returns the status and the reason the compensation must carry ("" when completed).
std::pair<saga::saga_status, std::string> expected_ending(const order& o) {
  if (card_declined(o.customer)) return {saga::saga_status::compensated, "card declined"};
  if (address_invalid(o.address)) return {saga::saga_status::compensated, "shipping address invalid"};
  return {saga::saga_status::completed, ""};
}

// Finished sagas so far, counted from their outcomes while they finish: one line updated in place on a terminal,
// a plain line at each tenth otherwise (so logs stay readable).
class progress_board {
 public:
  // With a `window`, also prints one JSON line per window: the sagas that finished in it and their latency.
  explicit progress_board(std::size_t total, std::chrono::seconds window = {})
      : total_(total), tty_(isatty(1) != 0), window_(window) {
    thread_ = std::thread([this] { loop(); });
  }
  ~progress_board() { stop(); }
  void placed(std::shared_future<saga::runtime::saga_outcome> outcome) {
    const std::lock_guard lock(mutex_);
    incoming_.push_back(std::move(outcome));
  }
  // Counts what finished meanwhile, draws the last line and stops the thread.
  void stop() {
    if (!thread_.joinable()) return;
    stopping_ = true;
    thread_.join();
    poll();
    draw(true);
    std::printf("\n");
    std::fflush(stdout);
  }

 private:
  void loop() {
    auto window_end = std::chrono::steady_clock::now() + window_;
    while (!stopping_) {
      poll();
      draw(false);
      if (window_.count() > 0 && std::chrono::steady_clock::now() >= window_end) {
        report_window();
        window_end += window_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  void report_window() {
    std::sort(window_ms_.begin(), window_ms_.end());
    auto at = [&](double q) {
      return window_ms_.empty() ? 0.0
                                : window_ms_[static_cast<std::size_t>(q * static_cast<double>(window_ms_.size() - 1))];
    };
    std::printf("%s{\"window_end_s\":%.0f,\"finished\":%zu,\"p50_ms\":%.1f,\"p99_ms\":%.1f}\n", tty_ ? "\n" : "",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count(), window_ms_.size(),
                at(0.5), at(0.99));
    std::fflush(stdout);
    window_ms_.clear();
  }
  void poll() {
    {
      const std::lock_guard lock(mutex_);
      placed_ += incoming_.size();
      pending_.insert(pending_.end(), incoming_.begin(), incoming_.end());
      incoming_.clear();
    }
    std::erase_if(pending_, [this](const auto& f) {
      if (f.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
      if (window_.count() > 0) window_ms_.push_back(static_cast<double>(f.get().elapsed.count()) / 1000.0);
      switch (f.get().status) {
        case saga::saga_status::completed: ++completed_; break;
        case saga::saga_status::compensated: ++compensated_; break;
        default: ++stuck_; break;
      }
      return true;
    });
  }
  void draw(bool last) {
    const std::size_t done = completed_ + compensated_ + stuck_;
    if (!tty_) {  // a plain line per tenth finished
      const std::size_t tenth = total_ >= 10 ? total_ / 10 : 1;
      if (!last && (done == printed_ || done / tenth == printed_ / tenth)) return;
      if (last && done == printed_) return;
      printed_ = done;
    }
    const std::size_t width = 40, filled = total_ ? width * std::min(done, total_) / total_ : width;
    std::printf("%s  [%s%s] %zu/%zu finished: %zu completed, %zu compensated, %zu stuck (%zu placed)%s",
                tty_ ? "\r" : "", std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), done,
                total_, completed_, compensated_, stuck_, placed_, tty_ ? "\033[K" : "\n");
    std::fflush(stdout);
  }

  const std::size_t total_;
  const bool tty_;
  const std::chrono::seconds window_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::vector<double> window_ms_;  // latencies of the sagas finished in this window (the board's thread only)
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::vector<std::shared_future<saga::runtime::saga_outcome>> incoming_;  // guarded by mutex_
  std::vector<std::shared_future<saga::runtime::saga_outcome>> pending_;   // the board's thread only
  std::size_t placed_ = 0, completed_ = 0, compensated_ = 0, stuck_ = 0, printed_ = 0;
  std::thread thread_;
};

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
      std::size_t unfinished = 0, unexpected = 0;
      for (const auto& s : store.list(q)) {
        const auto state = saga::storage::fold_recorded(s.id, store.load(s.id));
        if (!saga::is_terminal(state.status)) {
          ++unfinished;
          std::cout << "UNFINISHED " << s.id.to_string() << " " << saga::to_string(state.status) << "\n";
          continue;
        }
        const auto ord = saga::from_json<order>(state.input);
        endings.emplace_back(ord.order_id, saga::to_string(state.status));
        if (const auto why = contradicts_rules(ord, state.status, state.reason); !why.empty()) {
          ++unexpected;
          std::cout << "UNEXPECTED " << ord.order_id << " " << saga::to_string(state.status) << " (" << state.reason
                    << "): " << why << "\n";
        }
      }
      order_processing::books b;
      saga::storage::postgres_session(url).run([&](saga::storage::transaction& tx) { b = check_books(tx, endings); });
      for (const auto& p : b.problems) std::cout << "PROBLEM " << p << "\n";
      std::cout << endings.size() << " sagas ended, " << unfinished << " unfinished, " << unexpected
                << " against the business rules; books " << (b.consistent() ? "consistent" : "BROKEN") << "\n";
      return unfinished == 0 && unexpected == 0 && b.consistent() ? 0 : 1;
    }
    auto config = saga::transport::kafka_config::from_env();
    if (const char* prefix = std::getenv("SAGA_KAFKA_PREFIX")) config.topic_prefix = prefix;
    // A process that dies without leaving its group keeps its partitions until its session times out: keep that
    // short (6 s is the smallest a default broker accepts) so another process takes over soon.
    config.properties.emplace("consumer.session.timeout.ms", "6000");
    config.properties.emplace("consumer.heartbeat.interval.ms", "1000");
    config.group_id = "order-orchestrator";
    config.static_assignment = opt.static_partitions;
    config.client_id = "order-orchestrator";
    config.source = "/order/orchestrator";
    saga::transport::kafka_transport bus(config);
    saga::runtime::orchestrator_options o;
    o.threads = 2;
    o.max_in_flight = opt.in_flight;
    if (opt.jump_by.count() != 0) o.clock = std::make_shared<jumping_clock>(opt.jump_by);
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
      // The time until this process was given its partitions (joining the consumer group) is printed apart from the
      // time recovery itself took.
      double assigned_at = -1;
      while (!interrupted && orchestrator.stats().sagas_recovered.load() < to_resume) {
        if (assigned_at < 0 && orchestrator.stats().reply_partitions_owned.load() > 0) assigned_at = since_start();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      const double resumed_at = since_start();
      if (assigned_at < 0) assigned_at = resumed_at;
      std::printf("partitions assigned after %.3f s\n", assigned_at);
      std::printf("resumed %zu sagas in %.3f s\n",
                  static_cast<std::size_t>(orchestrator.stats().sagas_recovered.load()), resumed_at);
      std::fflush(stdout);
      // Until nothing is running or compensating: a stuck saga waits for an operator (sagactl), not for this process.
      std::size_t stuck = 0;
      for (;;) {
        std::size_t moving = 0;
        stuck = 0;
        for (const auto& summary : store.list_unfinished({}))
          ++(summary.status == saga::saga_status::stuck ? stuck : moving);
        if (interrupted || moving == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      std::printf("finished in %.3f s\n", since_start());
      if (stuck > 0) std::printf("%zu sagas are stuck and wait for an operator (sagactl list --status stuck)\n", stuck);
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
    // Orders come in from many threads (--placers), as requests to a service would: each start waits for its start
    // event to be durable, so concurrent starts share group commits; the bound on sagas in flight pushes back.
    std::vector<std::pair<order, saga::runtime::saga_handle>> placed(opt.orders);
    progress_board board(opt.orders, opt.window);
    std::atomic<std::size_t> next{0};
    const auto placing_from = std::chrono::steady_clock::now();
    std::mutex error_mutex;
    std::exception_ptr place_error;
    auto place = [&] {
      try {
        for (std::size_t i; !interrupted && (i = next++) < opt.orders;) {
          if (opt.rate > 0)  // steady traffic: order i is due i / rate seconds in
            std::this_thread::sleep_until(placing_from +
                                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                              std::chrono::duration<double>(static_cast<double>(i) / opt.rate)));
          const order ord = make_order(opt.run, i);
          for (;;) {
            try {
              placed[i] = {ord, orchestrator.start("order", saga::to_json(ord), ord.order_id)};
              break;
            } catch (const saga::runtime::overloaded&) {
              if (interrupted) return;  // still too many in flight: try again
            } catch (const saga::storage::store_error& e) {
              if (!e.retryable() || interrupted) throw;
              std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the database is down: try again soon
            }
          }
          board.placed(placed[i].second.outcome);
        }
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!place_error) place_error = std::current_exception();
        interrupted = true;
      }
    };
    std::vector<std::thread> placers;
    for (std::size_t t = 0; t < opt.placers; ++t) placers.emplace_back(place);
    for (auto& t : placers) t.join();
    if (place_error) std::rethrow_exception(place_error);
    std::map<std::string, std::size_t> by_reason;
    std::map<saga::saga_status, std::size_t> by_status;
    std::vector<std::pair<std::string, std::string>> endings;
    std::vector<double> latencies_ms;
    std::vector<double> completed_ms;     // the sagas that completed: five steps, five round trips to participants
    std::vector<std::string> unexpected;  // orders whose ending contradicts the rules (or, checked, the expectation)
    std::set<std::string> unexpected_orders;  // each counted once, whichever checks it failed
    std::string example;
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
        unexpected_orders.insert(ord.order_id);
        unexpected.push_back(ord.order_id + " (saga " + handle.id.to_string() + ") " + saga::to_string(out.status) +
                             " (" + out.reason + "): expected " + saga::to_string(status) + " " + reason);
      }
      endings.emplace_back(ord.order_id, saga::to_string(out.status));
      latencies_ms.push_back(static_cast<double>(out.elapsed.count()) / 1000.0);
      if (out.status == saga::saga_status::completed) completed_ms.push_back(latencies_ms.back());
      if (const auto why = contradicts_rules(ord, out.status, out.reason); !why.empty()) {
        unexpected_orders.insert(ord.order_id);
        unexpected.push_back(ord.order_id + " " + saga::to_string(out.status) + " (" + out.reason + "): " + why);
      }
    }
    board.stop();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Stay until no saga is unfinished: sagas of another process that died are taken over with its partitions.
    for (int i = 0; opt.until_idle && !interrupted && i < 1200 && !store.list_unfinished({}).empty(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (interrupted) {
      std::cout << "\ninterrupted: shutting down cleanly (unfinished sagas resume on the next start)\n";
      orchestrator.shutdown();
      return 130;
    }
    std::cout << "\nsummary\n"
              << "  completed    " << by_status[saga::saga_status::completed] << "\n"
              << "  compensated  " << by_status[saga::saga_status::compensated] << "\n";
    for (const auto& [reason, n] : by_reason) std::cout << "    " << n << " x " << reason << "\n";
    const auto& m = orchestrator.stats();
    std::cout << "  stuck        " << by_status[saga::saga_status::stuck] << "\n"
              << "  throughput   " << static_cast<long>(static_cast<double>(placed.size()) / seconds) << " sagas/s, "
              << static_cast<long>(static_cast<double>(m.events_appended.load()) / seconds) << " events/s appended ("
              << seconds << " s)\n"
              << "  recovered    " << m.sagas_recovered.load() << " unfinished sagas taken over from their logs\n";
    const auto st = store.stats();
    std::cout << "  store        " << st.batches << " group commits, "
              << (st.batches ? static_cast<double>(st.appends) / static_cast<double>(st.batches) : 0.0)
              << " appends per commit, " << st.conflicts << " conflicts, "
              << (m.append_latency.count() ? m.append_latency.sum_ms() / static_cast<double>(m.append_latency.count())
                                           : 0.0)
              << " ms from decision to durable (mean)\n";
    std::cout << "  held         " << orchestrator.active() << " sagas still in the orchestrator's memory\n";
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
    for (const auto& u : unexpected) std::cout << "UNEXPECTED " << u << "\n";
    std::cout << "\nrules\n  " << placed.size() - unexpected_orders.size() << " of " << placed.size()
              << " orders ended as the business rules allow\n";
    if (opt.expect_outcomes)  // every ending checked against expected_ending too (into the same list)
      std::cout << "outcomes: " << placed.size() - unexpected_orders.size() << " of " << placed.size()
                << " ended as expected\n";
    if (!example.empty()) std::cout << "compensated example: " << example << "\n";
    orchestrator.shutdown();
    if (opt.json && !latencies_ms.empty()) {            // one line for scripts/bench
      auto at = [](std::vector<double>& v, double q) {  // "null" when no saga is in `v`
        if (v.empty()) return std::string("null");
        std::sort(v.begin(), v.end());
        char text[32];
        std::snprintf(text, sizeof text, "%.2f", v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))]);
        return std::string(text);
      };
      // p50/p99 over every saga, and over the completed ones alone: a compensated saga makes more round trips (one
      // refused at shipping seven instead of five), so its share of the orders moves the overall tail.
      std::printf(
          "{\"sagas\":%zu,\"in_flight\":%zu,\"seconds\":%.3f,\"sagas_per_s\":%.1f,\"events_per_s\":%.1f,"
          "\"p50_ms\":%s,\"p99_ms\":%s,\"p50_ms_completed\":%s,\"p99_ms_completed\":%s}\n",
          placed.size(), opt.in_flight, seconds, static_cast<double>(placed.size()) / seconds,
          static_cast<double>(m.events_appended.load()) / seconds, at(latencies_ms, 0.50).c_str(),
          at(latencies_ms, 0.99).c_str(), at(completed_ms, 0.50).c_str(), at(completed_ms, 0.99).c_str());
    }
    const bool all_terminal =
        by_status[saga::saga_status::completed] + by_status[saga::saga_status::compensated] == placed.size();
    return all_terminal && b.consistent() && unexpected.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "order-orchestrator: " << e.what() << "\n";
    return 1;
  }
}
