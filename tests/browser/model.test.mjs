// Models end to end in headless Chromium through the wasm build: tiny fixture models loaded
// from GGUF and from safetensors, greedy generation compared with transformers' tokens
// (tests/fixtures/tiny/<arch>/reference.json).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openTestPage } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
let session;
let page;

before(async () => {
  assert.ok(existsSync(join(here, '..', '..', 'npm', 'wasm', 'emberlm_wasm.js')), 'run scripts/build-wasm.sh first (npm/wasm is missing)');
  session = await openTestPage(join(here, '..', '..'), '/tests/browser/model.html', 'emberlmModels');
  page = session.page;
});

after(async () => {
  await session?.close();
});

const reference = (arch) => JSON.parse(readFileSync(join(here, '..', 'fixtures', 'tiny', arch, 'reference.json'), 'utf8'));

test('a GGUF model (qwen2) generates transformers\' greedy tokens in the browser, from text', async () => {
  const want = reference('qwen2').cases[0];
  const got = await page.evaluate(async (prompt) => {
    const m = await (await window.emberlmModels).gguf('/tests/fixtures/tiny/qwen2');
    const ids = Array.from(m.encode(prompt));
    return { arch: m.architecture(), ids, out: await m.generate(Uint32Array.from(ids), { maxNewTokens: 24 }) };
  }, want.text);
  assert.equal(got.arch, 'qwen2');
  assert.deepEqual(got.ids, want.input_ids);
  assert.deepEqual(got.out.generatedIds, want.generated_ids);
  console.log(`qwen2 gguf: ${got.out.generatedIds.length} tokens, decode ${got.out.decodeTokS.toFixed(1)} tok/s`);
});

test('a sharded safetensors model (llama, f32) matches transformers in the browser, with streaming callbacks', async () => {
  const want = reference('llama').cases[1];
  const index = JSON.parse(readFileSync(join(here, '..', 'fixtures', 'tiny', 'llama', 'model.safetensors.index.json'), 'utf8'));
  const files = [...new Set(Object.values(index.weight_map))].sort();
  const got = await page.evaluate(async ({ ids, files }) => {
    const m = await (await window.emberlmModels).safetensors('/tests/fixtures/tiny/llama', files, { dtype: 'f32', context: 64 });
    const streamed = [];
    const out = await m.generate(Uint32Array.from(ids), { maxNewTokens: 24 }, (id) => { streamed.push(id); return true; });
    const chat = m.applyChatTemplate([{ role: 'user', content: 'Hi there!' }], true);
    return { out, streamed, chat };
  }, { ids: want.input_ids, files });
  assert.deepEqual(got.out.generatedIds, want.generated_ids);
  assert.deepEqual(got.streamed, want.generated_ids);
  assert.ok(got.chat.startsWith('<|begin_of_text|><|start_header_id|>system<|end_header_id|>'), got.chat);
});

test('bad model bytes are a clear error in the browser, not a crash', async () => {
  const message = await page.evaluate(async () => {
    const { EmberModel } = await import('/npm/wasm/emberlm_wasm.js');
    const bytes = new Uint8Array([0x47, 0x47, 0x55, 0x46, 9, 0, 0, 0]);
    try {
      await EmberModel.fromGguf([{ name: 'bad.gguf', length: bytes.length, read: (o, n) => bytes.subarray(o, o + n) }]);
      return 'loaded';
    } catch (e) {
      return String(e);
    }
  });
  assert.match(message, /bad\.gguf: unsupported GGUF version 9/);
});
