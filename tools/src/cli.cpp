#include "saga/cli.hpp"

#include "saga/audit.hpp"
#include "saga/effects.hpp"
#include "saga/json.hpp"
#include "saga/storage/export.hpp"
#include "saga/storage/hash_chain.hpp"
#include "saga/timeline.hpp"

#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace saga::cli {

std::string redact(const std::string& url) {
  const auto scheme = url.find("://");
  const auto at = url.find('@');
  if (scheme == std::string::npos || at == std::string::npos || at < scheme) return url;
  const auto colon = url.find(':', scheme + 3);
  if (colon == std::string::npos || colon > at) return url;
  return url.substr(0, colon + 1) + "***" + url.substr(at);
}

namespace {

constexpr const char* usage = R"(usage: sagactl [--db URL] COMMAND [options]

commands:
  migrate [--lock-wait SECONDS]         apply the database migrations
  list [--type T] [--status S] [--from TIME] [--to TIME] [--limit N] [--counts] [--json]
                                        sagas by type, status (running|compensating|completed|compensated|stuck)
                                        and start time; --counts: how many in each status
  show SAGA_ID [--json]                 the saga's timeline and current state
  partitions [--type T] [--json]        each saga type's recorded reply partition count and its unfinished sagas
  replay SAGA_ID [--at SEQ|TIME] [--json]
                                        the state as it was at that point, rebuilt by folding the log
  replay (SAGA_ID | --all [--type T]) --verify-definition [--json]
                                        report any event the registered definition would not have produced
  verify [--saga SAGA_ID | --all [--type T] | --file EXPORT.jsonl] [--json]
                                        recompute hash chains, check seq gaps and order
  export [--saga SAGA_ID | --since POSITION]
                                        JSON Lines of events in global order, with hashes
  retry SAGA_ID [--reason R] [--operator NAME]
  skip SAGA_ID --step STEP --reason R [--operator NAME]
  cancel SAGA_ID --reason R [--operator NAME]
                                        operator actions, recorded as events through the saga's decide path

`sagactl COMMAND --help` shows one command's usage. The database is --db URL or $SAGA_PG_URL.
TIME is RFC 3339 (2026-11-22T05:03:50Z) or milliseconds since the epoch.
Exit status: 0 ok, 1 failure or finding, 2 usage error.
)";

// Each subcommand's own usage (sagactl COMMAND --help, sagactl help COMMAND).
const std::map<std::string, std::string>& command_usage() {
  static const std::map<std::string, std::string> usages = {
      {"migrate", R"(usage: sagactl [--db URL] migrate [--lock-wait SECONDS]
  Applies the numbered migrations that are not applied yet, under an advisory lock; a no-op when up to date.
  Waits at most --lock-wait seconds (default 300) for another session's migration lock, then exits 1 naming
  that session (pid, application, state, last statement); the migrations it has not applied are left for later.
)"},
      {"list", R"(usage: sagactl [--db URL] list [--type T] [--status S] [--from TIME] [--to TIME] [--limit N] [--json]
       sagactl [--db URL] list --counts [--type T] [--json]
  Sagas by type, status (running|compensating|completed|compensated|stuck) and start time (--from and --to
  both inclusive), oldest first; the first 1000 unless --limit says otherwise (when more exist, stderr says so).
  --counts: how many sagas are in each status (from the instance rows, no scan of the events). --json: one JSON
  object per line (--counts: one object status -> count).
)"},
      {"show", R"(usage: sagactl [--db URL] show SAGA_ID [--json]
  The saga's timeline (every event with its time, time since the previous event, step, attempt and command
  id; compensations name the step they undo) and its current state. --json: {"state":…,"events":[…]}.
)"},
      {"partitions", R"(usage: sagactl [--db URL] partitions [--type T] [--json]
  Each saga type's reply partition count as the orchestrators recorded it, and how many of its sagas are
  unfinished (running, compensating or stuck) with the highest partition one is placed on. A reply topic must
  keep that count while any saga of the type is unfinished: orchestrators refuse to run over another. Exit 1 when
  an unfinished saga is placed beyond the recorded count (placed over another count). sagactl does not ask Kafka:
  exit 0 does not say the reply topic has the recorded count; compare it with the topic's partition count.
  --json: one JSON object per type {"type","recorded","recorded_at","unfinished","highest_partition","misplaced"}.
)"},
      {"replay", R"(usage: sagactl [--db URL] replay SAGA_ID [--at SEQ|TIME] [--json]
       sagactl [--db URL] replay (SAGA_ID | --all [--type T]) --verify-definition [--json]
  Rebuilds the state as it was after event SEQ, or at TIME, by folding the log. --verify-definition re-decides
  every recorded trigger with the registered definition and reports the first event it would not have
  produced (exit 1 when any saga differs or has no registered definition).
)"},
      {"verify", R"(usage: sagactl [--db URL] verify (--saga SAGA_ID | --all [--type T] | --file EXPORT.jsonl) [--json]
  Recomputes the hash chains, checks seq gaps and order, and reports each broken saga with its first bad seq
  (exit 1 when anything is broken). Each saga's row (saga_instances) must hold the head of its log; --all also
  checks logs whose row is gone, and refuses a --type that matches no saga. --file checks an export without a database. --json: one JSON object
  {"ok","sagas","events","broken":[{"saga","seq","why"}],"unreadable":[…]}.
)"},
      {"export", R"(usage: sagactl [--db URL] export [--saga SAGA_ID | --since POSITION]
  JSON Lines of events in global order, with their hashes; check one offline with verify --file.
  --since POSITION starts at that global position, inclusive (the next export of an archive starts at the last
  line's position + 1). verify --file checks whole sagas: an export that begins partway through a saga's log
  does not verify on its own.
)"},
      {"retry", R"(usage: sagactl [--db URL] retry SAGA_ID [--reason R] [--operator NAME]
  Retries the action a stuck saga is parked on; recorded as an event with who and why. The command it leads to
  is sent when this sagactl has a transport (SAGA_KAFKA_BROKERS), else by an orchestrator: the one holding
  the saga at its next reply or deadline for it, or the partition's owner when its orphan sweep finds it.
)"},
      {"skip", R"(usage: sagactl [--db URL] skip SAGA_ID --step STEP --reason R [--operator NAME]
  Treats the stuck action of STEP as done (e.g. fixed by hand) so the saga moves on; recorded with who and why.
)"},
      {"cancel", R"(usage: sagactl [--db URL] cancel SAGA_ID --reason R [--operator NAME]
  Asks a running saga to stop and compensate, or one stuck going forward (recorded as an operator's action, as
  retry and skip are); refused (exit 1, with the reason) once its pivot step was requested, while it is stuck in a
  compensation (retry or skip that), or when it has finished.
)"},
  };
  return usages;
}

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parsed command line: one command, positional arguments and --options (flags have the value "").
struct command_line {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;

  [[nodiscard]] bool has(const std::string& o) const { return options.count(o) > 0; }
  [[nodiscard]] std::string get(const std::string& o, const std::string& fallback = {}) const {
    auto it = options.find(o);
    return it == options.end() ? fallback : it->second;
  }
};

const std::set<std::string> flags = {"--json", "--counts", "--all", "--verify-definition", "--help"};
const std::set<std::string> valued = {"--db",     "--type",     "--status", "--from",     "--to",
                                      "--limit",  "--at",       "--saga",   "--file",     "--since",
                                      "--reason", "--operator", "--step",   "--lock-wait"};

command_line parse(const std::vector<std::string>& args) {
  command_line c;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) == 0) {
      if (c.options.count(a)) throw usage_error("option " + a + " is given twice");
      if (flags.count(a)) {
        c.options[a] = "";
      } else if (valued.count(a)) {
        if (i + 1 >= args.size()) throw usage_error("option " + a + " needs a value");
        // `cancel ID --reason --json` recorded the reason "--json" for good.
        if (flags.count(args[i + 1]) || valued.count(args[i + 1]))
          throw usage_error("option " + a + " needs a value, not the option " + args[i + 1]);
        c.options[a] = args[++i];
      } else {
        throw usage_error("unknown option " + a);
      }
    } else if (c.command.empty()) {
      c.command = a;
    } else {
      c.positional.push_back(a);
    }
  }
  return c;
}

saga_id parse_id(const std::string& text) {
  const auto id = saga_id::parse(text);
  if (!id)
    throw usage_error("'" + text + "' is not a saga id (expected a UUID like 0f8fad5b-d9cb-469f-a165-70867728950e)");
  return *id;
}

time_point parse_when(const std::string& text, const char* option) {
  if (!text.empty() && text.size() <= 15 && text.find_first_not_of("0123456789") == std::string::npos)
    return time_point(std::chrono::milliseconds(std::stoll(text)));
  const auto t = parse_time(text);
  if (!t)
    throw usage_error(std::string("malformed time for ") + option + " '" + text +
                      "': expected RFC 3339 (2026-11-22T05:03:50Z) or milliseconds since the epoch");
  return *t;
}

std::optional<saga_status> parse_status(const std::string& text) {
  for (auto s : {saga_status::running, saga_status::compensating, saga_status::completed, saga_status::compensated,
                 saga_status::stuck})
    if (text == to_string(s)) return s;
  return std::nullopt;
}

std::uint64_t parse_number(const std::string& text, const char* what) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 18)
    throw usage_error(std::string("malformed ") + what + " '" + text + "': expected a whole number");
  return std::stoull(text);
}

// Thrown when a stored event cannot be decoded: names the saga and the seq.
struct unreadable_log : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::vector<event> decode_log(const std::vector<storage::recorded_event>& log) {
  std::vector<event> out;
  out.reserve(log.size());
  for (const auto& r : log) {
    try {
      out.push_back(r.to_event());
    } catch (const std::exception& e) {
      throw unreadable_log("saga " + r.saga.to_string() + " seq " + std::to_string(r.seq) + ": " + e.what());
    }
  }
  return out;
}

std::string summary_json(const storage::saga_summary& s) {
  return "{\"id\":" + json_quote(s.id.to_string()) + ",\"type\":" + json_quote(s.type) +
         ",\"definition_version\":" + std::to_string(s.definition_version) +
         ",\"status\":" + json_quote(to_string(s.status)) + ",\"last_seq\":" + std::to_string(s.last_seq) +
         ",\"partition\":" + std::to_string(s.partition) + ",\"started_at\":" + json_quote(format_time(s.started_at)) +
         ",\"updated_at\":" + json_quote(format_time(s.updated_at)) +
         ",\"idempotency_key\":" + json_quote(s.idempotency_key) + "}";
}

std::string state_text(const saga_state& s) {
  std::string out = "saga " + s.id.to_string() + "  " + s.type + " v" + std::to_string(s.definition_version) +
                    "  status " + to_string(s.status) + "  at seq " + std::to_string(s.seq) + "\n";
  if (!s.reason.empty()) out += "  reason: " + s.reason + "\n";
  if (!s.stuck_reason.empty()) out += "  stuck at " + s.stuck_step + ": " + s.stuck_reason + "\n";
  out += "  data: " + s.data + "\n";
  for (const auto& st : s.steps)
    out += "  step " + st.name + ": " + to_string(st.phase) + " (attempt " + std::to_string(st.forward.attempt) +
           (st.compensation.attempt ? ", compensation attempt " + std::to_string(st.compensation.attempt) : "") + ")\n";
  return out;
}

std::string state_json(const saga_state& s) {
  std::string steps;
  for (const auto& st : s.steps)
    steps += std::string(steps.empty() ? "" : ",") + "{\"name\":" + json_quote(st.name) +
             ",\"phase\":" + json_quote(to_string(st.phase)) + ",\"attempt\":" + std::to_string(st.forward.attempt) +
             ",\"compensation_attempt\":" + std::to_string(st.compensation.attempt) + "}";
  return "{\"id\":" + json_quote(s.id.to_string()) + ",\"type\":" + json_quote(s.type) +
         ",\"status\":" + json_quote(to_string(s.status)) + ",\"seq\":" + std::to_string(s.seq) +
         ",\"reason\":" + json_quote(s.reason) + ",\"stuck_reason\":" + json_quote(s.stuck_reason) +
         ",\"data\":" + (s.data.empty() ? "null" : s.data) + ",\"steps\":[" + steps + "]}";
}

class session {
 public:
  session(const command_line& c, const environment& env, std::ostream& out, std::ostream& err)
      : c_(c), env_(env), out_(out), err_(err) {}

  int dispatch() {
    const std::string& cmd = c_.command;
    static const std::set<std::string> known = {"migrate", "list",   "show",  "partitions", "replay",
                                                "verify",  "export", "retry", "skip",       "cancel"};
    if (!known.contains(cmd)) throw usage_error("unknown command '" + cmd + "'");
    // A command that takes no SAGA_ID (or `--all` instead of one) refuses one rather than ignoring it: `export ID`
    // exported the whole database.
    const bool takes_id =
        cmd == "show" || ((cmd == "replay") && !c_.has("--all")) || cmd == "retry" || cmd == "skip" || cmd == "cancel";
    if (!takes_id && !c_.positional.empty())
      throw usage_error(cmd + " takes no argument '" + c_.positional[0] + "'" + (cmd == "replay" ? " with --all" : "") +
                        " (see sagactl help " + cmd + ")");
    // An option the command does not use is refused rather than ignored: `export --saga X --since N` exported
    // the whole saga, `list --counts --status stuck` counted every status.
    static const std::map<std::string, std::set<std::string>> accepted = {
        {"migrate", {"--lock-wait"}},
        {"list", {"--type", "--status", "--from", "--to", "--limit", "--json", "--counts"}},
        {"show", {"--json"}},
        {"partitions", {"--type", "--json"}},
        {"replay", {"--at", "--json", "--all", "--type", "--verify-definition"}},
        {"verify", {"--saga", "--all", "--type", "--file", "--json"}},
        {"export", {"--saga", "--since"}},
        {"retry", {"--step", "--reason", "--operator"}},
        {"skip", {"--step", "--reason", "--operator"}},
        {"cancel", {"--reason", "--operator"}},
    };
    const auto& mine = accepted.at(cmd);
    for (const auto& [option, value] : c_.options)
      if (option != "--db" && option != "--help" && !mine.contains(option))
        throw usage_error("option " + option + " does not apply to " + cmd + " (see sagactl help " + cmd + ")");
    const auto together = [this, &cmd](const char* a, const char* b) {
      if (c_.has(a) && c_.has(b))
        throw usage_error(std::string("option ") + a + " cannot be combined with " + b + " in " + cmd);
    };
    if (cmd == "list")
      for (const char* o : {"--status", "--from", "--to", "--limit"}) together("--counts", o);
    if (cmd == "verify") {
      together("--saga", "--all");
      together("--saga", "--file");
      together("--all", "--file");
    }
    if (cmd == "export") together("--saga", "--since");
    if (cmd == "replay") {
      together("--at", "--verify-definition");
      together("--at", "--all");
      if (c_.has("--all") && !c_.has("--verify-definition"))
        throw usage_error("replay --all needs --verify-definition (see sagactl help replay)");
    }
    if ((cmd == "verify" || cmd == "replay") && c_.has("--type") && !c_.has("--all"))
      throw usage_error("option --type applies to " + cmd + " --all only");
    for (const char* o : {"--step", "--reason", "--operator", "--type", "--saga", "--file"})
      if (c_.has(o) && c_.get(o).empty()) throw usage_error(std::string("option ") + o + " needs a non-empty value");
    if (cmd == "migrate") return migrate();
    if (cmd == "list") return list();
    if (cmd == "show") return show();
    if (cmd == "partitions") return partitions();
    if (cmd == "replay") return replay();
    if (cmd == "verify") return verify();
    if (cmd == "export") return export_events();
    if (cmd == "retry" || cmd == "skip" || cmd == "cancel") return act();
    throw usage_error("unknown command '" + cmd + "'");
  }

 private:
  std::string url() const {
    const std::string u = c_.get("--db", env_.default_url);
    if (u.empty()) throw usage_error("no database: give --db URL or set SAGA_PG_URL");
    return u;
  }

  storage::event_store& store() {
    if (!store_) {
      try {
        store_ = env_.open_store(url());
      } catch (const storage::store_unavailable& e) {
        throw failure("the database at " + redact(url()) + " is unreachable: " + e.what());
      } catch (const storage::store_error& e) {
        throw failure("cannot open the event store at " + redact(url()) + ": " + e.what());
      }
    }
    return *store_;
  }

  saga_id one_id() const {
    if (c_.positional.size() != 1) throw usage_error(c_.command + " needs exactly one SAGA_ID");
    return parse_id(c_.positional[0]);
  }

  std::vector<storage::recorded_event> load_existing(const saga_id& id) {
    auto log = store().load(id);
    if (log.empty()) throw failure("no saga " + id.to_string());
    return log;
  }

  const definition* definition_for(const std::string& type, std::uint32_t version) const {
    for (const auto& d : env_.definitions)
      if (d.type() == type && d.version() == version) return &d;
    return nullptr;
  }

  int migrate() {
    if (!env_.migrate) throw failure("this sagactl was built without migrations");
    std::optional<std::chrono::milliseconds> lock_wait;
    if (c_.has("--lock-wait")) {
      const auto seconds = parse_number(c_.get("--lock-wait"), "--lock-wait");
      if (seconds > 24 * 3600)
        throw usage_error("--lock-wait " + c_.get("--lock-wait") + " is more than a day (24 * 3600 seconds)");
      lock_wait = std::chrono::seconds(seconds);
    }
    out_ << env_.migrate(url(), lock_wait) << "\n";
    return 0;
  }

  int list() {
    if (c_.has("--counts")) {
      const auto counts = store().count_by_status(c_.get("--type"));
      if (c_.has("--json")) {
        std::string body;
        for (const auto& [status, n] : counts)
          body += std::string(body.empty() ? "" : ",") + json_quote(to_string(status)) + ":" + std::to_string(n);
        out_ << "{" << body << "}\n";
      } else {
        for (const auto& [status, n] : counts) out_ << to_string(status) << "\t" << n << "\n";
      }
      return 0;
    }
    storage::saga_query q;
    q.type = c_.get("--type");
    if (c_.has("--status")) {
      q.status = parse_status(c_.get("--status"));
      if (!q.status)
        throw usage_error("unknown status '" + c_.get("--status") +
                          "': expected running, compensating, completed, compensated or stuck");
    }
    if (c_.has("--from")) q.started_from = parse_when(c_.get("--from"), "--from");
    if (c_.has("--to")) q.started_to = parse_when(c_.get("--to"), "--to");
    // Without --limit, one more than the default is asked for, to tell whether the default cut the list short.
    const bool default_limit = !c_.has("--limit");
    if (!default_limit) q.limit = parse_number(c_.get("--limit"), "--limit");
    const std::size_t shown = q.limit;
    if (default_limit) ++q.limit;
    auto sagas = store().list(q);
    const bool cut = default_limit && sagas.size() > shown;
    if (cut) sagas.resize(shown);
    for (const auto& s : sagas) {
      if (c_.has("--json"))
        out_ << summary_json(s) << "\n";
      else
        out_ << s.id.to_string() << "  " << s.type << " v" << s.definition_version << "  " << to_string(s.status)
             << "  seq " << s.last_seq << "  started " << format_time(s.started_at) << "\n";
    }
    // The default limit cut the list short: said on stderr, so that `sagactl list | cut -f1` sees only sagas.
    if (cut) err_ << "sagactl: the first " << shown << " shown; --limit N shows more, --counts counts them all\n";
    return 0;
  }

  int partitions() {
    const auto placements = store().partition_placements(c_.get("--type"));
    const bool json = c_.has("--json");
    int status = 0;
    for (const auto& p : placements) {
      // An unfinished saga on a partition the recorded count does not have was placed over another count.
      const bool misplaced = p.recorded && p.highest_partition && *p.highest_partition >= *p.recorded;
      if (misplaced) status = 1;
      const bool dated = p.recorded && p.recorded_at != time_point{};
      if (json) {
        out_ << "{\"type\":" << json_quote(p.type)
             << ",\"recorded\":" << (p.recorded ? std::to_string(*p.recorded) : "null")
             << ",\"recorded_at\":" << (dated ? json_quote(format_time(p.recorded_at)) : "null")
             << ",\"unfinished\":" << p.unfinished
             << ",\"highest_partition\":" << (p.highest_partition ? std::to_string(*p.highest_partition) : "null")
             << ",\"misplaced\":" << (misplaced ? "true" : "false") << "}\n";
        continue;
      }
      out_ << p.type << "  ";
      if (p.recorded)
        out_ << "placed over " << *p.recorded << " reply partitions"
             << (dated ? " (since " + format_time(p.recorded_at) + ")" : "");
      else
        out_ << "no reply partition count recorded (an orchestrator records it when it runs)";
      out_ << "  " << p.unfinished << " unfinished";
      if (p.highest_partition) out_ << ", highest partition " << *p.highest_partition;
      out_ << "\n";
      if (misplaced)
        out_ << "  MISPLACED: an unfinished saga is on partition " << *p.highest_partition << ", beyond the "
             << *p.recorded << " recorded: it was placed over another count, and no orchestrator owns it\n";
    }
    if (placements.empty() && !json)
      out_ << "no saga type has a recorded reply partition count or an unfinished saga"
           << (c_.get("--type").empty() ? "" : " (type '" + c_.get("--type") + "')") << "\n";
    return status;
  }

  int show() {
    const saga_id id = one_id();
    const auto log = load_existing(id);
    const auto events = decode_log(log);
    const saga_state state = fold(id, events);
    if (c_.has("--json")) {
      out_ << "{\"state\":" << state_json(state) << ",\"events\":[";
      for (std::size_t i = 0; i < log.size(); ++i) out_ << (i ? "," : "") << storage::to_json_line(log[i]);
      out_ << "]}\n";
      return 0;
    }
    out_ << format_timeline(events) << "\n" << state_text(state);
    return 0;
  }

  int replay() {
    if (c_.has("--verify-definition")) return verify_definitions();
    const saga_id id = one_id();
    const auto events = decode_log(load_existing(id));
    saga_state state;
    if (!c_.has("--at")) {
      state = fold(id, events);
    } else {
      const std::string at = c_.get("--at");
      const bool is_seq = at.find_first_not_of("0123456789") == std::string::npos && at.size() < 13;
      state = is_seq ? audit::state_at_seq(id, events, parse_number(at, "--at"))
                     : audit::state_at_time(id, events, parse_when(at, "--at"));
    }
    out_ << (c_.has("--json") ? state_json(state) + "\n" : state_text(state));
    return 0;
  }

  // The sagas `--all [--type T]` covers: those with a saga row, and those whose events have none (the rows are
  // not append-only: a log whose row was deleted is still checked, and verify reports the missing row). A --type
  // that matches no saga is refused: a misspelt type passed the audit with nothing checked.
  std::vector<saga_id> all_sagas() {
    const std::string type = c_.get("--type");
    storage::saga_query q;
    q.limit = static_cast<std::size_t>(-1);
    std::vector<saga_id> ids;
    std::unordered_set<saga_id> rows, seen;
    for (const auto& s : store().list(q)) {
      rows.insert(s.id);
      if (type.empty() || s.type == type) ids.push_back(s.id);
    }
    for (std::uint64_t from = 1;;) {
      const auto page = store().read_all(from, 10'000);
      for (const auto& r : page) {
        if (rows.contains(r.saga) || !seen.insert(r.saga).second) continue;
        // Its type is in its first event (saga_started); a log that cannot be read is checked whatever --type.
        bool wanted = type.empty();
        if (!wanted) {
          try {
            const auto log = store().load(r.saga);
            wanted = log.empty() || std::get<events::saga_started>(log.front().to_event().body).saga_type == type;
          } catch (const std::exception&) {
            wanted = true;
          }
        }
        if (wanted) ids.push_back(r.saga);
      }
      if (page.size() < 10'000) break;
      from = page.back().position + 1;
    }
    if (ids.empty() && !type.empty()) throw failure("no saga of type '" + type + "'");
    return ids;
  }

  int verify_definitions() {
    std::vector<saga_id> ids;
    if (c_.has("--all")) {
      ids = all_sagas();
    } else {
      ids.push_back(one_id());
    }
    const bool json = c_.has("--json");
    std::size_t mismatches = 0, unchecked = 0, unreadable = 0;
    std::string mismatches_json, unchecked_json, unreadable_json;
    for (const auto& id : ids) {
      // A log that cannot be read or folded is reported, and the other sagas are still checked.
      std::vector<event> events;
      saga_state st;
      try {
        events = decode_log(load_existing(id));
        st = fold(id, events);
      } catch (const std::exception& e) {
        if (!c_.has("--all")) throw;
        ++unreadable;
        if (json)
          unreadable_json += std::string(unreadable_json.empty() ? "" : ",") +
                             "{\"saga\":" + json_quote(id.to_string()) + ",\"error\":" + json_quote(e.what()) + "}";
        else
          out_ << id.to_string() << ": unreadable: " << e.what() << "\n";
        continue;
      }
      const definition* def = definition_for(st.type, st.definition_version);
      if (!def) {
        ++unchecked;
        if (json)
          unchecked_json += std::string(unchecked_json.empty() ? "" : ",") + "{\"saga\":" + json_quote(id.to_string()) +
                            ",\"type\":" + json_quote(st.type) +
                            ",\"version\":" + std::to_string(st.definition_version) + "}";
        else
          out_ << id.to_string() << ": no registered definition " << st.type << " v" << st.definition_version << "\n";
        continue;
      }
      if (const auto m = audit::check_definition(*def, id, events)) {
        ++mismatches;
        if (json)
          mismatches_json += std::string(mismatches_json.empty() ? "" : ",") +
                             "{\"saga\":" + json_quote(id.to_string()) + ",\"seq\":" + std::to_string(m->seq) +
                             ",\"expected\":" + json_quote(m->expected) + ",\"recorded\":" + json_quote(m->recorded) +
                             "}";
        else
          out_ << id.to_string() << ": seq " << m->seq << " differs\n  definition decides: " << m->expected
               << "\n  log holds:          " << m->recorded << "\n";
      }
    }
    const bool ok = mismatches == 0 && unchecked == 0 && unreadable == 0;
    const std::size_t exact = ids.size() - mismatches - unchecked - unreadable;
    if (json)
      out_ << "{\"ok\":" << (ok ? "true" : "false") << ",\"sagas\":" << ids.size() << ",\"exact\":" << exact
           << ",\"mismatches\":[" << mismatches_json << "],\"unchecked\":[" << unchecked_json << "],\"unreadable\":["
           << unreadable_json << "]}\n";
    else
      out_ << exact << " of " << ids.size() << " sagas replay exactly under the registered definitions\n";
    return ok ? 0 : 1;
  }

  // A broken chain: a line, or (--json) an element of "broken" printed at the end.
  void report_break(const storage::chain_break& b) {
    if (c_.has("--json"))
      breaks_json_ += std::string(breaks_json_.empty() ? "" : ",") + "{\"saga\":" + json_quote(b.saga.to_string()) +
                      ",\"seq\":" + std::to_string(b.seq) + ",\"why\":" + json_quote(b.why) + "}";
    else
      out_ << "BROKEN saga " << b.saga.to_string() << " at seq " << b.seq << ": " << b.why << "\n";
  }

  void verify_json(bool ok, std::size_t sagas, std::size_t events, const std::vector<std::string>& unreadable) {
    std::string errors;
    for (const auto& e : unreadable) errors += std::string(errors.empty() ? "" : ",") + json_quote(e);
    out_ << "{\"ok\":" << (ok ? "true" : "false") << ",\"sagas\":" << sagas << ",\"events\":" << events
         << ",\"broken\":[" << breaks_json_ << "],\"unreadable\":[" << errors << "]}\n";
  }

  int verify() {
    if (c_.has("--file")) {
      std::error_code ec;
      if (std::filesystem::is_directory(c_.get("--file"), ec))
        throw failure("cannot read " + c_.get("--file") + ": it is a directory, not an export");
      std::ifstream in(c_.get("--file"));
      if (!in) throw failure("cannot read " + c_.get("--file"));
      const auto report = storage::verify_export(in);
      if (c_.has("--json")) {
        for (const auto& b : report.breaks) report_break(b);
        verify_json(report.ok(), report.sagas, report.records, report.errors);
        return report.ok() ? 0 : 1;
      }
      for (const auto& e : report.errors) out_ << "UNREADABLE " << e << "\n";
      for (const auto& b : report.breaks) report_break(b);
      out_ << report.records << " events of " << report.sagas << " sagas checked; "
           << (report.ok() ? "all chains verify" : "the export is NOT intact") << "\n";
      return report.ok() ? 0 : 1;
    }
    std::vector<saga_id> ids;
    if (c_.has("--saga")) {
      ids.push_back(parse_id(c_.get("--saga")));
    } else if (c_.has("--all")) {
      ids = all_sagas();
    } else {
      throw usage_error("verify needs --saga SAGA_ID, --all [--type T] or --file EXPORT");
    }
    std::size_t broken = 0, events = 0;
    for (const auto& id : ids) {
      // The row is read before the log: a saga that an orchestrator advances meanwhile has a log that goes on past
      // the row's head, which is then compared with the event at the row's seq (read the other way round, the row
      // ran ahead of the log and a live saga was reported as cut short).
      const auto summary = store().find(id);
      const auto log = store().load(id);
      if (log.empty() && !summary) throw failure("no saga " + id.to_string());
      events += log.size();
      std::optional<storage::chain_break> b = storage::verify_chain(log);
      if (!b && !summary)
        b = storage::chain_break{id, 1, "the log has no saga row (saga_instances): the row was removed"};
      // Rows removed from the end leave a valid chain: the instance row still knows where the log ended.
      if (!b && summary && (log.empty() || log.back().seq < summary->last_seq))
        b = storage::chain_break{id, log.empty() ? 1 : log.back().seq + 1,
                                 "the log ends at seq " + std::to_string(log.empty() ? 0 : log.back().seq) +
                                     " but the saga's row says " + std::to_string(summary->last_seq) +
                                     " (events removed from the end)"};
      // Events rewritten at the end with their hashes recomputed leave a valid chain too: the row keeps the head.
      const storage::recorded_event* head = nullptr;
      if (summary && summary->last_seq >= 1 && summary->last_seq <= log.size())
        head = &log[summary->last_seq - 1];  // a valid chain holds seq 1, 2, 3, ... in order
      if (!b && head && !summary->last_hash.empty() && head->hash != summary->last_hash)
        b = storage::chain_break{id, head->seq,
                                 "event " + std::to_string(head->seq) + " has hash " + head->hash.substr(0, 16) +
                                     "... but the saga's row says " + summary->last_hash.substr(0, 16) +
                                     "... (events rewritten at the end)"};
      if (b) {
        ++broken;
        report_break(*b);
      }
    }
    if (c_.has("--json"))
      verify_json(broken == 0, ids.size(), events, {});
    else
      out_ << events << " events of " << ids.size() << " sagas checked; " << broken << " broken\n";
    return broken ? 1 : 0;
  }

  // Events, then the head of each saga they cover as its row said before they were read, then the end record
  // (see storage::export_head): verify --file then finds an export cut short or missing a saga's last events.
  int export_events() {
    std::uint64_t events = 0;
    std::vector<storage::export_head> heads;
    const auto head_of = [](const storage::saga_summary& s) {
      return storage::export_head{s.id, s.last_seq, s.last_hash};
    };
    if (c_.has("--saga")) {
      const saga_id id = parse_id(c_.get("--saga"));
      const auto row = store().find(id);
      for (const auto& r : load_existing(id)) {
        out_ << storage::to_json_line(r) << "\n";
        ++events;
      }
      if (row) heads.push_back(head_of(*row));
    } else {
      storage::saga_query all;
      all.limit = static_cast<std::size_t>(-1);
      std::unordered_map<saga_id, storage::saga_summary> rows;
      for (auto& s : store().list(all)) rows.emplace(s.id, std::move(s));
      std::uint64_t from = c_.has("--since") ? parse_number(c_.get("--since"), "--since") : 1;
      for (;;) {
        const auto page = store().read_all(from, 10'000);
        for (const auto& r : page) {
          out_ << storage::to_json_line(r) << "\n";
          ++events;
          if (auto it = rows.find(r.saga); it != rows.end()) {  // once per saga, in order of first appearance
            heads.push_back(head_of(it->second));
            rows.erase(it);
          }
        }
        if (page.size() < 10'000) break;
        from = page.back().position + 1;
      }
    }
    for (const auto& h : heads) out_ << storage::to_json_line(h) << "\n";
    out_ << storage::export_end_line(events, heads.size()) << "\n";
    return 0;
  }

  int act() {
    const saga_id id = one_id();
    const std::string who = c_.get("--operator", env_.user.empty() ? "unknown" : env_.user);
    const std::string reason = c_.get("--reason");
    trigger t;
    if (c_.command == "cancel") {
      if (reason.empty()) throw usage_error("cancel needs --reason R");
      t = triggers::cancel{reason, who};
    } else if (c_.command == "skip") {
      if (reason.empty() || !c_.has("--step")) throw usage_error("skip needs --step STEP and --reason R");
      t = triggers::operator_action{triggers::operator_verb::skip, c_.get("--step"), reason, who};
    } else {
      t = triggers::operator_action{triggers::operator_verb::retry, c_.get("--step"), reason, who};
    }
    std::mt19937_64 entropy(std::random_device{}());
    for (int attempt = 1;; ++attempt) {
      const auto events = decode_log(load_existing(id));
      const saga_state state = fold(id, events);
      const definition* def = definition_for(state.type, state.definition_version);
      if (!def)
        throw failure("saga " + id.to_string() + " runs " + state.type + " v" +
                      std::to_string(state.definition_version) + ", which this sagactl does not have registered");
      const time_point now = env_.now ? env_.now() : time_point{};
      const decision d = decide(*def, state, t, decide_context{now, entropy()});
      if (!d.rejected.empty()) throw failure("refused: " + d.rejected);
      if (d.events.empty()) {
        out_ << "nothing to do: " << d.ignored << "\n";
        return 0;
      }
      saga_state after = state;
      for (const auto& e : d.events) apply(after, e);
      try {
        (void)store().append(storage::append_request{id,
                                                     def->type(),
                                                     state.seq,
                                                     d.events,
                                                     after.status,
                                                     store().find(id).value_or(storage::saga_summary{}).partition,
                                                     {}});
      } catch (const storage::concurrency_conflict&) {
        if (attempt < 3) continue;  // the orchestrator moved the saga on meanwhile: decide again
        throw;
      }
      for (const auto& e : d.events) out_ << "recorded seq " << e.seq << " " << type_name(e.body) << "\n";
      try {
        send_commands(after, d.events);
      } catch (const std::exception& x) {
        // The action is committed: exit 1 here told a script it failed, and its rerun was refused.
        out_ << "note: the transport failed (" << x.what()
             << "); the command(s) are recorded but not sent: the orchestrator that owns this saga sends them when "
                "its orphan sweep finds it, or when it recovers it\n";
      }
      out_ << "saga " << id.to_string() << " is now " << to_string(after.status) << "\n";
      return 0;
    }
  }

  // The commands the action asked for; timeouts and later steps are the orchestrators' (they resume the saga
  // when its replies arrive, and recover it on restart).
  void send_commands(const saga_state& after, const std::vector<event>& appended) {
    std::vector<effects::send_command> sends;
    for (const auto& fx : effects_of(after, appended))
      if (const auto* s = std::get_if<effects::send_command>(&fx)) sends.push_back(*s);
    if (sends.empty()) return;
    if (!env_.open_transport) {
      out_ << "note: no transport configured"
           << (env_.no_transport_hint.empty() ? "" : " (" + env_.no_transport_hint + ")") << "; " << sends.size()
           << " command(s) recorded but not sent: an orchestrator that holds this saga sends them at its next "
              "reply or deadline for it (it finds the saga moved on and reads it again); otherwise the one that "
              "owns the saga's partition sends them when its orphan sweep finds the saga (unchanged, and its "
              "deadline passed, for orchestrator_options::orphan_sweep, 30 s by default), or when it recovers it\n";
      return;
    }
    auto bus = env_.open_transport();
    std::size_t sent = 0;
    for (const auto& s : sends) {
      std::promise<std::exception_ptr> done;
      auto f = done.get_future();
      const std::string reply_to = env_.reply_to ? env_.reply_to(s.saga_type) : s.saga_type;
      bus->send_command(transport::command_message::from(s, reply_to, env_.now ? env_.now() : time_point{}),
                        [&done](std::exception_ptr e) { done.set_value(e); });
      if (!f.get()) ++sent;
    }
    bus->stop();
    out_ << "sent " << sent << " of " << sends.size() << " command(s)\n";
    if (sent < sends.size())
      out_ << "note: " << sends.size() - sent
           << " command(s) could not be sent; they are recorded, and the orchestrator that owns this saga sends "
              "them when its orphan sweep finds it, or when it recovers it\n";
  }

  const command_line& c_;
  const environment& env_;
  std::ostream& out_;
  std::ostream& err_;  // notes about the output, kept out of it so that pipelines see only results
  std::unique_ptr<storage::event_store> store_;
  std::string breaks_json_;
};

}  // namespace

int run(const std::vector<std::string>& args, const environment& env, std::ostream& out, std::ostream& err) {
  try {
    const command_line c = parse(args);
    if (c.command == "help" && !c.positional.empty()) {  // sagactl help COMMAND
      const auto it = command_usage().find(c.positional[0]);
      if (it == command_usage().end()) throw usage_error("unknown command '" + c.positional[0] + "'");
      out << it->second;
      return 0;
    }
    if (c.command.empty() || c.command == "help") {
      out << usage;
      return c.command.empty() && !c.has("--help") ? 2 : 0;
    }
    if (c.has("--help")) {
      const auto it = command_usage().find(c.command);
      if (it == command_usage().end()) throw usage_error("unknown command '" + c.command + "'");
      out << it->second;
      return 0;
    }
    const int status = session(c, env, out, err).dispatch();
    // Output that could not be written (`sagactl export > /dev/full`, a full disk) is a failure, not exit 0.
    out.flush();
    if (!out) {
      err << "sagactl: writing the output failed (a full disk or a closed pipe?): it is incomplete\n";
      return 1;
    }
    return status;
  } catch (const usage_error& e) {
    err << "sagactl: " << e.what() << "\n(sagactl --help lists the commands)\n";
    return 2;
  } catch (const storage::store_unavailable& e) {
    err << "sagactl: the database is unreachable: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    err << "sagactl: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace saga::cli
