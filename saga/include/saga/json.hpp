// saga/json.hpp — JSON text for saga data, command payloads and replies, encoded with cereal.
#pragma once

#include <cereal/archives/json.hpp>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>

namespace saga {

// Thrown when text is not valid JSON or does not decode into the requested type; the message says where and why.
class json_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// JSON text that is passed through as it is (no cereal encoding), e.g. a payload built by hand.
struct raw_json {
  std::string text;
};

// How deeply arrays and objects may nest in JSON this library reads (payloads, replies, stored events). Deeper text
// is refused with json_error: the readers and the canonical writer recurse once per level, and a reply of 50,000
// nested brackets (100 KB) overflowed the stack of the orchestrator that read it, again at each redelivery.
inline constexpr int max_json_depth = 512;

// Canonical form of a JSON document: compact, object keys sorted bytewise, numbers normalized, so the same
// value always has the same bytes (hashing, comparison). Throws json_error naming the offset of a syntax error,
// a duplicate key or nesting deeper than max_json_depth.
[[nodiscard]] std::string canonical_json(std::string_view text);

// Member `name` of the JSON object `object_text`, as canonical JSON text; throws json_error when missing.
[[nodiscard]] std::string json_member(std::string_view object_text, std::string_view name);

// The string member `name` of a JSON object, unescaped; throws json_error when missing or not a string.
[[nodiscard]] std::string json_string_member(std::string_view object_text, std::string_view name);
// The unsigned integer member `name` of a JSON object; throws json_error when missing or not one.
[[nodiscard]] std::uint64_t json_uint_member(std::string_view object_text, std::string_view name);
// `text` as a quoted, escaped JSON string.
[[nodiscard]] std::string json_quote(std::string_view text);

// Why `text` cannot be event text (what the event log stores: UTF-8 without NUL, as PostgreSQL's text and jsonb
// require), naming the byte; empty when it can. With `json`, the escape \u0000 is refused too (jsonb cannot hold it).
// Stores refuse such appends, and the transport refuses such messages before their text can reach one.
[[nodiscard]] std::string unstorable_text(std::string_view text, bool json);

namespace detail {
[[nodiscard]] std::string wrap_for_decoding(std::string_view text);
[[nodiscard]] std::string demangle(const char* name);
}  // namespace detail

// Encodes `value` with cereal's JSON archive and returns canonical JSON text of the value itself.
template <class T>
[[nodiscard]] std::string to_json(const T& value) {
  if constexpr (std::is_same_v<T, raw_json>) {
    return canonical_json(value.text);
  } else {
    std::ostringstream out;
    {
      cereal::JSONOutputArchive archive(out, cereal::JSONOutputArchive::Options::NoIndent());
      archive(cereal::make_nvp("v", value));
    }
    return json_member(out.str(), "v");
  }
}

// Decodes JSON text into a T with cereal; throws json_error naming the type and what was wrong.
template <class T>
[[nodiscard]] T from_json(std::string_view text) {
  if constexpr (std::is_same_v<T, raw_json>) {
    return raw_json{canonical_json(text)};
  } else {
    try {
      std::istringstream in(detail::wrap_for_decoding(text));
      cereal::JSONInputArchive archive(in);
      T value{};
      archive(cereal::make_nvp("v", value));
      return value;
    } catch (const cereal::Exception& e) {
      throw json_error("cannot decode " + detail::demangle(typeid(T).name()) + " from JSON: " + e.what());
    }
  }
}

}  // namespace saga
