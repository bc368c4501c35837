#include "trainer/cli/cli.h"

#include <cstdio>

namespace fulcrum::cli {
int Main(int argc, char** argv) {
  std::fprintf(stderr, "usage: fulcrum train|validate|init|score|export ...\n");
  return 2;
}
}  // namespace fulcrum::cli
