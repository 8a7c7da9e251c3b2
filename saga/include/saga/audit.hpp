// saga/audit.hpp — replaying logs for audit: state at any point, and a replay gate for definition changes.
// Pure: works on decoded events; reading them from a store is the caller's business.
#pragma once

#include "saga/decide.hpp"

#include <optional>
#include <span>
#include <string>

namespace saga::audit {

// The state after every event with seq <= `seq` (the same evolve the runtime uses).
[[nodiscard]] saga_state state_at_seq(const saga_id& id, std::span<const event> log, std::uint64_t seq);
// The state after every event decided at or before `t`.
[[nodiscard]] saga_state state_at_time(const saga_id& id, std::span<const event> log, time_point t);

// Where a log departs from what a definition decides.
struct replay_mismatch {
  std::uint64_t seq = 0;  // first event that differs (or where an expected event is missing)
  std::string expected;   // what the definition decides there ("(nothing)" when it decides nothing)
  std::string recorded;   // what the log holds there
};

// Re-derives each recorded trigger (start, replies, timers, cancels, operator actions) from the log and decides
// it again with `def`; returns the first event the definition would not have produced, or nullopt when the whole
// log is what `def` decides. Retry jitter (seed, due time) is not compared: it comes from entropy; nor are the
// definition version and fingerprint recorded at the start (they change with any change at all). A success reply
// recorded as {} without merged data may have been unreadable (its text is not in the log): when deciding {} does
// not give the recorded events, it is decided as unreadable, the reader's error worded as the next event quotes it.
// Use it as a gate before deploying a changed definition: replay production logs against it.
[[nodiscard]] std::optional<replay_mismatch> check_definition(const definition& def, const saga_id& id,
                                                              std::span<const event> log);

}  // namespace saga::audit
