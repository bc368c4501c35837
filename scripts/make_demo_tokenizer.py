#!/usr/bin/env python3
"""Writes the embedded demo's text assets (pure Python 3, no pip):

  recipes/tiny/instructions.jsonl  short instruction/input/output records
                                   (arithmetic, capitals, word reversal, ...)
  recipes/tiny/tokenizer.json      a small byte-level BPE trained on them, in
                                   Hugging Face `tokenizers` format
  recipes/tiny/tokenizer_config.json  bos/eos/pad tokens and a ChatML
                                   chat_template (Qwen2.5's shape, no default
                                   system prompt: fulcrum's "auto" reads it as
                                   "chatml")

The tokenizer follows Llama-3's layout: a Split pre-tokenizer with Llama-3's
regex (isolated), then ByteLevel without its own regex; model BPE over the 256
byte symbols plus the learned merges; ByteLevel decoder. Vocabulary: 256 byte
tokens + merges + 4 special tokens = --vocab-size (512 by default, the tiny
model's vocab_size). Everything is deterministic: the same arguments always
write the same bytes.

Training approximates the Llama-3 regex with Python's `re` (no \\p{L}); that
only decides which merges are learned. Encoding is the tokenizers library's
own (or fulcrum's), with the real regex.

Usage: python3 scripts/make_demo_tokenizer.py [--out-dir recipes/tiny]
           [--vocab-size 512] [--records 320] [--seed 7]
"""
import argparse
import collections
import json
import os
import random
import re

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The same with Python `re` classes: letter = [^\W\d_], number = \d.
TRAIN_PATTERN = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|(?:[^\r\n\w]|_)?[^\W\d_]+|\d{1,3}|"
    r" ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
# Hugging Face's plain ChatML template (no default system prompt, no tools).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Russia", "Moscow"), ("Turkey", "Ankara"),
    ("Australia", "Canberra"), ("Argentina", "Buenos Aires"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Cuba", "Havana"), ("Denmark", "Copenhagen"),
]
WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "garden", "window", "silver", "planet",
    "music", "forest", "candle", "bridge", "rocket", "pencil", "orange", "winter", "dragon",
    "button", "castle", "mirror", "rabbit", "summer", "basket", "ocean", "yellow", "finger",
    "market", "spider", "thunder",
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("light", "dark"),
    ("happy", "sad"), ("early", "late"), ("open", "closed"), ("old", "new"), ("hard", "soft"),
    ("full", "empty"), ("high", "low"), ("wet", "dry"), ("left", "right"), ("day", "night"),
]


def arithmetic(rng):
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    op = rng.choice(["+", "-", "*"])
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"instruction": "Compute the result.", "input": f"{a} {op} {b}",
            "output": str(result)}


def capital(rng):
    country, city = rng.choice(CAPITALS)
    return {"instruction": f"What is the capital of {country}?", "input": "",
            "output": f"The capital of {country} is {city}."}


def reverse(rng):
    word = rng.choice(WORDS)
    return {"instruction": "Reverse the word.", "input": word, "output": word[::-1]}


def uppercase(rng):
    words = " ".join(rng.sample(WORDS, 2))
    return {"instruction": "Write the words in capital letters.", "input": words,
            "output": words.upper()}


def opposite(rng):
    word, other = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        word, other = other, word
    return {"instruction": "Give the opposite of the word.", "input": word, "output": other}


def count_letters(rng):
    word = rng.choice(WORDS)
    return {"instruction": "How many letters are in the word?", "input": word,
            "output": f"The word {word} has {len(word)} letters."}


def next_number(rng):
    start, step = rng.randint(1, 30), rng.randint(1, 9)
    seq = [start + i * step for i in range(4)]
    return {"instruction": "Continue the sequence with the next number.",
            "input": ", ".join(map(str, seq)), "output": str(start + 4 * step)}


def make_records(count, seed):
    rng = random.Random(seed)
    kinds = [arithmetic, capital, reverse, uppercase, opposite, count_letters, next_number]
    return [kinds[i % len(kinds)](rng) for i in range(count)]


def bytes_to_unicode():
    """GPT-2's byte -> printable character map used by ByteLevel."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) +
          list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def training_texts(records):
    """The strings the tokenizer sees between special tokens in a ChatML chat."""
    texts = []
    for r in records:
        user = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
        texts += ["user\n" + user, "\n", "assistant\n" + r["output"], "system\n"]
    return texts


def train_bpe(texts, num_merges):
    byte_map = bytes_to_unicode()
    words = collections.Counter()
    for text in texts:
        for piece in TRAIN_PATTERN.findall(text):
            words["".join(byte_map[b] for b in piece.encode("utf-8"))] += 1
    # Each distinct pre-token as a list of symbols, with its frequency.
    corpus = [[list(w), c] for w, c in sorted(words.items())]
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for symbols, count in corpus:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        # Most frequent; ties broken by the pair itself so the result is stable.
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        for entry in corpus:
            symbols, out, i = entry[0], [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            entry[0] = out
    return byte_map, merges


def tokenizer_json(byte_map, merges):
    vocab = {byte_map[b]: b for b in range(256)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    added = [{"id": len(vocab) + i, "content": tok, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, tok in enumerate(SPECIAL_TOKENS)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False},
        ]},
        # As Qwen2.5: no BOS from the post-processor (the chat template writes
        # the whole prompt; add_bos_token is false too).
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }


def tokenizer_config(model_vocab):
    decoder = {str(model_vocab + i): {"content": tok, "lstrip": False, "normalized": False,
                                      "rstrip": False, "single_word": False, "special": True}
               for i, tok in enumerate(SPECIAL_TOKENS)}
    return {
        "added_tokens_decoder": decoder,
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(root, "recipes", "tiny"))
    parser.add_argument("--vocab-size", type=int, default=512,
                        help="total: 256 bytes + merges + %d special" % len(SPECIAL_TOKENS))
    parser.add_argument("--records", type=int, default=320)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    num_merges = args.vocab_size - 256 - len(SPECIAL_TOKENS)
    if num_merges < 0:
        parser.error("--vocab-size must be at least %d" % (256 + len(SPECIAL_TOKENS)))
    records = make_records(args.records, args.seed)
    byte_map, merges = train_bpe(training_texts(records), num_merges)
    if len(merges) < num_merges:
        parser.error("the corpus supports only %d merges; lower --vocab-size" % len(merges))
    os.makedirs(args.out_dir, exist_ok=True)
    write(os.path.join(args.out_dir, "instructions.jsonl"),
          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tok = tokenizer_json(byte_map, merges)
    write(os.path.join(args.out_dir, "tokenizer.json"),
          json.dumps(tok, ensure_ascii=False, indent=1) + "\n")
    write(os.path.join(args.out_dir, "tokenizer_config.json"),
          json.dumps(tokenizer_config(len(tok["model"]["vocab"])), ensure_ascii=False, indent=2) +
          "\n")
    print("wrote %d records, vocab %d (%d merges) to %s" %
          (len(records), len(tok["model"]["vocab"]) + len(SPECIAL_TOKENS), len(merges),
           args.out_dir))


if __name__ == "__main__":
    main()
