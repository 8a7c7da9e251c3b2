// Fuzz target: decoding Kafka records (headers + value) into commands and replies. A record that decodes must
// encode back to a record that decodes to the same message; anything else is refused with a reason, never a crash.
#include "fuzz_input.hpp"

#include "saga/transport/envelope.hpp"

#include <array>
#include <cstdio>
#include <cstdlib>

namespace hn = saga::transport::header_names;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::array<std::string_view, 20> names{
      hn::spec_version, hn::id,     hn::type,         hn::source,     hn::time,      hn::content_type, hn::saga_id,
      hn::saga_type,    hn::step,   hn::compensation, hn::attempt,    hn::service,   hn::reply_to,     hn::compensates,
      hn::outcome,      hn::reason, hn::traceparent,  hn::dlq_reason, hn::dlq_topic, hn::dlq_offset};
  saga::fuzz::input in(data, size);
  saga::transport::header_list headers;
  const int count = in.byte() % 24;
  for (int i = 0; i < count && !in.empty(); ++i) {
    const auto pick = in.byte();
    std::string key = pick < 200 ? std::string(names[pick % names.size()]) : in.text(32);
    headers.emplace_back(std::move(key), in.text(200));
  }
  const std::string value = in.remaining();

  if (auto c = saga::transport::decode_command(headers, value)) {
    const auto again = saga::transport::encode(*c.message, "/fuzz");
    const auto back = saga::transport::decode_command(again.headers, again.value);
    SAGA_FUZZ_CHECK(back.message.has_value());
    SAGA_FUZZ_CHECK(*back.message == *c.message);
  } else {
    SAGA_FUZZ_CHECK(!c.error.empty());
  }
  if (auto r = saga::transport::decode_reply(headers, value)) {
    const auto again = saga::transport::encode(*r.message, "/fuzz");
    const auto back = saga::transport::decode_reply(again.headers, again.value);
    SAGA_FUZZ_CHECK(back.message.has_value());
    SAGA_FUZZ_CHECK(*back.message == *r.message);
  } else {
    SAGA_FUZZ_CHECK(!r.error.empty());
  }
  return 0;
}
