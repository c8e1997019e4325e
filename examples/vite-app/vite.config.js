import { defineConfig } from 'vite';

const ISOLATION = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };

export default defineConfig({
  // emberlm finds its worker and .wasm beside its own modules (new URL(..., import.meta.url));
  // pre-bundling would move the modules away from them.
  optimizeDeps: { exclude: ['emberlm'] },
  worker: { format: 'es' },
  // Cross-origin isolation gives the page SharedArrayBuffer, so emberlm's CPU backend (used where
  // the GPU is missing or a software one) runs on a thread per core. Send the same two headers
  // from whatever serves `dist/` in production.
  server: { headers: ISOLATION },
  preview: { headers: ISOLATION },
});
