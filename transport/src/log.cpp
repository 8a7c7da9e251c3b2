#include "saga/transport/log.hpp"

#include <cstdio>
#include <mutex>
#include <string>

namespace saga::transport {

const char* to_string(log_level level) noexcept {
  switch (level) {
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warning: return "warning";
    case log_level::error: return "error";
  }
  return "unknown";
}

logger stderr_logger(log_level min_level) {
  return [min_level](log_level level, std::string_view line) {
    if (level < min_level) return;
    static std::mutex mutex;
    std::lock_guard lock(mutex);
    std::fprintf(stderr, "saga[%s] %.*s\n", to_string(level), static_cast<int>(line.size()), line.data());
  };
}

}  // namespace saga::transport
