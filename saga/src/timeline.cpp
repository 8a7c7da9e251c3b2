#include "saga/timeline.hpp"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <map>

namespace saga {

std::string format_time(time_point t) {
  const auto ms = t.time_since_epoch().count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000 - (ms % 1000 < 0 ? 1 : 0));  // floor, no overflow
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[80];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(((ms % 1000) + 1000) % 1000));
  return buf;
}

std::optional<time_point> parse_time(std::string_view text) {
  if (text.size() < 20) return std::nullopt;
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0, consumed = 0;
  const std::string t(text);
  // Every field is its exact count of digits (sscanf's %2d alone would take a sign or a space: "T-1:00:00Z").
  const auto all_digits = [&t](std::size_t from, std::size_t count) {
    if (t.size() < from + count) return false;
    for (std::size_t k = from; k < from + count; ++k)
      if (!std::isdigit(static_cast<unsigned char>(t[k]))) return false;
    return true;
  };
  if (!all_digits(0, 4) || !all_digits(5, 2) || !all_digits(8, 2) || !all_digits(11, 2) || !all_digits(14, 2) ||
      !all_digits(17, 2))
    return std::nullopt;
  if (std::sscanf(t.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &s, &consumed) != 6 || consumed != 19)
    return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return std::nullopt;
  std::size_t i = 19;
  std::int64_t millis = 0;
  if (i < t.size() && t[i] == '.') {
    int digits = 0;
    for (++i; i < t.size() && std::isdigit(static_cast<unsigned char>(t[i])); ++i, ++digits)
      if (digits < 3) millis = millis * 10 + (t[i] - '0');
    if (digits == 0) return std::nullopt;
    for (; digits < 3; ++digits) millis *= 10;
  }
  std::int64_t offset_minutes = 0;
  if (i < t.size() && (t[i] == 'Z' || t[i] == 'z')) {
    ++i;
  } else if (i < t.size() && (t[i] == '+' || t[i] == '-')) {
    int oh = 0, om = 0;
    if (t.size() != i + 6 || !all_digits(i + 1, 2) || t[i + 3] != ':' || !all_digits(i + 4, 2) ||
        std::sscanf(t.c_str() + i + 1, "%2d:%2d", &oh, &om) != 2 || oh > 23 || om > 59)
      return std::nullopt;
    offset_minutes = (t[i] == '-' ? -1 : 1) * (oh * 60 + om);
    i += 6;
  } else {
    return std::nullopt;
  }
  if (i != t.size()) return std::nullopt;
  const auto days = std::chrono::sys_days(std::chrono::year(y) / std::chrono::month(static_cast<unsigned>(mo)) /
                                          std::chrono::day(static_cast<unsigned>(d)));
  if (!(std::chrono::year(y) / std::chrono::month(static_cast<unsigned>(mo)) /
        std::chrono::day(static_cast<unsigned>(d)))
           .ok())
    return std::nullopt;
  return time_point(std::chrono::duration_cast<std::chrono::milliseconds>(days.time_since_epoch()) +
                    std::chrono::hours(h) + std::chrono::minutes(mi - offset_minutes) + std::chrono::seconds(s) +
                    std::chrono::milliseconds(millis));
}

namespace {

using namespace events;

std::string pad(std::string s, std::size_t n) {
  if (s.size() < n) s.append(n - s.size(), ' ');
  return s;
}

std::string since(time_point prev, time_point now, bool first) {
  if (first) return "";
  // Writers with different clocks (an orchestrator and sagactl on another host) can make time go backwards.
  // In unsigned arithmetic: times from a damaged or forged log may be far apart (their difference overflows).
  const auto a = static_cast<std::uint64_t>(now.time_since_epoch().count());
  const auto b = static_cast<std::uint64_t>(prev.time_since_epoch().count());
  const bool backwards = now < prev;
  const char* sign = backwards ? "-" : "+";
  const std::uint64_t d = backwards ? b - a : a - b;
  if (d < 1000) return sign + std::to_string(d) + "ms";
  return sign + std::to_string(d / 1000) + "." + std::to_string((d % 1000) / 100) + "s";
}

struct line_of {
  const std::map<std::string, std::uint64_t>& succeeded_at;
  std::string step, attempt, command, detail;

  void operator()(const saga_started& e) {
    detail = e.saga_type + " v" + std::to_string(e.definition_version) + " input " + e.input +
             (e.idempotency_key.empty() ? "" : " key " + e.idempotency_key);
  }
  template <class E>
  void request(const E& e) {
    step = e.step, attempt = std::to_string(e.attempt), command = e.command_id;
    detail = "-> " + e.service + " " + e.command_type + " " + e.payload;
  }
  void operator()(const step_requested& e) { request(e); }
  void operator()(const compensation_requested& e) {
    request(e);
    const auto it = succeeded_at.find(e.step);
    detail += it == succeeded_at.end() ? "  (undoes " + e.step + ")"
                                       : "  (undoes " + e.step + " #" + std::to_string(it->second) + ")";
  }
  void operator()(const step_succeeded& e) {
    step = e.step, attempt = std::to_string(e.attempt), command = e.command_id, detail = "reply " + e.reply;
  }
  void operator()(const compensation_succeeded& e) {
    step = e.step, attempt = std::to_string(e.attempt), command = e.command_id, detail = "undone";
  }
  void operator()(const step_failed& e) {
    step = e.step, attempt = std::to_string(e.attempt), command = e.command_id;
    detail = (e.retryable ? "retryable: " : "failed: ") + e.reason;
  }
  void operator()(const compensation_failed& e) {
    step = e.step, attempt = std::to_string(e.attempt), command = e.command_id;
    detail = (e.retryable ? "retryable: " : "failed: ") + e.reason;
  }
  void operator()(const step_timed_out& e) {
    step = e.step, attempt = std::to_string(e.attempt), command = e.command_id, detail = "no reply in time";
  }
  void operator()(const compensation_timed_out& e) {
    step = e.step, attempt = std::to_string(e.attempt), command = e.command_id, detail = "no reply in time";
  }
  void operator()(const retry_scheduled& e) {
    step = e.step, attempt = std::to_string(e.next_attempt);
    detail = std::string(e.compensation ? "compensation " : "") + "retry at " + format_time(e.due);
  }
  void operator()(const compensation_started& e) { step = e.failed_step, detail = e.reason; }
  void operator()(const cancel_requested& e) { detail = "by " + e.by + ": " + e.reason; }
  void operator()(const saga_completed& e) { detail = "output " + e.output; }
  void operator()(const saga_compensated& e) { detail = e.reason; }
  void operator()(const saga_stuck& e) { step = e.step, detail = e.reason; }
  void operator()(const operator_action_recorded& e) {
    step = e.step,
    detail = e.action + (e.compensation ? " compensation" : "") + " by " + e.operator_name + ": " + e.reason;
  }
};

}  // namespace

std::string format_timeline(const std::vector<event>& log) {
  std::map<std::string, std::uint64_t> succeeded_at;
  std::string out;
  time_point prev{};
  for (std::size_t i = 0; i < log.size(); ++i) {
    const auto& e = log[i];
    if (const auto* s = std::get_if<step_succeeded>(&e.body)) succeeded_at[s->step] = e.seq;
    line_of l{succeeded_at, {}, {}, {}, {}};
    std::visit(l, e.body);
    out += pad(std::to_string(e.seq), 4) + format_time(e.at) + " " + pad(since(prev, e.at, i == 0), 8) + " " +
           pad(std::string(type_name(e.body)), 25) + pad(l.step, 18) +
           pad(l.attempt.empty() ? "" : "#" + l.attempt, 4) + l.detail +
           (l.command.empty() ? "" : "  [" + l.command + "]") + "\n";
    prev = e.at;
  }
  return out;
}

}  // namespace saga
