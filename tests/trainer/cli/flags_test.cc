#include "trainer/cli/flags.h"

#include <gtest/gtest.h>

namespace fulcrum::cli {
namespace {

FlagSpec Spec() {
  FlagSpec spec;
  spec.valued = {"model", "out"};
  spec.switches = {"grads"};
  spec.required = {"model"};
  return spec;
}

TEST(FlagsTest, ParsesValuesSwitchesAndPositionals) {
  auto parsed = ParseFlags("score", {"--model", "m", "--grads", "pos", "--out=o"}, Spec());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->Get("model"), "m");
  EXPECT_EQ(parsed->Get("out"), "o");
  EXPECT_EQ(parsed->Get("missing", "d"), "d");
  EXPECT_TRUE(parsed->Has("grads"));
  EXPECT_EQ(parsed->positional, std::vector<std::string>{"pos"});
}

TEST(FlagsTest, UnknownFlagListsKnownOnes) {
  auto parsed = ParseFlags("score", {"--model", "m", "--modle", "x"}, Spec());
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("--modle"), std::string::npos);
  EXPECT_NE(parsed.status().message().find("--model"), std::string::npos);
}

TEST(FlagsTest, MissingValueAndRequired) {
  auto parsed = ParseFlags("score", {"--model"}, Spec());
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("needs a value"), std::string::npos);
  parsed = ParseFlags("score", {"--grads"}, Spec());
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("missing required flag --model"), std::string::npos);
}

}  // namespace
}  // namespace fulcrum::cli
