#include "saga/storage/hash_chain.hpp"

#include "saga/json.hpp"

#include <openssl/evp.h>

#include <charconv>
#include <memory>

namespace saga::storage {

namespace {
std::string to_hex(const unsigned char* digest, unsigned int size) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (unsigned int i = 0; i < size; ++i) {
    out.push_back(hex[digest[i] >> 4]);
    out.push_back(hex[digest[i] & 0x0f]);
  }
  return out;
}
}  // namespace

std::string sha256_hex(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("SHA-256 unavailable");
  return to_hex(digest, size);
}

std::string chain_hash(std::string_view prev_hash, std::string_view type, std::uint64_t seq, std::string_view payload,
                       std::string_view metadata) {
  // One digest context per thread, reset for every hash (allocating one per event showed in profiles).
  thread_local std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw std::runtime_error("SHA-256 unavailable");
  char seq_text[24];
  const auto seq_end = std::to_chars(seq_text, seq_text + sizeof seq_text, seq).ptr;
  // Length-prefixed fields, so no two different events share bytes.
  auto feed = [&](std::string_view part) {
    char len[24];
    auto end = std::to_chars(len, len + sizeof len - 1, part.size()).ptr;
    *end++ = ':';
    EVP_DigestUpdate(ctx.get(), len, static_cast<std::size_t>(end - len));
    EVP_DigestUpdate(ctx.get(), part.data(), part.size());
  };
  feed(prev_hash);
  feed(type);
  feed(std::string_view(seq_text, static_cast<std::size_t>(seq_end - seq_text)));
  feed(payload);
  feed(metadata);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &size);
  return to_hex(digest, size);
}

std::optional<chain_break> verify_chain(std::span<const recorded_event> log) {
  std::string prev;
  std::uint64_t expected = 1;
  for (const auto& e : log) {
    if (e.seq != expected)
      return chain_break{e.saga, expected,
                         "expected seq " + std::to_string(expected) + " but found seq " + std::to_string(e.seq) +
                             (e.seq > expected ? " (events missing)" : " (out of order or repeated)")};
    if (e.prev_hash != prev)
      return chain_break{e.saga, e.seq, "prev_hash does not match the hash of seq " + std::to_string(e.seq - 1)};
    std::string payload, metadata;
    try {
      payload = canonical_json(e.payload);
      metadata = canonical_json(e.metadata);
    } catch (const json_error& err) {
      return chain_break{e.saga, e.seq, std::string("stored JSON is broken: ") + err.what()};
    }
    if (chain_hash(prev, e.type, e.seq, payload, metadata) != e.hash)
      return chain_break{e.saga, e.seq, "hash does not match the event's contents (altered)"};
    prev = e.hash;
    ++expected;
  }
  return std::nullopt;
}

}  // namespace saga::storage

namespace saga::storage {

std::vector<recorded_event> seal(const append_request& request, std::string prev_hash) {
  if (request.events.empty()) throw store_error("append to saga " + request.saga.to_string() + " has no events");
  std::string extra;
  if (!request.metadata.empty()) {
    extra = canonical_json(request.metadata);
    if (extra.size() < 2 || extra.front() != '{') throw store_error("append metadata must be a JSON object");
    extra = extra.substr(1, extra.size() - 2);
  }
  std::vector<recorded_event> out;
  out.reserve(request.events.size());
  std::uint64_t seq = request.expected_seq;
  for (const auto& e : request.events) {
    if (e.seq != ++seq)
      throw store_error("append to saga " + request.saga.to_string() + ": event seq " + std::to_string(e.seq) +
                        " does not follow " + std::to_string(seq - 1));
    const bool is_start = std::holds_alternative<events::saga_started>(e.body);
    if (is_start != (e.seq == 1))
      throw store_error("append to saga " + request.saga.to_string() +
                        ": saga_started must be exactly the first event");
    auto encoded = encode(e.body);
    recorded_event r;
    r.saga = request.saga;
    r.seq = e.seq;
    r.type = std::move(encoded.type);
    r.schema_version = encoded.schema_version;
    r.payload = std::move(encoded.payload);
    std::string meta = "{\"at\":" + std::to_string(e.at.time_since_epoch().count());
    if (extra.empty()) {
      r.metadata = meta + "}";  // one integer member: canonical as written
    } else {
      meta += "," + extra + "}";
      r.metadata = canonical_json(meta);  // sorts "at" among the caller's keys
    }
    r.prev_hash = prev_hash;
    r.hash = chain_hash(r.prev_hash, r.type, r.seq, r.payload, r.metadata);
    prev_hash = r.hash;
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace saga::storage
