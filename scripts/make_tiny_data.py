#!/usr/bin/env python3
"""Writes recipes/tiny/data.jsonl: pre-tokenized samples with patterns a tiny
model learns in a few hundred steps (the embedded demo's training data).

Each line is {"input_ids": [...]} with 20..60 ids in [3, 511] (0..2 are
reserved: pad, bos, eos). Three kinds of sample, chosen at random:
  - arithmetic: start, start+d, start+2d, ... (mod 509, + 3)
  - motif: a short random motif (3..8 ids) repeated
  - counting: runs of one id, each run one longer than the last
Deterministic: the same seed always writes the same file (stdlib only).

Usage: python3 scripts/make_tiny_data.py [--out PATH] [--lines N] [--seed S]
"""
import argparse
import json
import os
import random

LOW, HIGH = 3, 511  # inclusive id range
SPAN = HIGH - LOW + 1  # 509 ids


def arithmetic(rng, length):
    start = rng.randrange(SPAN)
    step = rng.randint(1, 12)
    return [LOW + (start + i * step) % SPAN for i in range(length)]


def motif(rng, length):
    pattern = [rng.randint(LOW, HIGH) for _ in range(rng.randint(3, 8))]
    return [pattern[i % len(pattern)] for i in range(length)]


def counting(rng, length):
    ids, run, token = [], 1, rng.randint(LOW, HIGH)
    while len(ids) < length:
        ids.extend([token] * run)
        run += 1
        token = LOW + (token - LOW + 1) % SPAN
    return ids[:length]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "recipes", "tiny", "data.jsonl"))
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    kinds = [arithmetic, motif, counting]
    with open(args.out, "w", encoding="utf-8") as out:
        for _ in range(args.lines):
            ids = rng.choice(kinds)(rng, rng.randint(20, 60))
            assert all(LOW <= i <= HIGH for i in ids) and 20 <= len(ids) <= 60
            out.write(json.dumps({"input_ids": ids}, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
