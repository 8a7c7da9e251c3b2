// Event codec: each event type lists its fields once (fields()); the encoder and the decoder both walk that list.
#include "saga/event.hpp"

#include "json_detail.hpp"
#include "saga/json.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <array>
#include <limits>

namespace saga {

namespace {

using namespace events;

// --- the field lists ---------------------------------------------------------------------------------------
// s: plain string, j: JSON document, oj: optional JSON, u32/u64: unsigned, b: bool, t: time in ms.
template <class V>
void fields(V& v, saga_started& e) {
  v.s("saga_type", e.saga_type), v.u32("definition_version", e.definition_version);
  v.s("definition_fingerprint", e.definition_fingerprint), v.j("input", e.input);
  v.s("idempotency_key", e.idempotency_key);
}
template <class V, class E>
void request_fields(V& v, E& e) {
  v.s("step", e.step), v.u32("attempt", e.attempt), v.s("command_id", e.command_id);
  v.s("service", e.service), v.s("command_type", e.command_type), v.j("payload", e.payload);
  v.t("deadline", e.deadline);
}
template <class V>
void fields(V& v, step_requested& e) {
  request_fields(v, e);
}
template <class V>
void fields(V& v, compensation_requested& e) {
  request_fields(v, e);
}
template <class V>
void fields(V& v, step_succeeded& e) {
  v.s("step", e.step), v.u32("attempt", e.attempt), v.s("command_id", e.command_id), v.j("reply", e.reply);
  v.oj("data", e.data);
}
template <class V>
void fields(V& v, compensation_succeeded& e) {
  v.s("step", e.step), v.u32("attempt", e.attempt), v.s("command_id", e.command_id), v.j("reply", e.reply);
}
template <class V, class E>
void failure_fields(V& v, E& e) {
  v.s("step", e.step), v.u32("attempt", e.attempt), v.s("command_id", e.command_id), v.s("reason", e.reason);
  v.b("retryable", e.retryable);
}
template <class V>
void fields(V& v, step_failed& e) {
  failure_fields(v, e);
}
template <class V>
void fields(V& v, compensation_failed& e) {
  failure_fields(v, e);
}
template <class V, class E>
void timeout_fields(V& v, E& e) {
  v.s("step", e.step), v.u32("attempt", e.attempt), v.s("command_id", e.command_id);
}
template <class V>
void fields(V& v, step_timed_out& e) {
  timeout_fields(v, e);
}
template <class V>
void fields(V& v, compensation_timed_out& e) {
  timeout_fields(v, e);
}
template <class V>
void fields(V& v, retry_scheduled& e) {
  v.s("step", e.step), v.b("compensation", e.compensation), v.u32("next_attempt", e.next_attempt);
  v.t("due", e.due), v.u64("seed", e.seed);
}
template <class V>
void fields(V& v, compensation_started& e) {
  v.s("reason", e.reason), v.s("failed_step", e.failed_step);
}
template <class V>
void fields(V& v, cancel_requested& e) {
  v.s("reason", e.reason), v.s("by", e.by);
}
template <class V>
void fields(V& v, saga_completed& e) {
  v.j("output", e.output);
}
template <class V>
void fields(V& v, saga_compensated& e) {
  v.s("reason", e.reason);
}
template <class V>
void fields(V& v, saga_stuck& e) {
  v.s("step", e.step), v.b("compensation", e.compensation), v.s("reason", e.reason);
}
template <class V>
void fields(V& v, operator_action_recorded& e) {
  v.s("action", e.action), v.s("step", e.step), v.b("compensation", e.compensation), v.s("reason", e.reason);
  v.s("operator", e.operator_name);
}

// Type names, in the variant's order.
constexpr std::array<std::string_view, std::variant_size_v<event_body>> names = {"saga_started",
                                                                                 "step_requested",
                                                                                 "step_succeeded",
                                                                                 "step_failed",
                                                                                 "step_timed_out",
                                                                                 "retry_scheduled",
                                                                                 "compensation_started",
                                                                                 "compensation_requested",
                                                                                 "compensation_succeeded",
                                                                                 "compensation_failed",
                                                                                 "compensation_timed_out",
                                                                                 "cancel_requested",
                                                                                 "saga_completed",
                                                                                 "saga_compensated",
                                                                                 "saga_stuck",
                                                                                 "operator_action_recorded"};

// --- encoding ----------------------------------------------------------------------------------------------
struct writer_visitor {
  rapidjson::Writer<rapidjson::StringBuffer>& w;
  void key(const char* k) { w.Key(k); }
  void s(const char* k, const std::string& x) {
    key(k), w.String(x.data(), static_cast<rapidjson::SizeType>(x.size()));
  }
  void j(const char* k, const std::string& x) {
    key(k);
    if (x.empty())
      w.Null();
    else
      w.RawValue(x.data(), x.size(), rapidjson::kObjectType);
  }
  void oj(const char* k, const std::optional<std::string>& x) {
    if (x) j(k, *x);
  }
  void u32(const char* k, std::uint32_t x) { key(k), w.Uint(x); }
  void u64(const char* k, std::uint64_t x) { key(k), w.Uint64(x); }
  void b(const char* k, bool x) { key(k), w.Bool(x); }
  void t(const char* k, time_point x) { key(k), w.Int64(x.time_since_epoch().count()); }
};

// --- decoding ----------------------------------------------------------------------------------------------
struct reader_visitor {
  const rapidjson::Value& obj;
  std::string_view type;

  [[noreturn]] void bad(const char* k, const char* expected) const {
    throw event_decode_error("event " + std::string(type) + ": field '" + k + "' " + expected);
  }
  const rapidjson::Value& get(const char* k) const {
    const auto it = obj.FindMember(k);
    if (it == obj.MemberEnd()) bad(k, "is missing");
    return it->value;
  }
  void s(const char* k, std::string& x) const {
    const auto& v = get(k);
    if (!v.IsString()) bad(k, "must be a string");
    x.assign(v.GetString(), v.GetStringLength());
  }
  void j(const char* k, std::string& x) const {
    const auto& v = get(k);
    x = v.IsNull() ? std::string() : detail::canonical_text(v);
  }
  void oj(const char* k, std::optional<std::string>& x) const {
    const auto it = obj.FindMember(k);
    if (it == obj.MemberEnd() || it->value.IsNull())
      x.reset();
    else
      x = detail::canonical_text(it->value);
  }
  void u32(const char* k, std::uint32_t& x) const {
    const auto& v = get(k);
    if (!v.IsUint()) bad(k, "must be an unsigned 32-bit integer");
    x = v.GetUint();
  }
  void u64(const char* k, std::uint64_t& x) const {
    const auto& v = get(k);
    if (!v.IsUint64()) bad(k, "must be an unsigned 64-bit integer");
    x = v.GetUint64();
  }
  void b(const char* k, bool& x) const {
    const auto& v = get(k);
    if (!v.IsBool()) bad(k, "must be true or false");
    x = v.GetBool();
  }
  void t(const char* k, time_point& x) const {
    const auto& v = get(k);
    if (!v.IsInt64()) bad(k, "must be a time in milliseconds since the epoch");
    x = time_point(std::chrono::milliseconds(v.GetInt64()));
  }
};

template <std::size_t I = 0>
event_body decode_alternative(std::size_t index, const reader_visitor& r) {
  if constexpr (I < std::variant_size_v<event_body>) {
    if (index == I) {
      std::variant_alternative_t<I, event_body> e{};
      fields(const_cast<reader_visitor&>(r), e);
      return e;
    }
    return decode_alternative<I + 1>(index, r);
  } else {
    throw event_decode_error("unreachable event index");
  }
}

}  // namespace

std::string_view type_name(const event_body& body) noexcept { return names[body.index()]; }

encoded_event encode(const event_body& body) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  writer.StartObject();
  writer_visitor v{writer};
  std::visit([&](const auto& e) { fields(v, const_cast<std::remove_cvref_t<decltype(e)>&>(e)); }, body);
  writer.EndObject();
  return encoded_event{std::string(type_name(body)), event_schema_version,
                       canonical_json(std::string_view(buffer.GetString(), buffer.GetSize()))};
}

event_body decode(std::string_view type, std::uint32_t schema_version, std::string_view payload) {
  std::size_t index = names.size();
  for (std::size_t i = 0; i < names.size(); ++i)
    if (names[i] == type) index = i;
  if (index == names.size()) throw event_decode_error("unknown event type '" + std::string(type) + "'");
  if (schema_version != event_schema_version)
    throw event_decode_error("event " + std::string(type) + ": unsupported schema version " +
                             std::to_string(schema_version) + " (this build reads " +
                             std::to_string(event_schema_version) + ")");
  detail::local_document holder;
  auto& doc = holder.get();
  try {
    detail::parse_json(doc, payload);
  } catch (const json_error& e) {
    throw event_decode_error("event " + std::string(type) + ": " + e.what());
  }
  if (!doc.IsObject()) throw event_decode_error("event " + std::string(type) + ": payload is not a JSON object");
  try {
    return decode_alternative(index, reader_visitor{doc, type});
  } catch (const json_error& e) {  // a field's own JSON (e.g. a duplicate key in `input`): still this event's error
    throw event_decode_error("event " + std::string(type) + ": " + e.what());
  }
}

std::string make_command_id(const saga_id& id, std::uint64_t seq) { return id.to_string() + ":" + std::to_string(seq); }

}  // namespace saga
