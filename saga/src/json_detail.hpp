// Internal: the rapidjson engine shared by the JSON helpers and the event codec (not installed).
#pragma once

#include <rapidjson/document.h>
#include <cereal/archives/json.hpp>  // first: it configures rapidjson (assertions throw, full precision)

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

namespace saga::detail {

// A document whose values go first into a buffer of its own. A default-constructed rapidjson::Document takes a 64 KiB
// chunk from the heap for its first value and 1 KiB for its parse stack, and glibc consolidates its free lists on a
// request of 1 KiB or more and on a release of 64 KiB or more; every event encoded, read or sealed parses JSON a few
// times, so that was a visible share of the orchestrator's CPU (`perf`: malloc_consolidate, unlink_chunk: 31
// consolidations per order saga in the orchestrator before, 9 with this and decision::after). Larger texts spill into 4
// KiB chunks; a deeper parse grows the stack.
class local_document {
 public:
  local_document() : pool_(buffer_.data(), buffer_.size(), spill_chunk_bytes), doc_(&pool_, stack_bytes) {}
  local_document(const local_document&) = delete;
  local_document& operator=(const local_document&) = delete;
  [[nodiscard]] rapidjson::Document& get() noexcept { return doc_; }

 private:
  static constexpr std::size_t spill_chunk_bytes = 4096;
  static constexpr std::size_t stack_bytes = 512;  // 32 values: an event's fields with room to spare
  // Declared before pool_ and doc_, so it outlives them; left uninitialized.
  alignas(std::max_align_t) std::array<char, 2048> buffer_;
  rapidjson::MemoryPoolAllocator<> pool_;
  rapidjson::Document doc_;
};

// Canonical text of a parsed value (sorted keys, compact); throws json_error on duplicate keys.
[[nodiscard]] std::string canonical_text(const rapidjson::Value& value);
// Parses `text` into `doc`; throws json_error naming the offset and the problem.
void parse_json(rapidjson::Document& doc, std::string_view text);

}  // namespace saga::detail
