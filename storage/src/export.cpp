#include "saga/storage/export.hpp"

#include "saga/json.hpp"
#include "saga/timeline.hpp"

#include <map>
#include <optional>
#include <set>

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

std::string to_json_line(const export_head& head) {
  return "{\"export_head\":{\"saga\":" + json_quote(head.saga.to_string()) + ",\"seq\":" + std::to_string(head.seq) +
         ",\"hash\":" + json_quote(head.hash) + "}}";
}

std::string export_end_line(std::uint64_t events, std::uint64_t heads) {
  return "{\"export_end\":{\"events\":" + std::to_string(events) + ",\"heads\":" + std::to_string(heads) + "}}";
}

export_report verify_export(std::istream& in) {
  export_report report;
  std::vector<saga_id> order;
  std::map<saga_id, std::vector<recorded_event>> by_saga;
  std::vector<export_head> heads;
  std::optional<std::pair<std::uint64_t, std::uint64_t>> end;  // events, heads
  std::string line;
  const auto starts = [&line](std::string_view prefix) {
    return std::string_view(line).substr(0, prefix.size()) == prefix;
  };
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const std::string at = "line " + std::to_string(n) + ": ";
    if (end) {
      report.errors.push_back(at + "a record after export_end (the export ends there)");
      continue;
    }
    try {
      if (starts("{\"export_head\":")) {
        const std::string body = json_member(line, "export_head");
        const auto id = saga_id::parse(json_string_member(body, "saga"));
        if (!id) throw json_error("field \"saga\" of export_head is not a saga id");
        heads.push_back(export_head{*id, json_uint_member(body, "seq"), json_string_member(body, "hash")});
      } else if (starts("{\"export_end\":")) {
        const std::string body = json_member(line, "export_end");
        end.emplace(json_uint_member(body, "events"), json_uint_member(body, "heads"));
      } else {
        if (!heads.empty()) throw json_error("an event after the heads (events come first)");
        auto e = from_json_line(line);
        auto& log = by_saga[e.saga];
        if (log.empty()) order.push_back(e.saga);
        log.push_back(std::move(e));
        ++report.records;
      }
    } catch (const std::exception& x) {
      report.errors.push_back(at + x.what());
    }
  }
  if (in.bad()) report.errors.push_back("the export could not be read to its end (read error)");
  if (!end)
    report.errors.push_back(
        "the export has no export_end record: it was cut short (or made by a sagactl that did "
        "not write one), so events missing at its end cannot be told");
  else if (end->first != report.records || end->second != heads.size())
    report.errors.push_back("export_end counts " + std::to_string(end->first) + " events and " +
                            std::to_string(end->second) + " heads, but the export holds " +
                            std::to_string(report.records) + " and " + std::to_string(heads.size()) +
                            " (records removed or added)");
  report.sagas = order.size();
  std::map<saga_id, chain_break> broken;
  for (const auto& id : order)
    if (auto b = verify_chain(by_saga[id])) broken.emplace(id, *b);
  for (const auto& h : heads) {
    if (broken.contains(h.saga)) continue;
    const auto it = by_saga.find(h.saga);
    const std::uint64_t last = it == by_saga.end() ? 0 : it->second.back().seq;
    if (last < h.seq)
      broken.emplace(h.saga,
                     chain_break{h.saga, last + 1,
                                 "the export ends at seq " + std::to_string(last) + " but the saga's head was seq " +
                                     std::to_string(h.seq) + " when it was exported (events missing from the end)"});
    else if (h.seq >= 1 && it->second[h.seq - 1].hash != h.hash)  // a valid chain holds seq 1, 2, … in order
      broken.emplace(h.saga, chain_break{h.saga, h.seq,
                                         "event " + std::to_string(h.seq) +
                                             " does not have the hash of the saga's head when it was exported "
                                             "(events rewritten at the end)"});
  }
  for (const auto& id : order)
    if (auto b = broken.find(id); b != broken.end()) report.breaks.push_back(b->second);
  std::set<saga_id> reported;
  for (const auto& h : heads)  // a head whose saga has no event in the export at all
    if (!by_saga.contains(h.saga) && broken.contains(h.saga) && reported.insert(h.saga).second)
      report.breaks.push_back(broken.at(h.saga));
  return report;
}

}  // namespace saga::storage
