#include "saga/transport/envelope.hpp"

#include "saga/json.hpp"

#include "saga/timeline.hpp"

#include <cereal/archives/json.hpp>  // first: configures rapidjson as everywhere else in saga

#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

#include <charconv>
#include <chrono>
#include <cstdio>

namespace saga::transport {

namespace hn = header_names;

namespace {

void add(header_list& h, std::string_view name, std::string value) {
  h.emplace_back(std::string(name), std::move(value));
}

void add_common(header_list& h, const std::string& id, std::string type, std::string_view source, time_point t) {
  add(h, hn::spec_version, "1.0");
  add(h, hn::id, id);
  add(h, hn::type, std::move(type));
  add(h, hn::source, std::string(source));
  add(h, hn::time, format_time(t));
  add(h, hn::content_type, "application/json");
}

// Reads required and optional headers, remembering the first problem.
class reader {
 public:
  explicit reader(const header_list& h) : headers_(h) {}
  std::string required(std::string_view name) {
    auto v = find_header(headers_, name);
    if (!v) {
      fail("missing header " + std::string(name));
      return {};
    }
    if (v->empty()) fail("empty header " + std::string(name));
    return std::string(*v);
  }
  std::string optional(std::string_view name) {
    auto v = find_header(headers_, name);
    return v ? std::string(*v) : std::string();
  }
  void fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
  }
  [[nodiscard]] bool ok() const noexcept { return error_.empty(); }
  std::string error_;

 private:
  const header_list& headers_;
};

// A command id (the participant's inbox key; `compensates` names one too) holds no control character: a NUL ends a
// text parameter early where it is sent to PostgreSQL, so "X\0junk" would dedupe as (and be answered like) "X".
void check_id(reader& r, std::string_view name, const std::string& id) {
  if (!r.ok()) return;
  for (std::size_t i = 0; i < id.size(); ++i) {
    const auto b = static_cast<unsigned char>(id[i]);
    if (b >= 0x20 && b != 0x7f) continue;
    static constexpr char digits[] = "0123456789abcdef";
    r.fail("bad header " + std::string(name) + ": control character 0x" + digits[b >> 4] + digits[b & 15] +
           " at offset " + std::to_string(i));
    return;
  }
}

// Text a saga's events may come to hold (a reply's reason, ids, names) is UTF-8 without NUL, as the event log
// stores it: a reply with "\xff" in its reason was taken, then its events were refused by the store, and the reply
// was lost without a word. Called after the other checks, so their more specific messages come first.
void check_text(reader& r, std::string_view name, std::string_view value) {
  if (!r.ok()) return;
  if (auto why = unstorable_text(value, false); !why.empty()) r.fail("bad header " + std::string(name) + ": " + why);
}

struct common_fields {
  std::string id, type;
  saga_id saga;
  std::string saga_type, step, traceparent;
  std::uint32_t attempt = 0;
  time_point time{};
};

common_fields read_common(reader& r) {
  common_fields c;
  auto spec = r.required(hn::spec_version);
  if (r.ok() && spec != "1.0") r.fail("bad header ce_specversion: '" + spec + "' (expected 1.0)");
  c.id = r.required(hn::id);
  check_id(r, hn::id, c.id);
  c.type = r.required(hn::type);
  auto saga_text = r.required(hn::saga_id);
  if (r.ok()) {
    if (auto id = saga_id::parse(saga_text)) {
      c.saga = *id;
    } else {
      r.fail("bad header ce_sagaid: '" + saga_text + "' is not a UUID");
    }
  }
  c.saga_type = r.required(hn::saga_type);
  c.step = r.required(hn::step);
  auto attempt = r.required(hn::attempt);
  if (r.ok()) {
    auto [end, ec] = std::from_chars(attempt.data(), attempt.data() + attempt.size(), c.attempt);
    if (ec != std::errc() || end != attempt.data() + attempt.size())
      r.fail("bad header ce_sagaattempt: '" + attempt + "' is not an unsigned 32-bit number");
  }
  if (auto t = r.optional(hn::time); !t.empty() && r.ok()) {
    if (auto parsed = parse_time(t)) {
      c.time = *parsed;
    } else {
      r.fail("bad header ce_time: '" + t + "' is not an RFC 3339 date-time");
    }
  }
  c.traceparent = r.optional(hn::traceparent);
  return c;
}

void check_json(reader& r, std::string_view value, bool allow_empty) {
  if (!r.ok()) return;
  if (value.empty()) {
    if (!allow_empty) r.fail("empty value (expected a JSON payload)");
    return;
  }
  // Validation only (no document is built): the payload is passed on as it is.
  rapidjson::MemoryStream stream(value.data(), value.size());
  struct depth_limited : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, depth_limited> {
    int depth = 0;
    bool StartObject() { return ++depth <= max_json_depth; }
    bool EndObject(rapidjson::SizeType) {
      --depth;
      return true;
    }
    bool StartArray() { return ++depth <= max_json_depth; }
    bool EndArray(rapidjson::SizeType) {
      --depth;
      return true;
    }
  } ignore;
  rapidjson::Reader parser;
  // Numbers are checked for their grammar only (kept as text): rapidjson 1.1.0's conversions of number tokens have
  // undefined behaviour on some inputs (see saga/src/json.cpp), and a value's validity does not depend on them.
  auto result = parser.Parse<rapidjson::kParseNumbersAsStringsFlag>(stream, ignore);
  if (result.IsError() && ignore.depth > max_json_depth) {
    r.fail("value nests arrays and objects deeper than " + std::to_string(max_json_depth) + " levels (at offset " +
           std::to_string(result.Offset()) + ")");
  } else if (result.IsError()) {
    r.fail("value is not JSON: " + std::string(rapidjson::GetParseError_En(result.Code())) + " at offset " +
           std::to_string(result.Offset()));
  } else if (stream.Tell() != value.size()) {
    // Trailing non-whitespace after the document.
    auto rest = value.substr(stream.Tell());
    if (rest.find_first_not_of(" \t\r\n") != std::string_view::npos)
      r.fail("value is not JSON: text after the document at offset " + std::to_string(stream.Tell()));
  }
  // rapidjson passes invalid UTF-8 inside strings through; the event log holds neither it nor \u0000.
  if (r.ok())
    if (auto why = unstorable_text(value, true); !why.empty()) r.fail("value cannot be stored: " + why);
}

void check_common_text(reader& r, const common_fields& c) {
  check_text(r, hn::id, c.id);
  check_text(r, hn::type, c.type);
  check_text(r, hn::saga_type, c.saga_type);
  check_text(r, hn::step, c.step);
  check_text(r, hn::traceparent, c.traceparent);
}

}  // namespace

std::optional<std::string_view> find_header(const header_list& headers, std::string_view name) {
  for (const auto& [k, v] : headers)
    if (k == name) return std::string_view(v);
  return std::nullopt;
}

std::string_view outcome_name(triggers::outcome o) noexcept {
  switch (o) {
    case triggers::outcome::success: return "success";
    case triggers::outcome::failure: return "failure";
    case triggers::outcome::retryable_failure: return "retryable_failure";
  }
  return "unknown";
}

std::optional<triggers::outcome> parse_outcome(std::string_view text) noexcept {
  if (text == "success") return triggers::outcome::success;
  if (text == "failure") return triggers::outcome::failure;
  if (text == "retryable_failure") return triggers::outcome::retryable_failure;
  return std::nullopt;
}

envelope encode(const command_message& c, std::string_view source) {
  envelope e;
  e.key = c.saga.to_string();
  e.headers.reserve(16);
  add_common(e.headers, c.command_id, c.command_type, source, c.time);
  add(e.headers, hn::saga_id, e.key);
  add(e.headers, hn::saga_type, c.saga_type);
  add(e.headers, hn::step, c.step);
  add(e.headers, hn::compensation, c.compensation ? "true" : "false");
  add(e.headers, hn::attempt, std::to_string(c.attempt));
  add(e.headers, hn::service, c.service);
  add(e.headers, hn::reply_to, c.reply_to);
  if (!c.compensates.empty()) add(e.headers, hn::compensates, c.compensates);
  if (!c.traceparent.empty()) add(e.headers, hn::traceparent, c.traceparent);
  e.value = c.payload;
  return e;
}

envelope encode(const reply_message& r, std::string_view source) {
  envelope e;
  e.key = r.saga.to_string();
  e.headers.reserve(14);
  add_common(e.headers, r.command_id, std::string(reply_type), source, r.time);
  add(e.headers, hn::saga_id, e.key);
  add(e.headers, hn::saga_type, r.saga_type);
  add(e.headers, hn::step, r.step);
  add(e.headers, hn::attempt, std::to_string(r.attempt));
  add(e.headers, hn::outcome, std::string(outcome_name(r.result)));
  if (!r.reason.empty()) add(e.headers, hn::reason, r.reason);
  if (!r.traceparent.empty()) add(e.headers, hn::traceparent, r.traceparent);
  e.value = r.payload;
  return e;
}

decoded<command_message> decode_command(const header_list& headers, std::string_view value) {
  reader r(headers);
  auto c = read_common(r);
  command_message m;
  auto compensation = r.required(hn::compensation);
  if (r.ok()) {
    if (compensation == "true") {
      m.compensation = true;
    } else if (compensation != "false") {
      r.fail("bad header ce_sagacompensation: '" + compensation + "' (expected true or false)");
    }
  }
  m.service = r.required(hn::service);
  m.reply_to = r.required(hn::reply_to);
  m.compensates = r.optional(hn::compensates);
  if (r.ok() && m.compensation && m.compensates.empty())
    r.fail("missing header " + std::string(hn::compensates) + " on a compensation");
  // On a forward command the participant would fence it as the compensation of that id, and never run it.
  if (r.ok() && !m.compensation && !m.compensates.empty())
    r.fail("header " + std::string(hn::compensates) + " on a command that is not a compensation");
  check_id(r, hn::compensates, m.compensates);
  check_json(r, value, false);
  check_common_text(r, c);
  check_text(r, hn::service, m.service);
  check_text(r, hn::reply_to, m.reply_to);
  check_text(r, hn::compensates, m.compensates);
  if (!r.ok()) return {std::nullopt, std::move(r.error_)};
  m.command_id = std::move(c.id);
  m.command_type = std::move(c.type);
  m.saga = c.saga;
  m.saga_type = std::move(c.saga_type);
  m.step = std::move(c.step);
  m.attempt = c.attempt;
  m.traceparent = std::move(c.traceparent);
  m.time = c.time;
  m.payload = std::string(value);
  return {std::move(m), {}};
}

decoded<reply_message> decode_reply(const header_list& headers, std::string_view value) {
  reader r(headers);
  auto c = read_common(r);
  reply_message m;
  if (r.ok() && c.type != reply_type) r.fail("bad header ce_type: '" + c.type + "' (expected saga.reply)");
  auto outcome = r.required(hn::outcome);
  if (r.ok()) {
    if (auto o = parse_outcome(outcome)) {
      m.result = *o;
    } else {
      r.fail("bad header ce_sagaoutcome: '" + outcome + "' (expected success, failure or retryable_failure)");
    }
  }
  check_json(r, value, true);
  check_common_text(r, c);
  m.reason = r.optional(hn::reason);
  check_text(r, hn::reason, m.reason);
  if (!r.ok()) return {std::nullopt, std::move(r.error_)};
  m.command_id = std::move(c.id);
  m.saga = c.saga;
  m.saga_type = std::move(c.saga_type);
  m.step = std::move(c.step);
  m.attempt = c.attempt;
  m.traceparent = std::move(c.traceparent);
  m.time = c.time;
  m.payload = std::string(value);
  return {std::move(m), {}};
}

}  // namespace saga::transport
