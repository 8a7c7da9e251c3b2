// tests/fuzz/fuzz_input.hpp — carves a fuzzer's bytes into the values a target needs (a tiny stand-in for clang's
// FuzzedDataProvider, so the same targets also build with g++ as regression tests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace saga::fuzz {

class input {
 public:
  input(const std::uint8_t* data, std::size_t size) : rest_(reinterpret_cast<const char*>(data), size) {}
  // One byte (0 when exhausted).
  std::uint8_t byte() {
    if (rest_.empty()) return 0;
    const auto b = static_cast<std::uint8_t>(rest_.front());
    rest_.remove_prefix(1);
    return b;
  }
  // A string up to the next byte 0xff (or the end), at most `max` bytes.
  std::string text(std::size_t max) {
    const auto end = std::min(rest_.find('\xff'), std::min(max, rest_.size()));
    std::string out(rest_.substr(0, end));
    rest_.remove_prefix(std::min(end + 1, rest_.size()));
    return out;
  }
  // Everything left.
  std::string remaining() {
    std::string out(rest_);
    rest_ = {};
    return out;
  }
  [[nodiscard]] bool empty() const noexcept { return rest_.empty(); }

 private:
  std::string_view rest_;
};

}  // namespace saga::fuzz

// Stops the run on a broken property (the fuzzer records the input as a crash).
#define SAGA_FUZZ_CHECK(cond)                                                                \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)
