#include <iostream>
#include <string>

#include "lib/greet.h"

// A test that fails on purpose, to show what a failing `bazel test` looks like (exit code 3).
int main() {
  const std::string actual = greet::Greeting("world");
  const std::string expected = "Goodbye, world!";
  if (actual != expected) {
    std::cout << "FAIL: expected \"" << expected << "\", got \"" << actual << "\"\n";
    return 1;
  }
  return 0;
}
