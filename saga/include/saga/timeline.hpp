// saga/timeline.hpp — a saga's log as a human-readable timeline (what the demo and `sagactl show` print).
#pragma once

#include "saga/event.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace saga {

// RFC 3339 UTC text of a time, with milliseconds ("2026-11-22T05:03:50.123Z").
[[nodiscard]] std::string format_time(time_point t);

// Parses RFC 3339 ("2026-11-22T05:03:50Z", optional fraction truncated to milliseconds, "Z" or "+hh:mm");
// nullopt when `text` is not such a time (or names a day that does not exist).
[[nodiscard]] std::optional<time_point> parse_time(std::string_view text);

// One line per event: seq, time, time since the previous event, type, step, attempt, command id and the
// details that matter (reasons, replies); compensations name the step (and its success seq) they undo.
[[nodiscard]] std::string format_timeline(const std::vector<event>& log);

}  // namespace saga
