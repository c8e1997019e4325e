// The wasm32 build of emberlm-core in headless Chromium: every kernel runs on the browser's
// WebGPU and is checked against the CPU reference (compiled into the same wasm), through the
// subgroup and the shared-memory reduction paths; and every op of the CPU backend (its wasm
// simd128 kernels) against the same reference.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openTestPage } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
let session;
let page;

before(async () => {
  assert.ok(existsSync(join(here, '..', '..', 'npm', 'wasm', 'emberlm_wasm.js')), 'run scripts/build-wasm.sh first (npm/wasm is missing)');
  session = await openTestPage(join(here, '..', '..'), '/tests/browser/kernels.html', 'emberlm');
  page = session.page;
});

after(async () => {
  await session?.close();
});

test('the browser offers a WebGPU adapter to the wasm build', async () => {
  const info = await page.evaluate(async () => (await window.emberlm).deviceInfo());
  console.log(`adapter: ${JSON.stringify(info)}`);
  // Browsers hide the adapter name; the backend says the wasm build went through WebGPU.
  assert.equal(info.backend, 'BrowserWebGpu');
  assert.ok(info.maxStorageBinding >= 128 * 1024 * 1024, 'the engine requests the adapter limits, not the defaults');
});

for (const allowSubgroups of [true, false]) {
  test(`every kernel matches the CPU reference in the browser (subgroups allowed: ${allowSubgroups})`, async () => {
    const report = await page.evaluate(async (allow) => (await window.emberlm).kernelSelfTest(allow), allowSubgroups);
    assert.equal(report.device.subgroups && !allowSubgroups, false);
    // wgpu 30's WebGPU backend does not map the `subgroups` feature yet, so browsers run the
    // shared-memory path whatever the adapter offers; natively both paths are tested.
    console.log(`subgroups in use: ${report.device.subgroups}`);
    for (const c of report.checks) {
      console.log(`${c.passed ? 'ok  ' : 'FAIL'} ${c.name}: max |err| ${c.maxAbsErr.toExponential(2)}, err/tol ${c.worstRatio.toFixed(3)} ${c.detail}`);
    }
    assert.ok(report.checks.length >= 20, `expected the whole suite, got ${report.checks.length} checks`);
    const failed = report.checks.filter((c) => !c.passed);
    assert.deepEqual(failed, [], `${failed.length} kernel checks failed in the browser`);
  });
}

test('every CPU-backend op (wasm simd128) matches the reference in the browser', async () => {
  const report = await page.evaluate(async () => (await window.emberlm).cpuSelfTest());
  console.log(`cpu backend: ${report.device}`);
  assert.match(report.device, /simd128\)$/);
  assert.ok(report.checks.length >= 4, JSON.stringify(report));
  const failed = report.checks.filter((c) => !c.passed);
  assert.deepEqual(failed, [], JSON.stringify(failed));
});

test('the relaxed-SIMD build shares the glue and its CPU ops match the reference too', async () => {
  const relaxed = await page.context().browser().newPage();
  try {
    await relaxed.goto(page.url() + '?relaxed');
    const report = await relaxed.evaluate(async () => (await window.emberlm).cpuSelfTest());
    console.log(`cpu backend (relaxed build): ${report.device}`);
    assert.match(report.device, /simd128\+relaxed\)$/);
    assert.ok(report.checks.length >= 4, JSON.stringify(report));
    const failed = report.checks.filter((c) => !c.passed);
    assert.deepEqual(failed, [], JSON.stringify(failed));
  } finally {
    await relaxed.close();
  }
});
