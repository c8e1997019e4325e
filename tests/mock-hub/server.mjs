// A mock Hugging Face Hub on 127.0.0.1 with the real URL layout, so the npm package's own
// fetch/cache code is what the tests exercise:
//   GET  /api/models/{repo}/tree/{revision}?recursive=true   file list (paginated with Link)
//   GET|HEAD /{repo}/resolve/{revision}/{path}               small files: 200 + git-oid ETag;
//        LFS files: 302 to /__lfs/{sha256} (like the Hub's CDN redirect) with X-Linked-Etag/Size
// Range requests, ETag, Content-Length, CORS, the Hub's X-Error-Code on 401/404, and injected
// faults (HTTP errors, connections dropped mid-body, truncated or corrupted bodies, slow bodies).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, relative } from 'node:path';

const LFS = /\.(safetensors|gguf|bin|pt|onnx)$/;

function gitOid(bytes) {
  return createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex');
}

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]));
}

/**
 * repos: { 'owner/name': { dir, files?: { repoPath: localPath relative to dir } , revisions?: ['main', ...] } }
 * Without `files`, every file under `dir` is served under its own relative path.
 */
function loadRepos(repos) {
  const out = new Map();
  for (const [id, spec] of Object.entries(repos)) {
    const mapping = spec.files ?? Object.fromEntries(walk(spec.dir).map((f) => [relative(spec.dir, f), relative(spec.dir, f)]));
    const files = new Map();
    for (const [path, local] of Object.entries(mapping)) {
      const full = join(spec.dir, local);
      const size = statSync(full).size;
      const lfs = LFS.test(path);
      // Hash lazily-once: fixtures are small; a real model file is hashed on first listing.
      let bytes;
      const body = () => (bytes ??= readFileSync(full));
      const entry = { path, size, lfs, body, oid: undefined, sha256: undefined };
      entry.hashes = () => {
        entry.oid ??= gitOid(body());
        if (lfs) entry.sha256 ??= createHash('sha256').update(body()).digest('hex');
        return entry;
      };
      files.set(path, entry);
    }
    out.set(id, { files, revisions: new Set(spec.revisions ?? ['main']) });
  }
  return out;
}

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-expose-headers':
    'etag, content-length, content-range, accept-ranges, x-linked-etag, x-linked-size, x-repo-commit, x-error-code, x-error-message, link',
};

export async function startMockHub({ repos, port = 0, pageSize = 0 } = {}) {
  const table = loadRepos(repos);
  const faults = [];
  const requests = [];
  const sockets = new Set();

  function takeFault(path) {
    const i = faults.findIndex((f) => (f.match instanceof RegExp ? f.match.test(path) : path.includes(f.match)));
    if (i < 0) return null;
    const f = faults[i];
    if (--f.times <= 0) faults.splice(i, 1);
    return f;
  }

  function error(res, status, code, message) {
    res.writeHead(status, { ...CORS, 'content-type': 'application/json', 'x-error-code': code, 'x-error-message': message });
    res.end(JSON.stringify({ error: message }));
  }

  async function sendBody(req, res, entry, fault) {
    const bytes = entry.body();
    let start = 0;
    let end = bytes.length - 1;
    const headers = { ...CORS, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream', etag: `"${entry.lfs ? entry.sha256 : entry.oid}"` };
    const range = req.headers.range?.match(/^bytes=(\d+)-(\d*)$/);
    // A broken server or cache: a partial answer for a Range request that starts elsewhere.
    if (range && fault?.kind === 'badrange') range[1] = '0';
    let status = 200;
    if (range) {
      start = Number(range[1]);
      if (range[2]) end = Math.min(end, Number(range[2]));
      if (start >= bytes.length || start > end) {
        res.writeHead(416, { ...headers, 'content-range': `bytes */${bytes.length}` });
        res.end();
        return 416;
      }
      status = 206;
      headers['content-range'] = `bytes ${start}-${end}/${bytes.length}`;
    }
    let body = bytes.subarray(start, end + 1);
    if (fault?.kind === 'corrupt') {
      body = Buffer.from(body);
      for (let i = 0; i < body.length; i += 997) body[i] ^= 0x5a;
    }
    if (fault?.kind === 'truncate') {
      // No Content-Length: the body simply ends early, as a broken proxy would send it.
      res.writeHead(status, headers);
      res.end(req.method === 'HEAD' ? undefined : body.subarray(0, Math.floor(body.length * (fault.at ?? 0.5))));
      return status;
    }
    headers['content-length'] = String(body.length);
    res.writeHead(status, headers);
    if (req.method === 'HEAD') {
      res.end();
      return status;
    }
    if (fault?.kind === 'drop') {
      res.write(body.subarray(0, Math.floor(body.length * (fault.at ?? 0.5))));
      await new Promise((r) => setTimeout(r, 20));
      res.socket?.destroy();
      return status;
    }
    const piece = fault?.kind === 'slow' ? Math.max(1, fault.chunk ?? 4096) : body.length;
    for (let at = 0; at < body.length; at += piece) {
      if (fault?.kind === 'slow') await new Promise((r) => setTimeout(r, fault.delayMs ?? 20));
      if (res.destroyed) return status;
      res.write(body.subarray(at, at + piece));
    }
    res.end();
    return status;
  }

  async function handle(req, res, path) {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { ...CORS, 'access-control-allow-methods': 'GET, HEAD', 'access-control-allow-headers': 'range, content-type' });
      res.end();
      return 204;
    }
    const fault = takeFault(path);
    if (fault?.kind === 'status') return error(res, fault.status ?? 500, 'Injected', 'injected fault'), fault.status ?? 500;
    if (fault?.kind === 'delay') await new Promise((r) => setTimeout(r, fault.delayMs ?? 1000));
    // A Hub that accepts the request and never answers (the client's timeouts must end it).
    if (fault?.kind === 'hang') return new Promise(() => {});

    let m = path.match(/^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/);
    if (m) {
      const repo = table.get(m[1]);
      if (!repo) return error(res, 401, 'RepoNotFound', 'Repository not found'), 401;
      if (!repo.revisions.has(m[2])) return error(res, 404, 'RevisionNotFound', `Invalid rev id: ${m[2]}`), 404;
      const all = [...repo.files.values()].map((f) => {
        f.hashes();
        return f.lfs ? { type: 'file', oid: f.oid, size: f.size, path: f.path, lfs: { oid: f.sha256, size: f.size, pointerSize: 133 } } : { type: 'file', oid: f.oid, size: f.size, path: f.path };
      });
      const cursor = Number(url.searchParams.get('cursor') ?? 0);
      const page = pageSize ? all.slice(cursor, cursor + pageSize) : all;
      const headers = { ...CORS, 'content-type': 'application/json' };
      if (pageSize && cursor + pageSize < all.length) {
        headers.link = `<${url.pathname}?recursive=true&cursor=${cursor + pageSize}>; rel="next"`;
      }
      // A hostile listing: extra entries (paths escaping the repo, no hashes, ...) and/or a
      // `Link` of the fault's choosing (another host, the same page again).
      if (fault?.kind === 'listing') {
        page.push(...(fault.add ?? []));
        if (fault.link) headers.link = `<${fault.link}>; rel="next"`;
      }
      res.writeHead(200, headers);
      res.end(JSON.stringify(page));
      return 200;
    }
    m = path.match(/^\/__lfs\/([0-9a-f]{64})$/);
    if (m) {
      for (const repo of table.values()) for (const f of repo.files.values()) if (f.lfs && f.hashes().sha256 === m[1]) return sendBody(req, res, f, fault);
      return error(res, 404, 'EntryNotFound', 'no such object'), 404;
    }
    m = path.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    if (m) {
      const repo = table.get(m[1]);
      if (!repo) return error(res, 401, 'RepoNotFound', 'Repository not found'), 401;
      if (!repo.revisions.has(m[2])) return error(res, 404, 'RevisionNotFound', `Invalid rev id: ${m[2]}`), 404;
      const f = repo.files.get(m[3]);
      if (!f) return error(res, 404, 'EntryNotFound', `${m[3]} does not exist`), 404;
      f.hashes();
      if (f.lfs) {
        res.writeHead(302, {
          ...CORS,
          location: `/__lfs/${f.sha256}`,
          'x-linked-etag': `"${f.sha256}"`,
          'x-linked-size': String(f.size),
          'x-repo-commit': '0'.repeat(40),
        });
        res.end();
        return 302;
      }
      return sendBody(req, res, f, fault);
    }
    error(res, 404, 'NotFound', 'not found');
    return 404;
  }

  const server = createServer(async (req, res) => {
    const raw = new URL(req.url, 'http://x').pathname;
    let path;
    try {
      path = decodeURIComponent(raw);
    } catch {
      // A malformed escape (`/%E0%A4%A`) is a bad request, never a reason to stop serving.
      requests.push({ method: req.method, path: raw, range: null, authorization: req.headers.authorization ?? null, status: 400 });
      return error(res, 400, 'BadRequest', 'malformed URL escape');
    }
    const entry = { method: req.method, path, range: req.headers.range ?? null, authorization: req.headers.authorization ?? null, status: 0 };
    requests.push(entry);
    try {
      entry.status = await handle(req, res, path);
    } catch (e) {
      entry.status = 500;
      if (!res.headersSent) error(res, 500, 'ServerError', String(e));
      else res.destroy();
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    requests,
    /**
     * Adds a fault: { match: string | RegExp (request path), kind: 'status' | 'drop' | 'truncate' |
     * 'corrupt' | 'slow' | 'delay' | 'hang' | 'badrange' (a 206 that starts at byte 0 whatever
     * was asked) | 'listing' (with `add`: extra tree entries, `link`: the next-page URL), times = 1, ... }
     */
    inject(fault) {
      faults.push({ times: 1, ...fault });
    },
    clearFaults() {
      faults.length = 0;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
