// Suggestions for mistyped keys: "unknown key optim.lrr (did you mean optim.lr?)".
#pragma once

#include <string>
#include <vector>

namespace fulcrum::recipe {

// Levenshtein distance where swapping two adjacent characters counts as one
// edit (optimal string alignment), so "wieght" is one edit from "weight".
int EditDistance(const std::string& a, const std::string& b);

// The candidate closest to `word`, or "" when none is close enough to be a
// plausible typo (distance at most max(2, word.size() / 3)).
std::string DidYouMean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace fulcrum::recipe
