// Reference for chat_template_reference_test: renders chat templates with
// @huggingface/jinja (which agrees with Python's Jinja2 under transformers'
// settings) and encodes texts with Hugging Face's Rust tokenizers (official
// Node binding), without special tokens added.
//
//   node render_reference.js REQUEST.json RESPONSE.json
// REQUEST:  {"renders": [{"template", "bos_token", "eos_token", "messages",
//                         "add_generation_prompt"}],
//            "encodes": [{"tokenizer": PATH, "texts": [STRING...]}]}
// RESPONSE: {"renders": [{"text"} | {"error"}], "encodes": [[[ID...]...]]}
const fs = require('fs');
const {Template} = require('@huggingface/jinja');
const {Tokenizer} = require('tokenizers');

async function main() {
  const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const renders = (request.renders || []).map((r) => {
    try {
      const context = {messages: r.messages, bos_token: r.bos_token, eos_token: r.eos_token,
                       add_generation_prompt: r.add_generation_prompt};
      // raise_exception is built into @huggingface/jinja, as in transformers.
      return {text: new Template(r.template).render(context)};
    } catch (e) {
      return {error: String(e && e.message ? e.message : e)};
    }
  });
  const tokenizers = new Map();
  const encodes = [];
  for (const group of request.encodes || []) {
    if (!tokenizers.has(group.tokenizer)) {
      tokenizers.set(group.tokenizer, Tokenizer.fromFile(group.tokenizer));
    }
    const tokenizer = tokenizers.get(group.tokenizer);
    const ids = [];
    for (const text of group.texts) {
      const encoding = await tokenizer.encode(text, null, {addSpecialTokens: false});
      ids.push(Array.from(encoding.getIds()));
    }
    encodes.push(ids);
  }
  fs.writeFileSync(process.argv[3], JSON.stringify({renders, encodes}));
}

main().catch((e) => { console.error(e); process.exit(1); });
