// The npm package end to end in Node, Deno and Bun (each from npm): a tiny model from the mock
// Hub generates transformers' greedy tokens; a second run loads from the file cache with the
// Hub stopped. Node and Bun get WebGPU from the `webgpu` package (SwiftShader), Deno has its own.
// Node runs with `device: 'webgpu'` forced (the WebGPU path through Dawn); Deno and Bun with
// `auto`, which takes the CPU backend on these software adapters.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { CRASHING_REPO, crashingTokenizerRepo, fixtureRepos, reference, ROOT } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { BUN, DENO, NODE, run as runProcess, runtimeEnv } from './spawn.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const RUNTIMES = {
  node: [NODE],
  deno: [DENO, 'run', '--allow-all'],
  bun: [BUN, 'run'],
};
const dirs = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Runs `script` in `runtime` and parses the JSON line it prints last. */
async function run(runtime, args, { script = 'chat.mjs', icd } = {}) {
  const [cmd, ...pre] = RUNTIMES[runtime];
  const env = runtimeEnv(runtime);
  if (icd) env.VK_ICD_FILENAMES = icd;
  const { status, stdout, stderr } = await runProcess(cmd, [...pre, join(here, script), ...args], { env });
  assert.equal(status, 0, `${runtime} exited ${status}: ${stderr.slice(-2000)}`);
  return JSON.parse(stdout.trim().split('\n').at(-1));
}

const want = reference('qwen2').cases[0];

/**
 * `logprobs: true`: the first generated token's log-probability is the log-softmax of
 * transformers' last-prompt logits (within 1e-3, as the Rust tests hold it); greedy tokens are
 * their positions' likeliest; the streamed entries equal the non-streamed ones (to 1e-4), and
 * their bytes spell the reply.
 */
/**
 * `response_format`: a tiny random-weight model writes noise unconstrained; under a JSON schema
 * every sampled reply parses, has exactly the schema's keys with values in range, and streams
 * the same text; under a regex the reply matches it whole.
 */
function checkConstrained({ schema, structured, regex }) {
  for (const { text, finish, streamed } of structured) {
    assert.equal(finish, 'stop', text);
    assert.equal(streamed, text);
    const v = JSON.parse(text);
    assert.deepEqual(Object.keys(v).sort(), ['n', 'name', 'tags'], text);
    assert.ok(typeof v.name === 'string' && [...v.name].length <= schema.properties.name.maxLength, text);
    assert.ok(Number.isInteger(v.n) && v.n >= 0 && v.n <= 9, text);
    assert.ok(Array.isArray(v.tags) && v.tags.length <= 3 && v.tags.every((t) => t === 'a' || t === 'b'), text);
  }
  assert.match(regex, /^(cat|dog)-[0-9]{2}$/);
}

function checkLogprobs({ generated, tokens, streamed, reply }) {
  const logits = want.last_logits;
  const max = Math.max(...logits);
  const logTotal = max + Math.log(logits.reduce((s, v) => s + Math.exp(v - max), 0));
  assert.equal(generated.length, 3);
  assert.equal(tokens[0], want.generated_ids[0]);
  assert.ok(Math.abs(generated[0].logprob - (logits[tokens[0]] - logTotal)) < 1e-3, JSON.stringify(generated[0]));
  for (const e of generated) {
    assert.equal(e.top_logprobs.length, 3);
    assert.equal(e.top_logprobs[0].logprob, e.logprob, JSON.stringify(e));
    assert.deepEqual(Object.keys(e).sort(), ['bytes', 'logprob', 'token', 'top_logprobs']);
  }
  // The same tokens; the second request reuses the first one's prompt cache (its last prompt
  // token runs as a decode step, not in the prefill matmul), so values agree to f32 rounding.
  const round = (entries) => JSON.parse(JSON.stringify(entries, (k, v) => (k === 'logprob' ? Math.round(v * 1e4) / 1e4 : v)));
  assert.deepEqual(round(streamed), round(reply.logprobs.content));
  assert.equal(reply.logprobs.refusal, null);
  const spelled = new TextDecoder().decode(Uint8Array.from(reply.logprobs.content.flatMap((e) => e.bytes)));
  assert.ok(spelled.startsWith(reply.message.content) && reply.message.content.length > 0, `${spelled} / ${reply.message.content}`);
}
function checkTools({ runs, followUp, refused }) {
  for (const { tool_choice, whole, deltas, streamedContent, lastFinish } of runs) {
    const calls = whole.message.tool_calls;
    assert.equal(whole.finish_reason, 'tool_calls', JSON.stringify(whole));
    assert.equal(whole.message.content, null);
    assert.ok(calls.length >= 1, JSON.stringify(whole));
    for (const c of calls) {
      assert.match(c.id, /^[A-Za-z0-9]{9}$/);
      assert.equal(c.type, 'function');
      const args = JSON.parse(c.function.arguments);
      if (c.function.name === 'get_weather') assert.ok(typeof args.city === 'string' && [...args.city].length <= 8 && Object.keys(args).length === 1, c.function.arguments);
      else assert.ok(c.function.name === 'add' && Number.isInteger(args.a) && Number.isInteger(args.b), c.function.arguments);
    }
    if (typeof tool_choice === 'object') assert.ok(calls.every((c) => c.function.name === tool_choice.function.name));
    // The stream carries the same calls (same seed, same tokens), each whole with its index.
    assert.deepEqual(deltas.map((d) => d.index), calls.map((_, i) => i));
    assert.deepEqual(deltas.map((d) => [d.function.name, d.function.arguments]), calls.map((c) => [c.function.name, c.function.arguments]));
    assert.equal(streamedContent, '');
    assert.equal(lastFinish, 'tool_calls');
  }
  assert.ok(['stop', 'length', 'tool_calls'].includes(followUp.finish_reason), JSON.stringify(followUp));
  assert.ok(followUp.message.content !== undefined);
  assert.equal(refused.length, 3);
  for (const r of refused) assert.equal(r?.code, 'bad-request', JSON.stringify(r));
  assert.match(refused[1].message, /function name/);
  assert.match(refused[2].message, /not among the tools/);
}

const DEVICE = { node: 'webgpu', deno: 'auto', bun: 'auto' };

for (const runtime of Object.keys(RUNTIMES)) {
  test(`${runtime}: greedy tokens equal transformers', then a second run loads from the cache with the Hub stopped`, async () => {
    assert.ok(existsSync(join(ROOT, 'npm', 'dist', 'index.js')), 'build the npm package first (npm run build in npm/)');
    const cacheDir = mkdtempSync(join(tmpdir(), `emberlm-${runtime}-`));
    dirs.push(cacheDir);
    const hub = await startMockHub({ repos: fixtureRepos() });
    const args = [hub.url, 'emberlm-test/tiny-qwen2-GGUF', cacheDir, want.text, String(want.generated_ids.length), DEVICE[runtime]];
    let first;
    try {
      first = await run(runtime, args);
    } finally {
      await hub.close();
    }
    assert.deepEqual(first.ids, want.input_ids);
    assert.deepEqual(first.tokens, want.generated_ids);
    assert.equal(first.info.format, 'gguf');
    assert.equal(first.info.architecture, 'qwen2');
    assert.equal(first.info.fromCache, false);
    assert.equal(first.info.device.backend, DEVICE[runtime] === 'webgpu' ? 'webgpu' : 'cpu', JSON.stringify(first.info.device));
    assert.deepEqual(first.phases, ['download', 'upload', 'compile', 'ready']);
    assert.ok(first.chunks >= 3 && first.streamed.length > 0, `streamed ${first.chunks} chunks`);
    assert.equal(first.streamed, first.reply, 'streaming and non-streaming replies agree');
    assert.equal(first.usage.completion_tokens, 8);
    assert.ok(first.usage.prompt_tokens > want.input_ids.length, 'the chat template wraps the prompt');
    assert.ok(first.usage.extra.decode_tokens_per_s > 0);
    assert.equal(first.cached, true);
    assert.deepEqual(first.listed, ['emberlm-test/tiny-qwen2-GGUF']);
    checkLogprobs(first.logprobs);
    checkConstrained(first.constrained);
    checkTools(first.tools);

    // The Hub is gone now; the same URL must not be needed.
    const second = await run(runtime, args);
    assert.equal(second.info.fromCache, true);
    assert.deepEqual(second.tokens, want.generated_ids);
    assert.deepEqual(second.phases, ['upload', 'compile', 'ready']);
  });
}

/**
 * SmolLM3 in Node on WebGPU (Dawn) and on the CPU backend: transformers' greedy tokens (its
 * NoPE layer included), and `chat_template_kwargs: { enable_thinking: false }` renders the
 * prompt transformers renders with it (fixtures/tiny/smollm3/chat_template_cases.json).
 */
test('node: SmolLM3 (NoPE layers) gives transformers\' tokens on WebGPU and the CPU; chat_template_kwargs reaches its template', async () => {
  const smol = reference('smollm3').cases[0];
  const templates = JSON.parse(readFileSync(join(ROOT, 'tests', 'fixtures', 'tiny', 'smollm3', 'chat_template_cases.json'), 'utf8'));
  const idsOf = (entry) => templates[entry].cases.find((c) => c.messages.length === 2 && c.messages[0].role === 'system' && c.add_generation_prompt).ids;
  const hub = await startMockHub({ repos: fixtureRepos() });
  const cacheDir = mkdtempSync(join(tmpdir(), 'emberlm-smollm3-'));
  dirs.push(cacheDir);
  try {
    for (const device of ['webgpu', 'cpu']) {
      const r = await run('node', [hub.url, 'emberlm-test/tiny-smollm3-GGUF', cacheDir, device, smol.text, String(smol.generated_ids.length)], { script: 'smollm3.mjs' });
      assert.equal(r.info.architecture, 'smollm3');
      assert.equal(r.info.device.backend, device);
      assert.deepEqual(r.tokens, smol.generated_ids, device);
      assert.equal(r.thinking, idsOf(0).length);
      assert.equal(r.noThinking, idsOf(1).length);
      assert.notEqual(r.thinking, r.noThinking);
      assert.deepEqual(r.refused.map((e) => e?.code), ['bad-request', 'bad-request', 'bad-request'], JSON.stringify(r.refused));
      assert.match(r.refused[2].message, /may not set `messages`/);
    }
  } finally {
    await hub.close();
  }
});

/**
 * The newer families in Node, on WebGPU (Dawn) and on the CPU backend: Mamba2 (its layers
 * only), Granite-4.0-H's hybrid (Mamba2 and attention layers), Qwen3-MoE (a mixture of experts)
 * GPT-OSS (sinks, YaRN, MXFP4 experts) and DeepSeek-V2/V3 (latent attention, shared experts)
 * give transformers' greedy tokens from their GGUF files.
 */
test('node: Mamba2, the Granite-4.0-H hybrid, Qwen3-MoE, GPT-OSS and DeepSeek-V2/V3 give transformers\' tokens on WebGPU and the CPU', async () => {
  const hub = await startMockHub({ repos: fixtureRepos() });
  const cacheDir = mkdtempSync(join(tmpdir(), 'emberlm-ssm-'));
  dirs.push(cacheDir);
  try {
    const architecture = { mamba2: 'mamba2', granitehybrid: 'granitemoehybrid', qwen3moe: 'qwen3_moe', gptoss: 'gpt_oss', deepseek2: 'deepseek_v2', deepseek3: 'deepseek_v3' };
    for (const family of Object.keys(architecture)) {
      // The case with the longer reply (DeepSeek-V2's first stops after two tokens).
      const want = reference(family).cases.reduce((a, b) => (b.generated_ids.length > a.generated_ids.length ? b : a));
      for (const device of ['webgpu', 'cpu']) {
        const r = await run('node', [hub.url, `emberlm-test/tiny-${family}-GGUF`, cacheDir, device, want.text, String(want.generated_ids.length)], { script: 'greedy.mjs' });
        assert.equal(r.info.architecture, architecture[family]);
        assert.equal(r.info.device.backend, device);
        assert.deepEqual(r.tokens, want.generated_ids, `${family} on ${device}`);
      }
    }
  } finally {
    await hub.close();
  }
});

const embedRef = (name) => JSON.parse(readFileSync(join(ROOT, 'tests', 'fixtures', 'tiny', name, 'reference.json'), 'utf8'));
const cosine = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / Math.hypot(...a) / Math.hypot(...b);

for (const runtime of Object.keys(RUNTIMES)) {
  test(`${runtime}: embeddings.create gives sentence-transformers' vectors (Qwen3-Embedding and EmbeddingGemma styles, each from safetensors and GGUF)`, async () => {
    const hub = await startMockHub({ repos: fixtureRepos() });
    const cacheDir = mkdtempSync(join(tmpdir(), `emberlm-embed-${runtime}-`));
    dirs.push(cacheDir);
    try {
      for (const [repo, fixture] of [
        ['emberlm-test/tiny-qwen3-embedding', 'qwen3-embedding'],
        ['emberlm-test/tiny-qwen3-embedding-GGUF', 'qwen3-embedding'],
        ['emberlm-test/tiny-embeddinggemma-GGUF', 'gemma-embedding'],
        ['emberlm-test/tiny-embeddinggemma', 'gemma-embedding'],
      ]) {
        const ref = embedRef(fixture);
        const texts = ref.cases.map((c) => c.text);
        const r = await run(runtime, [hub.url, repo, cacheDir, DEVICE[runtime], ...texts], { script: 'embed.mjs' });
        assert.equal(r.all.object, 'list');
        assert.deepEqual(r.all.data.map((d) => d.index), texts.map((_, i) => i));
        r.all.data.forEach((d, i) => assert.ok(cosine(d.embedding, ref.cases[i].embedding) >= 0.9999, `${repo} ${i}: ${cosine(d.embedding, ref.cases[i].embedding)}`));
        assert.equal(r.all.usage.prompt_tokens, ref.cases.reduce((s, c) => s + c.ids.length, 0));
        const short = r.short.data[0].embedding;
        assert.equal(short.length, 16);
        assert.ok(Math.abs(Math.hypot(...short) - 1) < 1e-6 && cosine(short, ref.cases[0].embedding.slice(0, 16)) > 0.9999);
        assert.equal(r.refused, 'bad-request');
      }
    } finally {
      await hub.close();
    }
  });
}

test('node without a WebGPU adapter: device webgpu is a clear no-webgpu error before any download; auto goes on with the CPU', async () => {
  const forced = await run('node', ['webgpu'], { script: 'no-adapter.mjs', icd: '/nonexistent/icd.json' });
  assert.equal(forced.code, 'no-webgpu');
  assert.match(forced.message, /no adapter/);
  // auto picks the CPU backend and gets as far as the (absent) Hub.
  const auto = await run('node', [], { script: 'no-adapter.mjs', icd: '/nonexistent/icd.json' });
  assert.notEqual(auto.code, 'no-webgpu', JSON.stringify(auto));
  assert.match(auto.message, /127\.0\.0\.1:9|fetch|connect/i, JSON.stringify(auto));
});

for (const runtime of Object.keys(RUNTIMES)) {
  test(`${runtime}: every CPU-backend op of the wasm build matches the reference`, async () => {
    const report = await run(runtime, [], { script: 'cpu-selftest.mjs' });
    assert.match(report.device, /simd128/);
    assert.ok(report.checks.length >= 4, JSON.stringify(report));
    assert.deepEqual(report.checks.filter((c) => !c.passed), []);
  });
}

for (const runtime of Object.keys(RUNTIMES)) {
  test(`${runtime}: a trap in the engine's wasm fails that engine cleanly ('crashed'), and the next engine works`, async () => {
    const cacheDir = mkdtempSync(join(tmpdir(), `emberlm-crash-${runtime}-`));
    dirs.push(cacheDir);
    const crashing = crashingTokenizerRepo();
    dirs.push(crashing.dir);
    const hub = await startMockHub({ repos: { ...fixtureRepos(), ...crashing.repos } });
    let r;
    try {
      r = await run(runtime, [hub.url, CRASHING_REPO, 'emberlm-test/tiny-qwen2-GGUF', cacheDir, want.text, String(want.generated_ids.length)], { script: 'crash.mjs' });
    } finally {
      await hub.close();
    }
    assert.equal(r.first.code, 'crashed', JSON.stringify(r.first));
    // The panic's own message, from inside the tokenizers crate, reaches the error.
    assert.match(r.first.message, /index out of bounds|out of range/i, r.first.message);
    assert.match(r.first.message, /load the model again/);
    assert.equal(r.again.code, 'crashed');
    assert.equal(r.encode.code, 'crashed');
    assert.equal(r.unload.code, 'none', 'unload still resolves');
    assert.deepEqual(r.tokens, want.generated_ids, 'the next engine runs on a fresh module and matches transformers');
  });
}
