#pragma once

#include <string>

namespace greet {

// "Hello, <name>!" — the name is copied byte for byte (UTF-8 stays UTF-8).
std::string Greeting(const std::string& name);

// "greet <version>", the version coming from the generated lib/version.h.
std::string Banner();

}  // namespace greet
