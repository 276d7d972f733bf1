#include "lib/greet.h"

#include "lib/version.h"

namespace greet {

std::string Greeting(const std::string& name) { return "Hello, " + name + "!"; }

std::string Banner() { return std::string("greet ") + GREET_VERSION; }

}  // namespace greet
