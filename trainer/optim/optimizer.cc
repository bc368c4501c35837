#include "trainer/optim/optimizer.h"

namespace fulcrum::optim {

Optimizer::~Optimizer() = default;

}  // namespace fulcrum::optim
