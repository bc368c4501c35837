// Single-thread encode throughput of Hugging Face's Rust `tokenizers`
// (official Node binding) over the benchmark chunks.
//   RAYON_NUM_THREADS=1 UV_THREADPOOL_SIZE=1 node tokenizer_bench.js TOKENIZER.json CHUNKS.jsonl
// Chunks (~64 KB each) are encoded one after another without special tokens,
// each call awaited before the next, so one thread works at a time and the
// per-call overhead (a hop to libuv's pool) is negligible next to ~10 ms of
// encoding. The first chunk is encoded once before timing (warm-up). Prints
// one JSON line: chunks, bytes (UTF-8), tokens, seconds, mb_per_s (1e6 bytes).
'use strict';
const fs = require('fs');
const {Tokenizer} = require('tokenizers');

async function main() {
  const [tokenizerPath, chunksPath] = process.argv.slice(2);
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const chunks = fs.readFileSync(chunksPath, 'utf8').split('\n').filter((l) => l.length > 0)
      .map((l) => JSON.parse(l).text);
  const bytes = chunks.reduce((n, c) => n + Buffer.byteLength(c, 'utf8'), 0);
  await tokenizer.encode(chunks[0], null, {addSpecialTokens: false});
  let tokens = 0;
  const start = process.hrtime.bigint();
  for (const chunk of chunks) {
    tokens += (await tokenizer.encode(chunk, null, {addSpecialTokens: false})).getIds().length;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(JSON.stringify({chunks: chunks.length, bytes, tokens, threads: 1, seconds,
                              mb_per_s: bytes / 1e6 / seconds}));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
