// Launches Debian's Chromium headless with WebGPU on SwiftShader (never downloads a browser),
// and opens test pages served from 127.0.0.1.
import { chromium } from 'playwright-core';
import { serveDirectory } from './static-server.mjs';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export async function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/** A non-incognito profile in `dir` (some checks, such as PWA installability, skip incognito). */
export async function launchPersistentChromium(dir) {
  return chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * Serves `root` on 127.0.0.1, opens `pagePath` in headless Chromium (browser console echoed)
 * and waits until the page defines `window[readyGlobal]`. Resolves to { page, close }.
 * `serve`: options of `serveDirectory` (`isolated` for a cross-origin isolated page).
 */
export async function openTestPage(root, pagePath, readyGlobal, serve = {}) {
  const server = await serveDirectory(root, serve);
  const browser = await launchChromium();
  const page = await browser.newPage();
  page.on('console', (msg) => console.log(`[browser] ${msg.text()}`));
  page.on('pageerror', (err) => console.log(`[browser error] ${err.message}`));
  await page.goto(`${server.url}${pagePath}`);
  await page.waitForFunction((name) => window[name] !== undefined, readyGlobal);
  return {
    page,
    async close() {
      await browser.close();
      await server.close();
    },
  };
}
