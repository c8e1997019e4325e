import { defineConfig } from 'vite';

export default defineConfig({
  // emberlm finds its worker and .wasm beside its own modules (new URL(..., import.meta.url));
  // pre-bundling would move the modules away from them.
  optimizeDeps: { exclude: ['emberlm'] },
  worker: { format: 'es' },
});
