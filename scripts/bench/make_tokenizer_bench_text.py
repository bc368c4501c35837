#!/usr/bin/env python3
"""Writes the tokenizer benchmark text: ~20 MB of multilingual text as JSONL
chunks of ~64 KB ({"text": ...} per line), deterministic (fixed seed, built
from the parity corpus' material and a word generator).

    scripts/bench/make_tokenizer_bench_text.py OUT.jsonl [MEGABYTES]

Chunks end at paragraph breaks so that every tokenizer sees whole words; both
fulcrum and the reference encode exactly these chunks.
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import make_tokenizer_corpus as corpus  # noqa: E402

SEED = 7
CHUNK_BYTES = 64 * 1024

# (weight, paragraph maker): English prose dominates, as in fine-tuning data.
def english(rng):
    return " ".join(corpus.random_prose(rng, rng.randint(2, 6)))


def code(rng):
    lines = []
    for _ in range(rng.randint(3, 12)):
        indent = rng.choice(["", "    ", "        ", "\t", "\t\t"])
        snippet = rng.choice(corpus.CODE).strip()
        name = "_".join(rng.choice(corpus.WORDS) for _ in range(rng.randint(1, 3)))
        lines.append(indent + snippet.replace("x", name, 1))
    return "\n".join(lines)


def pick(pool):
    return lambda rng: " ".join(rng.choice(pool) for _ in range(rng.randint(3, 12)))


def cjk(rng):
    # Shuffled characters of the CJK sentences: new strings, same alphabet.
    chars = list("".join(corpus.CHINESE + corpus.JAPANESE + corpus.KOREAN))
    rng.shuffle(chars)
    return "".join(chars[: rng.randint(40, 300)])


def numbers(rng):
    return " ".join(str(rng.randint(0, 10 ** rng.randint(1, 15))) for _ in range(rng.randint(5, 40)))


MAKERS = [
    (50, english),
    (15, code),
    (8, cjk),
    (5, pick(corpus.CHINESE)),
    (4, pick(corpus.ARABIC + corpus.HINDI)),
    (4, pick(corpus.OTHER_SCRIPTS)),
    (3, pick(corpus.EMOJI + corpus.PUNCTUATION)),
    (3, numbers),
    (4, pick(corpus.contractions())),
    (4, pick(corpus.normalization_pairs() + corpus.COMBINING)),
]


def main():
    out = sys.argv[1]
    megabytes = float(sys.argv[2]) if len(sys.argv) > 2 else 20
    rng = random.Random(SEED)
    weights = [w for w, _ in MAKERS]
    makers = [m for _, m in MAKERS]
    total = 0
    chunks = 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        while total < megabytes * 1e6:
            paragraphs = []
            size = 0
            while size < CHUNK_BYTES:
                paragraph = rng.choices(makers, weights)[0](rng)
                paragraphs.append(paragraph)
                size += len(paragraph.encode("utf-8")) + 2
            text = "\n\n".join(paragraphs) + "\n\n"
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            total += len(text.encode("utf-8"))
            chunks += 1
    print("wrote %d chunks, %.1f MB to %s" % (chunks, total / 1e6, out))


if __name__ == "__main__":
    main()
