// Runs in Node, Deno and Bun alike: loads a model through the npm package from a (mock) Hub,
// generates greedily and streams a chat reply, then prints one JSON line with what happened.
//   <runtime> chat.mjs <hub url> <repo> <cache dir> <prompt> <max tokens> [device]
import { createEngine, isModelCached, listCachedModels } from '../../npm/dist/index.js';

const argv = typeof Deno !== 'undefined' ? Deno.args : process.argv.slice(2);
const [hub, repo, cacheDir, prompt, maxTokens, device = 'auto'] = argv;
const phases = new Set();
// Room for a tool-calling prompt (the Qwen2.5 template's tool preamble is ~850 tiny-vocabulary tokens).
const engine = await createEngine(repo, { hub, cacheDir, context: 1280, device, onProgress: (p) => phases.add(p.phase) });
const greedy = await engine.generate(prompt, { temperature: 0, max_tokens: Number(maxTokens) });
const ids = await engine.tokenizer.encode(prompt);
let streamed = '';
let chunks = 0;
let usage;
const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: prompt }], stream: true, max_tokens: 8, temperature: 0 });
for await (const chunk of stream) {
  chunks++;
  streamed += chunk.choices[0].delta.content ?? '';
  usage = chunk.usage ?? usage;
}
const reply = await engine.chat.completions.create({ messages: [{ role: 'user', content: prompt }], max_tokens: 8, temperature: 0 });
// Log-probabilities: of the raw prompt's continuation, and of a chat reply streamed and not.
const withLogprobs = await engine.generate(prompt, { temperature: 0, max_tokens: 3, ignore_eos: true, logprobs: true, top_logprobs: 3 });
const logprobRequest = { messages: [{ role: 'user', content: prompt }], max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2 };
const streamedLogprobs = [];
for await (const chunk of await engine.chat.completions.create({ ...logprobRequest, stream: true })) {
  streamedLogprobs.push(...(chunk.choices[0].logprobs?.content ?? []));
}
const logprobReply = await engine.chat.completions.create(logprobRequest);
// Constrained output: a JSON schema (sampled, so the noise model wanders), streamed and not, and a regex.
const schema = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 6 }, n: { type: 'integer', minimum: 0, maximum: 9 }, tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 3 } },
  required: ['name', 'n', 'tags'],
  additionalProperties: false,
};
const structured = [];
for (const seed of [1, 2, 3]) {
  const request = { messages: [{ role: 'user', content: prompt }], temperature: 1, seed, max_tokens: 120, response_format: { type: 'json_schema', json_schema: { name: 'card', schema } } };
  const whole = await engine.chat.completions.create(request);
  let streamedText = '';
  for await (const chunk of await engine.chat.completions.create({ ...request, stream: true })) streamedText += chunk.choices[0].delta.content ?? '';
  structured.push({ text: whole.choices[0].message.content, finish: whole.choices[0].finish_reason, streamed: streamedText });
}
const regex = await engine.chat.completions.create({ messages: [{ role: 'user', content: prompt }], temperature: 1, seed: 5, response_format: { type: 'regex', regex: '(cat|dog)-[0-9]{2}' } });
// Tool calling (the tiny Qwen2 GGUF carries Qwen2.5's template): a required call, sampled,
// streamed and not; a named one; the call and its result sent back; requests refused.
const tools = [
  { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 8 } }, required: ['city'], additionalProperties: false } } },
  { type: 'function', function: { name: 'add', parameters: { type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 99 }, b: { type: 'integer', minimum: 0, maximum: 99 } }, required: ['a', 'b'], additionalProperties: false } } },
];
const toolMessages = [{ role: 'user', content: 'Weather in Paris?' }];
const toolRuns = [];
for (const [seed, tool_choice] of [[1, 'required'], [2, 'required'], [3, { type: 'function', function: { name: 'add' } }]]) {
  const request = { messages: toolMessages, tools, tool_choice, temperature: 1, seed, max_tokens: 120 };
  const whole = (await engine.chat.completions.create(request)).choices[0];
  const deltas = [];
  let streamedContent = '';
  let lastFinish = null;
  for await (const chunk of await engine.chat.completions.create({ ...request, stream: true })) {
    deltas.push(...(chunk.choices[0].delta.tool_calls ?? []));
    streamedContent += chunk.choices[0].delta.content ?? '';
    lastFinish = chunk.choices[0].finish_reason ?? lastFinish;
  }
  toolRuns.push({ tool_choice, whole, deltas, streamedContent, lastFinish });
}
const call = toolRuns[0].whole.message.tool_calls[0];
const followUp = await engine.chat.completions.create({
  messages: [...toolMessages, toolRuns[0].whole.message, { role: 'tool', tool_call_id: call.id, content: '{"temp": 21}' }],
  tools,
  temperature: 0,
  max_tokens: 4,
});
const refused = [];
for (const bad of [{ tool_choice: 'required' }, { tools: [{ type: 'function', function: { name: 'has space' } }] }, { tools, tool_choice: { type: 'function', function: { name: 'missing' } } }]) {
  try {
    await engine.chat.completions.create({ messages: toolMessages, max_tokens: 2, ...bad });
    refused.push(null);
  } catch (e) {
    refused.push({ code: e.code, message: e.message });
  }
}
const cached = await isModelCached(repo, { hub, cacheDir });
const listed = (await listCachedModels({ cacheDir })).map((m) => m.repo);
await engine.unload();
console.log(
  JSON.stringify({
    info: engine.info,
    phases: [...phases],
    ids,
    tokens: greedy.tokens,
    finish: greedy.finish_reason,
    streamed,
    chunks,
    usage,
    reply: reply.choices[0].message.content,
    cached,
    listed,
    logprobs: { generated: withLogprobs.logprobs, tokens: withLogprobs.tokens, streamed: streamedLogprobs, reply: logprobReply.choices[0] },
    constrained: { schema, structured, regex: regex.choices[0].message.content },
    tools: { runs: toolRuns, followUp: followUp.choices[0], refused },
  }),
);
// Dawn keeps Node's event loop alive after the device is gone.
if (typeof process !== 'undefined' && typeof Deno === 'undefined') process.exit(0);
