// saga/cli.hpp — sagactl as a library: a service links it with its own definitions and transport.
#pragma once

#include "saga/definition.hpp"
#include "saga/storage/event_store.hpp"
#include "saga/transport/transport.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace saga::cli {

// What sagactl needs from the outside world; every part is injected so tests run it on memory.
struct environment {
  // Opens the event store at a connection string; throws storage::store_error (store_unavailable when unreachable).
  std::function<std::unique_ptr<storage::event_store>(const std::string& url)> open_store;
  // Applies migrations (sagactl migrate) and says what it did; empty when this build has none. lock_wait bounds the
  // wait for another session's migration lock (--lock-wait); nullopt: the migrator's default.
  std::function<std::string(const std::string& url, std::optional<std::chrono::milliseconds> lock_wait)> migrate;
  // Opens the transport the orchestrators use, for the commands an operator action sends; may be empty.
  std::function<std::unique_ptr<transport::transport>()> open_transport;
  // Said when open_transport is empty and an action's commands are left to the orchestrators (e.g. which
  // setting would let sagactl send them itself); may be empty.
  std::string no_transport_hint;
  // Where replies go for a saga type (must match the orchestrators' setting); default: the saga type.
  std::function<std::string(const std::string& saga_type)> reply_to;
  // The definitions operator actions and --verify-definition decide with (every version still running).
  std::vector<definition> definitions;
  // The connection string when --db is not given (SAGA_PG_URL).
  std::string default_url;
  // The operator's name when --operator is not given (the OS user).
  std::string user;
  // The time operator actions are decided at.
  std::function<time_point()> now;
};

// Runs one sagactl command line (without the program name). Returns the exit status: 0 ok, 1 a failure or a
// finding (unknown saga, broken chain, refused action, unreachable database), 2 a usage error. Read-only
// subcommands (list, show, partitions, replay, verify, export) never write.
int run(const std::vector<std::string>& args, const environment& env, std::ostream& out, std::ostream& err);

// `url` with any password replaced by "***", for messages.
[[nodiscard]] std::string redact(const std::string& url);

}  // namespace saga::cli
