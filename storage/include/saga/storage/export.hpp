// saga/storage/export.hpp — JSON Lines export of stored events, with hashes, that an auditor verifies offline.
#pragma once

#include "saga/storage/hash_chain.hpp"

#include <istream>
#include <string>
#include <string_view>
#include <vector>

namespace saga::storage {

// One stored event as one JSON Lines record: saga, seq, position, type, schema_version, payload, metadata,
// recorded_at (RFC 3339), prev_hash, hash.
[[nodiscard]] std::string to_json_line(const recorded_event& e);
// Parses one record; throws json_error naming the field that is missing or malformed.
[[nodiscard]] recorded_event from_json_line(std::string_view line);

// After its events an export ends with the head of each saga it covers, as the database recorded it (its
// saga_instances row, read before the events), one record each, and one last record that counts them:
//   {"export_head":{"saga":"…","seq":12,"hash":"…"}}   …   {"export_end":{"events":26,"heads":2}}
// so that verify_export finds an export cut short at a line, lines removed or added, and events missing from the
// end of a saga's log, none of which a hash chain shows.
struct export_head {
  saga_id saga;
  std::uint64_t seq = 0;
  std::string hash;
};
[[nodiscard]] std::string to_json_line(const export_head& head);
[[nodiscard]] std::string export_end_line(std::uint64_t events, std::uint64_t heads);

// What verifying an export found.
struct export_report {
  std::size_t records = 0;
  std::size_t sagas = 0;
  std::vector<chain_break> breaks;  // one per broken saga (first bad seq), in order of first appearance
  std::vector<std::string> errors;  // unreadable lines, "line N: why"
  [[nodiscard]] bool ok() const noexcept { return breaks.empty() && errors.empty(); }
};

// Reads an export (records of many sagas, in global order, then the heads and the end record) and verifies every
// saga's chain, that each saga's log reaches its recorded head with that hash, and the counts, without a database.
[[nodiscard]] export_report verify_export(std::istream& in);

}  // namespace saga::storage
