// Offline-first app shell: the page, its scripts, the engine's wasm and the vendored libraries
// are cached at install and served from the cache (refreshed in the background when online).
// Model files are not handled here: the emberlm package keeps them in OPFS / the Cache API.
const VERSION = 'emberlm-shell-v6';
const SHELL = [
  './',
  'index.html',
  'app.js',
  'models.js',
  'conversations.js',
  'style.css',
  'manifest.webmanifest',
  'icon.svg',
  'vendor/marked.js',
  'vendor/purify.js',
  'vendor/idb-keyval.js',
  // Loaded only when a reply has code, but kept for offline use.
  'vendor/highlight.js',
  'emberlm/dist/index.js',
  'emberlm/dist/worker.js',
  'emberlm/wasm/emberlm_wasm.js',
  // The threads build: the CPU backend on Web Workers (the page is served cross-origin isolated).
  'emberlm/wasm-threads/emberlm_wasm.js',
];
// Of each build's two .wasm files, the one the package loads in this browser: the relaxed-SIMD
// build where the engine validates this one-instruction module (the package's
// RELAXED_SIMD_PROBE in npm/src/wasm.ts, in base64).
const RELAXED_SIMD_PROBE = 'AGFzbQEAAAABBQFgAAF7AwIBAAo9ATsA/QwAAAAAAAAAAAAAAAAAAAAA/QwAAAAAAAAAAAAAAAAAAAAA/QwAAAAAAAAAAAAAAAAAAAAA/ZMCCw==';
const relaxed = (() => {
  try {
    return WebAssembly.validate(Uint8Array.from(atob(RELAXED_SIMD_PROBE), (c) => c.charCodeAt(0)));
  } catch {
    return false;
  }
})();
for (const build of ['wasm', 'wasm-threads']) SHELL.push(`emberlm/${build}/emberlm_wasm${relaxed ? '_relaxed' : ''}_bg.wasm`);
// The package's modules, imported by index.js and worker.js.
const PACKAGE = ['backend-local', 'backend-worker', 'backend', 'cpu-thread', 'cpu-threads', 'download', 'engine', 'errors', 'gpu', 'hub', 'model-files', 'protocol', 'runtime', 'select', 'types', 'wasm']
  .map((m) => `emberlm/dist/${m}.js`)
  .concat(['index', 'cache-api', 'fs', 'memory', 'opfs', 'types'].map((m) => `emberlm/dist/cache/${m}.js`));

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(VERSION);
      await cache.addAll([...SHELL, ...PACKAGE]);
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const key of await caches.keys()) if (key.startsWith('emberlm-shell-') && key !== VERSION) await caches.delete(key);
      await self.clients.claim();
    })(),
  );
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (url.pathname.endsWith('/config.json')) {
    // The local model server's address: fresh when online, the last one seen when not.
    event.respondWith(
      fetch(event.request)
        .then(async (res) => {
          (await caches.open(VERSION)).put(event.request, res.clone());
          return res;
        })
        .catch(async () => (await caches.match(event.request)) ?? Response.json({ localHub: null, bundled: [] })),
    );
    return;
  }
  event.respondWith(
    (async () => {
      const cache = await caches.open(VERSION);
      const cached = await cache.match(event.request, { ignoreSearch: true });
      const fresh = fetch(event.request)
        .then((res) => {
          if (res.ok) cache.put(event.request, res.clone());
          return res;
        })
        .catch(() => null);
      if (cached) {
        event.waitUntil(fresh);
        return cached;
      }
      return (await fresh) ?? new Response('offline and not cached', { status: 503 });
    })(),
  );
});
