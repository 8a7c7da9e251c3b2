// saga/uuid.hpp — the identity of one saga instance (an RFC 4122 UUID), without any randomness of its own.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace saga {

// A 128-bit UUID. The core never invents one: callers pass ids in (the runtime draws them from a random source).
struct saga_id {
  std::array<std::uint8_t, 16> bytes{};

  // Canonical lower-case 8-4-4-4-12 text form.
  [[nodiscard]] std::string to_string() const;
  // Parses the canonical form (either case); nullopt when `text` is not a UUID.
  [[nodiscard]] static std::optional<saga_id> parse(std::string_view text);
  // A version-4 UUID whose random bits are taken from the two 64-bit words given (deterministic).
  [[nodiscard]] static saga_id from_words(std::uint64_t hi, std::uint64_t lo) noexcept;
  // True for the all-zero id, which never names a saga.
  [[nodiscard]] bool is_nil() const noexcept;

  friend auto operator<=>(const saga_id&, const saga_id&) = default;
};

}  // namespace saga

template <>
struct std::hash<saga::saga_id> {
  std::size_t operator()(const saga::saga_id& id) const noexcept {
    std::uint64_t h = 1469598103934665603ULL;
    for (auto b : id.bytes) h = (h ^ b) * 1099511628211ULL;
    return static_cast<std::size_t>(h);
  }
};
