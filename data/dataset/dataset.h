// Everything of data/dataset/ in one include: pre-tokenized JSONL samples,
// packing into rows, deterministic shuffling and the resumable loader.
#pragma once

#include "data/dataset/loader.h"
#include "data/dataset/packing.h"
#include "data/dataset/pretokenized_dataset.h"
#include "data/dataset/sampler.h"
