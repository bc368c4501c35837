#include "trainer/cli/cli.h"

int main(int argc, char** argv) { return fulcrum::cli::Main(argc, argv); }
