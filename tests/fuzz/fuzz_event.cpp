// Fuzz target: decoding stored event payloads (cereal JSON of every event type) and canonical JSON. A payload that
// decodes must encode to a payload that decodes to the same event; canonical JSON is idempotent; anything else is a
// typed error naming what is wrong, never a crash.
#include "fuzz_input.hpp"

#include "saga/event.hpp"
#include "saga/json.hpp"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <variant>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Every event type's stored name, from the event variant itself, so a new event type is fuzzed without an edit.
  static const auto types = []<std::size_t... I>(std::index_sequence<I...>) {
    return std::array<std::string, sizeof...(I)>{
        std::string(saga::type_name(saga::event_body(std::variant_alternative_t<I, saga::event_body>{})))...};
  }
  (std::make_index_sequence<std::variant_size_v<saga::event_body>>{});
  saga::fuzz::input in(data, size);
  const auto pick = in.byte();
  const std::string type = pick < 240 ? types[pick % types.size()] : in.text(40);
  const std::uint32_t version = in.byte() % 4;
  const std::string payload = in.remaining();

  try {
    const auto body = saga::decode(type, version, payload);
    const auto stored = saga::encode(body);
    const auto again = saga::decode(stored.type, stored.schema_version, stored.payload);
    SAGA_FUZZ_CHECK(saga::encode(again).payload == stored.payload);
    SAGA_FUZZ_CHECK(stored.type == saga::type_name(again));
  } catch (const saga::event_decode_error& e) {
    SAGA_FUZZ_CHECK(*e.what() != '\0');
  }
  try {
    const auto canonical = saga::canonical_json(payload);
    SAGA_FUZZ_CHECK(saga::canonical_json(canonical) == canonical);
  } catch (const saga::json_error& e) {
    SAGA_FUZZ_CHECK(*e.what() != '\0');
  }
  return 0;
}
