// SmolLM3 (NoPE layers) through the npm package, and `chat_template_kwargs` reaching its chat
// template; prints one JSON line.
//   node smollm3.mjs <hub url> <repo> <cache dir> <device> <prompt> <max tokens>
import { createEngine } from '../../npm/dist/index.js';

const [hub, repo, cacheDir, device, prompt, maxTokens] = process.argv.slice(2);
const engine = await createEngine(repo, { hub, cacheDir, context: 512, device });
const greedy = await engine.generate(prompt, { temperature: 0, max_tokens: Number(maxTokens) });
const messages = [
  { role: 'system', content: '  You are terse.  ' },
  { role: 'user', content: 'Name a colour.' },
];
const promptTokens = async (extra) => (await engine.chat.completions.create({ messages, max_tokens: 1, temperature: 0, ...extra })).usage.prompt_tokens;
const thinking = await promptTokens({});
const noThinking = await promptTokens({ chat_template_kwargs: { enable_thinking: false } });
const refused = [];
for (const kwargs of [[1], 'x', { messages: [] }]) {
  try {
    await promptTokens({ chat_template_kwargs: kwargs });
    refused.push(null);
  } catch (e) {
    refused.push({ code: e.code, message: e.message });
  }
}
await engine.unload();
console.log(JSON.stringify({ info: engine.info, tokens: greedy.tokens, thinking, noThinking, refused }));
process.exit(0);
