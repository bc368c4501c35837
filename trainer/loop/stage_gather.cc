#include "trainer/loop/stage_gather.h"

#include <cstring>
#include <set>
#include <string>

#include "core/check.h"

namespace fulcrum::loop {
namespace {

// [name length, dtype, ndim, dims...] of one tensor.
torch::Tensor Header(const checkpoint::NamedTensor& t) {
  std::vector<int64_t> header = {static_cast<int64_t>(t.name.size()),
                                 static_cast<int64_t>(t.tensor.scalar_type()), t.tensor.dim()};
  for (int64_t d : t.tensor.sizes()) header.push_back(d);
  return torch::tensor(header, torch::kLong);
}

void SendTensors(const std::vector<checkpoint::NamedTensor>& mine, parallel::Communicator& pp) {
  pp.Send(torch::tensor({static_cast<int64_t>(mine.size())}, torch::kLong), 0);
  for (const checkpoint::NamedTensor& t : mine) {
    const torch::Tensor header = Header(t);
    pp.Send(torch::tensor({header.numel()}, torch::kLong), 0);
    pp.Send(header, 0);
    torch::Tensor name = torch::empty({static_cast<int64_t>(t.name.size())}, torch::kByte);
    std::memcpy(name.data_ptr(), t.name.data(), t.name.size());
    pp.Send(name, 0);
    pp.Send(t.tensor.detach().to(torch::kCPU).contiguous(), 0);
  }
}

std::vector<checkpoint::NamedTensor> ReceiveTensors(int stage, parallel::Communicator& pp) {
  torch::Tensor count = torch::empty({1}, torch::kLong);
  pp.Recv(count, stage);
  std::vector<checkpoint::NamedTensor> out;
  for (int64_t i = 0; i < count.item<int64_t>(); ++i) {
    torch::Tensor header_size = torch::empty({1}, torch::kLong);
    pp.Recv(header_size, stage);
    torch::Tensor header = torch::empty({header_size.item<int64_t>()}, torch::kLong);
    pp.Recv(header, stage);
    const int64_t* h = header.data_ptr<int64_t>();
    FULCRUM_CHECK(header.numel() == 3 + h[2], "stage ", stage, " sent a malformed header");
    torch::Tensor name = torch::empty({h[0]}, torch::kByte);
    pp.Recv(name, stage);
    const std::vector<int64_t> shape(h + 3, h + 3 + h[2]);
    torch::Tensor values = torch::empty(shape, static_cast<torch::ScalarType>(h[1]));
    pp.Recv(values, stage);
    out.push_back(
        {std::string(reinterpret_cast<const char*>(name.data_ptr()), static_cast<size_t>(h[0])),
         values});
  }
  return out;
}

}  // namespace

std::vector<checkpoint::NamedTensor> GatherAcrossStages(std::vector<checkpoint::NamedTensor> mine,
                                                        parallel::Communicator& pp) {
  if (pp.size() == 1) return mine;
  if (pp.rank() != 0) {
    SendTensors(mine, pp);
    return {};
  }
  std::set<std::string> seen;
  for (const auto& t : mine) seen.insert(t.name);
  for (int stage = 1; stage < pp.size(); ++stage) {
    for (checkpoint::NamedTensor& t : ReceiveTensors(stage, pp)) {
      if (seen.insert(t.name).second) mine.push_back(std::move(t));
    }
  }
  return mine;
}

}  // namespace fulcrum::loop
