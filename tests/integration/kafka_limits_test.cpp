// Limits and secrets without a server: a record over kafka_config::max_message_bytes fails at once naming both sizes;
// a secret in a Kafka property or a PostgreSQL URL never appears in an error message.
#include "saga/storage/event_store.hpp"
#include "saga/storage/postgres_event_store.hpp"
#include "saga/transport/kafka_transport.hpp"

#include <gtest/gtest.h>

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
