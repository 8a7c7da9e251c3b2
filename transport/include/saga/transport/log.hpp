// saga/transport/log.hpp — a pluggable logger for the transport and the participant helper.
#pragma once

#include <functional>
#include <string_view>

namespace saga::transport {

enum class log_level { debug, info, warning, error };

// Receives one log line (no trailing newline). Must be thread-safe; called from the transport's threads.
using logger = std::function<void(log_level level, std::string_view line)>;

// A logger writing "saga[level] line" to stderr for `min_level` and above; never throws.
[[nodiscard]] logger stderr_logger(log_level min_level = log_level::info);
// The name of a level ("debug", "info", "warning", "error").
[[nodiscard]] const char* to_string(log_level level) noexcept;

}  // namespace saga::transport
