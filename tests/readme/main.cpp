// Runs the README's snippets: the saga it defines, driven by the README's test-kit example.
#include <saga/state.hpp>

#include <iostream>

saga::saga_status readme_test_order_saga();

int main() {
  const auto status = readme_test_order_saga();
  std::cout << "README test-kit example ended " << saga::to_string(status) << "\n";
  return status == saga::saga_status::compensated ? 0 : 1;
}
