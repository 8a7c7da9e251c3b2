// Canonical JSON with the rapidjson engine that cereal's JSON archive is built on (same configuration macros).
#include "saga/json.hpp"

#include "json_detail.hpp"

#include <cxxabi.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <cereal/archives/json.hpp>

#include <algorithm>
#include <charconv>
#include <cstdint>
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
// Builds a document from rapidjson's SAX events with numbers delivered as text (kParseNumbersAsStringsFlag) and read
// here: rapidjson 1.1.0's own number conversion has undefined behaviour on some tokens (full precision: clz(0) for
// 0e-41, Tencent/rapidjson#1249, and out-of-range shifts in StrtodDiyFp for long digit strings; normal precision
// reads -0.00E-41 as 7e-276), all found by our fuzzing. std::from_chars is exact (correctly rounded) and
// locale-independent. The reader has already checked the token's grammar.
struct number_reading_handler {
  rapidjson::Document& doc;
  std::string error;

  bool Null() { return doc.Null(); }
  bool Bool(bool b) { return doc.Bool(b); }
  bool Int(int i) { return doc.Int(i); }
  bool Uint(unsigned u) { return doc.Uint(u); }
  bool Int64(std::int64_t i) { return doc.Int64(i); }
  bool Uint64(std::uint64_t u) { return doc.Uint64(u); }
  bool Double(double d) { return doc.Double(d); }
  bool String(const char* s, rapidjson::SizeType n, bool copy) { return doc.String(s, n, copy); }
  bool StartObject() { return deeper() && doc.StartObject(); }
  bool Key(const char* s, rapidjson::SizeType n, bool copy) { return doc.Key(s, n, copy); }
  bool EndObject(rapidjson::SizeType n) {
    --depth;
    return doc.EndObject(n);
  }
  bool StartArray() { return deeper() && doc.StartArray(); }
  bool EndArray(rapidjson::SizeType n) {
    --depth;
    return doc.EndArray(n);
  }

  int depth = 0;
  bool deeper() {
    if (++depth <= max_json_depth) return true;
    error = "arrays and objects nested deeper than " + std::to_string(max_json_depth) + " levels";
    return false;
  }

  bool RawNumber(const char* s, rapidjson::SizeType n, bool) {
    const std::string_view token(s, n);
    const char* const first = token.data();
    const char* const last = first + token.size();
    if (token.find_first_of(".eE") == std::string_view::npos) {  // an integer: exact when it fits 64 bits
      if (token.front() == '-') {
        std::int64_t i = 0;
        if (auto r = std::from_chars(first, last, i); r.ec == std::errc{} && r.ptr == last) return doc.Int64(i);
      } else {
        std::uint64_t u = 0;
        if (auto r = std::from_chars(first, last, u); r.ec == std::errc{} && r.ptr == last) return doc.Uint64(u);
      }
    }
    double d = 0;
    const auto r = std::from_chars(first, last, d);
    if (r.ec == std::errc::result_out_of_range) {
      // Too large for a double is an error; too small to be one (1e-400) is the nearest double, zero.
      if (!tiny(token)) {
        error = "number " + std::string(token.substr(0, 40)) + (token.size() > 40 ? "..." : "") +
                " is too large for a double";
        return false;
      }
      d = token.front() == '-' ? -0.0 : 0.0;
    } else if (r.ec != std::errc{} || r.ptr != last) {
      error = "unreadable number " + std::string(token.substr(0, 40));
      return false;
    }
    return doc.Double(d);
  }

  // Whether a number token whose conversion was out of range is below the smallest double rather than above the
  // largest: its decimal magnitude (position of the first non-zero digit plus the exponent) is negative.
  static bool tiny(std::string_view token) {
    const auto e = token.find_first_of("eE");
    const std::string_view mantissa = token.substr(0, e);
    const auto dot = mantissa.find('.');
    const auto int_part = mantissa.substr(0, dot);
    long long magnitude = 0;
    if (int_part.find_first_not_of("-0") != std::string_view::npos) {
      magnitude = static_cast<long long>(int_part.size() - int_part.find_first_not_of("-0"));
    } else if (dot != std::string_view::npos) {
      const auto frac = mantissa.substr(dot + 1);
      const auto nz = frac.find_first_not_of('0');
      if (nz == std::string_view::npos) return true;  // all zeros (never out of range, but zero either way)
      magnitude = -static_cast<long long>(nz);
    } else {
      return true;
    }
    if (e != std::string_view::npos) {
      auto exp = token.substr(e + 1);
      const bool negative = !exp.empty() && exp.front() == '-';
      if (!exp.empty() && (exp.front() == '-' || exp.front() == '+')) exp.remove_prefix(1);
      long long x = 0;
      for (char c : exp) x = std::min<long long>(x * 10 + (c - '0'), 1'000'000'000LL);
      magnitude += negative ? -x : x;
    }
    return magnitude < 0;
  }
};
}  // namespace

void parse_json(rapidjson::Document& doc, std::string_view text) {
  rapidjson::MemoryStream stream(text.data(), text.size());
  rapidjson::Reader reader;
  number_reading_handler handler{doc, {}};
  rapidjson::ParseResult result;
  auto generate = [&](rapidjson::Document&) {
    result = reader.Parse<rapidjson::kParseNumbersAsStringsFlag>(stream, handler);  // also refuses trailing text
    return !result.IsError();
  };
  doc.Populate(generate);
  if (result.IsError()) {
    if (!handler.error.empty())
      throw json_error("invalid JSON at offset " + std::to_string(result.Offset()) + ": " + handler.error);
    throw json_error(std::string("invalid JSON at offset ") + std::to_string(result.Offset()) + ": " +
                     rapidjson::GetParseError_En(result.Code()));
  }
}

std::string canonical_text(const rapidjson::Value& v) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  write_canonical(v, writer);
  return {buffer.GetString(), buffer.GetSize()};
}
}  // namespace detail

std::string canonical_json(std::string_view text) {
  detail::local_document holder;
  auto& doc = holder.get();
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
  detail::local_document holder;
  auto& doc = holder.get();
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
  detail::local_document holder;
  auto& doc = holder.get();
  const auto& v = member_of(doc, object_text, name);
  if (!v.IsString()) throw json_error("member \"" + std::string(name) + "\" must be a string");
  return {v.GetString(), v.GetStringLength()};
}

std::uint64_t json_uint_member(std::string_view object_text, std::string_view name) {
  detail::local_document holder;
  auto& doc = holder.get();
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

std::string unstorable_text(std::string_view text, bool json) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c == 0) return "a NUL byte at byte " + std::to_string(i) + " (PostgreSQL text cannot hold NUL)";
    if (json && c == '\\' && i + 1 < n) {
      if (p[i + 1] == 'u' && text.substr(i + 2, 4) == "0000")
        return "the JSON escape \\u0000 (NUL) at byte " + std::to_string(i) + " (PostgreSQL jsonb cannot hold NUL)";
      i += 2;  // an escape: the escaped character is not a backslash that starts another one
      continue;
    }
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool ok = len != 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xc0) == 0x80;
    if (ok && len > 1) {  // overlong forms, surrogates and code points past U+10FFFF are not UTF-8 either
      std::uint32_t cp = c & (0xff >> (len + 1));
      for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[i + k] & 0x3f);
      static constexpr std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= smallest[len] && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff);
    }
    if (!ok) return "invalid UTF-8 at byte " + std::to_string(i) + " (PostgreSQL stores UTF-8 text only)";
    i += len;
  }
  return {};
}

}  // namespace saga
