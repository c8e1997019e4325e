// The chat page: pick a model, watch it download, chat with streamed markdown replies. The
// engine runs in the emberlm package's Web Worker, so this thread only renders.
import { createEngine, deleteCachedModel, isModelCached, listCachedModels, requestPersistentStorage, storageEstimate } from './emberlm/dist/index.js';
import { marked } from './vendor/marked.js';
import DOMPurify from './vendor/purify.js';
import { cardFor, DEFAULT_HUB_MODEL, EXAMPLE_PROMPTS, formatBytes, HUB_MODELS, samplingFor } from './models.js';
import * as store from './conversations.js';

const $ = (id) => document.getElementById(id);
const ui = {
  model: $('model'), custom: $('custom-model'), load: $('load'), banner: $('banner'), bannerText: $('banner-text'), progress: $('progress'),
  chat: $('chat'), prompt: $('prompt'), send: $('send'), stop: $('stop'), figures: $('figures'), composer: $('composer'),
  settings: $('settings'), cache: $('cache'), cached: $('cached'), estimate: $('estimate'), persist: $('persist'),
  welcome: $('welcome'), chats: $('chats'), chatList: $('chat-list'),
};
// `conversation`: the one on screen (its `messages` are `state.messages`), stored from its first message.
// `skip`: leading messages left out of what the model reads (the context filled up);
// `used`: tokens the conversation took at its last reply.
const state = { engine: null, config: { localHub: null, bundled: [] }, messages: [], conversation: null, abort: null, modelLabel: '', loadedChoice: null, skip: 0, used: 0 };

function setState(s) {
  document.body.dataset.state = s;
  const ready = s === 'ready';
  // Before any model is loaded a message can be typed and sent too: the picked model loads first.
  ui.prompt.disabled = !ready && s !== 'idle';
  ui.send.disabled = !ready && s !== 'idle';
  ui.send.hidden = s === 'generating';
  ui.stop.hidden = s !== 'generating';
  ui.load.disabled = s === 'loading' || s === 'generating';
  ui.chat.querySelectorAll('button.regenerate').forEach((b) => (b.disabled = !ready));
}

/** A message above the chat (closable); `detail` (the technical cause) shows on hover. */
function banner(message, kind = 'error', detail = '') {
  ui.banner.hidden = !message;
  ui.banner.className = kind;
  ui.bannerText.textContent = message ?? '';
  ui.banner.title = detail;
}
$('banner-close').addEventListener('click', () => banner(null));

/** A user-facing explanation per error code: `{ text, detail }`, the error's own message as detail. */
function explain(e) {
  const unreachable = navigator.onLine
    ? 'The Hugging Face Hub cannot be reached, and this model is not downloaded yet. Pick a bundled or downloaded model, or try again later.'
    : 'You are offline, and this model is not downloaded yet. Pick a bundled or downloaded model.';
  const hints = {
    'no-webgpu': 'This browser cannot run WebGPU here. Use a recent Chrome, Edge or Safari on a device with a supported GPU.',
    quota: 'Not enough storage for this model. Delete downloaded models in Storage, or pick a smaller one.',
    offline: unreachable,
    network: unreachable,
    'not-found': 'The Hub does not have that model (or it is gated or private).',
    model: 'The model could not be loaded on this device (an unsupported architecture, a corrupt file, or it exceeds the device limits).',
    crashed: 'The engine crashed on this model (a bug, or a broken model file). Loading it again…',
  };
  const detail = String(e?.message ?? e);
  if (hints[e?.code]) console.info('emberlm:', detail);
  return { text: hints[e?.code] ?? detail, detail };
}

// ---- models ----------------------------------------------------------------------------------

function option(value, text) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  return o;
}

function fillPicker(defaultValue) {
  ui.model.replaceChildren();
  if (state.config.bundled.length && state.config.localHub) {
    const g = document.createElement('optgroup');
    g.label = 'Bundled (served by this machine)';
    for (const m of state.config.bundled) g.append(option(`local:${m.id}`, `${m.label} · ${formatBytes(m.download)}`));
    ui.model.append(g);
  }
  const hub = document.createElement('optgroup');
  hub.label = 'Hugging Face Hub';
  for (const m of HUB_MODELS) hub.append(option(`hub:${m.id}`, `${m.label} · ${formatBytes(m.download)} download · ~${formatBytes(m.memory)} GPU`));
  hub.append(option('custom', 'Any Hub repo id…'));
  ui.model.append(hub);
  ui.model.value = defaultValue;
  ui.custom.hidden = ui.model.value !== 'custom';
}

function selectedModel() {
  const v = ui.model.value;
  if (v === 'custom') return { id: ui.custom.value.trim(), hub: undefined };
  const [where, ...rest] = v.split(':');
  return { id: rest.join(':'), hub: where === 'local' ? state.config.localHub : undefined };
}

/** Puts conversation `c` on screen, its messages and how many the model skips; none: a new chat (the welcome screen). */
function showConversation(c) {
  state.conversation = c;
  state.messages = c?.messages ?? [];
  state.skip = c?.skip ?? 0;
  state.used = 0;
  showContextUse();
  if (c) localStorage.setItem('emberlm.conversation', c.id);
  else localStorage.removeItem('emberlm.conversation');
  ui.chat.replaceChildren(ui.welcome);
  ui.welcome.hidden = Boolean(c);
  state.messages.forEach((m, i) => finishBubble(bubble(m.role, shown(m.content, m.format === 'json')), i, i === state.messages.length - 1));
  markTrimmed();
  if (!c) showCard();
  refreshChats();
}

/** Empties the conversation (a new chat): the welcome screen again. */
function newConversation() {
  showConversation(null);
}

/** Stores the conversation on screen (from its first message on). */
async function saveConversation() {
  if (!state.messages.length) return;
  state.conversation ??= store.newConversation(state.modelLabel);
  state.conversation.messages = state.messages;
  state.conversation.skip = state.skip;
  state.conversation.model = state.modelLabel || state.conversation.model;
  localStorage.setItem('emberlm.conversation', state.conversation.id);
  try {
    await store.saveConversation(state.conversation);
  } catch (e) {
    banner(`This conversation could not be stored in the browser: ${e.message}`, 'error');
  }
  refreshChats();
}

/** Shows a stored conversation (the loaded model answers from here on). */
async function openConversation(id) {
  const c = await store.loadConversation(id).catch(() => undefined);
  if (!c) return false;
  state.abort?.abort();
  showConversation(c);
  return true;
}

/** Offers `text` as a file download named `name`. */
function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = Object.assign(document.createElement('a'), { href: url, download: name });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function smallButton(text, className, onClick, label) {
  const b = Object.assign(document.createElement('button'), { type: 'button', className, textContent: text });
  if (label) b.setAttribute('aria-label', label);
  b.addEventListener('click', onClick);
  return b;
}

/** The conversation list: open, rename, export (Markdown, JSON), delete. */
async function refreshChats() {
  if (ui.chats.hidden) return;
  let list = [];
  try {
    list = await store.listConversations();
  } catch (e) {
    ui.chatList.replaceChildren(Object.assign(document.createElement('li'), { textContent: `Conversations cannot be stored here: ${e.message}` }));
    return;
  }
  ui.chatList.replaceChildren(
    ...list.map((c) => {
      const li = document.createElement('li');
      li.classList.toggle('current', c.id === state.conversation?.id);
      const title = store.titleOf(c);
      const open = smallButton(title, 'open', async () => {
        await openConversation(c.id);
        // Out of the way where it covers the chat (style.css: beside it from 1000px).
        if (!matchMedia('(min-width: 1000px)').matches) toggleChats(false);
      });
      open.title = `${c.model ?? ''} · ${new Date(c.updated).toLocaleString()}`;
      const rename = smallButton('Rename', 'rename', () => {
        const input = Object.assign(document.createElement('input'), { type: 'text', value: title });
        input.setAttribute('aria-label', 'New name');
        const done = async (keep) => {
          if (keep && input.value.trim()) {
            // The one on screen is stored from its live copy (the listed one may lag a reply behind).
            const target = c.id === state.conversation?.id ? state.conversation : c;
            Object.assign(target, { title: input.value.trim(), renamed: true });
            await store.saveConversation(target);
          }
          refreshChats();
        };
        input.addEventListener('keydown', (ev) => {
          if (ev.key === 'Enter') done(true);
          if (ev.key === 'Escape') {
            ev.stopPropagation();
            done(false);
          }
        });
        input.addEventListener('blur', () => done(true), { once: true });
        open.replaceWith(input);
        input.select();
      }, `Rename “${title}”`);
      const md = smallButton('Markdown', 'export-md', () => download(`${title}.md`, store.toMarkdown(c), 'text/markdown'), `Export “${title}” as Markdown`);
      const json = smallButton('JSON', 'export-json', () => download(`${title}.json`, store.toJson(c), 'application/json'), `Export “${title}” as JSON`);
      const del = smallButton('Delete', 'delete', async () => {
        await store.deleteConversation(c.id);
        if (c.id === state.conversation?.id) newConversation();
        else refreshChats();
      }, `Delete “${title}”`);
      const actions = document.createElement('div');
      actions.className = 'actions';
      actions.append(rename, md, json, del);
      li.append(open, actions);
      return li;
    }),
  );
  if (!list.length) ui.chatList.replaceChildren(Object.assign(document.createElement('li'), { textContent: 'No conversations yet.' }));
}

/** Opens or closes the conversation drawer; the keyboard focus goes into it, and back. */
function toggleChats(open = ui.chats.hidden) {
  ui.chats.hidden = !open;
  document.body.classList.toggle('chats-open', open);
  $('toggle-chats').setAttribute('aria-expanded', String(open));
  if (open) {
    refreshChats();
    $('close-chats').focus();
  } else {
    $('toggle-chats').focus();
  }
}

/** The picked model's entry: its label and sizes (bundled or curated), or null. */
function pickedEntry() {
  const v = ui.model.value;
  if (v.startsWith('local:')) return state.config.bundled.find((m) => `local:${m.id}` === v) ?? null;
  return HUB_MODELS.find((m) => `hub:${m.id}` === v) ?? null;
}

/** The welcome screen's card for the picked model: what it is, what it downloads, whether it is ready. */
async function showCard() {
  const { id, hub } = selectedModel();
  const entry = pickedEntry();
  const card = cardFor(id);
  $('card-name').textContent = entry?.label ?? (id || 'Any Hub model');
  $('card-about').textContent = card?.about ?? 'A model from the Hugging Face Hub; its card there says what it is good at.';
  $('card-download').textContent = entry ? formatBytes(entry.download) : 'as listed on the Hub';
  $('card-memory').textContent = entry ? `about ${formatBytes(entry.memory)}` : 'depends on the model';
  $('card-languages').textContent = card?.languages ?? 'see its card';
  const licence = $('card-licence');
  const [name, url] = card?.licence ?? ['see its card', id ? `https://huggingface.co/${id}` : 'https://huggingface.co/models'];
  licence.textContent = name;
  licence.href = url;
  let status = 'Downloads once, then runs offline.';
  if (state.engine && state.loadedChoice === ui.model.value) status = 'Loaded: ask away.';
  else if (id && (await isModelCached(id, { hub }).catch(() => false))) status = 'Already downloaded: loads in seconds.';
  $('card-status').textContent = status;
}

/** Sends `text` as the next user message, loading the picked model first when needed. */
async function ask(text) {
  if (!state.engine || state.loadedChoice !== ui.model.value) {
    await loadModel();
    if (!state.engine) return;
  }
  state.messages.push({ role: 'user', content: text });
  ui.welcome.hidden = true;
  finishBubble(bubble('user', text), state.messages.length - 1, false);
  saveConversation();
  reply();
}

/** Copies `text` to the clipboard; the button says it did. */
async function copyText(button, text) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Copy failed';
  }
  setTimeout(() => (button.textContent = button.dataset.label), 1500);
}

/** Colours a reply's code blocks; the highlighter (highlight.js, ~130 kB) loads on the first one. */
let highlighter;
async function highlightCode(div) {
  const blocks = div.querySelectorAll('.body pre code');
  if (!blocks.length) return;
  try {
    highlighter ??= import('./vendor/highlight.js').then((m) => m.default);
    const hljs = await highlighter;
    for (const code of blocks) if (!code.dataset.highlighted) hljs.highlightElement(code);
  } catch (e) {
    console.info('emberlm: code stays plain:', e.message);
  }
}

/**
 * A message's actions under it: Copy; Edit for the user's (its text back into the message box,
 * the conversation cut there); Regenerate on the last reply. Code blocks get a Copy button.
 * `figures` (a finished reply's) go first.
 */
function finishBubble(div, index, last, figures = '') {
  div.dataset.index = String(index);
  div.querySelector('.meta')?.remove();
  const meta = document.createElement('div');
  meta.className = 'meta';
  if (figures) meta.append(figures);
  const content = () => state.messages[index]?.content ?? '';
  const copy = smallButton('Copy', 'copy', (ev) => copyText(ev.currentTarget, content()), 'Copy this message');
  copy.dataset.label = 'Copy';
  meta.append(copy);
  if (div.classList.contains('user')) {
    meta.append(smallButton('Edit', 'edit', () => {
      if (document.body.dataset.state === 'generating') return;
      ui.prompt.value = content();
      state.messages.splice(index);
      ui.chat.querySelectorAll('.msg').forEach((m) => Number(m.dataset.index) >= index && m.remove());
      if (!state.messages.length) ui.welcome.hidden = false;
      saveConversation();
      fitPrompt();
      ui.prompt.focus();
    }, 'Edit this message and send it again'));
  } else {
    highlightCode(div);
    for (const pre of div.querySelectorAll('.body pre')) {
      const b = smallButton('Copy', 'copy-code', (ev) => copyText(ev.currentTarget, pre.querySelector('code')?.textContent ?? pre.textContent), 'Copy this code');
      b.dataset.label = 'Copy';
      pre.append(b);
    }
    if (last) {
      ui.chat.querySelectorAll('button.regenerate').forEach((b) => b.remove());
      meta.append(smallButton('Regenerate', 'regenerate', () => {
        if (state.messages.at(-1)?.role !== 'assistant' || document.body.dataset.state !== 'ready') return;
        state.messages.pop();
        div.remove();
        reply();
      }));
    }
  }
  div.append(meta);
}

/**
 * Loads the picked model. The model in use stays loaded until the new one is ready: a load
 * that fails leaves the page as it was, with a message.
 */
async function loadModel({ afterCrash = false } = {}) {
  if (afterCrash && state.loadedChoice) ui.model.value = state.loadedChoice;
  const { id, hub } = selectedModel();
  if (!id) return banner('Type a Hub repo id such as HuggingFaceTB/SmolLM2-360M-Instruct.');
  if (!afterCrash) banner(null);
  const previous = state.engine ? { engine: state.engine, label: state.modelLabel, choice: state.loadedChoice } : null;
  setState('loading');
  ui.progress.hidden = false;
  const bar = ui.progress.querySelector('span');
  const text = ui.progress.querySelector('p');
  bar.style.width = '0%';
  text.textContent = `Starting ${id}…`;
  const phases = { download: 'Downloading', upload: 'Loading the weights', ready: 'Ready' };
  const cancel = new AbortController();
  state.cancelLoad = cancel;
  const rate = rateMeter();
  const context = Number($('context').value) || undefined;
  try {
    const engine = await createEngine(id, {
      hub,
      context,
      signal: cancel.signal,
      onProgress(p) {
        if (p.phase === 'compile') {
          // One warm-up token: no bytes to count.
          bar.style.width = '100%';
          text.textContent = 'Getting the model ready…';
          return;
        }
        bar.style.width = `${p.total ? Math.round((100 * p.loaded) / p.total) : 0}%`;
        const file = p.file ? ` ${p.file}` : '';
        // Downloads: the rate over the last seconds and the time left at it.
        const speed = p.phase === 'download' ? rate(p.loaded, p.total) : '';
        text.textContent = `${phases[p.phase]}${file} — ${formatBytes(p.loaded)} of ${formatBytes(p.total)}${speed}`;
      },
    });
    await previous?.engine.unload();
    state.engine = engine;
    state.loadedChoice = ui.model.value;
    document.body.dataset.loaded = ui.model.value;
    if (previous && previous.label !== id && state.messages.length) {
      // The old model's conversation is not this one's.
      newConversation();
      banner(`New conversation with ${id}.`, 'info');
    }
    const i = state.engine.info;
    state.modelLabel = id;
    const defaults = samplingFor(id);
    $('temperature').value = defaults.temperature;
    $('top-p').value = defaults.top_p;
    $('top-k').value = defaults.top_k;
    const l = i.load;
    const s = (ms) => (ms / 1000).toFixed(1);
    const took = `files ${s(l.filesMs)} · header ${s(l.headerMs)} · tokenizer ${s(l.tokenizerMs)} · upload ${s(l.uploadMs)} · compile ${s(l.compileMs)} s`;
    // Which backend runs the model, and why (auto takes the CPU on software WebGPU adapters).
    state.deviceLabel = i.device.name;
    ui.figures.textContent = `${id} · ${i.architecture} · ${formatBytes(i.weightBytes)} · ${i.device.name}, ${i.device.reason} · loaded in ${s(i.loadMs)} s${i.fromCache ? ' from cache' : ''} (${took})`;
    ui.figures.title = i.device.reason;
    ui.progress.hidden = true;
    localStorage.setItem('emberlm.model', ui.model.value === 'custom' ? `custom:${id}` : ui.model.value);
    setState('ready');
    ui.prompt.placeholder = 'Message';
    ui.prompt.focus();
    if (afterCrash) banner(`The engine crashed on ${id} (a bug, or a broken model file) and was loaded again.`, 'error', ui.banner.title);
    if (!state.messages.length) showCard();
    showContextUse();
  } catch (e) {
    ui.progress.hidden = true;
    if (e?.code === 'aborted' && cancel.signal.aborted) {
      banner(`Loading ${id} was cancelled.${previous ? ` Still using ${previous.label}.` : ''}`, 'info');
      if (previous?.choice) ui.model.value = previous.choice;
      setState(previous ? 'ready' : 'idle');
      state.cancelLoad = null;
      return;
    }
    const { text: why, detail } = explain(e);
    if (previous) {
      // Back to the model that still runs.
      banner(`${id} could not be loaded: ${why} Still using ${previous.label}.`, 'error', detail);
      if (previous.choice) ui.model.value = previous.choice;
      ui.custom.hidden = ui.model.value !== 'custom';
      setState('ready');
    } else {
      banner(why, 'error', detail);
      setState('idle');
    }
  }
  state.cancelLoad = null;
  refreshCache();
}

/**
 * A download's rate over its last ~5 s of progress and the time left at that rate, as
 * " · 12.3 MB/s · about 8 s left" (empty until there is a rate).
 */
function rateMeter() {
  const samples = [];
  return (loaded, total) => {
    const t = performance.now();
    samples.push([t, loaded]);
    while (samples.length > 2 && t - samples[0][0] > 5000) samples.shift();
    const [t0, l0] = samples[0];
    if (t - t0 < 500 || loaded <= l0) return '';
    const perS = ((loaded - l0) * 1000) / (t - t0);
    const left = total > loaded ? ` · about ${humanDuration(((total - loaded) / perS) * 1000)} left` : '';
    return ` · ${formatBytes(perS)}/s${left}`;
  };
}

/** "1,234 / 2,048 tokens": what the conversation took of the context at its last reply. */
function showContextUse() {
  const el = $('context-use');
  const of = state.engine?.info.contextLength;
  el.textContent = of && state.used ? `${state.used.toLocaleString('en')} / ${of.toLocaleString('en')} tokens` : '';
  el.classList.toggle('full', Boolean(of && state.used > 0.9 * of));
}

/** Dims the messages the model no longer reads. */
function markTrimmed() {
  ui.chat.querySelectorAll('.msg').forEach((m) => m.classList.toggle('trimmed', Number(m.dataset.index) < state.skip));
}

/**
 * Leaves the oldest exchange (a user message and what follows it up to the next one) out of
 * what the model reads, keeping the system prompt; false when only the last message is left.
 */
function trimOldest() {
  let next = state.skip + 1;
  while (next < state.messages.length && state.messages[next].role !== 'user') next++;
  if (next >= state.messages.length) return false;
  state.skip = next;
  markTrimmed();
  return true;
}

// ---- chat ------------------------------------------------------------------------------------

function bubble(role, text) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  const body = document.createElement('div');
  body.className = 'body';
  div.append(body);
  render(body, role, text);
  ui.chat.append(div);
  ui.chat.scrollTop = ui.chat.scrollHeight;
  return div;
}

/** Whether the chat is scrolled to (nearly) its end: new text then keeps it there. */
const atEnd = () => ui.chat.scrollHeight - ui.chat.scrollTop - ui.chat.clientHeight < 48;
function follow(wasAtEnd) {
  if (wasAtEnd) ui.chat.scrollTop = ui.chat.scrollHeight;
}
// The chat box itself changes size too (the figures line wraps, the message box grows, buttons
// swap when a reply ends): stay at the end across that when the reader was there.
let pinned = true;
ui.chat.addEventListener('scroll', () => (pinned = atEnd()));
new ResizeObserver(() => follow(pinned)).observe(ui.chat);

/** Markdown for replies, sanitised: no forms, inputs or media, no attributes that send requests. */
const PURIFY = {
  FORBID_TAGS: ['form', 'input', 'button', 'textarea', 'select', 'option', 'video', 'audio', 'source', 'track', 'style', 'iframe', 'object', 'embed'],
  FORBID_ATTR: ['action', 'formaction', 'poster', 'srcset', 'ping', 'background', 'style'],
};

function render(body, role, text) {
  if (role === 'user') {
    body.textContent = text;
    return;
  }
  try {
    body.innerHTML = DOMPurify.sanitize(marked.parse(text), PURIFY);
  } catch {
    // Markdown the renderer cannot handle (marked throws on ~1,900 nested quotes): plain text.
    body.textContent = text;
  }
}
// For the page's tests: what a reply with this text renders to.
window.emberlmRenderReply = (text) => {
  const body = document.createElement('div');
  render(body, 'assistant', text);
  return body.innerHTML;
};

function history() {
  const system = $('system').value.trim();
  // Only role and content: a stored reply also says how it is shown (`format`).
  return [...(system ? [{ role: 'system', content: system }] : []), ...state.messages.slice(state.skip).map(({ role, content }) => ({ role, content }))];
}

function sampling() {
  const num = (id) => ($(id).value === '' ? undefined : Number($(id).value));
  return { temperature: num('temperature'), top_p: num('top-p'), top_k: num('top-k'), max_tokens: num('max-tokens'), seed: num('seed'), ...jsonMode() };
}

/**
 * JSON mode (Settings): replies constrained to a JSON object, or to the schema given there.
 * Throws a plain message when the schema is not JSON.
 */
function jsonMode() {
  if (!$('json-mode').checked) return {};
  const text = $('json-schema').value.trim();
  if (!text) return { response_format: { type: 'json_object' } };
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (e) {
    throw new Error(`The JSON schema in Settings is not valid JSON: ${e.message}`);
  }
  return { response_format: { type: 'json_schema', json_schema: { name: 'reply', schema } } };
}

/** A JSON-mode reply shows as a JSON code block. */
const shown = (text, json) => (json && text ? `\`\`\`json\n${text}\n\`\`\`` : text);

async function reply() {
  setState('generating');
  const div = bubble('assistant', '');
  div.classList.add('streaming');
  const body = div.querySelector('.body');
  state.abort = new AbortController();
  let text = '';
  let usage;
  let finish;
  // The frame that re-renders the streamed text, if one is pending.
  let frame = 0;
  let crashed = false;
  const json = $('json-mode').checked;
  const of = state.engine.info.contextLength;
  // Until the first token: how far the model has read a long prompt, and for how long (shown by CSS).
  const asked = performance.now();
  let read = '';
  const showWaiting = () => (body.dataset.waiting = `${read}· ${humanDuration(performance.now() - asked)}`);
  const waiting = setInterval(showWaiting, 1000);
  const onPrefill = (done, total) => {
    read = `${Math.floor((100 * done) / total)}% `;
    showWaiting();
  };
  try {
    // Room for the reply: when the conversation (estimated from its last count) leaves less than
    // a quarter of the context, the oldest exchanges are left out first; a prompt still too long
    // for the context is trimmed and tried again.
    const want = Math.min(sampling().max_tokens ?? of, Math.floor(of / 4));
    // Characters (plus ~16 a message for the template) scaled by the last count's tokens per character.
    const chars = (from, to = state.messages.length) => state.messages.slice(from, to).reduce((n, m) => n + m.content.length + 16, 0);
    const perChar = state.used / Math.max(1, chars(state.skip, state.messages.length - 1));
    let trimmed = false;
    while (state.used && perChar * chars(state.skip) + want > of && trimOldest()) trimmed = true;
    let stream;
    for (;;) {
      try {
        stream = await state.engine.chat.completions.create({ messages: history(), stream: true, ...sampling() }, { signal: state.abort.signal, onPrefill });
        break;
      } catch (e) {
        if (!(e?.code === 'bad-request' && /context holds/.test(e.message) && trimOldest())) throw e;
        trimmed = true;
      }
    }
    if (trimmed) {
      banner(`This conversation is longer than the model's context (${of.toLocaleString('en')} tokens): the oldest messages are left out of what it reads (dimmed above).`, 'info');
    }
    for await (const chunk of stream) {
      clearInterval(waiting);
      text += chunk.choices[0].delta.content ?? '';
      usage = chunk.usage ?? usage;
      if (chunk.usage) {
        state.used = chunk.usage.prompt_tokens + chunk.usage.completion_tokens;
        showContextUse();
      }
      finish = chunk.choices[0].finish_reason ?? finish;
      if (!frame) {
        // Re-render once per frame, not per token.
        frame = requestAnimationFrame(() => {
          frame = 0;
          const stick = atEnd();
          render(body, 'assistant', shown(text, json));
          follow(stick);
        });
      }
    }
  } catch (e) {
    const { text: why, detail } = explain(e);
    banner(why, 'error', detail);
    // A crashed engine cannot go on; a fresh one (from the cache: seconds) can.
    crashed = e?.code === 'crashed';
  }
  // The last render is this one: a frame still pending would undo the code blocks' buttons.
  cancelAnimationFrame(frame);
  clearInterval(waiting);
  const stick = atEnd();
  render(body, 'assistant', shown(text, json));
  div.classList.remove('streaming');
  state.messages.push({ role: 'assistant', content: text, ...(json ? { format: 'json' } : {}) });
  let figures = '';
  if (usage) {
    const x = usage.extra;
    const cached = usage.prompt_tokens_details?.cached_tokens ? ` (${usage.prompt_tokens_details.cached_tokens} of ${usage.prompt_tokens} prompt tokens cached)` : '';
    figures = `${usage.completion_tokens} tokens · first token ${humanDuration(x.time_to_first_token_ms)}${cached} · prefill ${x.prefill_tokens_per_s.toFixed(1)} tok/s · decode ${x.decode_tokens_per_s.toFixed(1)} tok/s · ${state.deviceLabel}${finish === 'abort' ? ' · stopped' : ''}`;
    ui.figures.textContent = `${state.modelLabel} · ${figures}`;
  }
  finishBubble(div, state.messages.length - 1, true, figures);
  saveConversation();
  follow(stick);
  state.abort = null;
  setState('ready');
  if (crashed) await loadModel({ afterCrash: true });
}

/** The message box grows with its text, up to its CSS max-height (then it scrolls). */
function fitPrompt() {
  ui.prompt.style.height = 'auto';
  ui.prompt.style.height = `${ui.prompt.scrollHeight + ui.prompt.offsetHeight - ui.prompt.clientHeight}px`;
}
ui.prompt.addEventListener('input', fitPrompt);

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || document.body.dataset.state === 'loading' || document.body.dataset.state === 'generating') return;
  ui.prompt.value = '';
  fitPrompt();
  ask(text);
});
ui.prompt.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) {
    ev.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener('click', () => state.abort?.abort());
// Esc stops a reply, wherever the focus is; else it closes the conversation drawer.
document.addEventListener('keydown', (ev) => {
  if (ev.key !== 'Escape') return;
  if (state.abort) {
    ev.preventDefault();
    state.abort.abort();
  } else if (!ui.chats.hidden) {
    ev.preventDefault();
    toggleChats(false);
  }
});
ui.load.addEventListener('click', () => loadModel());
ui.model.addEventListener('change', () => {
  ui.custom.hidden = ui.model.value !== 'custom';
  if (!state.messages.length) showCard();
});
ui.custom.addEventListener('change', () => !state.messages.length && showCard());
$('new-chat').addEventListener('click', () => {
  state.abort?.abort();
  newConversation();
  ui.prompt.focus();
});
$('toggle-chats').addEventListener('click', () => toggleChats());
$('cancel-load').addEventListener('click', () => state.cancelLoad?.abort());
$('close-chats').addEventListener('click', () => toggleChats(false));
for (const text of EXAMPLE_PROMPTS) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.addEventListener('click', () => document.body.dataset.state !== 'loading' && document.body.dataset.state !== 'generating' && ask(text));
  $('examples').append(b);
}

// ---- panels ------------------------------------------------------------------------------------

$('json-mode').addEventListener('change', () => ($('json-schema').disabled = !$('json-mode').checked));
for (const [button, panel] of [[$('toggle-settings'), ui.settings], [$('toggle-cache'), ui.cache]]) {
  button.addEventListener('click', () => {
    panel.hidden = !panel.hidden;
    button.setAttribute('aria-expanded', String(!panel.hidden));
    if (panel === ui.cache && !panel.hidden) refreshCache();
  });
}

async function refreshCache() {
  try {
    const models = await listCachedModels();
    ui.cached.replaceChildren(
      ...models.map((m) => {
        const li = document.createElement('li');
        const label = document.createElement('span');
        label.textContent = `${m.repo}${m.revision === 'main' ? '' : `@${m.revision}`} · ${formatBytes(m.bytes)} · ${new URL(m.hub).host}`;
        const del = document.createElement('button');
        del.type = 'button';
        del.textContent = 'Delete';
        del.addEventListener('click', async () => {
          await deleteCachedModel(m.repo, { hub: m.hub, revision: m.revision });
          refreshCache();
        });
        li.append(label, del);
        return li;
      }),
    );
    if (!models.length) ui.cached.replaceChildren(Object.assign(document.createElement('li'), { textContent: 'No models stored yet.' }));
    const est = await storageEstimate();
    ui.estimate.textContent = est ? `${formatBytes(est.usage ?? 0)} used of ${formatBytes(est.quota ?? 0)} this browser allows.` : '';
  } catch (e) {
    ui.estimate.textContent = `Storage is not available: ${e.message}`;
  }
}
ui.persist.addEventListener('click', async () => {
  const ok = await requestPersistentStorage();
  ui.persist.textContent = ok ? 'Models are kept' : 'The browser declined (it may ask again later)';
});

// ---- start -------------------------------------------------------------------------------------

async function start() {
  setState('idle');
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch((e) => console.warn('service worker:', e.message));
  try {
    state.config = await (await fetch('config.json')).json();
  } catch {
    /* served without the local model server */
  }
  if (!navigator.gpu || !(await navigator.gpu.requestAdapter().catch(() => null))) {
    banner('WebGPU is not available in this browser or on this device: models run on the CPU instead, which suits small models best.', 'info');
  }
  const saved = localStorage.getItem('emberlm.model');
  const firstBundled = state.config.localHub && state.config.bundled[0] ? `local:${state.config.bundled[0].id}` : null;
  // The bundled model when there is one: no Hub probe (offline it only logged network errors).
  const initial = (saved && !saved.startsWith('custom:') ? saved : null) ?? firstBundled ?? `hub:${DEFAULT_HUB_MODEL}`;
  fillPicker(initial);
  if (ui.model.value !== initial) ui.model.selectedIndex = 0;
  if (saved?.startsWith('custom:')) {
    ui.model.value = 'custom';
    ui.custom.hidden = false;
    ui.custom.value = saved.slice('custom:'.length);
  }
  // The conversation open before the reload, else the welcome screen.
  const last = localStorage.getItem('emberlm.conversation');
  if (!last || !(await openConversation(last))) newConversation();
  document.body.dataset.started = 'true';
  // The last model used loads by itself when it is downloaded (no network needed).
  const { id, hub } = selectedModel();
  if (saved && id && (await isModelCached(id, { hub }).catch(() => false))) await loadModel();
}
start();

/** "0.31 s", "12.4 s", "1 min 34 s": the figures in units people read. */
function humanDuration(ms) {
  const s = ms / 1000;
  if (s < 1) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const whole = Math.round(s);
  return `${Math.floor(whole / 60)} min ${whole % 60} s`;
}
