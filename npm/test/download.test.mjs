// Downloads through the mock Hub (tests/mock-hub): caching, offline reuse, resume with Range,
// retries, integrity checks and clean failures. No GPU needed.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, test } from 'node:test';
import { FsCache, MemoryCache } from '../dist/cache/index.js';
import { modelRef } from '../dist/hub.js';
import { deleteCached, fetchModelFiles, listCached } from '../dist/model-files.js';
import { loadWasm, wasmHashers } from '../dist/wasm.js';
import { fixtureRepos, ROOT } from '../../tests/mock-hub/repos.mjs';
import { startMockHub } from '../../tests/mock-hub/server.mjs';

const GGUF_REPO = 'emberlm-test/tiny-qwen2-GGUF';
const ST_REPO = 'emberlm-test/tiny-llama';
const ggufBytes = readFileSync(join(ROOT, 'tests/fixtures/tiny/qwen2/model.gguf'));
let hub;
let hasher;
const dirs = [];

before(async () => {
  hub = await startMockHub({ repos: fixtureRepos(), pageSize: 3 });
  hasher = wasmHashers(await loadWasm());
});
beforeEach(() => hub.clearFaults());
after(async () => {
  await hub.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const freshDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'emberlm-cache-'));
  dirs.push(d);
  return d;
};
const options = (cache, extra = {}) => ({ cache, fetch, hasher, retryDelayMs: 5, ...extra });
const ref = (repo, revision) => modelRef(repo, { hub: hub.url, revision });
const since = (n) => hub.requests.slice(n);
const readAll = (f) => Buffer.from(f.readSync(0, f.size));
const sha = (b) => createHash('sha256').update(b).digest('hex');

test('the wasm hashers match the Hub digests (sha256 for LFS, git blob sha1 otherwise)', async () => {
  const bytes = new TextEncoder().encode('hello\n');
  const h = hasher({ path: 'a', size: bytes.length, gitOid: 'x' });
  h.update(bytes.subarray(0, 2));
  h.update(bytes.subarray(2));
  assert.equal(h.finishHex(), 'ce013625030ba8dba906f756967f9e9ca394464a'); // `git hash-object` of "hello\n"
  const s = hasher({ path: 'b', size: ggufBytes.length, sha256: 'x' });
  s.update(ggufBytes);
  assert.equal(s.finishHex(), sha(ggufBytes));
});

test('a GGUF repo downloads once, then loads from the cache with the Hub down', async () => {
  const dir = freshDir();
  const n = hub.requests.length;
  const progress = [];
  const first = await fetchModelFiles(ref(GGUF_REPO), {}, options(await FsCache.create(dir), { onProgress: (p) => progress.push(p) }));
  assert.equal(first.fromCache, false);
  assert.equal(first.format, 'gguf');
  assert.deepEqual(first.weights.map((w) => w.path), ['tiny-qwen2-BF16.gguf']);
  assert.ok(readAll(first.weights[0].file).equals(ggufBytes));
  assert.ok(since(n).some((r) => r.path.startsWith('/api/models/') && r.status === 200));
  const last = progress.at(-1);
  assert.deepEqual([last.phase, last.loaded, last.total, last.fileTotal], ['download', ggufBytes.length, ggufBytes.length, ggufBytes.length]);
  assert.ok(progress.every((p, i) => i === 0 || p.loaded >= progress[i - 1].loaded), 'progress never goes back');

  const m = hub.requests.length;
  const broken = async () => {
    throw new TypeError('fetch failed (network is off)');
  };
  const again = await fetchModelFiles(ref(GGUF_REPO), {}, options(await FsCache.create(dir), { fetch: broken }));
  assert.equal(again.fromCache, true);
  assert.ok(readAll(again.weights[0].file).equals(ggufBytes));
  assert.equal(hub.requests.length, m, 'no request reached the Hub');
});

test('sharded safetensors: text files, index, every shard; pagination of the file list is followed', async () => {
  const n = hub.requests.length;
  const files = await fetchModelFiles(ref(ST_REPO), {}, options(new MemoryCache()));
  assert.equal(files.format, 'safetensors');
  assert.deepEqual(files.weights.map((w) => w.path).sort(), ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
  assert.deepEqual(Object.keys(files.text).sort(), ['config.json', 'generation_config.json', 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json']);
  assert.equal(files.text['config.json'], readFileSync(join(ROOT, 'tests/fixtures/tiny/llama/config.json'), 'utf8'));
  assert.ok(since(n).filter((r) => r.path.includes('/tree/')).length >= 3, 'the tree listing was read page by page');
});

test('a connection dropped mid-file resumes with Range and the file verifies', async () => {
  const cache = new MemoryCache();
  hub.inject({ match: '/__lfs/', kind: 'drop', at: 0.4, times: 2 });
  const n = hub.requests.length;
  const files = await fetchModelFiles(ref(GGUF_REPO), {}, options(cache));
  assert.ok(readAll(files.weights[0].file).equals(ggufBytes));
  const ranges = since(n).filter((r) => r.path.startsWith('/__lfs/') && r.range).map((r) => r.range);
  assert.ok(ranges.length >= 2 && ranges.every((r) => /^bytes=[1-9]\d*-$/.test(r)), `resumed with ranges: ${ranges}`);
});

test('a truncated body, 500s and a slow body are retried until the file is whole', async () => {
  hub.inject({ match: '/__lfs/', kind: 'truncate', at: 0.3 });
  hub.inject({ match: '/resolve/', kind: 'status', status: 500, times: 2 });
  hub.inject({ match: '/__lfs/', kind: 'slow', chunk: 65536, delayMs: 5, times: 5 });
  const files = await fetchModelFiles(ref(GGUF_REPO), {}, options(new MemoryCache()));
  assert.ok(readAll(files.weights[0].file).equals(ggufBytes));
});

test('a corrupted body is discarded and fetched again; corruption every time is an error with nothing cached', async () => {
  hub.inject({ match: '/__lfs/', kind: 'corrupt' });
  const ok = await fetchModelFiles(ref(GGUF_REPO), {}, options(new MemoryCache()));
  assert.ok(readAll(ok.weights[0].file).equals(ggufBytes));

  const dir = freshDir();
  hub.inject({ match: '/__lfs/', kind: 'corrupt', times: 10 });
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), {}, options(await FsCache.create(dir))), (e) => e.code === 'integrity' && /does not match/.test(e.message));
  hub.clearFaults();
  const left = readdirSync(dir, { recursive: true }).filter((p) => p.endsWith('.gguf') || p.endsWith('.json'));
  assert.deepEqual(left, [], 'no weight file and no manifest left behind');
});

test('an interrupted download resumes from its part file in a later session', async () => {
  const dir = freshDir();
  hub.inject({ match: '/__lfs/', kind: 'drop', at: 0.5, times: 1 });
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), {}, options(await FsCache.create(dir), { attempts: 1 })), (e) => e.code === 'network' && /kept to resume/.test(e.message));
  const n = hub.requests.length;
  const files = await fetchModelFiles(ref(GGUF_REPO), {}, options(await FsCache.create(dir)));
  assert.ok(readAll(files.weights[0].file).equals(ggufBytes));
  const get = since(n).find((r) => r.path.startsWith('/__lfs/'));
  assert.match(get.range, /^bytes=[1-9]\d*-$/, 'the second session asked only for the rest');
});

test('missing repos, revisions and quantisations, an unreachable Hub and an abort are clear errors', async () => {
  const cache = new MemoryCache();
  await assert.rejects(fetchModelFiles(ref('emberlm-test/nope'), {}, options(cache)), (e) => e.code === 'not-found' && /emberlm-test\/nope/.test(e.message));
  await assert.rejects(fetchModelFiles(ref(ST_REPO, 'v9'), {}, options(cache)), (e) => e.code === 'not-found' && /revision "v9"/.test(e.message));
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), { quant: 'Q4_K_M' }, options(cache)), (e) => e.code === 'not-found' && /BF16/.test(e.message));
  const down = modelRef(GGUF_REPO, { hub: 'http://127.0.0.1:9' });
  await assert.rejects(fetchModelFiles(down, {}, options(cache)), (e) => e.code === 'offline' && /127\.0\.0\.1:9/.test(e.message));
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), {}, options(cache, { offline: true })), { code: 'offline' });
  const ctl = new AbortController();
  hub.inject({ match: '/__lfs/', kind: 'slow', chunk: 4096, delayMs: 20 });
  setTimeout(() => ctl.abort(), 100);
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), {}, options(cache, { signal: ctl.signal })), { code: 'aborted' });
  hub.clearFaults();
});

test('revisions are cached apart; listing and deleting cached models', async () => {
  const cache = await FsCache.create(freshDir());
  await fetchModelFiles(ref(ST_REPO, 'main'), {}, options(cache));
  await fetchModelFiles(ref(ST_REPO, 'v1.0'), {}, options(cache));
  await fetchModelFiles(ref(GGUF_REPO), {}, options(cache));
  const listed = await listCached(cache);
  assert.deepEqual(listed.map((m) => `${m.repo}@${m.revision}`).sort(), [`${GGUF_REPO}@main`, `${ST_REPO}@main`, `${ST_REPO}@v1.0`].sort());
  const gguf = listed.find((m) => m.repo === GGUF_REPO);
  assert.equal(gguf.bytes, ggufBytes.length);
  assert.equal(gguf.format, 'gguf');
  const freed = await deleteCached(cache, ref(ST_REPO, 'v1.0'));
  assert.ok(freed > 280000, `freed ${freed} bytes`);
  assert.deepEqual((await listCached(cache)).map((m) => `${m.repo}@${m.revision}`).sort(), [`${GGUF_REPO}@main`, `${ST_REPO}@main`].sort());
  const n = hub.requests.length;
  await fetchModelFiles(ref(ST_REPO, 'main'), {}, options(cache));
  assert.equal(hub.requests.length, n, 'main is still served from the cache');
});

test('a full disk or browser quota is a quota error naming the file and size, with nothing cached', async () => {
  class FullCache extends MemoryCache {
    async part(key) {
      const p = await super.part(key);
      return {
        ...p,
        get size() {
          return p.size;
        },
        chunks: () => p.chunks(),
        append: async () => {
          throw new DOMException('the quota has been exceeded', 'QuotaExceededError');
        },
      };
    }
  }
  const cache = new FullCache();
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), {}, options(cache)), (e) => e.code === 'quota' && /tiny-qwen2-BF16\.gguf/.test(e.message) && /444\.1 kB/.test(e.message));
  assert.deepEqual(await cache.list(''), []);
});

test('a hostile listing is refused with a clear error and writes nothing outside the cache', async () => {
  const base = freshDir();
  const dir = join(base, 'a', 'b', 'cache');
  const lfs = (path) => ({ type: 'file', path, size: 5, oid: '1'.repeat(40), lfs: { oid: '2'.repeat(64), size: 5 } });
  const tree = `/api/models/${GGUF_REPO}/tree/main?recursive=true`;
  const cases = [
    [{ kind: 'listing', add: [lfs('../../../../escaped.gguf')] }, /listed file "\.\.\/\.\.\/\.\.\/\.\.\/escaped\.gguf" is refused/],
    [{ kind: 'listing', add: [lfs('../../HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/main/x.gguf')] }, /is refused/],
    [{ kind: 'listing', add: [lfs('.emberlm/auto.json')] }, /cache's own files/],
    [{ kind: 'listing', add: [{ type: 'file', path: 'extra.json', size: 3 }] }, /no hash for "extra.json"/],
    [{ kind: 'listing', link: 'http://evil.example:1/api/models/x/tree/main' }, /next page is on another server/],
    [{ kind: 'listing', link: tree, times: 50 }, /returned to a page already read/],
  ];
  for (const [fault, want] of cases) {
    hub.clearFaults();
    hub.inject({ match: '/tree/', ...fault });
    await assert.rejects(fetchModelFiles(ref(GGUF_REPO), {}, options(await FsCache.create(dir))), want, JSON.stringify(fault));
  }
  const walk = (d) => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)]));
  assert.deepEqual(walk(base).filter((p) => !p.startsWith(dir)), []);
  // Repo ids, revisions and file choices that break the rule never reach the network.
  const n = hub.requests.length;
  for (const [repo, revision] of [['../x/y', undefined], ['a/b', '../../x'], ['a/.hidden', undefined], ['a/b', 'main/.emberlm']]) {
    assert.throws(() => modelRef(repo, { hub: hub.url, revision }), { code: 'bad-request' }, `${repo}@${revision}`);
  }
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), { file: '../../../.bashrc' }, options(await FsCache.create(dir))), /file "\.\.\/\.\.\/\.\.\/\.bashrc" is refused/);
  assert.equal(hub.requests.length, n);
});

test('cache keys: distinct Hubs, revisions and file choices never share an entry; a planted manifest is ignored', async () => {
  const { cacheSegment, hubFolder } = await import('../dist/hub.js');
  assert.equal(hubFolder('https://huggingface.co'), 'huggingface.co');
  assert.notEqual(hubFolder('http://h'), hubFolder('https://h'));
  assert.notEqual(hubFolder('https://h/mirror'), hubFolder('https://h'));
  assert.notEqual(cacheSegment('q/x.gguf'), cacheSegment('q_x.gguf'));
  assert.equal(cacheSegment('refs/pr/1'), 'refs%2Fpr%2F1');

  // A manifest copied into another repo's folder names its own repo: not used for this one.
  const dir = freshDir();
  const cache = await FsCache.create(dir);
  await fetchModelFiles(ref(GGUF_REPO), {}, options(cache));
  const { cachePrefix } = await import('../dist/model-files.js');
  const victim = modelRef('HuggingFaceTB/SmolLM2-135M-Instruct-GGUF', { hub: hub.url });
  const planted = new TextEncoder().encode(await (await cache.open(`${cachePrefix(ref(GGUF_REPO))}.emberlm/auto.json`)).text());
  await cache.put(`${cachePrefix(victim)}.emberlm/auto.json`, planted);
  const n = hub.requests.length;
  await assert.rejects(fetchModelFiles(victim, {}, options(cache, { offline: true })), { code: 'offline' });
  assert.equal(hub.requests.length, n);
  assert.deepEqual((await listCached(cache)).map((m) => m.repo), [GGUF_REPO]);
});

test('a Hub that accepts requests and never answers, or stalls mid-body, is timed out and retried, not waited on forever', async () => {
  const dir = freshDir();
  const quick = (cache) => options(cache, { idleTimeoutMs: 400 });
  hub.inject({ match: '/tree/', kind: 'hang' });
  hub.inject({ match: '/__lfs/', kind: 'hang' });
  hub.inject({ match: '/__lfs/', kind: 'slow', chunk: 1024, delayMs: 2000 });
  const started = Date.now();
  const files = await fetchModelFiles(ref(GGUF_REPO), {}, quick(await FsCache.create(dir)));
  assert.equal(files.fromCache, false);
  assert.deepEqual(readAll(files.weights[0].file), ggufBytes);
  assert.ok(Date.now() - started < 20_000, `took ${Date.now() - started} ms`);

  hub.inject({ match: '/tree/', kind: 'hang', times: 10 });
  await assert.rejects(fetchModelFiles(ref(GGUF_REPO), {}, quick(await FsCache.create(freshDir()))), /no answer within 0.4 s/);
  hub.clearFaults();
});
