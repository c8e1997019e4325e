// Unit tests of the pure parts: Hub ids and URLs, file selection, stop-string streaming.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LogprobTracker, StopStringFilter } from '../dist/backend.js';
import { modelRef, resolveUrl, treeUrl } from '../dist/hub.js';
import { indexShards, quantOf, selectFiles } from '../dist/select.js';

const f = (path, size = 10) => ({ path, size, sha256: 'x' });

test('model ids resolve to the Hub URL layout, with the default Hub and revision', () => {
  const ref = modelRef('HuggingFaceTB/SmolLM2-360M-Instruct');
  assert.deepEqual(ref, { hub: 'https://huggingface.co', repo: 'HuggingFaceTB/SmolLM2-360M-Instruct', revision: 'main' });
  assert.equal(resolveUrl(ref, 'config.json'), 'https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct/resolve/main/config.json');
  assert.equal(treeUrl(ref), 'https://huggingface.co/api/models/HuggingFaceTB/SmolLM2-360M-Instruct/tree/main?recursive=true');
  const pinned = modelRef('a/b@v1.0', { hub: 'http://127.0.0.1:9/' });
  assert.equal(resolveUrl(pinned, 'sub dir/x+y.gguf'), 'http://127.0.0.1:9/a/b/resolve/v1.0/sub%20dir/x%2By.gguf');
  assert.equal(modelRef('a/b', { revision: 'refs/pr/1' }).revision, 'refs/pr/1');
  assert.equal(resolveUrl(modelRef('a/b', { revision: 'refs/pr/1' }), 'c'), 'https://huggingface.co/a/b/resolve/refs%2Fpr%2F1/c');
  for (const bad of ['', 'a/b/c', '../x', 'a b/c']) assert.throws(() => modelRef(bad), { code: 'bad-request' });
});

test('quantisation names are read from GGUF file names', () => {
  assert.equal(quantOf('SmolLM2-135M-Instruct.Q4_1.gguf'), 'Q4_1');
  assert.equal(quantOf('Qwen2.5-0.5B-Instruct-Q4_K_M.gguf'), 'Q4_K_M');
  assert.equal(quantOf('llama-3.2-1b-instruct-q8_0.gguf'), 'Q8_0');
  assert.equal(quantOf('gemma-3-1b-it-BF16.gguf'), 'BF16');
  assert.equal(quantOf('big-Q5_K_S-00002-of-00003.gguf'), 'Q5_K_S');
  assert.equal(quantOf('Phi-3.5-mini-instruct-IQ4_XS.gguf'), 'IQ4_XS');
  assert.equal(quantOf('model.gguf'), undefined);
});

test('GGUF selection: by quant, by file, split shards in order, preference when neither is given', () => {
  const files = [f('README.md'), f('m-Q4_K_M.gguf', 50), f('m-Q8_0.gguf', 90), f('m-Q4_0.gguf', 45), f('mmproj-m-f16.gguf'), f('m-F16-00002-of-00002.gguf'), f('m-F16-00001-of-00002.gguf')];
  assert.deepEqual(selectFiles('r', files).weights.map((x) => x.path), ['m-Q4_K_M.gguf']);
  assert.deepEqual(selectFiles('r', files.filter((x) => !x.path.includes('K_M'))).weights.map((x) => x.path), ['m-Q4_0.gguf']);
  assert.deepEqual(selectFiles('r', files, { quant: 'q4_k_m' }).weights.map((x) => x.path), ['m-Q4_K_M.gguf']);
  assert.deepEqual(selectFiles('r', files, { quant: 'F16' }).weights.map((x) => x.path), ['m-F16-00001-of-00002.gguf', 'm-F16-00002-of-00002.gguf']);
  assert.deepEqual(selectFiles('r', files, { file: 'm-Q8_0.gguf' }).weights.map((x) => x.path), ['m-Q8_0.gguf']);
  assert.throws(() => selectFiles('r', files, { quant: 'Q2_K' }), (e) => e.code === 'not-found' && /Q4_K_M/.test(e.message) && /Q8_0/.test(e.message));
  assert.throws(() => selectFiles('r', files, { file: 'nope.gguf' }), { code: 'not-found' });
  assert.throws(() => selectFiles('r', files, { file: 'README.md' }), { code: 'bad-request' });
  assert.throws(() => selectFiles('r', [f('x-Q4_0-00001-of-00002.gguf')], { quant: 'Q4_0' }), (e) => e.code === 'not-found' && /00002-of-00002/.test(e.message));
  assert.throws(() => selectFiles('r', [f('README.md')]), { code: 'model' });
});

test('safetensors selection: config, tokenizer files, single file or the index shards', () => {
  const single = selectFiles('r', [f('config.json'), f('tokenizer.json'), f('model.safetensors'), f('model.gguf')]);
  assert.equal(single.format, 'safetensors');
  assert.deepEqual(single.weights.map((x) => x.path), ['model.safetensors']);
  assert.deepEqual(single.text.map((x) => x.path), ['config.json', 'tokenizer.json']);
  const files = [f('config.json'), f('model.safetensors.index.json'), f('a.safetensors'), f('b.safetensors')];
  const sharded = selectFiles('r', files);
  assert.deepEqual(sharded.weights, []);
  assert.ok(sharded.text.some((x) => x.path === 'model.safetensors.index.json'));
  const index = JSON.stringify({ weight_map: { x: 'b.safetensors', y: 'a.safetensors', z: 'b.safetensors' } });
  assert.deepEqual(indexShards('r', index, files).map((x) => x.path), ['b.safetensors', 'a.safetensors']);
  assert.throws(() => indexShards('r', JSON.stringify({ weight_map: { x: 'c.safetensors' } }), files), { code: 'not-found' });
  assert.throws(() => indexShards('r', '{', files), { code: 'model' });
});

test('stop strings never reach the stream, even split across pieces', () => {
  const run = (stops, pieces) => {
    const s = new StopStringFilter(stops);
    let shown = '';
    for (const p of pieces) {
      shown += s.push(p);
      if (s.stopped) break;
    }
    if (!s.stopped) shown += s.flush();
    return { shown, output: s.output, stopped: s.stopped };
  };
  assert.deepEqual(run(['\nUser:'], ['Hello', ' there', '\nUs', 'er:', ' more']), { shown: 'Hello there', output: 'Hello there', stopped: true });
  assert.deepEqual(run(['END'], ['abc', 'E', 'N', 'x']), { shown: 'abcENx', output: 'abcENx', stopped: false });
  assert.deepEqual(run(['ab', 'b'], ['xab']), { shown: 'x', output: 'x', stopped: true });
  assert.deepEqual(run([], ['a', 'b']), { shown: 'ab', output: 'ab', stopped: false });
  // Held back text is released as soon as it can no longer start a stop string.
  const s = new StopStringFilter(['###']);
  assert.equal(s.push('one #'), 'one ');
  assert.equal(s.push('# two'), '## two');
});

test('token logprobs are released with their text; a stop string\'s tokens and a trailing partial character are left out', () => {
  // As LocalBackend.run drives them: each token's piece and entry, then the filter's release.
  const run = (stops, tokens) => {
    const filter = new StopStringFilter(stops);
    const tracker = new LogprobTracker();
    const chunks = [];
    for (const [piece, lp] of tokens) {
      tracker.add(piece, { token: piece, logprob: lp, bytes: [...Buffer.from(piece)], top_logprobs: [] });
      const shown = filter.push(piece);
      if (shown) chunks.push([shown, tracker.release(filter.shown).map((e) => e.logprob)]);
      if (filter.stopped) break;
    }
    if (!filter.stopped) {
      const rest = filter.flush();
      if (rest) chunks.push([rest, tracker.release(filter.shown).map((e) => e.logprob)]);
    }
    return { chunks, content: tracker.content.map((e) => e.logprob), text: filter.output };
  };
  // '\nUs' is held back until it cannot start the stop string; the stop's tokens are dropped.
  assert.deepEqual(run(['\nUser:'], [['Hi', -1], [' there', -2], ['\nUs', -3], ['er:', -4], ['!', -5]]), {
    chunks: [['Hi', [-1]], [' there', [-2]]],
    content: [-1, -2],
    text: 'Hi there',
  });
  // A token whose text straddles the cut keeps its entry (its start is in the content).
  assert.deepEqual(run(['END'], [['ab', -1], ['cEN', -2], ['D', -3]]).content, [-1, -2]);
  // A token with no text yet (the first bytes of a character) goes out with the next text; a
  // trailing one, and an end-of-turn token (empty piece), never does.
  assert.deepEqual(run([], [['a', -1], ['', -2], ['é', -3], ['', -4]]), { chunks: [['a', [-1]], ['é', [-2, -3]]], content: [-1, -2, -3], text: 'aé' });
  const e = new LogprobTracker();
  e.add('x', { token: 'x', logprob: -0.5, bytes: [120], top_logprobs: [{ token: 'x', logprob: -0.5, bytes: [120], id: 7 }], id: 7 });
  assert.deepEqual(e.release(1), [{ token: 'x', logprob: -0.5, bytes: [120], top_logprobs: [{ token: 'x', logprob: -0.5, bytes: [120] }] }], 'OpenAI\'s fields only');
});

test('request parameters: out-of-range seeds and top_k are bad requests, ignore_eos reaches the backend', async () => {
  const { EmberEngine } = await import('../dist/engine.js');
  let seen;
  const backend = {
    info: {},
    async run(_input, p) {
      seen = p;
      return { text: '', tokens: [], finish_reason: 'length', prompt_tokens: 1, cached_tokens: 0, ttft_ms: 0, prefill_tok_s: 0, decode_tok_s: 0 };
    },
    encode: async () => [],
    decode: async () => '',
  };
  const engine = new EmberEngine(backend);
  const messages = [{ role: 'user', content: 'hi' }];
  for (const bad of [
    { seed: 2 ** 70 },
    { seed: 2 ** 53 },
    { seed: -1 },
    { top_k: 2 ** 40 },
    { ignore_eos: 'yes' },
    { temperature: -1 },
    { logprobs: 1 },
    { logprobs: true, top_logprobs: 21 },
    { logprobs: true, top_logprobs: 1.5 },
    { top_logprobs: 3 },
    { response_format: 'json' },
    { response_format: { type: 'xml' } },
    { response_format: { type: 'json_schema' } },
    { response_format: { type: 'json_schema', json_schema: { schema: [] } } },
    { response_format: { type: 'regex' } },
    { response_format: { type: 'grammar', grammar: '' } },
  ]) {
    await assert.rejects(engine.chat.completions.create({ messages, ...bad }), { code: 'bad-request' }, JSON.stringify(bad));
  }
  const r = await engine.chat.completions.create({ messages, ignore_eos: true, seed: 2 ** 53 - 1, max_tokens: 3 });
  assert.equal(seen.ignore_eos, true);
  assert.equal(seen.seed, 2 ** 53 - 1);
  assert.equal(r.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(seen.logprobs, undefined);
  assert.equal(r.choices[0].logprobs, null);
  const withLogprobs = await engine.chat.completions.create({ messages, logprobs: true, top_logprobs: 5 });
  assert.equal(seen.logprobs, 5);
  assert.deepEqual(withLogprobs.choices[0].logprobs, { content: [], refusal: null });
  await engine.chat.completions.create({ messages, logprobs: true });
  assert.equal(seen.logprobs, 0);
  // response_format reaches the engine as its output constraint.
  assert.equal(seen.grammar, undefined);
  const schema = { type: 'object' };
  for (const [format, grammar] of [
    [{ type: 'text' }, undefined],
    [{ type: 'json_object' }, { type: 'json_object' }],
    [{ type: 'json_schema', json_schema: { name: 'x', schema, strict: true } }, { type: 'json_schema', schema }],
    [{ type: 'grammar', grammar: 'start: "a"' }, { type: 'lark', grammar: 'start: "a"' }],
    [{ type: 'regex', regex: 'a+' }, { type: 'regex', regex: 'a+' }],
  ]) {
    await engine.chat.completions.create({ messages, response_format: format });
    assert.deepEqual(seen.grammar, grammar, JSON.stringify(format));
  }
});

test('a .gguf path or file: URL is a local model, an owner/name is a Hub repo', async () => {
  const { isLocalModelPath } = await import('../dist/local-file.js');
  for (const local of ['/models/x.gguf', './x.gguf', '../m/x.GGUF', 'file:///m/x.gguf', 'C:\\models\\x.gguf', 'models/x.gguf', 'x.gguf', './some-dir'])
    assert.ok(isLocalModelPath(local), local);
  for (const hub of ['HuggingFaceTB/SmolLM2-360M-Instruct', 'a/b@v1.0', 'a/b-GGUF', 'owner/name.v2']) assert.ok(!isLocalModelPath(hub), hub);
});

test('the relaxed-SIMD probe is a valid module where relaxed SIMD runs, and the service worker has the same bytes', async () => {
  const { RELAXED_SIMD_PROBE, HAS_RELAXED_SIMD } = await import('../dist/wasm.js');
  const { readFileSync } = await import('node:fs');
  const sw = readFileSync(new URL('../../www/sw.js', import.meta.url), 'utf8');
  assert.equal(sw.match(/const RELAXED_SIMD_PROBE = '([^']+)'/)?.[1], Buffer.from(RELAXED_SIMD_PROBE).toString('base64'));
  // Node 20 keeps relaxed SIMD behind a flag: the probe must say no there, and yes with it.
  const { execFileSync } = await import('node:child_process');
  const probe = (flags) => execFileSync(process.execPath, [...flags, '--input-type=module', '-e', `import('${new URL('../dist/wasm.js', import.meta.url)}').then((m) => console.log(m.HAS_RELAXED_SIMD))`]).toString().trim();
  assert.equal(probe(['--experimental-wasm-relaxed-simd']), 'true');
  assert.equal(String(HAS_RELAXED_SIMD), probe([]));
  assert.equal(WebAssembly.validate(RELAXED_SIMD_PROBE.slice(0, -1)), false, 'a truncated probe is not a module');
});

test('a sentence-transformers repo brings its N_Dense modules: config as text, weights whole; an oversized one is refused before download', () => {
  const files = [
    f('config.json'),
    f('model.safetensors', 1000),
    f('modules.json'),
    f('1_Pooling/config.json'),
    f('2_Dense/config.json'),
    f('2_Dense/model.safetensors', 4096),
    f('3_Dense/config.json'),
    f('3_Dense/model.safetensors', 4096),
    f('2_Dense/other.bin'),
    f('x/2_Dense/model.safetensors'),
    f('Dense/model.safetensors'),
  ];
  const sel = selectFiles('r', files);
  assert.deepEqual(sel.modules.map((x) => x.path), ['2_Dense/model.safetensors', '3_Dense/model.safetensors']);
  assert.deepEqual(sel.text.map((x) => x.path), ['config.json', 'modules.json', '1_Pooling/config.json', '2_Dense/config.json', '3_Dense/config.json']);
  const huge = files.map((x) => (x.path === '3_Dense/model.safetensors' ? f(x.path, 2 ** 30) : x));
  assert.throws(() => selectFiles('r', huge), (e) => e.code === 'model' && /3_Dense\/model\.safetensors is .* more than a Dense projection may hold/.test(e.message));
});

test('reasoning (GPT-OSS\'s analysis channel) comes back as message.reasoning_content and streams as delta.reasoning_content, apart from the content', async () => {
  const { EmberEngine } = await import('../dist/engine.js');
  const backend = {
    info: {},
    async run(_input, _p, onPiece) {
      onPiece('', undefined, undefined, undefined, 'Two and ');
      onPiece('', undefined, undefined, undefined, 'two.');
      onPiece('4');
      return { text: '4', reasoning: 'Two and two.', tokens: [1, 2, 3], finish_reason: 'stop', prompt_tokens: 1, cached_tokens: 0, ttft_ms: 0, prefill_tok_s: 0, decode_tok_s: 0 };
    },
    encode: async () => [],
    decode: async () => '',
  };
  const engine = new EmberEngine(backend);
  const messages = [{ role: 'user', content: '2+2?' }];
  const r = await engine.chat.completions.create({ messages });
  assert.deepEqual(r.choices[0].message, { role: 'assistant', content: '4', reasoning_content: 'Two and two.' });
  const deltas = [];
  for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) deltas.push(chunk.choices[0].delta);
  assert.equal(deltas.map((d) => d.reasoning_content ?? '').join(''), 'Two and two.');
  assert.equal(deltas.map((d) => d.content ?? '').join(''), '4');
  assert.ok(deltas.every((d) => !(d.reasoning_content && d.content)), 'reasoning and content never share a delta here');
  // Without reasoning, no field.
  backend.run = async () => ({ text: 'hi', tokens: [1], finish_reason: 'stop', prompt_tokens: 1, cached_tokens: 0, ttft_ms: 0, prefill_tok_s: 0, decode_tok_s: 0 });
  assert.deepEqual((await engine.chat.completions.create({ messages })).choices[0].message, { role: 'assistant', content: 'hi' });
});
