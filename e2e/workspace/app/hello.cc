// hello NAME...   prints the library's banner, then one greeting per argument with its length in bytes
//                 (so empty arguments, spaces and UTF-8 show exactly what arrived).
// hello --stdin   greets each line of standard input instead, then says how many bytes it read.
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include "lib/greet.h"

namespace {

void Greet(int index, const std::string& name) {
  std::cout << "[" << index << "] " << greet::Greeting(name) << " (" << name.size() << " bytes)\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::cout << greet::Banner() << "\n";
  if (argc == 2 && std::string(argv[1]) == "--stdin") {
    const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    std::istringstream lines(input);
    std::string line;
    int index = 0;
    while (std::getline(lines, line)) {
      Greet(++index, line);
    }
    std::cout << "read " << input.size() << " bytes from stdin\n";
    return 0;
  }
  for (int i = 1; i < argc; ++i) {
    Greet(i, argv[i]);
  }
  if (argc == 1) {
    std::cerr << "usage: hello NAME... | hello --stdin\n";
  }
  return 0;
}
