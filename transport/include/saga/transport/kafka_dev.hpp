// saga/transport/kafka_dev.hpp — the embedded development broker (saga-kafka-dev) as seen from tests, benchmarks
// and demos: start it as a child process, talk to its fault-injection control port, stop it by PID.
#pragma once

#include <sys/types.h>
#include <chrono>
#include <string>
#include <vector>

namespace saga::transport {

// A running broker: either a saga-kafka-dev child this object started (and stops), or the cluster named by
// SAGA_KAFKA_BROKERS (with SAGA_KAFKA_CONTROL, when set, for fault injection).
class dev_broker {
 public:
  // Uses SAGA_KAFKA_BROKERS when set; otherwise runs `program` (path to saga-kafka-dev) with `args`, in a fresh
  // temporary directory, and waits up to `timeout` for its bootstrap file. Throws std::runtime_error saying what
  // failed (program missing, exited, no bootstrap address in time); retry will not help.
  explicit dev_broker(const std::string& program, std::vector<std::string> args = {},
                      std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Kills the child it started (SIGTERM, then SIGKILL after 5 s) by its PID and reaps it.
  ~dev_broker();
  dev_broker(const dev_broker&) = delete;
  dev_broker& operator=(const dev_broker&) = delete;

  // The bootstrap servers ("127.0.0.1:port,…").
  [[nodiscard]] const std::string& bootstrap_servers() const noexcept { return bootstrap_; }
  // "host:port" of the control interface; empty when a real cluster without control is used.
  [[nodiscard]] const std::string& control_address() const noexcept { return control_; }
  // Whether this object started the broker process.
  [[nodiscard]] bool owned() const noexcept { return pid_ > 0; }
  // Sends one control line (e.g. "down 1") and returns the answer line; throws std::runtime_error when there is
  // no control interface, it cannot be reached, or it answers "error …" (the answer is in the message).
  std::string control(const std::string& line) const;

 private:
  void shutdown() noexcept;
  std::string bootstrap_;
  std::string control_;
  std::string dir_;
  pid_t pid_ = -1;
};

// Sends one line to the control interface at `address` ("host:port") and returns the answer (without newline).
// Throws std::runtime_error when the connection fails.
[[nodiscard]] std::string kafka_dev_control(const std::string& address, const std::string& line);

}  // namespace saga::transport
