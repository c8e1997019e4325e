#!/usr/bin/env node
// Serves the chat page on 127.0.0.1 with the emberlm package beside it, and a local model
// server in the Hub's URL layout (the mock Hub of tests/mock-hub) holding the bundled models:
// SmolLM2-135M-Instruct (when scripts/setup.sh has fetched it) and the tiny test models. So the
// page runs on a machine with no Hub access; with access, the real Hub is its default.
//   node www/serve.mjs [--port 8080] [--host 127.0.0.1]
import { createServer } from 'node:http';
import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fixtureRepos } from '../tests/mock-hub/repos.mjs';
import { startMockHub } from '../tests/mock-hub/server.mjs';

const WWW = fileURLToPath(new URL('.', import.meta.url));

/**
 * Cross-origin isolation (COOP + COEP), so the page gets SharedArrayBuffer and the CPU backend
 * its threads. Every response carries them: the service worker replays them offline.
 */
const ISOLATION = { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };
/** The page's Content-Security-Policy, from its meta tag, sent as a header on every response too. */
const CSP = readFileSync(join(WWW, 'index.html'), 'utf8').match(/http-equiv="Content-Security-Policy" content="([^"]+)"/)[1];
const ROOT = join(WWW, '..');
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.webmanifest': 'application/manifest+json',
  '.svg': 'image/svg+xml',
  '.wasm': 'application/wasm',
};

/** URL path → file, for the page, the package and the vendored libraries; null = not served. */
function fileFor(path) {
  const vendor = {
    '/vendor/marked.js': 'node_modules/marked/lib/marked.esm.js',
    '/vendor/purify.js': 'node_modules/dompurify/dist/purify.es.mjs',
    '/vendor/idb-keyval.js': 'node_modules/idb-keyval/dist/index.js',
    '/vendor/highlight.js': 'node_modules/@highlightjs/cdn-assets/es/highlight.min.js',
  };
  if (vendor[path]) return join(WWW, vendor[path]);
  for (const [prefix, dir] of [
    ['/emberlm/dist/', join(ROOT, 'npm', 'dist')],
    ['/emberlm/wasm/', join(ROOT, 'npm', 'wasm')],
    ['/emberlm/wasm-threads/', join(ROOT, 'npm', 'wasm-threads')],
  ]) {
    if (path.startsWith(prefix)) return inside(dir, path.slice(prefix.length));
  }
  if (path.includes('node_modules') || path.endsWith('.mjs')) return null;
  return inside(WWW, path === '/' ? 'index.html' : path.slice(1));
}

function inside(dir, rel) {
  const file = normalize(join(dir, rel));
  return file.startsWith(normalize(dir + sep)) ? file : null;
}

/**
 * The bundled models the picker offers, as served by the local model server; `testModels`
 * adds the tiny random test model (for the page's tests: it babbles, so users never see it).
 */
export function bundledModels({ testModels = false } = {}) {
  const repos = fixtureRepos();
  const out = [];
  if (repos['HuggingFaceTB/SmolLM2-135M-Instruct-GGUF']) {
    const size = statSync(join(ROOT, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf')).size;
    // Q4_1 stays 4-bit on the GPU; plus a 2048-token f32 KV cache (30 layers × 2 × 3 × 64 × 4 B per token).
    out.push({ id: 'HuggingFaceTB/SmolLM2-135M-Instruct-GGUF', label: 'SmolLM2 135M Instruct (Q4_1, bundled)', download: size, memory: size + 2048 * 30 * 2 * 3 * 64 * 4 });
  }
  if (testModels) out.push({ id: 'emberlm-test/tiny-qwen2-GGUF', label: 'Tiny random Qwen2 (test model, babbles)', download: 444_096, memory: 4_000_000 });
  return out;
}

export async function startChatServer({ port = 0, host = '127.0.0.1', hubPort = 0, testModels = false, extraRepos = {} } = {}) {
  let hub = await startMockHub({ repos: { ...fixtureRepos(), ...extraRepos }, port: hubPort });
  const server = createServer(async (req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      // A malformed escape (`/%E0%A4%A`) is the client's error, never a reason to stop serving.
      res.writeHead(400).end();
      return;
    }
    if (path === '/config.json') {
      res.writeHead(200, { 'content-type': TYPES['.json'], 'cache-control': 'no-store', ...ISOLATION });
      res.end(JSON.stringify({ localHub: hub?.url ?? hubUrl, bundled: bundledModels({ testModels }) }));
      return;
    }
    const file = fileFor(path);
    try {
      if (!file) throw new Error('not served');
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-cache', 'content-security-policy': CSP, ...ISOLATION });
      res.end(body);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    }
  });
  await new Promise((r) => server.listen(port, host, r));
  const url = `http://${host}:${server.address().port}`;
  const hubUrl = hub.url;
  return {
    url,
    get hub() {
      return hub;
    },
    /** Takes the model route down (the page keeps working from its caches). */
    async stopModels() {
      await hub?.close();
      hub = null;
    },
    async startModels() {
      hub ??= await startMockHub({ repos: { ...fixtureRepos(), ...extraRepos }, port: Number(new URL(hubUrl).port) });
    },
    async close() {
      await hub?.close();
      await new Promise((r) => server.close(r));
    },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === normalize(process.argv[1])) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const port = Number(arg('--port', 8080));
  const s = await startChatServer({ port, host: arg('--host', '127.0.0.1'), hubPort: port + 1 });
  console.log(`emberlm chat: open ${s.url} in a browser with WebGPU (Chrome, Edge, Safari 26+)`);
  console.log(`local model server (Hub layout): ${s.hub.url}`);
  for (const m of bundledModels()) console.log(`  bundled: ${m.id}`);
}
