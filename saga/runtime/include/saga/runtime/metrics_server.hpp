// saga/runtime/metrics_server.hpp — an optional HTTP endpoint serving an orchestrator's metrics to Prometheus.
#pragma once

#include "saga/runtime/metrics.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace saga::runtime {

// Serves GET /metrics (Prometheus text) on its own thread; anything else gets 404. Stops when destroyed.
class metrics_server {
 public:
  // Listens on `address`:`port` (port 0 picks a free one; see port()). Throws std::runtime_error naming the
  // address when it cannot listen.
  metrics_server(const runtime::metrics& source, const std::string& address = "127.0.0.1", std::uint16_t port = 0);
  ~metrics_server();
  metrics_server(const metrics_server&) = delete;
  metrics_server& operator=(const metrics_server&) = delete;
  // The port it listens on.
  [[nodiscard]] std::uint16_t port() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace saga::runtime
