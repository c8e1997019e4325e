// The CPU backend's WebAssembly threads in headless Chromium: on a cross-origin isolated page
// (COOP/COEP) the engine worker loads the threads build and runs rayon's pool on Web Workers
// sharing its memory; transformers' greedy tokens come out whatever the thread count (more
// threads than cores included), every CPU op matches the f64 reference with the rows split
// over threads, and abort and unload still land. npm.test.mjs covers the one-thread page.
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fixtureRepos } from '../mock-hub/repos.mjs';
import { startMockHub } from '../mock-hub/server.mjs';
import { openTestPage } from './chromium.mjs';
import { GGUF, LLAMA, assertStreamAbortUnload, loadAndGenerate, llama, qwen, streamAbortUnload } from './engine-checks.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
let session;
let hub;

before(async () => {
  hub = await startMockHub({ repos: fixtureRepos() });
  session = await openTestPage(root, '/tests/browser/npm.html', 'emberlm', { isolated: true });
});
after(async () => {
  await session?.close();
  await hub?.close();
});

const generate = (repo, prompt, maxTokens, options = {}) => loadAndGenerate(session.page, { repo, hubUrl: hub.url, prompt, maxTokens, options });

test('an isolated page runs the CPU backend on one thread per core and generates the reference tokens', async () => {
  const r = await generate(GGUF, qwen.text, qwen.generated_ids.length);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(r.isolated, true);
  const threads = Math.min(r.cores, 16);
  assert.equal(r.info.device.backend, 'cpu');
  assert.equal(r.info.device.name, `cpu (${threads} thread${threads === 1 ? '' : 's'}, simd128+relaxed)`, JSON.stringify(r.info.device));
  assert.doesNotMatch(r.info.device.reason, /one thread/, 'no reason to fall back to one thread here');
  assert.deepEqual(r.tokens, qwen.generated_ids);
});

test('three threads (more than this machine has cores): GGUF and safetensors still give the reference tokens', async () => {
  // The pool is per worker realm and each engine has its own worker, so each load sizes its own.
  for (const [repo, c, dtype] of [
    [GGUF, qwen, 'auto'],
    [LLAMA, llama, 'f32'],
  ]) {
    const r = await generate(repo, c.text, c.generated_ids.length, { threads: 3, dtype });
    assert.equal(r.error, undefined, JSON.stringify(r.error));
    assert.equal(r.info.device.name, 'cpu (3 threads, simd128+relaxed)');
    assert.deepEqual(r.tokens, c.generated_ids, repo);
  }
});

test('every CPU-backend op matches the f64 reference with its rows split over three wasm threads', async () => {
  const report = await session.page.evaluate(
    () =>
      new Promise((resolve) => {
        const w = new Worker('/tests/browser/cpu-threads-selftest.mjs', { type: 'module' });
        w.onmessage = ({ data }) => {
          w.terminate();
          resolve(data);
        };
        w.onerror = (e) => resolve({ error: e.message });
        w.postMessage({ threads: 3 });
      }),
  );
  assert.equal(report.error, undefined, report.error);
  assert.match(report.device, /^cpu \(3 threads, simd128\+relaxed\)$/);
  assert.ok(report.checks.length >= 4, JSON.stringify(report));
  const failed = report.checks.filter((c) => !c.passed);
  assert.deepEqual(failed, [], JSON.stringify(failed));
});

test('a trap on a pool worker in the middle of a chunk fails the job in the engine\'s thread (a trap there too), instead of a wait for good', async () => {
  const report = await session.page.evaluate(
    () =>
      new Promise((resolve) => {
        const w = new Worker('/tests/browser/cpu-threads-selftest.mjs', { type: 'module' });
        const timer = setTimeout(() => resolve({ error: 'no answer within 30 s: the engine thread hangs' }), 30_000);
        w.onmessage = ({ data }) => {
          clearTimeout(timer);
          w.terminate();
          resolve(data);
        };
        w.onerror = (e) => resolve({ error: e.message });
        w.postMessage({ threads: 3, crash: true });
      }),
  );
  assert.equal(report.error, undefined, report.error);
  assert.equal(report.threw, 'RuntimeError', JSON.stringify(report));
  assert.ok(report.panics.some((p) => /a test panic on a CPU thread/.test(p)), JSON.stringify(report));
  assert.ok(report.panics.some((p) => /a CPU thread crashed/.test(p)), JSON.stringify(report));
});

test('with threads, an abort stops a streamed reply, the engine stays usable, and unload ends it', async () => {
  const r = await streamAbortUnload(session.page, { repo: GGUF, hubUrl: hub.url, options: { threads: 2 } });
  assert.equal(r.device, 'cpu (2 threads, simd128+relaxed)');
  assertStreamAbortUnload(assert, r);
});
