// The `fulcrum` command: train, validate, init, score, export.
#pragma once

namespace fulcrum::cli {
int Main(int argc, char** argv);
}  // namespace fulcrum::cli
