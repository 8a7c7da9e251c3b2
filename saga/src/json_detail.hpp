// Internal: the rapidjson engine shared by the JSON helpers and the event codec (not installed).
#pragma once

#include <rapidjson/document.h>
#include <cereal/archives/json.hpp>  // first: it configures rapidjson (assertions throw, full precision)

#include <string>
#include <string_view>

namespace saga::detail {

// Canonical text of a parsed value (sorted keys, compact); throws json_error on duplicate keys.
[[nodiscard]] std::string canonical_text(const rapidjson::Value& value);
// Parses `text` into `doc`; throws json_error naming the offset and the problem.
void parse_json(rapidjson::Document& doc, std::string_view text);

}  // namespace saga::detail
