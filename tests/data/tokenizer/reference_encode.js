// Reference ids for the tokenizer parity test, from Hugging Face's Rust
// `tokenizers` (official Node binding).
//   node reference_encode.js CORPUS.jsonl TOKENIZER.json OUT.jsonl [TOKENIZER2.json OUT2.jsonl ...]
// (several tokenizers in one process: Node's start-up is paid once).
// CORPUS: one {"name", "text"} per line. OUT: one line per corpus line, same
// order: {"name", "ids_special", "ids_plain", "decoded", "decoded_skip",
// "decoded_plain"} where ids_special / ids_plain are encode(text) with and
// without special tokens, decoded / decoded_skip are decode(ids_special) with
// skip_special_tokens false / true, and decoded_plain is decode(ids_plain).
'use strict';
const fs = require('fs');
const {Tokenizer} = require('tokenizers');

async function encodeCorpus(lines, tokenizerPath, outPath) {
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  // All strings at once: the binding runs each call on libuv's thread pool,
  // and awaiting them one by one is dominated by the round trips.
  const out = await Promise.all(lines.map(async (line) => {
    const {name, text} = JSON.parse(line);
    const [special, plain] = (await Promise.all([
      tokenizer.encode(text, null, {addSpecialTokens: true}),
      tokenizer.encode(text, null, {addSpecialTokens: false}),
    ])).map((e) => Array.from(e.getIds()));
    const [decoded, decodedSkip, decodedPlain] = await Promise.all([
      tokenizer.decode(special, false),
      tokenizer.decode(special, true),
      tokenizer.decode(plain, false),
    ]);
    return JSON.stringify({
      name,
      ids_special: special,
      ids_plain: plain,
      decoded,
      decoded_skip: decodedSkip,
      decoded_plain: decodedPlain,
    });
  }));
  fs.writeFileSync(outPath, out.join('\n') + '\n');
}

async function main() {
  const [corpusPath, ...pairs] = process.argv.slice(2);
  if (!corpusPath || pairs.length === 0 || pairs.length % 2 !== 0) {
    console.error('usage: node reference_encode.js CORPUS.jsonl TOKENIZER.json OUT.jsonl [...]');
    process.exit(2);
  }
  const lines = fs.readFileSync(corpusPath, 'utf8').split('\n').filter((l) => l.length > 0);
  for (let i = 0; i < pairs.length; i += 2) {
    await encodeCorpus(lines, pairs[i], pairs[i + 1]);
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
