#include <iostream>

// Ends with exit code 5, so `bazel run //app:exit5` shows that the binary's own code passes through.
int main() {
  std::cout << "exit5: exiting with code 5\n";
  return 5;
}
