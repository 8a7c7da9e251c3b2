// Fuzz target: the `sagactl export` reader. Every line either parses into a record that prints back to a line that
// parses to the same record, or is refused naming the field; verifying the whole input reports, never crashes.
#include "fuzz_input.hpp"

#include "saga/json.hpp"
#include "saga/storage/export.hpp"

#include <cstdio>
#include <cstdlib>
#include <sstream>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    try {
      const auto record = saga::storage::from_json_line(line);
      const auto printed = saga::storage::to_json_line(record);
      const auto again = saga::storage::from_json_line(printed);
      SAGA_FUZZ_CHECK(saga::storage::to_json_line(again) == printed);
    } catch (const std::exception& e) {  // json_error, event_decode_error: each names what is wrong
      SAGA_FUZZ_CHECK(*e.what() != '\0');
    }
  }
  std::istringstream all(text);
  const auto report = saga::storage::verify_export(all);
  SAGA_FUZZ_CHECK(report.ok() || !report.breaks.empty() || !report.errors.empty());
  return 0;
}
