// Page-side checks of the npm package shared by npm.test.mjs and threads.test.mjs: a greedy
// generation, and a streamed reply, a second one aborted at its first chunk, a plain request
// after it, then unload.
import { reference } from '../mock-hub/repos.mjs';

/** The fixture repos the package tests load, and the transformers cases they compare with. */
export const GGUF = 'emberlm-test/tiny-qwen2-GGUF';
export const LLAMA = 'emberlm-test/tiny-llama';
export const qwen = reference('qwen2').cases[0];
export const llama = reference('llama').cases[1];

/**
 * Loads `repo` in `page` (mock Hub, a 128-token context, then `options`), generates greedily
 * from `prompt`, and returns what the tests check (or `{ error }`).
 */
export function loadAndGenerate(page, { repo, hubUrl, prompt, maxTokens, options = {} }) {
  return page.evaluate(
    async ({ repo, prompt, maxTokens, options, hubUrl }) => {
      const phases = [];
      try {
        const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 128, ...options, onProgress: (p) => phases.includes(p.phase) || phases.push(p.phase) });
        const r = await engine.generate(prompt, { temperature: 0, max_tokens: maxTokens });
        const ids = await engine.tokenizer.encode(prompt);
        await engine.unload();
        return { info: engine.info, tokens: r.tokens, ids, phases, cores: navigator.hardwareConcurrency, isolated: crossOriginIsolated };
      } catch (e) {
        return { error: { code: e.code, message: e.message }, phases };
      }
    },
    { repo, prompt, maxTokens, options, hubUrl },
  );
}

/**
 * Runs the check in `page` on `repo` (engine options `options` on top of the mock Hub and a
 * 256-token context) and returns what the tests assert on.
 */
export function streamAbortUnload(page, { repo, hubUrl, options = {} }) {
  return page.evaluate(
    async ({ repo, hubUrl, options }) => {
      const engine = await window.emberlm.createEngine(repo, { hub: hubUrl, context: 256, ...options });
      const messages = [{ role: 'user', content: 'Hello world, this is a tiny model.' }];
      const full = [];
      for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 12, temperature: 0 })) full.push(c);
      // Aborted at the first chunk: on the CPU backend this tiny model makes a token in well
      // under a millisecond, so the abort must not wait for a later chunk to reach the worker.
      // On a loaded 2-core machine the page's thread may still not run before the whole reply
      // is made: up to three tries, each with room for 200 tokens.
      let cut = [];
      let tries = 0;
      while (tries < 3 && cut.at(-1)?.choices[0].finish_reason !== 'abort') {
        tries += 1;
        cut = [];
        const ctl = new AbortController();
        for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 200, ignore_eos: true, temperature: 0 }, { signal: ctl.signal })) {
          cut.push(c);
          if (cut.length === 1) ctl.abort();
        }
      }
      const after = await engine.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
      await engine.unload();
      let unloaded;
      try {
        await engine.generate('x');
      } catch (e) {
        unloaded = e.code;
      }
      const text = (cs) => cs.map((c) => c.choices[0].delta.content ?? '').join('');
      return {
        device: engine.info.device.name,
        fullText: text(full),
        fullFinish: full.at(-1).choices[0].finish_reason,
        usage: full.at(-1).usage,
        firstRole: full[0].choices[0].delta.role,
        cutFinish: cut.at(-1).choices[0].finish_reason,
        cutTokens: cut.at(-1).usage.completion_tokens,
        tries,
        after: after.choices[0].message.content,
        unloaded,
      };
    },
    { repo, hubUrl, options },
  );
}

/** The assertions both callers make on `streamAbortUnload`'s result. */
export function assertStreamAbortUnload(assert, r) {
  assert.equal(r.firstRole, 'assistant');
  assert.equal(r.fullFinish, 'length');
  assert.equal(r.usage.completion_tokens, 12);
  assert.ok(r.usage.extra.time_to_first_token_ms > 0);
  assert.equal(r.cutFinish, 'abort', `${r.tries} tries`);
  assert.ok(r.cutTokens < 100, `stopped after ${r.cutTokens} of 200 tokens`);
  assert.equal(r.after, r.fullText, 'the next request after an abort is unaffected');
  assert.equal(r.unloaded, 'unloaded');
}

/**
 * A two-turn chat on `repo` in `page`, the second turn asked again (regenerate) and once more on
 * a fresh engine, and the chat again on an engine that does not run the next turn's opening
 * ahead (`prefillNextTurn: false`): each answer's text, prompt tokens and cached (reused) tokens.
 */
export function multiTurnChat(page, { repo, hubUrl }) {
  return page.evaluate(
    async ({ repo, hubUrl }) => {
      const opts = { hub: hubUrl, context: 256 };
      const ask = async (engine, messages) => {
        const c = await engine.chat.completions.create({ messages, max_tokens: 8, temperature: 0 });
        return { text: c.choices[0].message.content, prompt: c.usage.prompt_tokens, cached: c.usage.prompt_tokens_details.cached_tokens };
      };
      const engine = await window.emberlm.createEngine(repo, opts);
      const m1 = [{ role: 'user', content: 'Hello world, this is a tiny model.' }];
      const turn1 = await ask(engine, m1);
      const m2 = [...m1, { role: 'assistant', content: turn1.text }, { role: 'user', content: 'Tell me more about it, please.' }];
      const turn2 = await ask(engine, m2);
      const regenerated = await ask(engine, m2);
      await engine.unload();
      const fresh = await window.emberlm.createEngine(repo, opts);
      const fromScratch = await ask(fresh, m2);
      await fresh.unload();
      const plain = await window.emberlm.createEngine(repo, { ...opts, prefillNextTurn: false });
      await ask(plain, m1);
      const notAhead = await ask(plain, m2);
      await plain.unload();
      return { turn1, turn2, regenerated, fromScratch, notAhead };
    },
    { repo, hubUrl },
  );
}
