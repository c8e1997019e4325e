// Pulls structured data out of text with emberlm on Node: a contact card as JSON, constrained by
// a JSON schema, so the reply always parses and has exactly these fields.
//   node extract.mjs ["text about a person"] [--model owner/name | --model path/to/model.gguf]
// Default model: the repo's bundled SmolLM2-135M GGUF (offline), as in chat.mjs.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createEngine } from 'emberlm';

const args = process.argv.slice(2);
const at = args.indexOf('--model');
const bundled = fileURLToPath(new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', import.meta.url));
const model = at >= 0 ? args.splice(at, 2)[1] : existsSync(bundled) ? bundled : 'HuggingFaceTB/SmolLM2-360M-Instruct';
const text = args[0] ?? 'Maria Lopez is 34 and lives in Madrid.';

const card = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 60 },
    city: { type: 'string', maxLength: 60 },
    age: { type: 'integer', minimum: 0, maximum: 130 },
  },
  required: ['name', 'city', 'age'],
  additionalProperties: false,
};

try {
  const engine = await createEngine(model, { hub: process.env.EMBERLM_HUB });
  process.stderr.write(`${engine.info.model} on ${engine.info.device.backend} (${engine.info.device.name})\n`);
  const reply = await engine.chat.completions.create({
    messages: [{ role: 'user', content: `Extract the person's name, city and age as JSON.\n${text}` }],
    temperature: 0,
    max_tokens: 100,
    response_format: { type: 'json_schema', json_schema: { name: 'contact_card', schema: card } },
  });
  console.log(JSON.stringify(JSON.parse(reply.choices[0].message.content), null, 2));
  await engine.unload();
} catch (e) {
  process.stderr.write(`emberlm: ${e?.message ?? e}\n`);
  process.exit(1);
}
process.exit(0); // Dawn's device keeps the event loop alive otherwise
