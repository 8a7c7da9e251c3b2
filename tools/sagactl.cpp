// sagactl — operate and audit sagas stored in PostgreSQL. This build knows the order-processing example's
// definitions; a service builds its own sagactl by linking saga::cli and registering its definitions.
#include "../examples/order_processing/order_saga.hpp"

#include <saga/cli.hpp>

#ifdef SAGA_HAVE_POSTGRES
#include <saga/storage/migrate.hpp>
#include <saga/storage/postgres_event_store.hpp>
#endif

#include <saga/transport/kafka_transport.hpp>

#include <pwd.h>
#include <unistd.h>
#include <cstdlib>
#include <iostream>

int main(int argc, char** argv) {
  saga::cli::environment env;
  env.definitions = {order_processing::order_saga()};
  if (const char* url = std::getenv("SAGA_PG_URL")) env.default_url = url;
  if (const passwd* pw = getpwuid(getuid())) env.user = pw->pw_name;
  env.now = [] { return std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now()); };
#ifdef SAGA_HAVE_POSTGRES
  env.open_store = [](const std::string& url) { return std::make_unique<saga::storage::postgres_event_store>(url); };
  env.migrate = [](const std::string& url, std::optional<std::chrono::milliseconds> lock_wait) {
    saga::storage::migrate_options options;
    if (lock_wait) options.lock_wait = *lock_wait;
    const auto r = saga::storage::migrate(url, saga::storage::bundled_migrations(), options);
    std::string out = r.applied.empty() ? std::string("the schema is up to date") : std::string("applied:");
    for (const auto& name : r.applied) out += " " + name;
    if (!r.newer.empty()) {
      out += "\nnote: the database also has migrations newer than this sagactl, applied by a newer release:";
      for (const auto& name : r.newer) out += " " + name;
    }
    return out;
  };
#else
  env.open_store = [](const std::string&) -> std::unique_ptr<saga::storage::event_store> {
    throw saga::storage::store_error("this sagactl was built without PostgreSQL support");
  };
#endif
  // Operator actions send their commands over Kafka, like the orchestrators, when SAGA_KAFKA_BROKERS names the
  // cluster (topics "<SAGA_KAFKA_PREFIX>.<service>.commands", replies to "<prefix>.<saga type>.replies", the
  // order orchestrator's settings). Without it the commands are only recorded, and the orchestrator that owns the
  // saga sends them when its orphan sweep finds it.
  const char* brokers = std::getenv("SAGA_KAFKA_BROKERS");
  if (brokers && *brokers) {
    const char* prefix_env = std::getenv("SAGA_KAFKA_PREFIX");
    const std::string prefix = prefix_env && *prefix_env ? prefix_env : "saga";
    env.open_transport = [prefix]() -> std::unique_ptr<saga::transport::transport> {
      auto config = saga::transport::kafka_config::from_env();
      config.topic_prefix = prefix;
      config.client_id = "sagactl";
      config.source = "/sagactl";
      return std::make_unique<saga::transport::kafka_transport>(config);
    };
    env.reply_to = [prefix](const std::string& type) { return prefix + "." + type + ".replies"; };
  } else {
    env.no_transport_hint = "SAGA_KAFKA_BROKERS is not set";
  }
  const std::vector<std::string> args(argv + 1, argv + argc);
  return saga::cli::run(args, env, std::cout, std::cerr);
}
