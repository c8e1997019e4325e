// The npm package in headless Chromium (WebGPU on SwiftShader) against the mock Hub: download
// and generate in the Web Worker (OPFS cache) and in the page (Cache API), reload and load from
// the cache with the Hub stopped, delete, recover from injected faults, stream, abort.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fixtureRepos, reference } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { openTestPage } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const GGUF = 'emberlm-test/tiny-qwen2-GGUF';
const LLAMA = 'emberlm-test/tiny-llama';
const qwen = reference('qwen2').cases[0];
const llama = reference('llama').cases[1];
let session;
let hub;
let port;

async function hubUp() {
  hub = await startMockHub({ repos: fixtureRepos(), port });
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
});

/** Loads `repo` in the page, generates greedily from `prompt`, returns what the test checks. */
function loadAndGenerate(repo, prompt, maxTokens, options = {}) {
  return session.page.evaluate(
    async ({ repo, prompt, maxTokens, options, hubUrl }) => {
      const phases = [];
      try {
        const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 128, ...options, onProgress: (p) => phases.includes(p.phase) || phases.push(p.phase) });
        const r = await engine.generate(prompt, { temperature: 0, max_tokens: maxTokens });
        const ids = await engine.tokenizer.encode(prompt);
        await engine.unload();
        return { info: engine.info, tokens: r.tokens, ids, phases };
      } catch (e) {
        return { error: { code: e.code, message: e.message }, phases };
      }
    },
    { repo, prompt, maxTokens, options, hubUrl: hub.url },
  );
}

const cachedRepos = () => session.page.evaluate(async () => (await window.emberlm.listCachedModels()).map((m) => `${m.repo}@${m.revision}:${m.bytes}`));

test('worker + OPFS: a GGUF from the mock Hub generates transformers\' greedy tokens', async () => {
  const r = await loadAndGenerate(GGUF, qwen.text, qwen.generated_ids.length);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.deepEqual(r.ids, qwen.input_ids);
  assert.deepEqual(r.tokens, qwen.generated_ids);
  assert.equal(r.info.fromCache, false);
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

test('in the page (Cache API): sharded safetensors generate the reference tokens', async () => {
  const r = await loadAndGenerate(LLAMA, llama.text, llama.generated_ids.length, { dtype: 'f32', worker: false, cache: 'cache-api' });
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.deepEqual(r.tokens, llama.generated_ids);
  // Four text files + the index, three shards and the manifest, under the Cache API (not OPFS).
  assert.equal(await session.page.evaluate(async () => (await (await caches.open('emberlm')).keys()).length), 9);
});

test('worker streaming: chunks arrive one by one, an AbortSignal stops the reply and the engine stays usable', async () => {
  const r = await session.page.evaluate(
    async ({ repo, hubUrl }) => {
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 128 });
      const messages = [{ role: 'user', content: 'Hello world, this is a tiny model.' }];
      const full = [];
      for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 12, temperature: 0 })) full.push(c);
      const ctl = new AbortController();
      const cut = [];
      for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 40, temperature: 0 }, { signal: ctl.signal })) {
        cut.push(c);
        if (cut.length === 3) ctl.abort();
      }
      const after = await engine.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
      await engine.unload();
      let unloaded;
      try {
        await engine.generate('x');
      } catch (e) {
        unloaded = e.code;
      }
      const text = (cs) => cs.map((c) => c.choices[0].delta.content ?? '').join('');
      return {
        fullText: text(full),
        fullFinish: full.at(-1).choices[0].finish_reason,
        usage: full.at(-1).usage,
        firstRole: full[0].choices[0].delta.role,
        cutFinish: cut.at(-1).choices[0].finish_reason,
        cutTokens: cut.at(-1).usage.completion_tokens,
        after: after.choices[0].message.content,
        unloaded,
      };
    },
    { repo: GGUF, hubUrl: hub.url },
  );
  assert.equal(r.firstRole, 'assistant');
  assert.equal(r.fullFinish, 'length');
  assert.equal(r.usage.completion_tokens, 12);
  assert.ok(r.usage.extra.time_to_first_token_ms > 0);
  assert.equal(r.cutFinish, 'abort');
  assert.ok(r.cutTokens < 40, `stopped after ${r.cutTokens} tokens`);
  assert.equal(r.after, r.fullText, 'the next request after an abort is unaffected');
  assert.equal(r.unloaded, 'unloaded');
});
