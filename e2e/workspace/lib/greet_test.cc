#include <iostream>
#include <string>

#include "lib/greet.h"

namespace {

int failures = 0;

void ExpectEq(const std::string& what, const std::string& actual, const std::string& expected) {
  if (actual == expected) {
    std::cout << "ok: " << what << "\n";
  } else {
    std::cout << "FAIL: " << what << ": expected \"" << expected << "\", got \"" << actual << "\"\n";
    ++failures;
  }
}

}  // namespace

int main() {
  ExpectEq("greeting", greet::Greeting("world"), "Hello, world!");
  ExpectEq("empty name", greet::Greeting(""), "Hello, !");
  ExpectEq("UTF-8 name", greet::Greeting("Zo\xc3\xab"), "Hello, Zo\xc3\xab!");
  ExpectEq("banner from the generated header", greet::Banner(), "greet 1.2.0");
  return failures == 0 ? 0 : 1;
}
