import { createEngine } from 'emberlm';

// ?model=owner/name&hub=URL override the defaults (the tests point them at a mock Hub).
const params = new URLSearchParams(location.search);
const status = document.getElementById('status');
const answer = document.getElementById('answer');

const engine = await createEngine(params.get('model') ?? 'HuggingFaceTB/SmolLM2-360M-Instruct', {
  hub: params.get('hub') ?? undefined,
  onProgress: (p) => (status.textContent = `${p.phase}: ${(p.loaded / 1e6).toFixed(1)} of ${(p.total / 1e6).toFixed(1)} MB`),
});
status.textContent = 'Ready';
// What runs it: `webgpu (adapter, …)`, or `cpu (N threads, simd128)` and why.
document.getElementById('device').textContent = `${engine.info.device.name}: ${engine.info.device.reason}`;

document.getElementById('form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  answer.textContent = '';
  const stream = await engine.chat.completions.create({
    messages: [{ role: 'user', content: document.getElementById('question').value }],
    stream: true,
    max_tokens: Number(params.get('max_tokens') ?? 256),
  });
  for await (const chunk of stream) {
    answer.textContent += chunk.choices[0].delta.content ?? '';
    if (chunk.usage) status.textContent = `Done: ${chunk.usage.completion_tokens} tokens at ${chunk.usage.extra.decode_tokens_per_s.toFixed(1)} tok/s`;
  }
});
