// Limits and secrets without a server: a record over kafka_config::max_message_bytes fails at once naming both sizes;
// a max_in_flight_requests the idempotent producer cannot keep is refused naming the property;
// a secret in a Kafka property or a PostgreSQL URL never appears in an error message.
#include "saga/storage/event_store.hpp"
#include "saga/storage/postgres_event_store.hpp"
#include "saga/transport/kafka_transport.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>

namespace st = saga::transport;

namespace {

const std::string secret = "s3cr3t-Pa55";

st::kafka_config unreachable_cluster() {
  st::kafka_config c;
  c.bootstrap_servers = "127.0.0.1:1";
  c.log = [](st::log_level, std::string_view) {};
  return c;
}

TEST(kafka_limits, a_record_over_max_message_bytes_fails_at_once_naming_both_sizes) {
  auto c = unreachable_cluster();
  c.max_message_bytes = 1000;
  st::kafka_transport bus(c);
  std::promise<std::exception_ptr> result;
  bus.send_raw("t.order.replies", "key", {{"ce_id", "1"}}, std::string(2000, 'x'),
               [&](std::exception_ptr e) { result.set_value(e); });
  auto e = result.get_future().get();
  ASSERT_TRUE(e);
  try {
    std::rethrow_exception(e);
  } catch (const st::transport_error& x) {
    EXPECT_FALSE(x.retryable());
    EXPECT_STREQ(x.what(), "a record of 2009 bytes for t.order.replies exceeds kafka_config::max_message_bytes (1000)");
  }
  bus.stop();
}

TEST(kafka_limits, a_max_in_flight_the_idempotent_producer_cannot_keep_is_refused_naming_it) {
  for (const int bad : {0, 6}) {
    auto c = unreachable_cluster();
    c.max_in_flight_requests = bad;
    try {
      st::kafka_transport bus(c);
      ADD_FAILURE() << "max_in_flight_requests = " << bad << " was accepted";
    } catch (const st::transport_error& e) {
      EXPECT_FALSE(e.retryable());
      EXPECT_NE(std::string(e.what()).find("max.in.flight"), std::string::npos) << e.what();
    }
  }
}

TEST(secrets, a_kafka_secret_never_appears_in_an_error) {
  for (const std::string key : {"sasl.password.typo", "producer.sasl.oauthbearer.client.secret.typo",
                                "ssl.key.password.typo", "sasl.jaas.config.typo"}) {
    auto c = unreachable_cluster();
    c.properties[key] = secret;
    try {
      st::kafka_transport bus(c);
      bus.send_raw("t", "k", {}, "{}", nullptr);  // the producer is configured by now
      ADD_FAILURE() << key << " was accepted";
    } catch (const st::transport_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("<redacted>"), std::string::npos) << what;
      EXPECT_EQ(what.find(secret), std::string::npos) << what;
    }
  }
}

TEST(secrets, a_postgres_password_never_appears_in_an_error) {
  try {
    saga::storage::postgres_event_store store("postgresql://saga:" + secret + "@127.0.0.1:1/saga");
    (void)store.load(saga::saga_id::from_words(1, 2));
    ADD_FAILURE() << "connected to port 1";
  } catch (const saga::storage::store_error& e) {
    EXPECT_EQ(std::string(e.what()).find(secret), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(kafka_config, from_env_reads_the_properties_file_that_saga_kafka_config_names) {
  const auto dir = std::filesystem::temp_directory_path() / ("saga-kafka-config-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto good = (dir / "client.properties").string();
  std::ofstream(good) << "# SASL for the orders cluster\n"
                         "security.protocol=SASL_SSL\n"
                         "  sasl.mechanisms = SCRAM-SHA-512  \n"
                         "\n"
                         "! another comment\n"
                         "sasl.password="
                      << secret
                      << "=with=equals\n"
                         "consumer.fetch.wait.max.ms=100\n";
  ::setenv("SAGA_KAFKA_BROKERS", "127.0.0.1:1", 1);
  ::setenv("SAGA_KAFKA_CONFIG", good.c_str(), 1);
  const auto c = st::kafka_config::from_env("g");
  EXPECT_EQ(c.bootstrap_servers, "127.0.0.1:1");
  EXPECT_EQ(c.group_id, "g");
  EXPECT_EQ(c.properties, (std::map<std::string, std::string>{{"consumer.fetch.wait.max.ms", "100"},
                                                              {"sasl.mechanisms", "SCRAM-SHA-512"},
                                                              {"sasl.password", secret + "=with=equals"},
                                                              {"security.protocol", "SASL_SSL"}}));
  auto error_of = [&](const std::string& text) {
    const auto bad = (dir / "bad.properties").string();
    std::ofstream(bad) << text;
    ::setenv("SAGA_KAFKA_CONFIG", bad.c_str(), 1);
    try {
      (void)st::kafka_config::from_env();
      return std::string("no error");
    } catch (const st::transport_error& e) {
      EXPECT_FALSE(e.retryable());
      return std::string(e.what());
    }
  };
  const auto bad = (dir / "bad.properties").string();
  EXPECT_EQ(error_of("a=1\n" + secret + "\n"), bad + ":2: expected key=value (a librdkafka property)");
  EXPECT_EQ(error_of("a=1\n=x\n"), bad + ":2: expected key=value (a librdkafka property)");
  EXPECT_EQ(error_of("a=1\n# c\na = 2\n"), bad + ":3: property a is set twice");
  ::setenv("SAGA_KAFKA_CONFIG", (dir / "missing.properties").string().c_str(), 1);
  EXPECT_THROW((void)st::kafka_config::from_env(), st::transport_error);
  ::unsetenv("SAGA_KAFKA_CONFIG");
  EXPECT_TRUE(st::kafka_config::from_env().properties.empty());
  ::unsetenv("SAGA_KAFKA_BROKERS");
  std::filesystem::remove_all(dir);
}
