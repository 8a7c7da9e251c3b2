// The ceiling for bench/transport_bench.cpp: a bare librdkafka request/reply pair (no envelope, no inbox, no
// offset tracking) with the same client settings as kafka_transport. Lives under transport/ because only code
// there includes librdkafka.
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace saga_bench {

struct baseline_result {
  double replies_per_s = 0;
  std::vector<double> rtt_ms;
};

namespace {

struct handle_deleter {
  void operator()(rd_kafka_t* rk) const noexcept {
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
  }
};
struct producer_deleter {
  void operator()(rd_kafka_t* rk) const noexcept {
    rd_kafka_flush(rk, 5000);
    rd_kafka_destroy(rk);
  }
};
struct list_deleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const noexcept { rd_kafka_topic_partition_list_destroy(l); }
};
using consumer_ptr = std::unique_ptr<rd_kafka_t, handle_deleter>;
using producer_ptr = std::unique_ptr<rd_kafka_t, producer_deleter>;

void set(rd_kafka_conf_t* c, const char* k, const std::string& v) {
  char err[512];
  if (rd_kafka_conf_set(c, k, v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) throw std::runtime_error(err);
}

rd_kafka_conf_t* conf(const std::string& brokers) {
  rd_kafka_conf_t* c = rd_kafka_conf_new();
  set(c, "bootstrap.servers", brokers);
  set(c, "socket.nagle.disable", "true");
  set(c, "log_level", "3");
  return c;
}

producer_ptr producer(const std::string& brokers, int linger_ms, int max_in_flight) {
  auto* c = conf(brokers);
  set(c, "enable.idempotence", "true");
  set(c, "acks", "all");
  set(c, "linger.ms", std::to_string(linger_ms));
  set(c, "max.in.flight.requests.per.connection", std::to_string(max_in_flight));
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
  if (!rk) throw std::runtime_error(err);
  return producer_ptr(rk);
}

consumer_ptr consumer(const std::string& brokers, const std::string& group, const std::string& topic,
                      int fetch_wait_ms) {
  auto* c = conf(brokers);
  set(c, "group.id", group);
  set(c, "auto.offset.reset", "earliest");
  set(c, "fetch.wait.max.ms", std::to_string(fetch_wait_ms));
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
  if (!rk) throw std::runtime_error(err);
  rd_kafka_poll_set_consumer(rk);
  std::unique_ptr<rd_kafka_topic_partition_list_t, list_deleter> list(rd_kafka_topic_partition_list_new(1));
  rd_kafka_topic_partition_list_add(list.get(), topic.c_str(), RD_KAFKA_PARTITION_UA);
  rd_kafka_subscribe(rk, list.get());
  return consumer_ptr(rk);
}

// Sends one record; takes ownership of `headers` (may be null).
void send(rd_kafka_t* p, const std::string& topic, const void* key, std::size_t key_len, const void* value,
          std::size_t len, rd_kafka_headers_t* headers) {
  for (;;) {
    auto err = rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(const_cast<void*>(key), key_len),
                                 RD_KAFKA_V_VALUE(const_cast<void*>(value), len),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      if (err && headers) rd_kafka_headers_destroy(headers);
      return;
    }
    rd_kafka_poll(p, 1);
  }
}

}  // namespace

// Request/reply through `brokers`: keeps `in_flight` requests outstanding until `total` replies came back (after a
// warm-up). Each record carries `headers` and a key shaped like `key` (distinct per request), and a value of
// `value_size` bytes that starts with the send time in ns — the same bytes as the saga path's records, without encoding
// or decoding them.
baseline_result run_rdkafka_baseline(const std::string& brokers, const std::string& prefix, int in_flight, int total,
                                     int linger_ms, int max_in_flight, int fetch_wait_ms,
                                     const std::vector<std::pair<std::string, std::string>>& headers,
                                     const std::string& key, std::size_t value_size) {
  const std::string req = prefix + ".requests", rep = prefix + ".responses";
  std::atomic<bool> running{true};
  std::thread responder([&] {
    auto c = consumer(brokers, prefix + "-responder", req, fetch_wait_ms);
    auto p = producer(brokers, linger_ms, max_in_flight);
    while (running) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(c.get(), 50);
      if (m) {
        if (!m->err) {
          rd_kafka_headers_t* h = nullptr;
          if (rd_kafka_message_detach_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR) h = nullptr;
          send(p.get(), rep, m->key, m->key_len, m->payload, m->len, h);  // the same bytes back
        }
        rd_kafka_message_destroy(m);
      }
      rd_kafka_poll(p.get(), 0);
    }
  });
  auto c = consumer(brokers, prefix + "-requester", rep, fetch_wait_ms);
  auto p = producer(brokers, linger_ms, max_in_flight);
  using clock = std::chrono::steady_clock;
  std::uint64_t next = 0;
  std::string value(std::max(value_size, sizeof(clock::rep)), ' ');
  auto request = [&] {
    auto now = clock::now().time_since_epoch().count();
    std::memcpy(value.data(), &now, sizeof now);
    rd_kafka_headers_t* h = rd_kafka_headers_new(headers.size());
    for (const auto& [name, v] : headers)
      rd_kafka_header_add(h, name.data(), static_cast<ssize_t>(name.size()), v.data(), static_cast<ssize_t>(v.size()));
    // A distinct key per request, like saga ids: records spread over the partitions as on the saga path.
    char tail[16];
    std::snprintf(tail, sizeof tail, "%012llx", static_cast<unsigned long long>(next++));
    std::string k = key.size() >= 12 ? key.substr(0, key.size() - 12) + tail : key + tail;
    send(p.get(), req, k.data(), k.size(), value.data(), value.size(), h);
  };
  auto receive = [&](double* rtt) {
    for (;;) {
      rd_kafka_poll(p.get(), 0);
      rd_kafka_message_t* m = rd_kafka_consumer_poll(c.get(), 100);
      if (!m) continue;
      bool ok = !m->err && m->len >= sizeof(clock::rep);
      if (ok && rtt) {
        clock::rep sent = 0;
        std::memcpy(&sent, m->payload, sizeof sent);
        *rtt = static_cast<double>(clock::now().time_since_epoch().count() - sent) / 1e6;
      }
      rd_kafka_message_destroy(m);
      if (ok) return;
    }
  };
  // Warm-up (not measured), as on the saga path.
  const int warmup = std::max(1, std::min(2000, total / 5));
  const int goal = warmup + total;
  baseline_result result;
  result.rtt_ms.reserve(static_cast<std::size_t>(total));
  clock::time_point start{};
  int outstanding = 0, sent = 0;
  for (; outstanding < in_flight && sent < goal; ++outstanding, ++sent) request();
  for (int got = 1; got <= goal; ++got) {
    double rtt = 0;
    receive(&rtt);
    if (got == warmup) start = clock::now();
    if (got > warmup) result.rtt_ms.push_back(rtt);
    if (sent < goal) {
      request();
      ++sent;
    }
  }
  result.replies_per_s = total / std::chrono::duration<double>(clock::now() - start).count();
  running = false;
  responder.join();
  return result;
}

}  // namespace saga_bench
