// saga/storage/hash_chain.hpp — the per-saga SHA-256 chain that makes the log evidence.
#pragma once

#include "saga/storage/event_store.hpp"

#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace saga::storage {

// Hex SHA-256 of `bytes` (migration checksums and the like).
[[nodiscard]] std::string sha256_hex(std::string_view bytes);

// Hex SHA-256 over the previous hash and the event's canonical bytes (type, seq, payload, metadata).
// `payload` and `metadata` must be canonical JSON (see canonical_json); jsonb round trips keep the value.
[[nodiscard]] std::string chain_hash(std::string_view prev_hash, std::string_view type, std::uint64_t seq,
                                     std::string_view payload, std::string_view metadata);

// Where a saga's log stops being trustworthy.
struct chain_break {
  saga_id saga;
  std::uint64_t seq = 0;  // first bad seq
  std::string why;
};

// Checks seq order (1, 2, 3, … without gaps), prev_hash links and every hash of one saga's log;
// the payload/metadata are re-canonicalized first, so a jsonb round trip does not matter.
[[nodiscard]] std::optional<chain_break> verify_chain(std::span<const recorded_event> log);

}  // namespace saga::storage

namespace saga::storage {

// Turns an append request into sealed records: encoded payloads, metadata, prev_hash and hash, chained from
// `prev_hash` (the hash of the saga's event at expected_seq, "" for a new saga). Position and recorded_at are
// left for the store. Throws store_error naming the problem when the events do not follow expected_seq.
[[nodiscard]] std::vector<recorded_event> seal(const append_request& request, std::string prev_hash);

}  // namespace saga::storage
