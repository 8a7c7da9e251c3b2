#include "saga/storage/export.hpp"

#include "saga/json.hpp"
#include "saga/timeline.hpp"

#include <map>

namespace saga::storage {

std::string to_json_line(const recorded_event& e) {
  return "{\"saga\":" + json_quote(e.saga.to_string()) + ",\"seq\":" + std::to_string(e.seq) +
         ",\"position\":" + std::to_string(e.position) + ",\"type\":" + json_quote(e.type) +
         ",\"schema_version\":" + std::to_string(e.schema_version) + ",\"payload\":" + e.payload +
         ",\"metadata\":" + e.metadata + ",\"recorded_at\":" + json_quote(format_time(e.recorded_at)) +
         ",\"prev_hash\":" + json_quote(e.prev_hash) + ",\"hash\":" + json_quote(e.hash) + "}";
}

recorded_event from_json_line(std::string_view line) {
  recorded_event e;
  const std::string id = json_string_member(line, "saga");
  const auto parsed = saga_id::parse(id);
  if (!parsed) throw json_error("field \"saga\" is not a saga id: " + id);
  e.saga = *parsed;
  e.seq = json_uint_member(line, "seq");
  e.position = json_uint_member(line, "position");
  e.type = json_string_member(line, "type");
  const auto version = json_uint_member(line, "schema_version");
  if (version > 0xffffffffULL) throw json_error("field \"schema_version\" is out of range");
  e.schema_version = static_cast<std::uint32_t>(version);
  e.payload = json_member(line, "payload");
  e.metadata = json_member(line, "metadata");
  const std::string at = json_string_member(line, "recorded_at");
  const auto t = parse_time(at);
  if (!t) throw json_error("field \"recorded_at\" is not an RFC 3339 time: " + at);
  e.recorded_at = *t;
  e.prev_hash = json_string_member(line, "prev_hash");
  e.hash = json_string_member(line, "hash");
  return e;
}

export_report verify_export(std::istream& in) {
  export_report report;
  std::vector<saga_id> order;
  std::map<saga_id, std::vector<recorded_event>> by_saga;
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      auto e = from_json_line(line);
      auto& log = by_saga[e.saga];
      if (log.empty()) order.push_back(e.saga);
      log.push_back(std::move(e));
      ++report.records;
    } catch (const std::exception& x) {
      report.errors.push_back("line " + std::to_string(n) + ": " + x.what());
    }
  }
  if (in.bad()) report.errors.push_back("the export could not be read to its end (read error)");
  report.sagas = order.size();
  for (const auto& id : order)
    if (auto broken = verify_chain(by_saga[id])) report.breaks.push_back(*broken);
  return report;
}

}  // namespace saga::storage
