#include "trainer/loop/data_factory.h"

#include <utility>
#include <vector>

#include "core/status.h"
#include "data/dataset/pretokenized_dataset.h"

namespace fulcrum::loop {

absl::StatusOr<data::DataLoader> BuildDataLoader(const recipe::Recipe& recipe, int64_t vocab_size,
                                                 int64_t dp_rank, int64_t dp_size) {
  FULCRUM_ASSIGN_OR_RETURN(std::vector<data::Sample> samples,
                           data::LoadPretokenizedJsonl(recipe.data.path));
  FULCRUM_RETURN_IF_ERROR(data::CheckVocabulary(samples, vocab_size, recipe.data.path));
  data::LoaderOptions options;
  options.global_batch = recipe.batch.global_batch;
  options.micro_batch = recipe.batch.micro_batch;
  options.seq_len = recipe.batch.seq_len;
  options.shuffle = recipe.data.shuffle;
  options.pack = recipe.data.pack;
  options.seed = static_cast<uint64_t>(recipe.seed);
  options.dp_rank = dp_rank;
  options.dp_size = dp_size;
  return data::DataLoader::Create(std::move(samples), options);
}

}  // namespace fulcrum::loop
