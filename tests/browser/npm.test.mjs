// The npm package in headless Chromium against the mock Hub (`device: 'auto'` takes the CPU
// backend on SwiftShader; the tests marked WebGPU force it, so both paths run): download
// and generate in the Web Worker (OPFS cache) and in the page (Cache API), reload and load from
// the cache with the Hub stopped, delete, recover from injected faults, stream, abort.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { rmSync } from 'node:fs';
import { CRASHING_REPO, crashingTokenizerRepo, fixtureRepos, reference, ROOT } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { openTestPage } from './chromium.mjs';
import { GGUF, LLAMA, assertStreamAbortUnload, loadAndGenerate as loadInPage, llama, multiTurnChat, qwen, streamAbortUnload } from './engine-checks.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
let session;
let hub;
let port;
const crashing = crashingTokenizerRepo();

async function hubUp() {
  hub = await startMockHub({ repos: { ...fixtureRepos(), ...crashing.repos }, port });
  port = Number(new URL(hub.url).port);
}

before(async () => {
  assert.ok(existsSync(join(root, 'npm', 'dist', 'index.js')), 'build the npm package first (npm run build in npm/)');
  await hubUp();
  session = await openTestPage(root, '/tests/browser/npm.html', 'emberlm');
});
after(async () => {
  await session?.close();
  await hub?.close();
  rmSync(crashing.dir, { recursive: true, force: true });
});

/** Loads `repo` in the page, generates greedily from `prompt`, returns what the test checks. */
const loadAndGenerate = (repo, prompt, maxTokens, options = {}) => loadInPage(session.page, { repo, hubUrl: hub.url, prompt, maxTokens, options });

const cachedRepos = () => session.page.evaluate(async () => (await window.emberlm.listCachedModels()).map((m) => `${m.repo}@${m.revision}:${m.bytes}`));

test('worker + OPFS: a GGUF from the mock Hub generates transformers\' greedy tokens', async () => {
  const r = await loadAndGenerate(GGUF, qwen.text, qwen.generated_ids.length);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.deepEqual(r.ids, qwen.input_ids);
  assert.deepEqual(r.tokens, qwen.generated_ids);
  assert.equal(r.info.fromCache, false);
  assert.equal(r.info.device.backend, 'cpu', JSON.stringify(r.info.device));
  assert.match(r.info.device.reason, /software/i);
  assert.match(r.info.device.name, /^cpu \(1 thread, simd128\+relaxed\)$/);
  assert.match(r.info.device.reason, /one thread: the page is not cross-origin isolated/, 'the one-thread reason is given');
  assert.deepEqual(r.phases, ['download', 'upload', 'compile', 'ready']);
  assert.deepEqual(await cachedRepos(), [`${GGUF}@main:444096`]);
  assert.equal(await session.page.evaluate(async () => (await window.emberlm.openCache()).kind), 'opfs');
});

test('after a reload with the Hub stopped, the model loads from the cache; deleting it makes loading fail clearly', async () => {
  await hub.close();
  await session.page.reload();
  await session.page.waitForFunction(() => window.emberlm !== undefined);
  const r = await loadAndGenerate(GGUF, qwen.text, qwen.generated_ids.length);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.info.fromCache, true);
  assert.deepEqual(r.tokens, qwen.generated_ids);
  assert.ok(!r.phases.includes('download'));

  const freed = await session.page.evaluate((hubUrl) => window.emberlm.deleteCachedModel('emberlm-test/tiny-qwen2-GGUF', { hub: hubUrl }), hub.url);
  assert.equal(freed > 444096, true, `freed ${freed}`);
  assert.deepEqual(await cachedRepos(), []);
  const gone = await loadAndGenerate(GGUF, qwen.text, 4);
  assert.equal(gone.error?.code, 'offline', JSON.stringify(gone));
  await hubUp();
});

test('dropped connections, truncated and corrupted bodies and 500s are recovered from; persistent corruption leaves nothing cached', async () => {
  hub.inject({ match: '/__lfs/', kind: 'drop', at: 0.3 });
  hub.inject({ match: '/__lfs/', kind: 'truncate', at: 0.6 });
  hub.inject({ match: '/__lfs/', kind: 'corrupt' });
  hub.inject({ match: '/tree/', kind: 'status', status: 503 });
  const r = await loadAndGenerate(GGUF, qwen.text, 4);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.deepEqual(r.tokens, qwen.generated_ids.slice(0, 4));
  assert.equal(r.info.fromCache, false);

  hub.inject({ match: '/__lfs/', kind: 'corrupt', times: 20 });
  const bad = await loadAndGenerate(LLAMA, llama.text, 4, { dtype: 'f32' });
  assert.equal(bad.error?.code, 'integrity', JSON.stringify(bad));
  assert.deepEqual(await cachedRepos(), [`${GGUF}@main:444096`]);
  hub.clearFaults();
});

test('in the page (Cache API), WebGPU forced: sharded safetensors generate the reference tokens on SwiftShader', async () => {
  const r = await loadAndGenerate(LLAMA, llama.text, llama.generated_ids.length, { dtype: 'f32', worker: false, cache: 'cache-api', device: 'webgpu' });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.deepEqual(r.tokens, llama.generated_ids);
  assert.equal(r.info.device.backend, 'webgpu');
  assert.match(r.info.device.name, /^webgpu /);
  // Four text files + the index, three shards and the manifest, under the Cache API (not OPFS).
  assert.equal(await session.page.evaluate(async () => (await (await caches.open('emberlm')).keys()).length), 9);
});

test('profile: true reports the time per op kind of the prefill and of the decode, on WebGPU and on the CPU', async () => {
  for (const device of ['webgpu', 'cpu']) {
    const r = await session.page.evaluate(
      async ({ repo, hubUrl, prompt, device }) => {
        const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 128, device });
        const profiled = await engine.generate(prompt, { temperature: 0, max_tokens: 4, ignore_eos: true, profile: true });
        const plain = await engine.generate(prompt, { temperature: 0, max_tokens: 4, ignore_eos: true });
        await engine.unload();
        return { profiled, plain };
      },
      { repo: GGUF, hubUrl: hub.url, prompt: qwen.text, device },
    );
    const { profiled, plain } = r;
    assert.deepEqual(profiled.tokens, qwen.generated_ids.slice(0, 4), `${device}: profiling changes no token`);
    assert.deepEqual(plain.tokens, profiled.tokens);
    assert.equal(plain.usage.extra.profile, undefined, 'no profile unless asked for');
    const p = profiled.usage.extra.profile;
    assert.ok(p, `${device}: a profile`);
    assert.equal(p.prefill.tokens, qwen.input_ids.length);
    assert.equal(p.decode.tokens, 3);
    const op = (phase, name) => phase.ops.find((o) => o.op === name) ?? assert.fail(`${device}: no ${name} in ${JSON.stringify(phase.ops)}`);
    // The CPU names its matvecs by weight format (`matvec q8`), WebGPU has one kernel.
    const matvecMs = p.decode.ops.filter((o) => o.op.startsWith('matvec')).reduce((sum, o) => sum + o.ms, 0);
    assert.ok(op(p.prefill, 'matmul').ms > 0 && matvecMs > 0, JSON.stringify(p));
    // One argmax per step: the prefill's, then one per decoded token.
    assert.equal(op(p.prefill, 'argmax').calls, 1);
    assert.equal(op(p.decode, 'argmax').calls, 3);
    if (device === 'webgpu') assert.ok(op(p.decode, '(cpu) encode').calls >= 3, JSON.stringify(p.decode));
  }
});

test('worker + OPFS: a GGUF with a 60k-token vocabulary is parsed from a few large reads, through a sync access handle', async () => {
  const BIG = 'emberlm-test/tiny-llama-bigvocab-GGUF';
  for (const fromCache of [false, true]) {
    const r = await loadAndGenerate(BIG, llama.text, llama.generated_ids.length);
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    assert.equal(r.info.fromCache, fromCache);
    // The 60k appended tokens are unreachable: the original model's ids and greedy tokens.
    assert.deepEqual(r.ids, llama.input_ids);
    assert.deepEqual(r.tokens, llama.generated_ids);
    const l = r.info.load;
    assert.equal(l.reader, 'sync-access-handle', JSON.stringify(l));
    // A 1.5 MB header: the 1 MiB and 2 MiB read windows (one read per value was ~240k reads).
    assert.ok(l.headerReads >= 1 && l.headerReads <= 3, JSON.stringify(l));
    // Then one read per tensor (22 tensors, each under one 8 MiB piece).
    assert.ok(l.reads <= l.headerReads + 22, JSON.stringify(l));
    assert.equal(l.readBytes >= 1785728 - 1505888, true, JSON.stringify(l));
    for (const k of ['filesMs', 'headerMs', 'tokenizerMs', 'deviceMs', 'uploadMs', 'compileMs']) assert.ok(l[k] >= 0 && Number.isFinite(l[k]), `${k}: ${JSON.stringify(l)}`);
  }
  await session.page.evaluate((hubUrl) => window.emberlm.deleteCachedModel('emberlm-test/tiny-llama-bigvocab-GGUF', { hub: hubUrl }), hub.url);
});

test('worker streaming: chunks arrive one by one, an AbortSignal stops the reply and the engine stays usable', async () => {
  assertStreamAbortUnload(assert, await streamAbortUnload(session.page, { repo: GGUF, hubUrl: hub.url }));
});

test('multi-turn chat: the next turn prefills only what it adds (its opening run ahead after the reply), a regenerate only its last token, and both reply as a fresh engine does', async () => {
  const r = await multiTurnChat(session.page, { repo: GGUF, hubUrl: hub.url });
  assert.equal(r.turn1.cached, 0);
  assert.equal(r.fromScratch.cached, 0);
  // The whole first prompt is shared (the reply and the new message follow it).
  assert.ok(r.turn2.cached >= r.turn1.prompt && r.turn2.cached < r.turn2.prompt, JSON.stringify(r));
  // Run ahead: the reply's last token and the template's turn markers were in the cache too.
  assert.ok(r.turn2.cached > r.notAhead.cached && r.notAhead.cached >= r.turn1.prompt, JSON.stringify(r));
  assert.equal(r.regenerated.cached, r.turn2.prompt - 1);
  assert.equal(r.turn2.text, r.fromScratch.text);
  assert.equal(r.notAhead.text, r.fromScratch.text);
  assert.equal(r.regenerated.text, r.fromScratch.text);
});

/**
 * A newer family through the npm package: transformers' greedy tokens from its GGUF on the CPU
 * backend (auto) and from its safetensors on WebGPU (SwiftShader); a chat follow-up reuses the
 * conversation (for rolling states: the state at its end, or the checkpoint before the last
 * prompt's end), a regenerate all but the last token, and both reply as a fresh engine does.
 */
async function familyThroughNpm(family, architecture = family) {
  const ref = reference(family).cases[0];
  const cpu = await loadAndGenerate(`emberlm-test/tiny-${family}-GGUF`, ref.text, ref.generated_ids.length);
  assert.equal(cpu.error, undefined, JSON.stringify(cpu.error));
  assert.equal(cpu.info.architecture, architecture);
  assert.equal(cpu.info.device.backend, 'cpu');
  assert.deepEqual(cpu.ids, ref.input_ids);
  assert.deepEqual(cpu.tokens, ref.generated_ids);
  const gpu = await loadAndGenerate(`emberlm-test/tiny-${family}`, ref.text, ref.generated_ids.length, { device: 'webgpu', dtype: 'f32' });
  assert.equal(gpu.error, undefined, JSON.stringify(gpu.error));
  assert.equal(gpu.info.device.backend, 'webgpu');
  assert.deepEqual(gpu.tokens, ref.generated_ids);
  const r = await multiTurnChat(session.page, { repo: `emberlm-test/tiny-${family}-GGUF`, hubUrl: hub.url });
  assert.ok(r.turn2.cached >= r.turn1.prompt - 1 && r.turn2.cached < r.turn2.prompt, JSON.stringify(r));
  // The next turn's opening runs ahead of a KV cache, not of a rolling state (it would move the
  // checkpoint a regenerate restarts from).
  if (['lfm2', 'mamba2'].includes(family)) assert.equal(r.turn2.cached, r.notAhead.cached, JSON.stringify(r));
  else assert.ok(r.turn2.cached > r.notAhead.cached, JSON.stringify(r));
  assert.equal(r.notAhead.text, r.fromScratch.text);
  assert.equal(r.regenerated.cached, r.turn2.prompt - 1, JSON.stringify(r));
  assert.equal(r.turn2.text, r.fromScratch.text);
  assert.equal(r.regenerated.text, r.fromScratch.text);
}

// LFM2: short convolutions between attention layers.
test('worker: LFM2 gives transformers\' tokens on the CPU and WebGPU; a follow-up and a regenerate reuse its rolling state', () => familyThroughNpm('lfm2'));

// Mamba2: state-space layers only (a convolution state and a scan state per layer; a WebGPU
// prefill runs the chunked scan).
test('worker: Mamba2 gives transformers\' tokens on the CPU and WebGPU; a follow-up and a regenerate reuse its scan state', () => familyThroughNpm('mamba2'));

// Qwen3-MoE: a mixture of experts (the router's picks stay on the GPU; the CPU backend groups
// a prefill's tokens by expert), one dense layer among them.
test('worker: Qwen3-MoE gives transformers\' tokens on the CPU and WebGPU; a follow-up and a regenerate reuse its KV cache', () => familyThroughNpm('qwen3moe', 'qwen3_moe'));

// DeepSeek-V3: multi-head latent attention (a cache of one latent row per position), a
// sigmoid router limited to the best groups, a shared expert.
test('worker: DeepSeek-V3 gives transformers\' tokens on the CPU and WebGPU; a follow-up and a regenerate reuse its latent cache', () => familyThroughNpm('deepseek3', 'deepseek_v3'));

/**
 * A long prompt with `onPrefill`: read in pieces of 128 tokens, each reported (in order, short of
 * the whole), and the reply is the one the same prompt gets in one step; the usage counts no
 * cached tokens for a fresh conversation, and the whole prompt as cached for a regenerate.
 * On the CPU backend (auto) and WebGPU, Qwen2-style (attention) and Mamba2 (rolling state).
 */
test('worker: onPrefill reports a long prompt\'s prefill in pieces, and the reply is the one-step reply', async () => {
  for (const [repo, device] of [[GGUF, 'auto'], ['emberlm-test/tiny-mamba2-GGUF', 'webgpu']]) {
    const r = await session.page.evaluate(
      async ({ repo, hubUrl, device }) => {
        const text = Array.from({ length: 60 }, (_, i) => `Line ${i}: the quick brown fox jumps over the lazy dog.`).join('\n');
        const request = { messages: [{ role: 'user', content: text }], max_tokens: 8, temperature: 0 };
        const once = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 2048, device, dtype: 'f32' });
        const plain = await once.chat.completions.create(request);
        await once.unload();
        const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 2048, device, dtype: 'f32' });
        const events = [];
        const pieces = await engine.chat.completions.create(request, { onPrefill: (done, total) => events.push([done, total]) });
        const again = [];
        const regenerated = await engine.chat.completions.create(request, { onPrefill: (done, total) => again.push([done, total]) });
        let refused = null;
        try {
          await engine.chat.completions.create(request, { onPrefill: 'yes' });
        } catch (e) {
          refused = e.code;
        }
        await engine.unload();
        const reply = (c) => c.choices[0].message.content;
        return { plain: reply(plain), pieces: reply(pieces), regenerated: reply(regenerated), events, again, usage: [pieces.usage, regenerated.usage], refused };
      },
      { repo, hubUrl: hub.url, device },
    );
    const total = r.usage[0].prompt_tokens;
    assert.ok(total > 256, `a long prompt (${total} tokens)`);
    assert.deepEqual(r.events.map((e) => e[1]), r.events.map(() => total));
    assert.deepEqual(r.events.map((e) => e[0]), Array.from({ length: Math.floor((total - 2) / 128) }, (_, i) => 128 * (i + 1)), JSON.stringify(r.events));
    assert.equal(r.pieces, r.plain, `${repo}: the reply read in pieces is the one-step reply`);
    assert.equal(r.usage[0].prompt_tokens_details.cached_tokens, 0);
    // The regenerate finds all but the last token cached (a rolling state's checkpoint too).
    assert.equal(r.usage[1].prompt_tokens_details.cached_tokens, total - 1, JSON.stringify(r.usage[1]));
    assert.equal(r.regenerated, r.plain);
    assert.equal(r.refused, 'bad-request');
  }
});

test('worker: logprobs ride with the streamed text and equal the non-streamed response\'s; the first is transformers\' log-softmax', async () => {
  const r = await session.page.evaluate(
    async ({ repo, hubUrl, prompt }) => {
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 128 });
      const request = { messages: [{ role: 'user', content: prompt }], max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 };
      const chunks = [];
      for await (const c of await engine.chat.completions.create({ ...request, stream: true })) {
        chunks.push({ text: c.choices[0].delta.content ?? '', logprobs: c.choices[0].logprobs });
      }
      const whole = await engine.chat.completions.create(request);
      const raw = await engine.generate(prompt, { temperature: 0, max_tokens: 2, ignore_eos: true, logprobs: true });
      await engine.unload();
      return { chunks, whole: whole.choices[0], raw: { logprobs: raw.logprobs, tokens: raw.tokens } };
    },
    { repo: GGUF, hubUrl: hub.url, prompt: qwen.text },
  );
  const streamed = r.chunks.flatMap((c) => c.logprobs?.content ?? []);
  assert.ok(streamed.length > 0 && r.chunks.every((c) => c.logprobs === null || c.text !== ''), 'entries arrive with text');
  const round = (entries) => JSON.parse(JSON.stringify(entries, (k, v) => (k === 'logprob' ? Math.round(v * 1e4) / 1e4 : v)));
  assert.deepEqual(round(streamed), round(r.whole.logprobs.content));
  assert.ok(r.whole.logprobs.content.every((e) => e.top_logprobs.length === 2));
  const logits = qwen.last_logits;
  const max = Math.max(...logits);
  const logTotal = max + Math.log(logits.reduce((sum, v) => sum + Math.exp(v - max), 0));
  assert.equal(r.raw.tokens[0], qwen.generated_ids[0]);
  assert.ok(Math.abs(r.raw.logprobs[0].logprob - (logits[r.raw.tokens[0]] - logTotal)) < 1e-3, JSON.stringify(r.raw.logprobs[0]));
  assert.deepEqual(r.raw.logprobs[0].top_logprobs, []);
});

test('worker: response_format json_schema makes a noise model\'s sampled replies, and its greedy one on WebGPU (the mask on the GPU), parse and fit the schema; a bad schema is a clear error', async () => {
  const r = await session.page.evaluate(
    async ({ repo, hubUrl }) => {
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 256 });
      const schema = { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'integer', minimum: 1, maximum: 3 } }, required: ['ok', 'n'], additionalProperties: false };
      const replies = [];
      // Greedy on WebGPU: each step's mask is uploaded and the token picked on the GPU.
      const gpu = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 256, device: 'webgpu' });
      const greedy = await gpu.chat.completions.create({
        messages: [{ role: 'user', content: 'Hello world, this is a tiny model.' }],
        temperature: 0,
        max_tokens: 60,
        response_format: { type: 'json_schema', json_schema: { name: 'x', schema } },
      });
      replies.push({ text: greedy.choices[0].message.content, finish: greedy.choices[0].finish_reason });
      await gpu.unload();
      for (const seed of [1, 2]) {
        const c = await engine.chat.completions.create({
          messages: [{ role: 'user', content: 'Hello world, this is a tiny model.' }],
          temperature: 1,
          seed,
          max_tokens: 60,
          response_format: { type: 'json_schema', json_schema: { name: 'x', schema } },
        });
        replies.push({ text: c.choices[0].message.content, finish: c.choices[0].finish_reason });
      }
      let error;
      try {
        await engine.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { schema: { type: 'frobnicate' } } } });
      } catch (e) {
        error = `${e.code}: ${e.message}`;
      }
      await engine.unload();
      return { replies, error };
    },
    { repo: GGUF, hubUrl: hub.url },
  );
  for (const { text, finish } of r.replies) {
    assert.equal(finish, 'stop', text);
    const v = JSON.parse(text);
    assert.ok(typeof v.ok === 'boolean' && [1, 2, 3].includes(v.n) && Object.keys(v).length === 2, text);
  }
  assert.match(r.error ?? '', /^bad-request: output constraint/);
});

test('worker: tools with tool_choice required give message.tool_calls (streamed as delta.tool_calls), and the call and its result go back into the template', async () => {
  const r = await session.page.evaluate(
    async ({ repo, hubUrl }) => {
      // Qwen2.5's template (in the tiny GGUF) writes ~850 tiny-vocabulary tokens of tool preamble.
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 1280 });
      const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 8 } }, required: ['city'], additionalProperties: false } } }];
      const messages = [{ role: 'user', content: 'Weather in Paris?' }];
      const request = { messages, tools, tool_choice: 'required', temperature: 1, seed: 4, max_tokens: 100 };
      const whole = (await engine.chat.completions.create(request)).choices[0];
      const deltas = [];
      let finish;
      for await (const c of await engine.chat.completions.create({ ...request, stream: true })) {
        deltas.push(...(c.choices[0].delta.tool_calls ?? []));
        finish = c.choices[0].finish_reason ?? finish;
      }
      const call = whole.message.tool_calls[0];
      const next = await engine.chat.completions.create({
        messages: [...messages, whole.message, { role: 'tool', tool_call_id: call.id, content: '21 C' }],
        tools,
        temperature: 0,
        max_tokens: 3,
      });
      await engine.unload();
      return { whole, deltas, finish, next: next.choices[0].finish_reason };
    },
    { repo: GGUF, hubUrl: hub.url },
  );
  const calls = r.whole.message.tool_calls;
  assert.equal(r.whole.finish_reason, 'tool_calls', JSON.stringify(r.whole));
  assert.equal(r.whole.message.content, null);
  assert.equal(calls.length, 1, JSON.stringify(calls));
  assert.equal(calls[0].function.name, 'get_weather');
  const args = JSON.parse(calls[0].function.arguments);
  assert.ok(typeof args.city === 'string' && [...args.city].length <= 8, calls[0].function.arguments);
  assert.deepEqual(r.deltas.map((d) => [d.index, d.function.name, d.function.arguments]), [[0, 'get_weather', calls[0].function.arguments]]);
  assert.equal(r.finish, 'tool_calls');
  assert.ok(['stop', 'length', 'tool_calls'].includes(r.next), r.next);
});

test('worker: embeddings.create gives sentence-transformers\' vectors: Qwen3-Embedding style (safetensors with its modules) and EmbeddingGemma style (GGUF, and safetensors with its Dense modules: bidirectional, dense projections)', async () => {
  const refOf = (name) => JSON.parse(readFileSync(join(ROOT, 'tests', 'fixtures', 'tiny', name, 'reference.json'), 'utf8'));
  const [qwen, gemma] = [refOf('qwen3-embedding'), refOf('gemma-embedding')];
  const r = await session.page.evaluate(
    async ({ hubUrl, texts, gemmaTexts }) => {
      const engine = await window.emberlm.createEngine('emberlm-test/tiny-qwen3-embedding', { hub: hubUrl, context: 128, dtype: 'f32' });
      const out = await engine.embeddings.create({ input: texts });
      const gemmaEngine = await window.emberlm.createEngine('emberlm-test/tiny-embeddinggemma-GGUF', { hub: hubUrl, context: 128 });
      const gemmaOut = await gemmaEngine.embeddings.create({ input: gemmaTexts });
      await gemmaEngine.unload();
      // Its safetensors with the sentence-transformers modules, Dense projections fetched.
      const stEngine = await window.emberlm.createEngine('emberlm-test/tiny-embeddinggemma', { hub: hubUrl, context: 128, dtype: 'f32' });
      const stOut = await stEngine.embeddings.create({ input: gemmaTexts });
      await stEngine.unload();
      // A Dense module without its weights: a clear error, not vectors that skip it.
      let denseRefused;
      try {
        await window.emberlm.createEngine('emberlm-test/tiny-embeddinggemma-no-dense-weights', { hub: hubUrl, context: 128 });
      } catch (e) {
        denseRefused = `${e.code}: ${e.message}`;
      }
      let refused;
      try {
        const chatModel = await window.emberlm.createEngine('emberlm-test/tiny-qwen2-GGUF', { hub: hubUrl, context: 64 });
        try {
          await chatModel.embeddings.create({ input: 'x' });
        } finally {
          await chatModel.unload();
        }
      } catch (e) {
        refused = `${e.code}: ${e.message}`;
      }
      await engine.unload();
      return { out, gemmaOut, stOut, denseRefused, refused };
    },
    { hubUrl: hub.url, texts: qwen.cases.map((c) => c.text), gemmaTexts: gemma.cases.map((c) => c.text) },
  );
  const cosine = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / Math.hypot(...a) / Math.hypot(...b);
  for (const [out, ref] of [[r.out, qwen], [r.gemmaOut, gemma], [r.stOut, gemma]]) {
    assert.equal(out.data.length, ref.cases.length);
    out.data.forEach((d, i) => assert.ok(cosine(d.embedding, ref.cases[i].embedding) >= 0.9999, `${i}: ${cosine(d.embedding, ref.cases[i].embedding)}`));
  }
  assert.match(r.denseRefused ?? '', /the Dense module 3_Dense's files were not given/);
  assert.match(r.refused ?? '', /^bad-request: .*not an embedding model/);
});

test('unload() during a generation stops it at the next token instead of waiting for the whole reply', async () => {
  const r = await session.page.evaluate(
    async ({ repo, hubUrl }) => {
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 256 });
      const messages = [{ role: 'user', content: 'Hello world, this is a tiny model.' }];
      const chunks = [];
      let unloaded;
      let finish;
      try {
        for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 200, temperature: 0, ignore_eos: true })) {
          chunks.push(c);
          if (chunks.length === 3) unloaded = engine.unload();
          finish = c.choices[0].finish_reason ?? finish;
        }
      } catch (e) {
        finish = e.code;
      }
      await unloaded;
      return { chunks: chunks.length, finish };
    },
    { repo: GGUF, hubUrl: hub.url },
  );
  assert.ok(r.chunks < 100, JSON.stringify(r));
  assert.ok(['abort', 'unloaded'].includes(r.finish), JSON.stringify(r));
});

test('worker: a trap in the engine\'s wasm fails that engine with `crashed` (its worker ended) and the next engine works', async () => {
  const r = await session.page.evaluate(
    async ({ bad, good, hubUrl, prompt, maxTokens }) => {
      const outcome = async (call) => {
        try {
          await call();
          return { code: 'none' };
        } catch (e) {
          return { code: e.code, message: e.message };
        }
      };
      const engine = await window.emberlm.createEngine(bad, { hub: hubUrl, context: 64 });
      const first = await outcome(() => engine.generate(prompt, { max_tokens: 4 }));
      const again = await outcome(() => engine.chat.completions.create({ messages: [{ role: 'user', content: prompt }], max_tokens: 4 }));
      const unload = await outcome(() => engine.unload());
      const next = await window.emberlm.createEngine(good, { hub: hubUrl, context: 64 });
      const greedy = await next.generate(prompt, { temperature: 0, max_tokens: maxTokens });
      await next.unload();
      return { first, again, unload, tokens: greedy.tokens };
    },
    { bad: CRASHING_REPO, good: GGUF, hubUrl: hub.url, prompt: qwen.text, maxTokens: qwen.generated_ids.length },
  );
  assert.equal(r.first.code, 'crashed', JSON.stringify(r.first));
  assert.match(r.first.message, /index out of bounds/, 'the panic inside the tokenizers crate is named');
  assert.equal(r.again.code, 'crashed', JSON.stringify(r.again));
  assert.equal(r.unload.code, 'none');
  assert.deepEqual(r.tokens, qwen.generated_ids);
});
