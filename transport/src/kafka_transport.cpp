#include "saga/transport/kafka_transport.hpp"

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <variant>

namespace saga::transport {

namespace {

// Without the flag, destroying a consumer whose close did not finish (consume_loop bounds it by revoke_timeout) closes
// it again, and that close waits forever for a cluster that is gone: a participant stopped after its broker died
// never exited. The group frees the member's partitions after its session timeout instead.
struct handle_deleter {
  void operator()(rd_kafka_t* rk) const noexcept { rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE); }
};
struct conf_deleter {
  void operator()(rd_kafka_conf_t* c) const noexcept { rd_kafka_conf_destroy(c); }
};
struct list_deleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const noexcept { rd_kafka_topic_partition_list_destroy(l); }
};
struct headers_deleter {
  void operator()(rd_kafka_headers_t* h) const noexcept { rd_kafka_headers_destroy(h); }
};
struct topic_deleter {
  void operator()(rd_kafka_topic_t* t) const noexcept { rd_kafka_topic_destroy(t); }
};
struct metadata_deleter {
  void operator()(const rd_kafka_metadata_t* m) const noexcept { rd_kafka_metadata_destroy(m); }
};
struct error_deleter {
  void operator()(rd_kafka_error_t* e) const noexcept { rd_kafka_error_destroy(e); }
};
using handle_ptr = std::unique_ptr<rd_kafka_t, handle_deleter>;
using conf_ptr = std::unique_ptr<rd_kafka_conf_t, conf_deleter>;
using list_ptr = std::unique_ptr<rd_kafka_topic_partition_list_t, list_deleter>;
using headers_ptr = std::unique_ptr<rd_kafka_headers_t, headers_deleter>;
using topic_ptr = std::unique_ptr<rd_kafka_topic_t, topic_deleter>;
using metadata_ptr = std::unique_ptr<const rd_kafka_metadata_t, metadata_deleter>;
using error_ptr = std::unique_ptr<rd_kafka_error_t, error_deleter>;

// A property's value as it may appear in an error or a log line: secrets (passwords, keys, tokens, JAAS and OAuth
// settings) never do.
std::string printable(const std::string& key, const std::string& value) {
  for (const char* secret : {"password", "secret", "jaas", "key.pem", "private", "token", "oauthbearer", "credential"})
    if (key.find(secret) != std::string::npos) return "<redacted>";
  return value;
}

void set(rd_kafka_conf_t* conf, const std::string& key, const std::string& value) {
  char err[512];
  if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), err, sizeof err) == RD_KAFKA_CONF_OK) return;
  std::string why = err;  // librdkafka may quote the value ("Invalid value "…" for …"): a secret is cut out of it too
  if (const auto shown = printable(key, value); shown != value && !value.empty())
    for (auto at = why.find(value); at != std::string::npos; at = why.find(value, at + shown.size()))
      why.replace(at, value.size(), shown);
  throw transport_error("kafka property " + key + "=" + printable(key, value) + ": " + why, false);
}

// Whether sending the record again later can help.
bool retryable(rd_kafka_resp_err_t err) noexcept {
  switch (err) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION: return true;
    default: return false;
  }
}

// librdkafka logs connection failures at LOG_ERR although it retries them; the error callback reports what
// matters, so its log lines are capped at warning.
log_level level_of_syslog(int level) noexcept {
  if (level <= 4) return log_level::warning;
  if (level <= 6) return log_level::info;
  return log_level::debug;
}

header_list headers_of(const rd_kafka_message_t* m) {
  header_list out;
  rd_kafka_headers_t* h = nullptr;
  if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR || !h) return out;
  out.reserve(rd_kafka_header_cnt(h));
  const char* name = nullptr;
  const void* value = nullptr;
  std::size_t size = 0;
  for (std::size_t i = 0; rd_kafka_header_get_all(h, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; ++i)
    out.emplace_back(name, value ? std::string(static_cast<const char*>(value), size) : std::string());
  return out;
}

using route_handler = std::variant<command_handler, reply_handler, raw_handler>;
struct route {
  std::string name;  // service / saga type / topic
  route_handler handler;
};

struct partition_state {
  std::uint64_t epoch = 0;
  std::map<std::int64_t, bool> pending;  // offset -> handled
  std::int64_t committable = -1;         // next offset to commit (all before it handled)
  std::int64_t committed = -1;
};

}  // namespace

struct kafka_transport::impl : std::enable_shared_from_this<impl> {
  kafka_config cfg;
  logger log;

  handle_ptr producer;
  std::thread producer_thread;
  std::atomic<bool> producer_running{true};
  std::mutex space_mutex;
  std::condition_variable space_cv;
  std::atomic<bool> stopped{false};
  // stop()'s second half (joins, flush) has been claimed; `finished` once it is done.
  std::atomic<bool> finishing{false};
  std::mutex finished_mutex;
  std::condition_variable finished_cv;
  bool finished = false;
  // Set by stop() once the consumer is closed: sends are refused from then on. Until then they go out, so that a
  // handler that answers while stop()'s revoke drains (a participant finishing its batch) gets its reply out and its
  // message handled and committed, instead of failing its send and holding the drain for the whole revoke_timeout.
  std::atomic<bool> sends_closed{false};
  // produce() calls under way: stop() lets them finish (each is bounded by enqueue_timeout) before its flush, so
  // that no record is queued once nothing polls the producer (its delivery callback would never run).
  std::atomic<int> producing{0};
  // When stop() must be done: revoke_timeout after it began. The revoke's drain and commit, the consumer's close and
  // the producer's flush share it instead of taking revoke_timeout each. Written before consumer_running is cleared.
  std::atomic<std::chrono::steady_clock::rep> stop_deadline{
      std::chrono::steady_clock::time_point::max().time_since_epoch().count()};

  std::mutex mutex;  // everything below
  std::condition_variable handled_cv;
  handle_ptr consumer;
  std::thread consumer_thread;
  std::atomic<bool> consumer_running{false};
  std::map<std::string, route> routes;  // by topic
  partitions_callback assigned_cb, revoked_cb;
  std::map<std::pair<std::string, std::int32_t>, partition_state> partitions;
  std::atomic<std::size_t> unhandled{0};  // changed under `mutex`; read without it on the poll thread
  std::uint64_t next_epoch = 1;
  std::atomic<std::chrono::steady_clock::rep> last_commit{0};  // steady_clock ticks of the last commit
  std::map<std::string, std::int32_t> partition_counts;
  std::set<std::string> learned_topics;  // topics whose metadata the producer asked for (learn_topic)

  std::atomic<std::uint64_t> sent{0}, delivered{0}, delivery_failures{0}, queue_full{0}, received{0}, dead_lettered{0},
      commits{0};

  explicit impl(kafka_config c) : cfg(std::move(c)), log(cfg.log ? cfg.log : stderr_logger()) {}

  void say(log_level level, const std::string& line) const noexcept {
    try {
      log(level, line);
    } catch (...) {
    }
  }

  // --- configuration -------------------------------------------------------------------------------------------
  conf_ptr base_conf(const char* role) {
    conf_ptr conf(rd_kafka_conf_new());
    if (cfg.bootstrap_servers.empty()) throw transport_error("kafka_config.bootstrap_servers is empty", false);
    set(conf.get(), "bootstrap.servers", cfg.bootstrap_servers);
    set(conf.get(), "client.id", cfg.client_id);
    set(conf.get(), "socket.nagle.disable", "true");
    rd_kafka_conf_set_opaque(conf.get(), this);
    rd_kafka_conf_set_log_cb(conf.get(), [](const rd_kafka_t* rk, int level, const char* fac, const char* buf) {
      auto* self = static_cast<impl*>(rd_kafka_opaque(rk));
      self->say(level_of_syslog(level), std::string("kafka ") + fac + ": " + buf);
    });
    rd_kafka_conf_set_error_cb(conf.get(), [](rd_kafka_t* rk, int err, const char* reason, void* opaque) {
      auto* self = static_cast<impl*>(opaque);
      auto e = static_cast<rd_kafka_resp_err_t>(err);
      bool fatal = e == RD_KAFKA_RESP_ERR__FATAL;
      std::string text = reason;
      if (fatal) {
        char buf[512];
        rd_kafka_fatal_error(rk, buf, sizeof buf);
        text = buf;
      }
      self->say(fatal ? log_level::error : log_level::warning,
                std::string("kafka ") + rd_kafka_name(rk) + (fatal ? " fatal error: " : " error: ") + text);
    });
    (void)role;
    return conf;
  }

  void apply_properties(rd_kafka_conf_t* conf, std::string_view role) {
    for (const auto& [key, value] : cfg.properties) {
      auto dot = key.find('.');
      std::string_view first = dot == std::string::npos ? std::string_view() : std::string_view(key).substr(0, dot);
      if (first == "producer" || first == "consumer") {
        if (first == role) set(conf, key.substr(dot + 1), value);
      } else {
        set(conf, key, value);
      }
    }
  }

  void start_producer() {
    auto conf = base_conf("producer");
    set(conf.get(), "enable.idempotence", "true");
    set(conf.get(), "acks", "all");
    set(conf.get(), "linger.ms", std::to_string(cfg.linger_ms));
    set(conf.get(), "max.in.flight.requests.per.connection", std::to_string(cfg.max_in_flight_requests));
    set(conf.get(), "queue.buffering.max.messages", std::to_string(cfg.max_queued_messages));
    set(conf.get(), "partitioner", "murmur2_random");
    rd_kafka_conf_set_dr_msg_cb(conf.get(), [](rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
      static_cast<impl*>(opaque)->on_delivery(m);
    });
    apply_properties(conf.get(), "producer");
    char err[512];
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), err, sizeof err);
    if (!rk) throw transport_error(std::string("cannot create kafka producer: ") + err, false);
    conf.release();  // owned by rk now
    producer.reset(rk);
    producer_thread = std::thread([this] {
      while (producer_running.load(std::memory_order_acquire)) rd_kafka_poll(producer.get(), 100);
    });
  }

  // --- producing -----------------------------------------------------------------------------------------------
  void on_delivery(const rd_kafka_message_t* m) {
    std::unique_ptr<delivery_callback> done(static_cast<delivery_callback*>(m->_private));
    std::exception_ptr error;
    if (m->err) {
      ++delivery_failures;
      bool retry = retryable(m->err);
      if (m->err == RD_KAFKA_RESP_ERR__FATAL || rd_kafka_fatal_error(producer.get(), nullptr, 0)) retry = false;
      std::string topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "?";
      error = std::make_exception_ptr(
          transport_error("delivery to " + topic + " failed: " + rd_kafka_err2str(m->err), retry));
    } else {
      ++delivered;
    }
    space_cv.notify_all();
    if (done && *done) {
      try {
        (*done)(error);
      } catch (const std::exception& e) {
        say(log_level::error, std::string("delivery callback threw: ") + e.what());
      } catch (...) {
        say(log_level::error, "delivery callback threw");
      }
    }
  }

  void fail(delivery_callback& done, const std::string& what, bool retry) {
    if (!done) return;
    try {
      done(std::make_exception_ptr(transport_error(what, retry)));
    } catch (...) {
      say(log_level::error, "delivery callback threw");
    }
  }

  void produce(const std::string& topic, const std::string& key, const header_list& headers, const std::string& value,
               delivery_callback done) {
    ++producing;
    struct leave {
      std::atomic<int>& n;
      ~leave() { --n; }
    } left{producing};
    if (sends_closed.load()) return fail(done, "kafka transport stopped; cannot send to " + topic, false);
    std::size_t bytes = key.size() + value.size();
    for (const auto& [name, v] : headers) bytes += name.size() + v.size();
    if (bytes > cfg.max_message_bytes)
      return fail(done,
                  "a record of " + std::to_string(bytes) + " bytes for " + topic +
                      " exceeds kafka_config::max_message_bytes (" + std::to_string(cfg.max_message_bytes) + ")",
                  false);
    learn_topic(topic);
    auto ctx = std::make_unique<delivery_callback>(std::move(done));
    auto deadline = std::chrono::steady_clock::now() + cfg.enqueue_timeout;
    const bool on_producer_thread = std::this_thread::get_id() == producer_thread.get_id();
    for (;;) {
      headers_ptr h(rd_kafka_headers_new(headers.size()));
      for (const auto& [name, v] : headers)
        rd_kafka_header_add(h.get(), name.data(), static_cast<ssize_t>(name.size()), v.data(),
                            static_cast<ssize_t>(v.size()));
      rd_kafka_resp_err_t err = rd_kafka_producev(
          producer.get(), RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(key.data(), key.size()),
          RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()), RD_KAFKA_V_HEADERS(h.get()),
          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(ctx.get()), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        (void)h.release();    // owned by the message now
        (void)ctx.release();  // freed by on_delivery
        ++sent;
        return;
      }
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        ++queue_full;
        // The producer thread itself cannot wait: only it serves the deliveries that make room.
        if (!on_producer_thread && std::chrono::steady_clock::now() < deadline) {
          std::unique_lock lock(space_mutex);
          // Deliveries notify; the cap covers the window between a delivery report and the slot being freed.
          space_cv.wait_until(lock,
                              std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(5)));
          continue;
        }
        return fail(*ctx,
                    "kafka producer queue full (" + std::to_string(cfg.max_queued_messages) + " messages) sending to " +
                        topic + "; retry later",
                    true);
      }
      return fail(*ctx, "cannot send to " + topic + ": " + rd_kafka_err2str(err), retryable(err));
    }
  }

  // --- consuming -----------------------------------------------------------------------------------------------
  void ensure_consumer_locked() {
    if (consumer) return;
    if (cfg.group_id.empty()) throw transport_error("kafka_config.group_id is empty; it is needed to receive", false);
    auto conf = base_conf("consumer");
    set(conf.get(), "group.id", cfg.group_id);
    set(conf.get(), "enable.auto.commit", "false");
    set(conf.get(), "enable.auto.offset.store", "false");
    set(conf.get(), "auto.offset.reset", "earliest");
    set(conf.get(), "enable.partition.eof", "false");
    set(conf.get(), "allow.auto.create.topics", "true");
    set(conf.get(), "fetch.wait.max.ms", std::to_string(cfg.fetch_wait_max_ms));
    rd_kafka_conf_set_rebalance_cb(
        conf.get(), [](rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts, void* opaque) {
          static_cast<impl*>(opaque)->on_rebalance(rk, err, parts);
        });
    rd_kafka_conf_set_offset_commit_cb(
        conf.get(), [](rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets, void* opaque) {
          static_cast<impl*>(opaque)->on_committed(err, offsets);
        });
    apply_properties(conf.get(), "consumer");
    char err[512];
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), err, sizeof err);
    if (!rk) throw transport_error(std::string("cannot create kafka consumer: ") + err, false);
    conf.release();
    consumer.reset(rk);
    rd_kafka_poll_set_consumer(rk);
    consumer_running = true;
    consumer_thread = std::thread([this] { consume_loop(); });
  }

  void subscribe_locked() {
    list_ptr topics(rd_kafka_topic_partition_list_new(static_cast<int>(routes.size())));
    for (const auto& [topic, r] : routes)
      rd_kafka_topic_partition_list_add(topics.get(), topic.c_str(), RD_KAFKA_PARTITION_UA);
    if (auto err = rd_kafka_subscribe(consumer.get(), topics.get()))
      throw transport_error(std::string("cannot subscribe: ") + rd_kafka_err2str(err), false);
  }

  void add_route(const std::string& topic, route r) {
    {
      std::lock_guard lock(mutex);
      if (stopped.load()) throw transport_error("kafka transport stopped", false);
      ensure_consumer_locked();
      const bool known = routes.contains(topic);
      routes[topic] = std::move(r);
      if (!cfg.static_assignment) {
        subscribe_locked();
        return;
      }
      if (known) return;  // its partitions are assigned already
    }
    try {
      assign_static(topic);
    } catch (...) {  // unregistered again, so registering it once more retries the assignment
      std::lock_guard lock(mutex);
      routes.erase(topic);
      std::erase_if(partitions, [&](const auto& entry) { return entry.first.first == topic; });
      throw;
    }
  }

  // static_assignment: assigns this member's partitions of `topic` without a group (each from its committed offset,
  // else the earliest), then tells the assigned callback, on this (the registering) thread.
  void assign_static(const std::string& topic) {
    const auto share = *cfg.static_assignment;
    std::optional<std::int32_t> count;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!(count = partition_count(topic))) {  // the first ask creates the topic where the cluster allows it
      if (stopped.load() || std::chrono::steady_clock::now() >= deadline)
        throw transport_error(
            "kafka static assignment: no partition count for topic " + topic + " within 30 s (does it exist?)", true);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // start-up only
    }
    list_ptr parts(rd_kafka_topic_partition_list_new(*count));
    for (std::int32_t p = share.member; p < *count; p += share.members)
      rd_kafka_topic_partition_list_add(parts.get(), topic.c_str(), p);  // offset unset: the committed one
    if (parts->cnt == 0) {
      say(log_level::warning, "kafka " + cfg.group_id + ": static member " + std::to_string(share.member) + " of " +
                                  std::to_string(share.members) + " owns none of the " + std::to_string(*count) +
                                  " partition(s) of " + topic);
      return;
    }
    {
      std::lock_guard lock(mutex);
      for (int i = 0; i < parts->cnt; ++i) {
        auto& st = partitions[{topic, parts->elems[i].partition}];
        st = partition_state{};
        st.epoch = next_epoch++;
      }
    }
    if (error_ptr e{rd_kafka_incremental_assign(consumer.get(), parts.get())})
      throw transport_error("kafka static assignment of " + topic + ": " + rd_kafka_error_string(e.get()), false);
    say(log_level::info, "kafka " + cfg.group_id + ": assigned " + std::to_string(parts->cnt) + " partition(s) of " +
                             topic + " (static member " + std::to_string(share.member) + " of " +
                             std::to_string(share.members) + ")");
    partitions_callback cb;
    {
      std::lock_guard lock(mutex);
      cb = assigned_cb;
    }
    notify(cb, describe(parts.get()), "assigned");
  }

  // static_assignment at stop: the revoke a group would run (in-flight handled, offsets committed, the revoked
  // callback), for every partition this member owns.
  void revoke_static() {
    list_ptr parts(rd_kafka_topic_partition_list_new(0));
    {
      std::lock_guard lock(mutex);
      for (const auto& [tp, st] : partitions)
        rd_kafka_topic_partition_list_add(parts.get(), tp.first.c_str(), tp.second);
    }
    if (parts->cnt > 0) on_rebalance(consumer.get(), RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS, parts.get());
  }

  void consume_loop() {
    // Short enough for stop() to be seen soon whatever the commit interval.
    const int timeout = static_cast<int>(std::clamp<std::int64_t>(cfg.commit_interval.count(), 1, 100));
    while (consumer_running.load(std::memory_order_acquire)) {
      if (unhandled.load() >= cfg.max_unhandled) {
        std::unique_lock lock(mutex);
        handled_cv.wait_for(lock, cfg.commit_interval,
                            [&] { return unhandled.load() < cfg.max_unhandled || !consumer_running.load(); });
      }
      commit_due(false);
      if (!consumer_running.load(std::memory_order_acquire)) break;
      if (unhandled.load() >= cfg.max_unhandled) continue;
      rd_kafka_message_t* m = rd_kafka_consumer_poll(consumer.get(), timeout);
      if (!m) continue;
      std::unique_ptr<rd_kafka_message_t, void (*)(rd_kafka_message_t*)> guard(m, rd_kafka_message_destroy);
      dispatch(m);
    }
    if (cfg.static_assignment) revoke_static();
    // Leaving the group runs the revoke (in-flight handled, offsets committed) through the rebalance callback,
    // served here. rd_kafka_consumer_close() would wait forever for a broker that is gone, so the close is
    // asynchronous and bounded by stop()'s deadline; past it the broker's session timeout frees the partitions.
    std::unique_ptr<rd_kafka_queue_t, void (*)(rd_kafka_queue_t*)> queue(rd_kafka_queue_new(consumer.get()),
                                                                         rd_kafka_queue_destroy);
    if (rd_kafka_error_t* e = rd_kafka_consumer_close_queue(consumer.get(), queue.get())) {
      say(log_level::warning, std::string("kafka consumer close: ") + rd_kafka_error_string(e));
      rd_kafka_error_destroy(e);
      return;
    }
    // The close queue also receives messages fetched before the close took effect, so it is served with the event
    // API (rd_kafka_queue_poll_callback() aborts the process on a message: "not a message queue"). Those messages
    // are dropped unhandled and uncommitted; the partition's next owner receives them again.
    while (!rd_kafka_consumer_closed(consumer.get())) {
      const auto left = wait_budget();
      if (left.count() <= 0) break;
      std::unique_ptr<rd_kafka_event_t, void (*)(rd_kafka_event_t*)> ev(
          rd_kafka_queue_poll(queue.get(),
                              static_cast<int>(std::min<std::chrono::milliseconds::rep>(100, left.count()))),
          rd_kafka_event_destroy);
      if (!ev) continue;
      switch (rd_kafka_event_type(ev.get())) {
        case RD_KAFKA_EVENT_REBALANCE:
          on_rebalance(consumer.get(), rd_kafka_event_error(ev.get()), rd_kafka_event_topic_partition_list(ev.get()));
          break;
        case RD_KAFKA_EVENT_OFFSET_COMMIT:
          on_committed(rd_kafka_event_error(ev.get()), rd_kafka_event_topic_partition_list(ev.get()));
          break;
        default: break;
      }
    }
    if (!rd_kafka_consumer_closed(consumer.get()))
      say(log_level::warning, "kafka consumer close did not finish within revoke_timeout (is the cluster reachable?)");
  }

  handled_callback make_handled(const std::string& topic, std::int32_t partition, std::int64_t offset) {
    std::uint64_t epoch = 0;
    {
      std::lock_guard lock(mutex);
      auto& st = partitions[{topic, partition}];
      if (st.epoch == 0) st.epoch = next_epoch++;
      epoch = st.epoch;
      if (st.pending.emplace(offset, false).second) ++unhandled;
    }
    ++received;
    return [weak = weak_from_this(), topic, partition, offset, epoch] {
      if (auto self = weak.lock()) self->mark_handled(topic, partition, offset, epoch);
    };
  }

  void mark_handled(const std::string& topic, std::int32_t partition, std::int64_t offset, std::uint64_t epoch) {
    std::lock_guard lock(mutex);
    auto it = partitions.find({topic, partition});
    if (it == partitions.end() || it->second.epoch != epoch) return;  // revoked meanwhile: the next owner redoes it
    auto& st = it->second;
    auto p = st.pending.find(offset);
    if (p == st.pending.end() || p->second) return;  // called twice
    p->second = true;
    --unhandled;
    while (!st.pending.empty() && st.pending.begin()->second) {
      st.committable = st.pending.begin()->first + 1;
      st.pending.erase(st.pending.begin());
    }
    handled_cv.notify_all();
  }

  // Commits handled offsets; `sync` on revoke and close. `only` limits it to some partitions.
  void commit_due(bool sync, const rd_kafka_topic_partition_list_t* only = nullptr) {
    auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    const auto interval = std::chrono::duration_cast<std::chrono::steady_clock::duration>(cfg.commit_interval).count();
    if (!sync && now - last_commit.load() < interval) return;  // the common case: no lock, no allocation
    list_ptr list(rd_kafka_topic_partition_list_new(4));
    {
      std::lock_guard lock(mutex);
      for (auto& [tp, st] : partitions) {
        if (st.committable <= st.committed) continue;
        if (only && !rd_kafka_topic_partition_list_find(only, tp.first.c_str(), tp.second)) continue;
        rd_kafka_topic_partition_list_add(list.get(), tp.first.c_str(), tp.second)->offset = st.committable;
        st.committed = st.committable;
      }
      last_commit = now;
      if (list->cnt == 0) return;
    }
    ++commits;
    if (sync) return commit_and_wait(list.get());
    auto err = rd_kafka_commit(consumer.get(), list.get(), 1);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
      say(log_level::warning, std::string("kafka offset commit failed: ") + rd_kafka_err2str(err));
      forget_commits(list.get());
    }
  }

  // A commit whose result is awaited, for at most wait_budget(): rd_kafka_commit(…, async = 0) waits without a
  // bound, and a revoke's commit to a coordinator that is gone then never returned (the process never stopped).
  void commit_and_wait(rd_kafka_topic_partition_list_t* list) {
    std::unique_ptr<rd_kafka_queue_t, void (*)(rd_kafka_queue_t*)> queue(rd_kafka_queue_new(consumer.get()),
                                                                         rd_kafka_queue_destroy);
    if (auto err = rd_kafka_commit_queue(consumer.get(), list, queue.get(), nullptr, nullptr)) {
      if (err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
        say(log_level::warning, std::string("kafka offset commit failed: ") + rd_kafka_err2str(err));
        forget_commits(list);
      }
      return;
    }
    std::unique_ptr<rd_kafka_event_t, void (*)(rd_kafka_event_t*)> ev(
        rd_kafka_queue_poll(queue.get(), static_cast<int>(wait_budget().count())), rd_kafka_event_destroy);
    if (!ev) {
      say(log_level::warning,
          "kafka offset commit not confirmed within revoke_timeout (is the cluster reachable?); the next owner may "
          "receive handled messages again");
      forget_commits(list);
      return;
    }
    if (rd_kafka_event_type(ev.get()) == RD_KAFKA_EVENT_OFFSET_COMMIT)
      on_committed(rd_kafka_event_error(ev.get()), rd_kafka_event_topic_partition_list(ev.get()));
  }

  void forget_commits(const rd_kafka_topic_partition_list_t* list) {
    std::lock_guard lock(mutex);
    for (int i = 0; i < list->cnt; ++i) {
      auto it = partitions.find({list->elems[i].topic, list->elems[i].partition});
      if (it != partitions.end()) it->second.committed = -1;  // commit again next time
    }
  }

  void on_committed(rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets) {
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__NO_OFFSET || !offsets) return;
    say(log_level::warning, std::string("kafka offset commit failed: ") + rd_kafka_err2str(err));
    forget_commits(offsets);
  }

  std::vector<topic_partition> describe(const rd_kafka_topic_partition_list_t* parts) {
    std::vector<topic_partition> out;
    std::lock_guard lock(mutex);
    for (int i = 0; i < parts->cnt; ++i) {
      topic_partition tp{parts->elems[i].topic, parts->elems[i].partition, {}};
      if (auto r = routes.find(tp.topic); r != routes.end()) tp.name = r->second.name;
      out.push_back(std::move(tp));
    }
    return out;
  }

  void notify(const partitions_callback& cb, const std::vector<topic_partition>& parts, const char* what) {
    if (!cb || parts.empty()) return;
    try {
      cb(parts);
    } catch (const std::exception& e) {
      say(log_level::error, std::string("partitions ") + what + " callback threw: " + e.what());
    } catch (...) {
      say(log_level::error, std::string("partitions ") + what + " callback threw");
    }
  }

  void on_rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts) {
    const bool cooperative = std::strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    auto list = describe(parts);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      {
        std::lock_guard lock(mutex);
        for (const auto& tp : list) {
          auto& st = partitions[{tp.topic, tp.partition}];
          release_unhandled(st);  // assigned again without a revoke between: what it held is not coming back
          st = partition_state{};
          st.epoch = next_epoch++;
        }
      }
      if (cooperative) {
        error_ptr e(rd_kafka_incremental_assign(rk, parts));
        if (e) say(log_level::error, std::string("kafka incremental assign: ") + rd_kafka_error_string(e.get()));
      } else if (auto e = rd_kafka_assign(rk, parts)) {
        say(log_level::error, std::string("kafka assign: ") + rd_kafka_err2str(e));
      }
      say(log_level::info, "kafka " + cfg.group_id + ": assigned " + std::to_string(list.size()) + " partition(s)");
      // The assignment follows a change of the group or of its topics (partitions added): re-read the counts of the
      // subscribed topics, assigned here or not, so that reply_partitions() and reply_partition() tell the callback
      // (and the code that places new sagas) what the cluster has now.
      std::set<std::string> topics;
      {
        std::lock_guard lock(mutex);
        for (const auto& [topic, r] : routes) topics.insert(topic);
      }
      for (const auto& topic : topics) (void)read_partition_count(topic, std::chrono::milliseconds(2000));
      partitions_callback cb;
      {
        std::lock_guard lock(mutex);
        cb = assigned_cb;
      }
      notify(cb, list, "assigned");
      return;
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
      const bool lost = rd_kafka_assignment_lost(rk) != 0;
      if (!lost) {
        drain(parts);
        commit_due(true, parts);
      }
      {
        std::lock_guard lock(mutex);
        for (const auto& tp : list) {
          auto it = partitions.find({tp.topic, tp.partition});
          if (it == partitions.end()) continue;
          release_unhandled(it->second);
          partitions.erase(it);
        }
        handled_cv.notify_all();
      }
      say(log_level::info, "kafka " + cfg.group_id + ": revoked " + std::to_string(list.size()) + " partition(s)" +
                               (lost ? " (lost)" : ""));
      partitions_callback cb;
      {
        std::lock_guard lock(mutex);
        cb = revoked_cb;
      }
      notify(cb, list, "revoked");
      if (cooperative) {
        error_ptr e(rd_kafka_incremental_unassign(rk, parts));
      } else {
        rd_kafka_assign(rk, nullptr);
      }
      return;
    }
    // The whole assignment is dropped: like a lost one (no drain, no commit), its partitions are forgotten and the
    // revoke callback told, or their unhandled messages would count against max_unhandled for good and the process
    // would go on advancing sagas whose replies another member now receives.
    say(log_level::error, std::string("kafka rebalance error: ") + rd_kafka_err2str(err));
    std::vector<topic_partition> dropped;
    {
      std::lock_guard lock(mutex);
      for (auto& [tp, st] : partitions) {
        release_unhandled(st);
        topic_partition gone{tp.first, tp.second, {}};
        if (auto r = routes.find(tp.first); r != routes.end()) gone.name = r->second.name;
        dropped.push_back(std::move(gone));
      }
      partitions.clear();
      handled_cv.notify_all();
    }
    rd_kafka_assign(rk, nullptr);
    if (!dropped.empty()) {
      partitions_callback cb;
      {
        std::lock_guard lock(mutex);
        cb = revoked_cb;
      }
      notify(cb, dropped, "revoked");
    }
  }

  // Under `mutex`: the messages of a partition being forgotten no longer count as unhandled.
  void release_unhandled(const partition_state& st) {
    for (const auto& [off, done] : st.pending)
      if (!done) --unhandled;
  }

  // How long a revoke step may wait: revoke_timeout, or during stop() what is left of its shared deadline.
  std::chrono::milliseconds wait_budget() const {
    const auto deadline =
        std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(stop_deadline.load()));
    const auto now = std::chrono::steady_clock::now();
    if (deadline - now >= cfg.revoke_timeout) return cfg.revoke_timeout;
    if (deadline <= now) return std::chrono::milliseconds(0);
    return std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
  }

  // Waits (bounded) until every received message of `parts` was handled.
  void drain(const rd_kafka_topic_partition_list_t* parts) {
    std::unique_lock lock(mutex);
    auto busy = [&] {
      for (int i = 0; i < parts->cnt; ++i) {
        auto it = partitions.find({parts->elems[i].topic, parts->elems[i].partition});
        if (it == partitions.end()) continue;
        for (const auto& [off, done] : it->second.pending)
          if (!done) return true;
      }
      return false;
    };
    if (!handled_cv.wait_for(lock, wait_budget(), [&] { return !busy(); }))
      say(log_level::warning,
          "kafka revoke: in-flight messages not handled within revoke_timeout; the next owner "
          "receives them again");
  }

  void dispatch(rd_kafka_message_t* m) {
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        say(log_level::warning, std::string("kafka consume: ") + rd_kafka_message_errstr(m));
      return;
    }
    std::string topic = rd_kafka_topic_name(m->rkt);
    route_handler handler;
    {
      std::lock_guard lock(mutex);
      auto it = routes.find(topic);
      if (it != routes.end()) handler = it->second.handler;
    }
    auto handled = make_handled(topic, m->partition, m->offset);
    if (std::holds_alternative<raw_handler>(handler) && !std::get<raw_handler>(handler)) {
      say(log_level::warning, "kafka: record on " + topic + " without a handler; skipped");
      handled();
      return;
    }
    std::string_view value(m->payload ? static_cast<const char*>(m->payload) : "", m->len);
    header_list headers = headers_of(m);
    try {
      if (auto* ch = std::get_if<command_handler>(&handler)) {
        auto d = decode_command(headers, value);
        if (!d) return poison(m, topic, std::move(headers), value, "cannot decode command: " + d.error, handled);
        (*ch)(std::move(*d.message), handled);
      } else if (auto* rh = std::get_if<reply_handler>(&handler)) {
        auto d = decode_reply(headers, value);
        if (!d) return poison(m, topic, std::move(headers), value, "cannot decode reply: " + d.error, handled);
        (*rh)(std::move(*d.message), handled);
      } else {
        raw_record r{topic,
                     m->partition,
                     m->offset,
                     m->key ? std::string(static_cast<const char*>(m->key), m->key_len) : std::string(),
                     std::move(headers),
                     std::string(value)};
        std::get<raw_handler>(handler)(std::move(r), handled);
      }
    } catch (const std::exception& e) {
      poison(m, topic, headers_of(m), value, std::string("handler threw: ") + e.what(), handled);
    } catch (...) {
      poison(m, topic, headers_of(m), value, "handler threw a non-standard exception", handled);
    }
  }

  // A dead letter is the record plus why it was parked, and must fit max_message_bytes: one that did not could never
  // be sent, its offset stayed uncommitted for good, and every restart delivered the partition again from there. A
  // reason longer than max_dead_letter_reason is cut; a value that does not fit beside the headers is left out, its
  // size in saga_dlq_value_bytes.
  void fit_dead_letter(const std::string& key, header_list& headers, std::string& value) const {
    for (auto& [name, v] : headers)
      if (name == header_names::dlq_reason && v.size() > max_dead_letter_reason) {
        std::size_t cut = max_dead_letter_reason;
        while (cut > 0 && (static_cast<unsigned char>(v[cut]) & 0xc0) == 0x80) --cut;  // not inside a character
        v = v.substr(0, cut) + "... (cut from " + std::to_string(v.size()) + " bytes)";
      }
    std::size_t bytes = key.size() + value.size();
    for (const auto& [name, v] : headers) bytes += name.size() + v.size();
    if (bytes <= cfg.max_message_bytes) return;
    headers.emplace_back(header_names::dlq_value_bytes, std::to_string(value.size()));
    say(log_level::warning, "the dead letter's value (" + std::to_string(value.size()) +
                                " bytes) is left out: with its headers it exceeds max_message_bytes");
    value.clear();
  }
  static constexpr std::size_t max_dead_letter_reason = 4096;

  // Parks an undeliverable record in the dead-letter topic; it counts as handled once the DLQ has it.
  void poison(const rd_kafka_message_t* m, const std::string& topic, header_list headers, std::string_view value,
              const std::string& reason, const handled_callback& handled) {
    ++dead_lettered;
    auto dlq = topic + cfg.dead_letter_suffix;
    say(log_level::warning, "dead letter: " + topic + "[" + std::to_string(m->partition) + "]@" +
                                std::to_string(m->offset) + " -> " + dlq + ": " + reason);
    headers.emplace_back(header_names::dlq_reason, reason);
    headers.emplace_back(header_names::dlq_topic, topic);
    headers.emplace_back(header_names::dlq_partition, std::to_string(m->partition));
    headers.emplace_back(header_names::dlq_offset, std::to_string(m->offset));
    std::string key = m->key ? std::string(static_cast<const char*>(m->key), m->key_len) : std::string();
    std::string parked(value);
    fit_dead_letter(key, headers, parked);
    produce(dlq, key, headers, parked, [this, handled, dlq](std::exception_ptr error) {
      if (!error) return handled();
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        say(log_level::error, "cannot park dead letter in " + dlq + " (offset stays uncommitted): " + e.what());
      }
    });
  }

  // The first record for a topic this producer has not seen would wait in librdkafka's unassigned queue until its
  // once-a-second topic scan asks for the topic's metadata (~1 s for the first command to each service and for each
  // participant's first reply: the first sagas after a start took 4-5 s instead of 40 ms). Asking for it here takes
  // one round trip, once per topic (bounded wait; on failure the record goes the slow way).
  void learn_topic(const std::string& topic) {
    {
      std::lock_guard lock(mutex);
      if (!learned_topics.insert(topic).second) return;
    }
    topic_ptr t(rd_kafka_topic_new(producer.get(), topic.c_str(), nullptr));
    const rd_kafka_metadata_t* md = nullptr;
    if (t) (void)rd_kafka_metadata(producer.get(), 0, t.get(), &md, 1000);
    const metadata_ptr guard(md);  // nothing to read: librdkafka updated its own view of the topic
  }

  // The topic's partition count: the one read before, else from a metadata request (waiting up to 5 s).
  std::optional<std::int32_t> partition_count(const std::string& topic) {
    {
      std::lock_guard lock(mutex);
      if (auto it = partition_counts.find(topic); it != partition_counts.end()) return it->second;
    }
    return read_partition_count(topic, std::chrono::milliseconds(5000));
  }
  // The topic's partition count from a metadata request now, waiting up to `wait`; when it fails, the count read
  // before (logged).
  std::optional<std::int32_t> read_partition_count(const std::string& topic, std::chrono::milliseconds wait) {
    topic_ptr t(rd_kafka_topic_new(producer.get(), topic.c_str(), nullptr));
    if (!t) return std::nullopt;
    const rd_kafka_metadata_t* md = nullptr;
    const auto known = [&]() -> std::optional<std::int32_t> {
      std::lock_guard lock(mutex);
      if (auto it = partition_counts.find(topic); it != partition_counts.end()) return it->second;
      return std::nullopt;
    };
    const auto failed = [&](const char* why) {
      auto before = known();
      if (before)
        say(log_level::warning, "kafka: could not re-read the partition count of topic " + topic + " (" + why +
                                    "); still using " + std::to_string(*before));
      return before;
    };
    const auto err = rd_kafka_metadata(producer.get(), 0, t.get(), &md, static_cast<int>(wait.count()));
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR || !md) return failed(rd_kafka_err2str(err));
    metadata_ptr guard(md);
    if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt <= 0)
      return failed(md->topic_cnt == 1 && md->topics[0].err ? rd_kafka_err2str(md->topics[0].err) : "no partitions");
    std::lock_guard lock(mutex);
    auto& count = partition_counts[topic];
    if (count != 0 && count != md->topics[0].partition_cnt)
      say(log_level::warning, "kafka: topic " + topic + " now has " + std::to_string(md->topics[0].partition_cnt) +
                                  " partitions, not " + std::to_string(count));
    return count = md->topics[0].partition_cnt;
  }

  // On one of the transport's own threads (a handler, a rebalance or delivery callback) stop() cannot wait for that
  // thread: it begins the stop and leaves the rest to a thread of its own, which keeps this alive until it is done.
  // Elsewhere stop() does the rest itself, or waits for whoever does.
  void stop() noexcept {
    if (!stopped.exchange(true)) {
      stop_deadline = (std::chrono::steady_clock::now() + cfg.revoke_timeout).time_since_epoch().count();
      consumer_running = false;
      handled_cv.notify_all();
    }
    const auto self = std::this_thread::get_id();
    if (self == consumer_thread.get_id() || self == producer_thread.get_id()) {
      if (finishing.exchange(true)) return;
      try {
        std::thread([keep = shared_from_this()] { keep->finish_stop(); }).detach();
      } catch (const std::exception& e) {
        finishing = false;  // a stop() from another thread (the destructor's) finishes it
        say(log_level::error, std::string("kafka transport: stop() on a transport thread could not start the thread "
                                          "that finishes it (") +
                                  e.what() + "); call stop() from another thread");
      }
      return;
    }
    std::unique_lock lock(finished_mutex);
    while (!finished) {
      if (!finishing.exchange(true)) {  // nobody finishes it (or a transport thread could not): do it here
        lock.unlock();
        return finish_stop();
      }
      finished_cv.wait_for(lock, std::chrono::milliseconds(100));
    }
  }

  void finish_stop() noexcept {
    try {
      if (consumer_thread.joinable()) consumer_thread.join();
      sends_closed = true;
      const auto sends_due = std::chrono::steady_clock::now() + cfg.enqueue_timeout + std::chrono::seconds(1);
      while (producing.load() > 0 && std::chrono::steady_clock::now() < sends_due)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (producer) {
        // What the consumer left of the deadline, but at least 100 ms for records already on their way.
        const auto timeout = static_cast<int>(std::max<std::chrono::milliseconds::rep>(100, wait_budget().count()));
        if (rd_kafka_flush(producer.get(), timeout) != RD_KAFKA_RESP_ERR_NO_ERROR) {
          say(log_level::error, "kafka producer: records still unsent at stop; their callbacks get an error");
          rd_kafka_purge(producer.get(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
          rd_kafka_poll(producer.get(), 100);
        }
      }
      producer_running = false;
      if (producer_thread.joinable()) producer_thread.join();
    } catch (...) {
      // joining a thread can only throw on a logic error; nothing left to do
    }
    {
      std::lock_guard lock(finished_mutex);
      finished = true;
    }
    finished_cv.notify_all();
  }
};

kafka_config kafka_config::from_env(std::string group_id) {
  const char* brokers = std::getenv("SAGA_KAFKA_BROKERS");
  if (!brokers || !*brokers) throw transport_error("SAGA_KAFKA_BROKERS is not set (host:port,…)", false);
  kafka_config c;
  c.bootstrap_servers = brokers;
  c.group_id = std::move(group_id);
  if (const char* file = std::getenv("SAGA_KAFKA_CONFIG"); file && *file) c.properties = read_properties(file);
  return c;
}

std::map<std::string, std::string> kafka_config::read_properties(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw transport_error("cannot read the Kafka properties file " + path, false);
  std::map<std::string, std::string> out;
  auto trim = [](std::string_view s) {
    const auto first = s.find_first_not_of(" \t\r");
    if (first == std::string_view::npos) return std::string();
    return std::string(s.substr(first, s.find_last_not_of(" \t\r") - first + 1));
  };
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    const std::string text = trim(line);
    if (text.empty() || text.front() == '#' || text.front() == '!') continue;
    const auto eq = text.find('=');
    const std::string key = eq == std::string::npos ? std::string() : trim(std::string_view(text).substr(0, eq));
    if (key.empty())  // the line itself is not repeated: it may hold a secret
      throw transport_error(path + ":" + std::to_string(number) + ": expected key=value (a librdkafka property)",
                            false);
    if (!out.emplace(key, trim(std::string_view(text).substr(eq + 1))).second)
      throw transport_error(path + ":" + std::to_string(number) + ": property " + key + " is set twice", false);
  }
  return out;
}

kafka_transport::kafka_transport(kafka_config config) : config_(std::move(config)) {
  if (const auto& share = config_.static_assignment;
      share && (share->members < 1 || share->member < 0 || share->member >= share->members))
    throw transport_error("kafka_config.static_assignment: member " + std::to_string(share->member) + " of " +
                              std::to_string(share->members) + " members (want members >= 1, 0 <= member < members)",
                          false);
  impl_ = std::make_shared<impl>(config_);
  impl_->start_producer();
}

kafka_transport::~kafka_transport() { stop(); }

void kafka_transport::stop() noexcept {
  if (impl_) impl_->stop();
}

bool kafka_transport::stopping() const noexcept { return !impl_ || impl_->stopped.load(); }

std::string kafka_transport::command_topic(const std::string& service) const {
  return config_.command_topic ? config_.command_topic(service) : config_.topic_prefix + "." + service + ".commands";
}
std::string kafka_transport::reply_topic(const std::string& saga_type) const {
  return config_.reply_topic ? config_.reply_topic(saga_type) : config_.topic_prefix + "." + saga_type + ".replies";
}
std::string kafka_transport::dead_letter_topic(const std::string& topic) const {
  return topic + config_.dead_letter_suffix;
}

void kafka_transport::send_command(const command_message& command, delivery_callback done) {
  auto e = encode(command, config_.source);
  impl_->produce(command_topic(command.service), e.key, e.headers, e.value, std::move(done));
}

void kafka_transport::send_reply(const std::string& reply_to, const reply_message& reply, delivery_callback done) {
  auto e = encode(reply, config_.source);
  impl_->produce(reply_to, e.key, e.headers, e.value, std::move(done));
}

void kafka_transport::dead_letter(const command_message& command, const std::string& reason, delivery_callback done) {
  auto e = encode(command, config_.source);
  auto topic = command_topic(command.service);
  e.headers.emplace_back(header_names::dlq_reason, reason);
  e.headers.emplace_back(header_names::dlq_topic, topic);
  ++impl_->dead_lettered;
  impl_->fit_dead_letter(e.key, e.headers, e.value);
  impl_->produce(dead_letter_topic(topic), e.key, e.headers, e.value, std::move(done));
}

void kafka_transport::send_raw(const std::string& topic, const std::string& key, const header_list& headers,
                               const std::string& value, delivery_callback done) {
  impl_->produce(topic, key, headers, value, std::move(done));
}

void kafka_transport::on_reply(const std::string& saga_type, reply_handler handler) {
  impl_->add_route(reply_topic(saga_type), route{saga_type, std::move(handler)});
}
void kafka_transport::on_command(const std::string& service, command_handler handler) {
  impl_->add_route(command_topic(service), route{service, std::move(handler)});
}
void kafka_transport::on_raw(const std::string& topic, raw_handler handler) {
  impl_->add_route(topic, route{topic, std::move(handler)});
}

void kafka_transport::on_partitions_assigned(partitions_callback callback) {
  std::lock_guard lock(impl_->mutex);
  impl_->assigned_cb = std::move(callback);
}
void kafka_transport::on_partitions_revoked(partitions_callback callback) {
  std::lock_guard lock(impl_->mutex);
  impl_->revoked_cb = std::move(callback);
}

std::optional<std::int32_t> kafka_transport::reply_partition(const std::string& saga_type, const saga_id& saga) {
  auto count = impl_->partition_count(reply_topic(saga_type));
  if (!count) return std::nullopt;
  auto key = saga.to_string();
  return rd_kafka_msg_partitioner_murmur2(nullptr, key.data(), key.size(), *count, nullptr, nullptr);
}

bool kafka_transport::flush(std::chrono::milliseconds timeout) {
  return rd_kafka_flush(impl_->producer.get(), static_cast<int>(timeout.count())) == RD_KAFKA_RESP_ERR_NO_ERROR;
}

std::optional<std::int32_t> kafka_transport::reply_partitions(const std::string& saga_type) {
  return impl_->partition_count(reply_topic(saga_type));
}

kafka_stats kafka_transport::stats() const {
  return kafka_stats{impl_->sent.load(),       impl_->delivered.load(), impl_->delivery_failures.load(),
                     impl_->queue_full.load(), impl_->received.load(),  impl_->dead_lettered.load(),
                     impl_->commits.load()};
}

}  // namespace saga::transport
