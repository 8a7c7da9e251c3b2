// sagactl — operate and audit sagas stored in PostgreSQL. This build knows the order-processing example's
// definitions; a service builds its own sagactl by linking saga::cli and registering its definitions.
#include "../examples/order_processing/order_saga.hpp"

#include <saga/cli.hpp>

#ifdef SAGA_HAVE_POSTGRES
#include <saga/storage/migrate.hpp>
#include <saga/storage/postgres_event_store.hpp>
#endif

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
  env.migrate = [](const std::string& url) {
    const auto r = saga::storage::migrate(url);
    if (r.applied.empty()) return std::string("the schema is up to date");
    std::string out = "applied:";
    for (const auto& name : r.applied) out += " " + name;
    return out;
  };
#else
  env.open_store = [](const std::string&) -> std::unique_ptr<saga::storage::event_store> {
    throw saga::storage::store_error("this sagactl was built without PostgreSQL support");
  };
#endif
  const std::vector<std::string> args(argv + 1, argv + argc);
  return saga::cli::run(args, env, std::cout, std::cerr);
}
