// Shared by the PostgreSQL integration tests: the server URL, a fresh schema per test, events of every type.
#pragma once

#include "saga/storage/migrate.hpp"
#include "saga/storage/postgres_session.hpp"

#include <gtest/gtest.h>

#include <unistd.h>
#include <atomic>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace saga::pg_test {

// SAGA_PG_URL, or "" after recording a failure that says how to get one.
inline std::string server_url() {
  const char* url = std::getenv("SAGA_PG_URL");
  if (url == nullptr || *url == '\0') {
    ADD_FAILURE() << "SAGA_PG_URL is not set: these integration tests need a real PostgreSQL server. Run them with "
                     "scripts/test (it starts a private server), or export SAGA_PG_URL=postgresql://user@host:port/db";
    return {};
  }
  return url;
}

// A random 64-bit word (ids and schema names must not repeat across runs on the same server).
inline std::uint64_t random_word() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ (static_cast<std::uint64_t>(::getpid()) << 32));
  return rng();
}

inline saga_id random_saga_id() { return saga_id::from_words(random_word(), random_word()); }

// `url` with its search_path set to `schema`, so every table the store uses lives there.
inline std::string url_with_schema(const std::string& url, const std::string& schema) {
  return url + (url.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" + schema;
}

// Each test gets its own schema (migrated unless told otherwise), dropped afterwards: tests rerun on one server.
class postgres_test : public ::testing::Test {
 protected:
  void SetUp() override {
    base_url_ = server_url();
    if (base_url_.empty()) GTEST_FAIL() << "no server";
    static std::atomic<int> counter{0};
    schema_ = "saga_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
              std::to_string(random_word() % 1000000);
    storage::postgres_session admin(base_url_);
    admin.exec("CREATE SCHEMA " + schema_);  // identifier built above from digits and letters only
    url_ = url_with_schema(base_url_, schema_);
    if (migrate_on_setup()) (void)storage::migrate(url_);
  }
  void TearDown() override {
    if (schema_.empty() || base_url_.empty()) return;
    try {
      storage::postgres_session admin(base_url_);
      admin.exec("DROP SCHEMA " + schema_ + " CASCADE");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "could not drop schema " << schema_ << ": " << e.what();
    }
  }
  [[nodiscard]] virtual bool migrate_on_setup() const { return true; }

  std::string base_url_;
  std::string schema_;
  std::string url_;
};

inline time_point at_ms(std::int64_t ms) { return time_point(std::chrono::milliseconds(ms)); }

inline event make_event(std::uint64_t seq, event_body body) {
  return event{seq, at_ms(1'700'000'000'000 + static_cast<std::int64_t>(seq)), std::move(body)};
}

inline events::saga_started started(const std::string& type = "order", const std::string& key = "") {
  return events::saga_started{type, 3, "fp-abc", R"({"order":"o-1","amount":1250,"items":["a","b"]})", key};
}

// A request that starts saga `id` with `extra` events after saga_started.
inline storage::append_request start_request(const saga_id& id, const std::string& key = "", std::size_t extra = 0,
                                             std::int32_t partition = 0) {
  storage::append_request r;
  r.saga = id;
  r.saga_type = "order";
  r.expected_seq = 0;
  r.partition = partition;
  r.events.push_back(make_event(1, started("order", key)));
  for (std::size_t i = 0; i < extra; ++i)
    r.events.push_back(make_event(
        2 + i, events::step_requested{"reserve", static_cast<std::uint32_t>(i + 1), make_command_id(id, 2 + i),
                                      "inventory", "reserve", R"({"sku":"x"})", at_ms(1'800'000'000'000)}));
  return r;
}

// A request that appends `count` step_requested events after `expected_seq`.
inline storage::append_request next_request(const saga_id& id, std::uint64_t expected_seq, std::size_t count = 1,
                                            const std::string& marker = "") {
  storage::append_request r;
  r.saga = id;
  r.saga_type = "order";
  r.expected_seq = expected_seq;
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t seq = expected_seq + 1 + i;
    r.events.push_back(make_event(
        seq, events::step_requested{"charge", static_cast<std::uint32_t>(seq), make_command_id(id, seq), "payment",
                                    "charge", R"({"marker":")" + marker + R"("})", at_ms(1'800'000'000'000)}));
  }
  return r;
}

// One event of every type, in a valid order for the store (saga_started first).
inline std::vector<event_body> every_event_type(const saga_id& id) {
  const std::string cmd = make_command_id(id, 2);
  return {
      started("order", "key-" + id.to_string()),
      events::step_requested{"reserve", 1, cmd, "inventory", "reserve_inventory", R"({"sku":"A-1","qty":2})",
                             at_ms(1'700'000'030'000)},
      events::step_succeeded{"reserve", 1, cmd, R"({"reservation":"r-9"})", std::string(R"({"reserved":true})")},
      events::step_failed{"charge", 2, cmd, "card declined: \"insufficient\" funds\n(second line) ü", true},
      events::step_timed_out{"charge", 3, cmd},
      events::retry_scheduled{"charge", false, 4, at_ms(1'700'000'060'000), 18446744073709551615ULL},
      events::compensation_started{"payment failed", "charge"},
      events::compensation_requested{"reserve", 1, make_command_id(id, 8), "inventory", "release_inventory",
                                     R"({"reservation":"r-9"})", at_ms(1'700'000'090'000)},
      events::compensation_failed{"reserve", 1, make_command_id(id, 8), "busy", true},
      events::compensation_timed_out{"reserve", 2, make_command_id(id, 8)},
      events::compensation_succeeded{"reserve", 3, make_command_id(id, 8), R"({"released":true})"},
      events::cancel_requested{"customer asked", "support-agent-7"},
      events::saga_stuck{"reserve", true, "compensation keeps failing"},
      events::operator_action_recorded{"retry", "reserve", true, "warehouse back online", "alice"},
      events::saga_compensated{"payment failed"},
      events::saga_completed{R"({"order":"o-1","state":"done"})"},
  };
}

}  // namespace saga::pg_test
