// Canonical JSON with the rapidjson engine that cereal's JSON archive is built on (same configuration macros).
#include "saga/json.hpp"

#include "json_detail.hpp"

#include <cxxabi.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <cereal/archives/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

namespace saga {

namespace {

using value_t = rapidjson::Value;

void write_canonical(const value_t& v, rapidjson::Writer<rapidjson::StringBuffer>& w) {
  switch (v.GetType()) {
    case rapidjson::kNullType: w.Null(); break;
    case rapidjson::kFalseType: w.Bool(false); break;
    case rapidjson::kTrueType: w.Bool(true); break;
    case rapidjson::kStringType: w.String(v.GetString(), v.GetStringLength()); break;
    case rapidjson::kNumberType:
      if (v.IsInt64()) {
        w.Int64(v.GetInt64());
      } else if (v.IsUint64()) {
        w.Uint64(v.GetUint64());
      } else {
        const double d = v.GetDouble();
        // Integral doubles within 2^53 print as integers so 1.0 and 1 are the same value. The range is checked
        // before the conversion: converting a double outside int64's range is undefined (found by fuzzing).
        if (d > -9007199254740992.0 && d < 9007199254740992.0 && d == static_cast<double>(static_cast<std::int64_t>(d)))
          w.Int64(static_cast<std::int64_t>(d));
        else
          w.Double(d);
      }
      break;
    case rapidjson::kArrayType:
      w.StartArray();
      for (const auto& item : v.GetArray()) write_canonical(item, w);
      w.EndArray();
      break;
    case rapidjson::kObjectType: {
      std::vector<const value_t::Member*> members;
      members.reserve(v.MemberCount());
      for (const auto& m : v.GetObject()) members.push_back(&m);
      std::sort(members.begin(), members.end(), [](const auto* a, const auto* b) {
        return std::string_view(a->name.GetString(), a->name.GetStringLength()) <
               std::string_view(b->name.GetString(), b->name.GetStringLength());
      });
      for (std::size_t i = 1; i < members.size(); ++i) {
        if (std::string_view(members[i]->name.GetString(), members[i]->name.GetStringLength()) ==
            std::string_view(members[i - 1]->name.GetString(), members[i - 1]->name.GetStringLength()))
          throw json_error("duplicate key \"" + std::string(members[i]->name.GetString()) + "\" in JSON object");
      }
      w.StartObject();
      for (const auto* m : members) {
        w.Key(m->name.GetString(), m->name.GetStringLength());
        write_canonical(m->value, w);
      }
      w.EndObject();
      break;
    }
  }
}

}  // namespace

namespace detail {
namespace {
// Calls found(begin, end) for each number token outside strings whose significand is all zeros and that has an
// exponent; stops early when found returns false.
template <class Found>
void zero_exponent_numbers(std::string_view text, Found found) {
  const std::size_t n = text.size();
  bool in_string = false;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;  // the escaped character cannot end the string
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      continue;
    }
    if (c != '-' && (c < '0' || c > '9')) continue;
    std::size_t j = c == '-' ? i + 1 : i;
    bool zero = true;
    for (; j < n && ((text[j] >= '0' && text[j] <= '9') || text[j] == '.'); ++j)
      if (text[j] >= '1' && text[j] <= '9') zero = false;
    if (zero && j > i && j < n && (text[j] == 'e' || text[j] == 'E')) {
      std::size_t end = j + 1;
      if (end < n && (text[end] == '+' || text[end] == '-')) ++end;
      while (end < n && text[end] >= '0' && text[end] <= '9') ++end;
      if (!found(i, end)) return;
      j = end;
    }
    if (j > i) i = j - 1;
  }
}
}  // namespace

bool has_zero_with_exponent(std::string_view text) noexcept {
  bool any = false;
  zero_exponent_numbers(text, [&](std::size_t, std::size_t) { return !(any = true); });
  return any;
}

void parse_json(rapidjson::Document& doc, std::string_view text) {
  std::string zeroed;  // rapidjson 1.1.0 misreads 0eN in both precisions (see has_zero_with_exponent): such a
  if (has_zero_with_exponent(text)) {  // number is exactly zero, so it is read as the number 0
    std::size_t from = 0;
    zero_exponent_numbers(text, [&](std::size_t begin, std::size_t end) {
      zeroed.append(text.substr(from, begin - from)).append("0");
      from = end;
      return true;
    });
    zeroed.append(text.substr(from));
    text = zeroed;
  }
  doc.Parse<rapidjson::kParseFullPrecisionFlag>(text.data(), text.size());
  if (doc.HasParseError())
    throw json_error(std::string("invalid JSON at offset ") + std::to_string(doc.GetErrorOffset()) + ": " +
                     rapidjson::GetParseError_En(doc.GetParseError()));
}

std::string canonical_text(const rapidjson::Value& v) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  write_canonical(v, writer);
  return {buffer.GetString(), buffer.GetSize()};
}
}  // namespace detail

std::string canonical_json(std::string_view text) {
  rapidjson::Document doc;
  detail::parse_json(doc, text);
  return detail::canonical_text(doc);
}

namespace {
// The member `name` of the object `doc`; throws json_error when missing. (A scan, as FindMember's is: comparing
// rapidjson's member iterators is ambiguous under C++20's reversed operators in clang.)
const rapidjson::Value& member(const rapidjson::Value& doc, std::string_view name) {
  for (const auto& m : doc.GetObject())
    if (std::string_view(m.name.GetString(), m.name.GetStringLength()) == name) return m.value;
  throw json_error("missing member \"" + std::string(name) + "\"");
}
}  // namespace

std::string json_member(std::string_view object_text, std::string_view name) {
  rapidjson::Document doc;
  detail::parse_json(doc, object_text);
  if (!doc.IsObject()) throw json_error("expected a JSON object");
  return detail::canonical_text(member(doc, name));
}

namespace {
const rapidjson::Value& member_of(rapidjson::Document& doc, std::string_view object_text, std::string_view name) {
  detail::parse_json(doc, object_text);
  if (!doc.IsObject()) throw json_error("expected a JSON object");
  return member(doc, name);
}
}  // namespace

std::string json_string_member(std::string_view object_text, std::string_view name) {
  rapidjson::Document doc;
  const auto& v = member_of(doc, object_text, name);
  if (!v.IsString()) throw json_error("member \"" + std::string(name) + "\" must be a string");
  return {v.GetString(), v.GetStringLength()};
}

std::uint64_t json_uint_member(std::string_view object_text, std::string_view name) {
  rapidjson::Document doc;
  const auto& v = member_of(doc, object_text, name);
  if (!v.IsUint64()) throw json_error("member \"" + std::string(name) + "\" must be an unsigned integer");
  return v.GetUint64();
}

std::string json_quote(std::string_view text) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  writer.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
  return {buffer.GetString(), buffer.GetSize()};
}

namespace detail {

std::string wrap_for_decoding(std::string_view text) {
  std::string wrapped;
  wrapped.reserve(text.size() + 8);
  wrapped += "{\"v\":";
  wrapped += canonical_json(text);  // validates first, so cereal never sees broken text
  wrapped += '}';
  return wrapped;
}

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

}  // namespace detail
}  // namespace saga
