// saga/transport/envelope.hpp — commands and replies as Kafka records: key, headers (CloudEvents Kafka binding,
// binary mode) and a JSON value. Pure: no Kafka client here, so other transports and languages can share it.
#pragma once

#include "saga/transport/message.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace saga::transport {

// One record header (Kafka headers are byte strings; ours are UTF-8 text).
using header = std::pair<std::string, std::string>;
using header_list = std::vector<header>;

// A record as it travels: the key (saga id), the headers and the value (JSON payload).
struct envelope {
  std::string key;
  header_list headers;
  std::string value;
  friend bool operator==(const envelope&, const envelope&) = default;
};

// Header names. `ce_*` are CloudEvents attributes (`ce_saga*` are our extension attributes).
namespace header_names {
inline constexpr std::string_view spec_version = "ce_specversion";  // always "1.0"
inline constexpr std::string_view id = "ce_id";                     // the command id (replies: of the command)
inline constexpr std::string_view type = "ce_type";                 // command type; replies: reply_type
inline constexpr std::string_view source = "ce_source";             // who sent it (URI reference)
inline constexpr std::string_view time = "ce_time";                 // RFC 3339, UTC, milliseconds
inline constexpr std::string_view content_type = "content-type";    // "application/json"
inline constexpr std::string_view saga_id = "ce_sagaid";
inline constexpr std::string_view saga_type = "ce_sagatype";
inline constexpr std::string_view step = "ce_sagastep";
inline constexpr std::string_view compensation = "ce_sagacompensation";  // "true" | "false"
inline constexpr std::string_view attempt = "ce_sagaattempt";            // decimal
inline constexpr std::string_view service = "ce_sagaservice";            // commands
inline constexpr std::string_view reply_to = "ce_sagareplyto";           // commands
inline constexpr std::string_view compensates = "ce_sagacompensates";    // compensations: the forward command id
inline constexpr std::string_view outcome = "ce_sagaoutcome";            // replies: success|failure|retryable_failure
inline constexpr std::string_view reason = "ce_sagareason";              // replies (failures)
inline constexpr std::string_view traceparent = "traceparent";           // W3C trace context, when known
inline constexpr std::string_view dlq_reason = "saga_dlq_reason";        // dead letters: why
inline constexpr std::string_view dlq_topic = "saga_dlq_topic";          // dead letters: original topic
inline constexpr std::string_view dlq_partition = "saga_dlq_partition";  // dead letters: original partition
inline constexpr std::string_view dlq_offset = "saga_dlq_offset";        // dead letters: original offset
// Dead letters whose value was left out to fit max_message_bytes: the value's size (the record stays where
// saga_dlq_topic, saga_dlq_partition and saga_dlq_offset say, until the topic's retention).
inline constexpr std::string_view dlq_value_bytes = "saga_dlq_value_bytes";
}  // namespace header_names

// The ce_type of every reply.
inline constexpr std::string_view reply_type = "saga.reply";

// A decoded message, or the reason it could not be decoded (naming the missing or bad header).
template <class T>
struct decoded {
  std::optional<T> message;
  std::string error;
  [[nodiscard]] explicit operator bool() const noexcept { return message.has_value(); }
};

// The record of a command; `source` becomes ce_source. Never throws except bad_alloc.
[[nodiscard]] envelope encode(const command_message& command, std::string_view source);
// The record of a reply; `source` becomes ce_source. Never throws except bad_alloc.
[[nodiscard]] envelope encode(const reply_message& reply, std::string_view source);
// Decodes a command record; the error names the first missing or malformed header, or says the value is not JSON.
[[nodiscard]] decoded<command_message> decode_command(const header_list& headers, std::string_view value);
// Decodes a reply record; errors as for decode_command.
[[nodiscard]] decoded<reply_message> decode_reply(const header_list& headers, std::string_view value);

// The value of the first header called `name`, if any.
[[nodiscard]] std::optional<std::string_view> find_header(const header_list& headers, std::string_view name);

// The outcome's wire name; parse_outcome is its inverse (nullopt for an unknown name).
[[nodiscard]] std::string_view outcome_name(triggers::outcome o) noexcept;
[[nodiscard]] std::optional<triggers::outcome> parse_outcome(std::string_view text) noexcept;

}  // namespace saga::transport
