#!/usr/bin/env python3
"""Writes the tokenizer parity corpus: tests/data/tokenizer/corpus/strings.jsonl.

One JSON object per line: {"name": "<category>/<n>", "text": "..."}. The
strings are chosen to hit every corner of the Hugging Face tokenizers pipeline
(regex pre-splits, byte-level and byte-fallback BPE, normalizers, added
tokens), for every family of the parity test. Deterministic: a fixed seed and
no input but this file, so the committed corpus can always be regenerated:

    scripts/make_tokenizer_corpus.py [OUT.jsonl]
"""
import json
import os
import random
import sys
import unicodedata

SEED = 20240611

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "It was the best of times, it was the worst of times.",
    "Fine-tuning large language models requires careful data preparation.",
    "In 1969, Neil Armstrong walked on the Moon; 600 million people watched.",
    "She said: \"Don't worry -- we'll be fine.\"",
    "Mr. O'Neil's dog isn't here; he's at the vet's.",
    "E-mail me at john.doe@example.com or visit https://example.org/path?q=1&r=2.",
    "Prices rose 3.5% to $1,234.56 (up from $1,193.00).",
    "Section 4.2.1 -- see footnote [12] and Table IV.",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier",
    "   leading spaces",
    "trailing spaces   ",
    "  both sides  ",
    " a",
    "a ",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "line one\r\nline two\r\nline three",
    "tabs\tbetween\twords",
    "multiple\n\n\nnewlines\n\n",
    "a\u00a0non-breaking\u00a0space",
    "ideographic\u3000space",
    "zero\u200bwidth\u200bspace",
    "soft\u00adhyphen",
    "word",
    "Word",
    "WORD",
    "x",
    ".",
    "?!",
]

CONTRACTION_STEMS = ["it", "he", "they", "we", "you", "I", "she", "that", "there", "who"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]

PUNCTUATION = [
    "!!!???...",
    "...",
    "-----",
    "=====",
    "*****",
    "#####",
    "~~~~",
    "<<>>",
    "(((nested)))",
    "[[[x]]]",
    "{{{y}}}",
    "''''",
    '""""',
    "``` code fence ```",
    "--> <-- <=> =>",
    "a,b;c:d.e!f?g",
    "@@@ ### $$$ %%% ^^^ &&& ***",
    "\u2014 em dash \u2013 en dash \u2026 ellipsis",
    "\u00ab guillemets \u00bb \u201cquotes\u201d \u2018single\u2019",
    "\u00bf\u00bfQu\u00e9?? \u00a1\u00a1S\u00ed!!",
    ":-) ;-) :-( :D xD <3",
    "!@#$%^&*()_+-=[]{}|;':\",./<>?`~",
]

CODE = [
    "def foo(x):\n\treturn x * 2\n",
    "int main() {\n    printf(\"hello\\n\");\n    return 0;\n}\n",
    "for (int i = 0; i < n; ++i) {\n\t\tsum += a[i];\n\t}",
    "if x:\n        if y:\n                if z:\n                        pass",
    "    \n    \n\n\n        x = 1\n",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name DESC;",
    "const f = async (a, b) => { await g(a ?? b); };",
    "#include <vector>\n#include <string>\n\nstd::vector<std::string> v{\"a\", \"b\"};",
    "fn main() -> Result<(), Box<dyn Error>> {\n    Ok(())\n}",
    "<html><body><div class=\"x\">Hi</div></body></html>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "x = 0x1F; y = 0b1010; z = 1e-9; w = 3.14159",
    "$ ls -la | grep '^d' | awk '{print $9}' > dirs.txt 2>&1",
    "a\t\t\t\tb\t\t\t\t\tc",
    "          ten spaces then text",
    "text then ten spaces          ",
    "mixed \t \t \t whitespace \n \n",
    "# Comment\n\n\n\n\n\n\n\n# After eight newlines",
    "    def method(self):\n        '''Docstring.'''\n        return self._x",
    "matrix = [[1, 2], [3, 4]]  # 2x2",
]

DIGITS = [
    "0",
    "12",
    "123",
    "1234",
    "12345",
    "1234567890",
    "3.14159265358979323846264338327950288419716939937510",
    "The year 2024 had 366 days.",
    "Call 555-0123 or +1 (800) 555-0199.",
    "1,000,000 and 1.000.000 and 1 000 000",
    "v1.2.3-rc4",
    "x1y22z333w4444",
    "\uff11\uff12\uff13 fullwidth digits",
    "\u0661\u0662\u0663 Arabic-Indic digits",
    "\u0967\u0968\u0969 Devanagari digits",
    "\u00bd \u00bc \u00b2 \u00b3 superscripts and fractions",
]

CHINESE = [
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u6211\u7231\u5317\u4eac\u5929\u5b89\u95e8\u3002",
    "\u673a\u5668\u5b66\u4e60\u662f\u4eba\u5de5\u667a\u80fd\u7684\u4e00\u4e2a\u5206\u652f\u3002",
    "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u6563\u6b65\u5427\u3002",
    "\u5927\u578b\u8bed\u8a00\u6a21\u578b\u7684\u5fae\u8c03\u9700\u8981\u5927\u91cf\u7684\u6570\u636e\u3002",
    "\u300a\u7ea2\u697c\u68a6\u300b\u662f\u4e2d\u56fd\u53e4\u5178\u5c0f\u8bf4\u3002",
]

JAPANESE = [
    "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\uff01",
    "\u79c1\u306f\u5b66\u751f\u3067\u3059\u3002",
    "\u6771\u4eac\u30bf\u30ef\u30fc\u306f\u9ad8\u3044\u3067\u3059\u306d\u3002",
    "\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a\u3068\u6f22\u5b57\u3002",
    "\uff71\uff72\uff73\uff74\uff75 halfwidth katakana",
]

KOREAN = [
    "\uc548\ub155\ud558\uc138\uc694, \uc138\uacc4!",
    "\ud55c\uad6d\uc5b4\ub294 \uc544\ub984\ub2e4\uc6b4 \uc5b8\uc5b4\uc785\ub2c8\ub2e4.",
    "\uc800\ub294 \ud559\uc0dd\uc785\ub2c8\ub2e4.",
]

ARABIC = [
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0627\u0644\u0644\u063a\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u062c\u0645\u064a\u0644\u0629 \u062c\u062f\u0627\u064b.",
    "\u0628\u0650\u0633\u0652\u0645\u0650 \u0671\u0644\u0644\u0651\u064e\u0647\u0650",
]

HINDI = [
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u092e\u0948\u0902 \u0939\u093f\u0902\u0926\u0940 \u092c\u094b\u0932\u0924\u093e \u0939\u0942\u0901\u0964",
    "\u092d\u093e\u0930\u0924 \u090f\u0915 \u0935\u093f\u0936\u093e\u0932 \u0926\u0947\u0936 \u0939\u0948\u0964",
]

OTHER_SCRIPTS = [
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u0430\u043a \u0434\u0435\u043b\u0430?",
    "\u0393\u03b5\u03b9\u03b1 \u03c3\u03bf\u03c5 \u03ba\u03cc\u03c3\u03bc\u03b5",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
    "Xin ch\u00e0o th\u1ebf gi\u1edbi",
    "Stra\u00dfe \u00fcber \u00c4pfel \u00f6ffnen",
    "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0",
    "\u0540\u0561\u0575\u0565\u0580\u0565\u0576",
]

EMOJI = [
    "\U0001F600",
    "\U0001F44D\U0001F3FD",
    "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",
    "\U0001F469\U0001F3FE\u200D\U0001F4BB",
    "\U0001F3F3\uFE0F\u200D\U0001F308",
    "\U0001F1FA\U0001F1F8\U0001F1EF\U0001F1F5",
    "\u2764\uFE0F\u200D\U0001F525",
    "I love it \U0001F60D\U0001F60D\U0001F60D!",
    "\U0001F9D1\U0001F3FB\u200D\U0001F91D\u200D\U0001F9D1\U0001F3FF",
    "\U0001F44B\U0001F3FB\U0001F44B\U0001F3FC\U0001F44B\U0001F3FD\U0001F44B\U0001F3FE\U0001F44B\U0001F3FF",
    "1\uFE0F\u20E3 #\uFE0F\u20E3",
    "\u263A \u263A\uFE0F \u263A\uFE0E",
]

COMBINING = [
    "e\u0301",
    "a\u0300\u0301\u0302\u0303\u0304",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O",
    "n\u0303o\u0308",
    "\u0915\u094d\u0937",
    "\u1100\u1161\u11a8",
    "\u212b \u2126 \u00c5 \u03a9",
    "\ufb01 \ufb02 ligatures",
    "\u2460 \u2461 circled",
    "\u00e9\u0301 double accent",
]

NORMALIZATION_BASE = [
    "caf\u00e9",
    "na\u00efve r\u00e9sum\u00e9",
    "\u00c5ngstr\u00f6m",
    "Cr\u00e8me br\u00fbl\u00e9e",
    "\u1ea0\u1ea1 \u1ec6\u1ec7 Vi\u1ec7t",
    "\ud55c\uad6d\uc5b4",
    "\u304c\u304e\u3050\u3052\u3054",
    "se\u00f1or ma\u00f1ana",
]

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "<unk>",
    "<bos>",
    "<eos>",
    "<pad>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<\uff5cUser\uff5c>",
    "<\uff5cAssistant\uff5c>",
    "<think>",
    "</think>",
    "[INST]",
    "[/INST]",
]

WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week "
    "case point government company number group problem fact be have do say get make go know "
    "take see come think look want give use find tell ask seem feel try leave call good new "
    "first last long great little own other old right big high different small large next "
    "early young important few public bad same able model token train data loss gradient "
    "parallel tensor layer attention batch sequence learning rate optimizer checkpoint"
).split()


def contractions():
    out = []
    for stem in CONTRACTION_STEMS:
        for c in CONTRACTIONS:
            out.append(stem + c)
            out.append(stem.upper() + c.upper())
            out.append(stem.capitalize() + c.upper())
    for c in CONTRACTIONS:
        out.append(c)
        out.append(" " + c.upper())
        out.append(c.upper() + " and" + c)
    out.append("I'M SURE THEY'RE HERE, WE'VE SEEN IT'S TRUE, YOU'LL SEE, HE'D KNOW, DON'T.")
    out.append("i'm sure they're here, we've seen it's true, you'll see, he'd know, don't.")
    out.append("I'm SuRe ThEy'Re HeRe, We'Ve SeEn, YoU'lL sEe, He'D kNoW, dOn'T.")
    out.append("rock 'n' roll, 'tis, y'all, o'clock, ma'am")
    out.append("\u2019s \u2019ll typographic apostrophes: it\u2019s, they\u2019re")
    return out


def special_token_texts():
    out = []
    for tok in SPECIAL_TOKENS:
        out.append(tok)
        out.append(" " + tok)
        out.append(tok + " ")
        out.append(" " + tok + " ")
        out.append("Hello" + tok + "world")
        out.append("Hello " + tok + " world")
        out.append(tok + tok)
        out.append("\n" + tok + "\n")
    out.append("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>")
    out.append("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    out.append("<s>[INST] What is 2+2? [/INST] 4</s>")
    out.append("<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n")
    out.append("<\uff5cbegin\u2581of\u2581sentence\uff5c><\uff5cUser\uff5c>Hi<\uff5cAssistant\uff5c>")
    out.append("<|im_start|")
    out.append("|im_start|>")
    out.append("<|IM_START|>")
    out.append("< s >")
    out.append("<s")
    out.append("<<s>>")
    return out


def random_mixed(rng, n):
    pools = [ENGLISH, CHINESE, JAPANESE, KOREAN, ARABIC, HINDI, OTHER_SCRIPTS, EMOJI, DIGITS,
             PUNCTUATION, CODE]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(2, 6)):
            pool = rng.choice(pools)
            parts.append(rng.choice(pool))
        sep = rng.choice(["", " ", "  ", "\n", "\t", " \n "])
        out.append(sep.join(parts))
    return out


def random_prose(rng, n):
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 30))]
        for i in range(len(words)):
            r = rng.random()
            if r < 0.08:
                words[i] = words[i].capitalize()
            elif r < 0.11:
                words[i] = words[i].upper()
            elif r < 0.15:
                words[i] += rng.choice([",", ".", ";", ":", "!", "?"])
            elif r < 0.18:
                words[i] += rng.choice(CONTRACTIONS)
            elif r < 0.20:
                words[i] = str(rng.randint(0, 10 ** rng.randint(1, 12)))
        out.append(" ".join(words))
    return out


def random_unicode(rng, n):
    """Random code points from many blocks (valid scalar values only)."""
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x1E00, 0x1EFF),
              (0x2000, 0x206F), (0x2190, 0x23FF), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


def whitespace_runs(rng):
    out = []
    for ws in [" ", "\t", "\n", "\r\n", " \n", "\n ", "\u00a0", "\u3000"]:
        for count in [1, 2, 3, 7, 16, 33]:
            out.append("a" + ws * count + "b")
        out.append(ws * 20)
    for _ in range(10):
        out.append("".join(rng.choice([" ", "\t", "\n", "x", "1", "."]) for _ in range(60)))
    return out


def long_strings(rng):
    out = []
    out.append("a" * 1000)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out.append("".join(rng.choice(letters) for _ in range(1000)))
    out.append("Supercalifragilistic" * 50)
    out.append("9" * 500)
    out.append("".join(str(rng.randint(0, 9)) for _ in range(300)))
    out.append("\u4e2d" * 400)
    out.append("\U0001F600" * 200)
    out.append(" " * 1000)
    out.append("\n" * 300)
    out.append("ab" * 600)
    # A ~20 KB document mixing everything, with paragraph breaks.
    paragraphs = []
    size = 0
    while size < 20 * 1024:
        pool = rng.choice([ENGLISH, CHINESE, JAPANESE, KOREAN, ARABIC, HINDI, CODE, EMOJI,
                           DIGITS, OTHER_SCRIPTS])
        para = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 10)))
        paragraphs.append(para)
        size += len(para.encode("utf-8")) + 2
    out.append("\n\n".join(paragraphs))
    return out


def normalization_pairs():
    out = []
    for text in NORMALIZATION_BASE + COMBINING:
        for form in ["NFC", "NFD", "NFKC", "NFKD"]:
            out.append(unicodedata.normalize(form, text))
    return out


def corpus():
    rng = random.Random(SEED)
    sections = [
        ("empty", [""]),
        ("english", ENGLISH),
        ("contraction", contractions()),
        ("punctuation", PUNCTUATION),
        ("code", CODE),
        ("digits", DIGITS),
        ("chinese", CHINESE),
        ("japanese", JAPANESE),
        ("korean", KOREAN),
        ("arabic", ARABIC),
        ("hindi", HINDI),
        ("script", OTHER_SCRIPTS),
        ("emoji", EMOJI),
        ("combining", COMBINING),
        ("normalization", normalization_pairs()),
        ("special", special_token_texts()),
        ("whitespace", whitespace_runs(rng)),
        ("long", long_strings(rng)),
        ("prose", random_prose(rng, 80)),
        ("mixed", random_mixed(rng, 80)),
        ("unicode", random_unicode(rng, 40)),
    ]
    for name, texts in sections:
        for i, text in enumerate(texts):
            yield {"name": "%s/%d" % (name, i), "text": text}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "tests", "data", "tokenizer", "corpus", "strings.jsonl")
    path = sys.argv[1] if len(sys.argv) > 1 else default
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for entry in corpus():
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            count += 1
    print("wrote %d strings to %s" % (count, path))


if __name__ == "__main__":
    main()
