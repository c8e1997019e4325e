// Tool calling with emberlm on Node: the model calls a local function, the result goes back,
// the model answers with it. The first turn requires a call (enforced: the reply is a valid
// call of an offered function), later turns leave it to the model.
//   node tools.mjs ["question"] [--model owner/name | --model path/to/model.gguf]
// Default model: the repo's bundled SmolLM2-135M GGUF (offline), as in chat.mjs.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createEngine } from 'emberlm';

const args = process.argv.slice(2);
const at = args.indexOf('--model');
const bundled = fileURLToPath(new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', import.meta.url));
const model = at >= 0 ? args.splice(at, 2)[1] : existsSync(bundled) ? bundled : 'HuggingFaceTB/SmolLM2-360M-Instruct';
const question = args[0] ?? 'What is the weather like in Lisbon today?';

// The functions the model may call, and their JSON schemas as OpenAI's `tools` describe them.
const WEATHER = { lisbon: { temp_c: 19, sky: 'sunny' }, oslo: { temp_c: -3, sky: 'snow' }, paris: { temp_c: 12, sky: 'rain' } };
const functions = {
  get_weather: ({ city }) => WEATHER[String(city).toLowerCase()] ?? { error: `no weather for ${city}` },
  add: ({ a, b }) => ({ sum: a + b }),
};
const tools = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Current weather in a city.',
      parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 60 } }, required: ['city'], additionalProperties: false },
    },
  },
  {
    type: 'function',
    function: {
      name: 'add',
      description: 'Adds two numbers.',
      parameters: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'], additionalProperties: false },
    },
  },
];

try {
  const engine = await createEngine(model, { hub: process.env.EMBERLM_HUB });
  process.stderr.write(`${engine.info.model} on ${engine.info.device.backend} (${engine.info.device.name})\n`);
  const messages = [{ role: 'user', content: question }];
  for (let turn = 0; turn < 4; turn++) {
    const reply = await engine.chat.completions.create({
      messages,
      tools,
      tool_choice: turn === 0 ? 'required' : 'auto',
      temperature: 0,
      max_tokens: 120,
    });
    const message = reply.choices[0].message;
    messages.push(message);
    if (!message.tool_calls) {
      console.log(message.content.trim());
      break;
    }
    for (const call of message.tool_calls) {
      const result = functions[call.function.name](JSON.parse(call.function.arguments));
      console.log(`→ ${call.function.name}(${call.function.arguments}) = ${JSON.stringify(result)}`);
      messages.push({ role: 'tool', tool_call_id: call.id, content: JSON.stringify(result) });
    }
  }
  await engine.unload();
} catch (e) {
  process.stderr.write(`emberlm: ${e?.message ?? e}\n`);
  process.exit(1);
}
process.exit(0); // Dawn's device keeps the event loop alive otherwise
