//! Models from the Hugging Face Hub for the CLI: `owner/name[@revision]` → the repo's file list
//! (tree API, paginated) → a GGUF picked by `--file` / `--quant` / preference, or the
//! safetensors set → downloaded into the same folder, layout and manifest as the npm package's
//! file cache (`$EMBERLM_CACHE`, else `$XDG_CACHE_HOME/emberlm`, else `~/.cache/emberlm`), so
//! the CLI and Node/Deno/Bun scripts share downloads. Downloads resume with HTTP Range, retry
//! with backoff, are checked against the listed size and SHA-256 (LFS) or git blob id, and are
//! renamed into place only when verified; the manifest is written last, so a manifest means
//! every file is there. A model with a complete manifest loads without any request.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub const DEFAULT_HUB: &str = "https://huggingface.co";

/// Preferred GGUF quantisations when neither a file nor a quantisation is given (the npm
/// package's `QUANT_PREFERENCE`).
const QUANT_PREFERENCE: [&str; 11] = ["Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q5_K_M", "Q5_K_S", "Q5_0", "Q6_K", "Q8_0", "F16", "BF16"];
const TEXT_FILES: [&str; 4] = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"];
const ATTEMPTS: u32 = 5;

pub struct HubRequest {
    pub hub: String,
    pub repo: String,
    pub revision: String,
    pub file: Option<String>,
    pub quant: Option<String>,
    pub cache: PathBuf,
    pub offline: bool,
    /// `HF_TOKEN`: sent only where [`HubRequest::token_for`] allows.
    pub token: Option<String>,
}

/// The longest repo path, revision or `--file` accepted (the Hub's own limits are far below).
const MAX_PATH_BYTES: usize = 1024;
/// The most listing pages followed: a real repo needs a handful (1,000 files a page).
const MAX_LISTING_PAGES: usize = 1000;
/// The folder inside each cached revision that holds our manifests.
const MANIFEST_DIR: &str = ".emberlm";

/// The one rule for every path a Hub or a user names (listing entries, safetensors index
/// shards, `--file`, revisions): relative and `/`-separated, no empty, `.` or `..` segment, no
/// backslash or control character, at most 1,024 bytes, and nothing the cache keeps for itself
/// (the manifest folder, `.part` files). The npm package applies the same rule (`checkRepoPath`).
pub fn check_repo_path(what: &str, path: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("{what} {path:?} is refused: {why}"));
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return refuse("it must be 1 to 1024 bytes long");
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return refuse("it contains a backslash or a control character");
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return refuse("paths are relative and `/`-separated, with no empty, `.` or `..` segment");
        }
        if segment == MANIFEST_DIR || segment.ends_with(".part") {
            return refuse("it names one of the cache's own files");
        }
    }
    Ok(())
}

/// `owner/name`: two segments of ASCII letters, digits, `-`, `_` and `.`, each starting with a
/// letter or digit, at most 96 characters, no `..` (the Hub's own rule).
pub fn check_repo_id(repo: &str) -> Result<(), String> {
    let segment_ok = |s: &str| {
        (1..=96).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !s.contains("..")
    };
    match repo.split('/').collect::<Vec<_>>()[..] {
        [owner, name] if segment_ok(owner) && segment_ok(name) => Ok(()),
        _ => Err(format!("{repo:?} is not a Hub repo id (expected \"owner/name\": letters, digits, `-`, `_`, `.`)")),
    }
}

/// One cache path segment for any string: bytes other than ASCII letters, digits and `-_.~`
/// percent-encoded, so distinct strings never share a segment (the npm package's `cacheSegment`).
fn cache_segment(s: &str) -> String {
    encode(s)
}

/// The cache folder of a Hub: its host (`:` → `_`) for an `https://host` Hub, which keeps the
/// default Hub's folder `huggingface.co`; any other scheme, or a Hub with a path, is encoded
/// whole (`http%3A%2F%2F127.0.0.1%3A8080`), so `http://h` and `https://h` never share entries.
pub fn hub_folder(hub: &str) -> String {
    match hub.strip_prefix("https://") {
        Some(host) if !host.contains('/') && !host.is_empty() => host.to_ascii_lowercase().replace(':', "_"),
        _ => cache_segment(hub),
    }
}

/// Whether `s` names a Hub repo (`owner/name`, optionally `@revision`) rather than a local path.
pub fn looks_like_repo(s: &str) -> bool {
    let name = s.split_once('@').map_or(s, |(n, _)| n);
    // A mistyped local file (`models/nope.gguf`, `./x`) is "no such file", not a Hub lookup.
    let file_like = s.starts_with('.') || [".gguf", ".safetensors", ".json"].iter().any(|ext| name.to_ascii_lowercase().ends_with(ext));
    !Path::new(s).exists() && !file_like && check_repo_id(name).is_ok()
}

/// `$EMBERLM_CACHE`, else `$XDG_CACHE_HOME/emberlm`, else `~/.cache/emberlm` (as the npm package).
pub fn default_cache() -> PathBuf {
    let env = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("EMBERLM_CACHE").unwrap_or_else(|| env("XDG_CACHE_HOME").unwrap_or_else(|| env("HOME").unwrap_or_default().join(".cache")).join("emberlm"))
}

#[derive(Debug, Clone)]
struct RepoFile {
    path: String,
    size: u64,
    sha256: Option<String>,
    git_oid: Option<String>,
}

impl RepoFile {
    fn to_json(&self) -> Value {
        let mut v = json!({ "path": self.path, "size": self.size });
        if let Some(h) = &self.sha256 {
            v["sha256"] = json!(h);
        }
        if let Some(h) = &self.git_oid {
            v["gitOid"] = json!(h);
        }
        v
    }

    fn from_json(v: &Value) -> Option<Self> {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Some(Self { path: s("path")?, size: v["size"].as_u64()?, sha256: s("sha256"), git_oid: s("gitOid") })
    }
}

impl HubRequest {
    /// `owner/name[@revision]`; an explicit `revision` wins over the `@` suffix.
    pub fn new(spec: &str, hub: Option<String>, revision: Option<String>, cache: PathBuf) -> Self {
        let (repo, at_rev) = spec.split_once('@').map_or((spec, None), |(r, v)| (r, Some(v.to_string())));
        let hub = hub.unwrap_or_else(|| DEFAULT_HUB.to_string()).trim_end_matches('/').to_string();
        let revision = revision.or(at_rev).filter(|r| !r.is_empty()).unwrap_or_else(|| "main".into());
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        Self { hub, repo: repo.to_string(), revision, file: None, quant: None, cache, offline: false, token }
    }

    /// Refuses a repo id, revision or `--file` that breaks the path rules, before any request
    /// or any path is built from them.
    fn check(&self) -> Result<(), String> {
        check_repo_id(&self.repo)?;
        check_repo_path("revision", &self.revision)?;
        if let Some(f) = &self.file {
            check_repo_path("--file", f)?;
        }
        if !(self.hub.starts_with("https://") || self.hub.starts_with("http://")) {
            return Err(format!("the Hub URL {:?} must start with https:// (or http:// for a local server)", self.hub));
        }
        Ok(())
    }

    /// The folder of this repo and revision in the cache: `{hub folder}/{owner}/{name}/{revision}`,
    /// the revision as one segment (`refs%2Fpr%2F1`). Only checked ids and revisions get here.
    fn folder(&self) -> PathBuf {
        self.cache.join(hub_folder(&self.hub)).join(&self.repo).join(cache_segment(&self.revision))
    }

    /// A checked repo path inside this revision's folder.
    fn file_path(&self, path: &str) -> Result<PathBuf, String> {
        check_repo_path("file", path)?;
        Ok(self.folder().join(path))
    }

    fn manifest_path(&self) -> PathBuf {
        let which = match (&self.file, &self.quant) {
            (Some(f), _) => format!("file={}", cache_segment(f)),
            (None, Some(q)) => format!("quant={}", cache_segment(&q.to_uppercase())),
            _ => "auto".into(),
        };
        self.folder().join(MANIFEST_DIR).join(format!("{which}.json"))
    }

    fn what(&self) -> String {
        format!("{}@{} on {}", self.repo, self.revision, self.hub)
    }

    /// Makes the model available locally and returns what `LocalModel::open` takes: the first
    /// GGUF shard, or the folder of a safetensors model.
    pub fn fetch(&self, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, String> {
        self.check()?;
        if let Some(path) = self.cached()? {
            return Ok(path);
        }
        if self.offline {
            return Err(format!("{} is not in the cache ({}) and --offline was given", self.what(), self.cache.display()));
        }
        let agent = agent();
        let files = self.list(&agent)?;
        let (format, mut weights, text) = self.select(&files)?;
        for f in &text {
            self.download(&agent, f, progress)?;
        }
        if format == "safetensors" && weights.is_empty() {
            let index = fs::read_to_string(self.file_path("model.safetensors.index.json")?).map_err(|e| format!("model.safetensors.index.json: {e}"))?;
            weights = index_shards(&self.repo, &index, &files)?;
        }
        for f in &weights {
            self.download(&agent, f, progress)?;
        }
        let mut choice = json!({});
        if let Some(f) = &self.file {
            choice["file"] = json!(f);
        }
        if let Some(q) = &self.quant {
            choice["quant"] = json!(q);
        }
        let manifest = json!({
            "version": 1, "hub": self.hub, "repo": self.repo, "revision": self.revision, "choice": choice,
            "format": format, "weights": weights.iter().map(RepoFile::to_json).collect::<Vec<_>>(),
            "text": text.iter().map(RepoFile::to_json).collect::<Vec<_>>(), "savedAt": utc_now(),
        });
        write_atomically(&self.manifest_path(), serde_json::to_string_pretty(&manifest).unwrap().as_bytes())?;
        self.entry_point(format, &weights)
    }

    fn entry_point(&self, format: &str, weights: &[RepoFile]) -> Result<PathBuf, String> {
        match (format, weights.first()) {
            ("gguf", Some(first)) => self.file_path(&first.path),
            _ => Ok(self.folder()),
        }
    }

    /// The model from a complete cached manifest (every file present at its size), if any. The
    /// manifest must name this Hub, repo and revision, and its paths obey the path rule: a file
    /// planted in the cache cannot redirect a load elsewhere.
    fn cached(&self) -> Result<Option<PathBuf>, String> {
        let Ok(text) = fs::read_to_string(self.manifest_path()) else { return Ok(None) };
        let Ok(m) = serde_json::from_str::<Value>(&text) else { return Ok(None) };
        if m["version"] != 1 || m["hub"] != self.hub.as_str() || m["repo"] != self.repo.as_str() || m["revision"] != self.revision.as_str() {
            return Ok(None);
        }
        let list = |k: &str| m[k].as_array().map(|a| a.iter().filter_map(RepoFile::from_json).collect::<Vec<_>>()).unwrap_or_default();
        let (weights, text) = (list("weights"), list("text"));
        let mut complete = true;
        for f in weights.iter().chain(&text) {
            complete &= fs::metadata(self.file_path(&f.path)?).is_ok_and(|md| md.len() == f.size);
        }
        let format = if m["format"] == "gguf" { "gguf" } else { "safetensors" };
        if complete {
            Ok(Some(self.entry_point(format, &weights)?))
        } else {
            Ok(None)
        }
    }

    fn list(&self, agent: &ureq::Agent) -> Result<Vec<RepoFile>, String> {
        let mut files = Vec::new();
        let mut url = Some(format!("{}/api/models/{}/tree/{}?recursive=true", self.hub, self.repo, encode(&self.revision)));
        let mut seen = std::collections::HashSet::new();
        while let Some(u) = url.take() {
            if !seen.insert(u.clone()) {
                return Err(format!("listing {}: the Hub's pagination returned to a page already read ({u})", self.what()));
            }
            if seen.len() > MAX_LISTING_PAGES {
                return Err(format!("listing {}: more than {MAX_LISTING_PAGES} pages", self.what()));
            }
            let mut res = with_retries(|| request(agent, &u, None, self.token_for(&u)), &format!("listing {}", self.what()))?;
            if res.status() != 200 {
                return Err(self.http_error(&res, "the file list"));
            }
            let link = res.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = res.body_mut().read_to_string().map_err(|e| format!("listing {}: {e}", self.what()))?;
            let entries: Vec<Value> = serde_json::from_str(&body).map_err(|e| format!("listing {}: not a file list ({e})", self.what()))?;
            for e in entries.iter().filter(|e| e["type"] == "file") {
                let path = e["path"].as_str().unwrap_or_default().to_string();
                check_repo_path(&format!("{}: listed file", self.what()), &path)?;
                let file = match e.get("lfs") {
                    Some(lfs) => RepoFile { path, size: lfs["size"].as_u64().unwrap_or(0), sha256: lfs["oid"].as_str().map(str::to_string), git_oid: None },
                    None => RepoFile { path, size: e["size"].as_u64().unwrap_or(0), sha256: None, git_oid: e["oid"].as_str().map(str::to_string) },
                };
                // Every file the Hub lists has a hash; one without could be anything.
                if file.sha256.is_none() && file.git_oid.is_none() {
                    return Err(format!("{}: the listing gives no hash for {:?}, so it cannot be verified", self.what(), file.path));
                }
                files.push(file);
            }
            url = match link.and_then(|l| next_page(&l, &self.hub)) {
                Some(next) if !next.starts_with(&format!("{}/", self.hub)) => {
                    return Err(format!("listing {}: the next page is on another server ({next}); refused", self.what()));
                }
                next => next,
            };
        }
        Ok(files)
    }

    /// (format, weight files, small text files), the npm package's selection rules.
    fn select(&self, files: &[RepoFile]) -> Result<(&'static str, Vec<RepoFile>, Vec<RepoFile>), String> {
        let find = |p: &str| files.iter().find(|f| f.path == p).cloned();
        let ggufs: Vec<&RepoFile> = files
            .iter()
            .filter(|f| f.path.ends_with(".gguf") && !f.path.to_lowercase().contains("mmproj") && shard_of(&f.path).is_none_or(|(i, _)| i == 1))
            .collect();
        if let Some(name) = &self.file {
            let f = find(name).ok_or_else(|| format!("{} has no file \"{name}\"", self.repo))?;
            if !name.ends_with(".gguf") {
                return Err(format!("\"{name}\" is not a .gguf file"));
            }
            return Ok(("gguf", shards(&self.repo, &f, files)?, vec![]));
        }
        if let Some(q) = &self.quant {
            let want = q.to_uppercase();
            let Some(f) = ggufs.iter().find(|f| quant_of(&f.path).as_deref() == Some(&want)) else {
                let mut have: Vec<String> = ggufs.iter().filter_map(|f| quant_of(&f.path)).collect();
                have.dedup();
                let has = if have.is_empty() { "it has no GGUF files".to_string() } else { format!("it has {}", have.join(", ")) };
                return Err(format!("{} has no {want} GGUF file ({has})", self.repo));
            };
            return Ok(("gguf", shards(&self.repo, f, files)?, vec![]));
        }
        let (single, index) = (find("model.safetensors"), find("model.safetensors.index.json"));
        if find("config.json").is_some() && (single.is_some() || index.is_some()) {
            let mut text: Vec<RepoFile> = TEXT_FILES.iter().filter_map(|p| find(p)).collect();
            text.extend(index.clone());
            return Ok(("safetensors", if index.is_none() { single.into_iter().collect() } else { vec![] }, text));
        }
        let rank = |f: &RepoFile| quant_of(&f.path).and_then(|q| QUANT_PREFERENCE.iter().position(|p| *p == q)).unwrap_or(QUANT_PREFERENCE.len());
        let best = ggufs
            .iter()
            .min_by_key(|f| (rank(f), f.size))
            .ok_or_else(|| format!("{} has neither safetensors weights with a config.json nor .gguf files", self.repo))?;
        Ok(("gguf", shards(&self.repo, best, files)?, vec![]))
    }

    /// One file into the cache: `{path}.part` grows across attempts (and runs) with Range
    /// requests; the hash covers the whole file; renamed into place only when it matches.
    fn download(&self, agent: &ureq::Agent, f: &RepoFile, progress: &mut dyn FnMut(&str)) -> Result<(), String> {
        let dest = self.file_path(&f.path)?;
        if fs::metadata(&dest).is_ok_and(|m| m.len() == f.size) && verify(&dest, f)? {
            return Ok(());
        }
        let part = PathBuf::from(format!("{}.part", dest.display()));
        fs::create_dir_all(part.parent().unwrap()).map_err(|e| format!("{}: {e}", part.display()))?;
        // Another run fetching the same file holds the part: wait for it rather than write the
        // same bytes into the same file at once.
        let _lock = PartLock::acquire(&part, progress)?;
        if fs::metadata(&dest).is_ok_and(|m| m.len() == f.size) && verify(&dest, f)? {
            return Ok(());
        }
        let url = format!("{}/{}/resolve/{}/{}", self.hub, self.repo, encode(&self.revision), f.path.split('/').map(encode).collect::<Vec<_>>().join("/"));
        let mut refetched = false;
        let mut problem = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                progress(&format!("{}: {problem}; retrying", f.path));
                std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
            }
            let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if have > f.size {
                fs::remove_file(&part).ok();
                continue;
            }
            if have < f.size {
                progress(&format!("downloading {} ({} of {} bytes)", f.path, have, f.size));
                match self.fetch_range(agent, &url, &part, have, f) {
                    Ok(()) => {}
                    Err(Fault::Fatal(e)) => return Err(e),
                    Err(Fault::Retry(e)) => {
                        problem = e;
                        continue;
                    }
                }
            }
            if fs::metadata(&part).map(|m| m.len()).unwrap_or(0) != f.size {
                problem = "the body ended early".into();
                continue;
            }
            if verify(&part, f)? {
                return fs::rename(&part, &dest).map_err(|e| format!("{}: {e}", dest.display()));
            }
            fs::remove_file(&part).ok();
            if refetched {
                return Err(format!("{}: content does not match the Hub's hash twice; nothing was cached", f.path));
            }
            refetched = true;
            problem = "content did not match the Hub's hash".into();
        }
        Err(format!("{}: download failed after {ATTEMPTS} tries ({problem}); the part kept in {} resumes next time", f.path, part.display()))
    }

    fn fetch_range(&self, agent: &ureq::Agent, url: &str, part: &Path, from: u64, f: &RepoFile) -> Result<(), Fault> {
        let mut res = request(agent, url, (from > 0).then_some(from), self.token_for(url)).map_err(Fault::Retry)?;
        let status = res.status().as_u16();
        if status >= 500 || status == 429 {
            return Err(Fault::Retry(format!("HTTP {status}")));
        }
        if status == 416 {
            fs::remove_file(part).ok(); // our part is not a prefix of what the server has
            return Err(Fault::Retry("HTTP 416".into()));
        }
        if status != 200 && status != 206 {
            return Err(Fault::Fatal(self.http_error(&res, &f.path)));
        }
        if status == 206 {
            // The part must continue exactly where ours ends, and end where the file does.
            let range = res.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
            if range != format!("bytes {from}-{}/{}", f.size.saturating_sub(1), f.size) {
                fs::remove_file(part).ok();
                return Err(Fault::Retry(format!("a partial answer for bytes {from}- came with Content-Range {range:?}")));
            }
        }
        // A 200 to a Range request is the whole file again: start over.
        let mut out = fs::OpenOptions::new()
            .create(true)
            .append(status == 206)
            .write(true)
            .truncate(status == 200)
            .open(part)
            .map_err(|e| Fault::Fatal(format!("{}: {e}", part.display())))?;
        let mut reader = res.body_mut().with_config().limit(f.size + 1).reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(Fault::Retry(e.to_string())),
            };
            out.write_all(&buf[..n]).map_err(|e| Fault::Fatal(format!("{}: {e} (disk full?)", part.display())))?;
        }
        out.sync_all().map_err(|e| Fault::Fatal(format!("{}: {e}", part.display())))
    }

    /// `HF_TOKEN`, for requests to this Hub only, and only over https or to a loopback server:
    /// never to a host that pagination or a redirect names, never in clear text over a network.
    fn token_for(&self, url: &str) -> Option<String> {
        let token = self.token.clone()?;
        let to_hub = url.starts_with(&format!("{}/", self.hub));
        // `host[:port]` of an http:// Hub; an IPv6 literal keeps its brackets (`[::1]:8080`).
        let host = self.hub.strip_prefix("http://").map(|rest| {
            let authority = rest.split('/').next().unwrap_or("");
            match authority.rsplit_once(':') {
                Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => h,
                _ => authority,
            }
        });
        let safe = self.hub.starts_with("https://") || matches!(host, Some("127.0.0.1" | "localhost" | "[::1]"));
        (to_hub && safe).then_some(token)
    }

    fn http_error(&self, res: &ureq::http::Response<ureq::Body>, what: &str) -> String {
        let status = res.status().as_u16();
        let code = res.headers().get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or("");
        match (status, code) {
            (401 | 403 | 404, "RevisionNotFound") => format!("not found on {}: revision \"{}\" of {} (HTTP {status})", self.hub, self.revision, self.repo),
            (401 | 403 | 404, "EntryNotFound") => format!("not found on {}: {what} in {}@{} (HTTP {status})", self.hub, self.repo, self.revision),
            (401 | 403 | 404, _) => format!("not found on {}: {} (or it is private/gated: set HF_TOKEN) (HTTP {status})", self.hub, self.repo),
            _ => format!("{} answered HTTP {status} for {what} of {}@{}", self.hub, self.repo, self.revision),
        }
    }
}

enum Fault {
    Retry(String),
    Fatal(String),
}

/// Every wait is bounded: connecting, the answer's headers, and each read of the body (an idle
/// timeout, not a total one, so a healthy multi-GB download is never cut off). Redirects (the
/// Hub sends LFS files to a CDN) never carry the Authorization header (ureq's default).
fn agent() -> ureq::Agent {
    let idle = idle_timeout();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(idle))
        .timeout_per_read(Some(idle))
        .max_redirects(5)
        .build()
        .into()
}

/// How long a request may wait for its answer, and a download for its next byte: 60 s, or
/// `EMBERLM_NET_TIMEOUT` seconds (slow links; the tests use 2).
fn idle_timeout() -> Duration {
    let secs = std::env::var("EMBERLM_NET_TIMEOUT").ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| *s > 0.0 && *s < 86_400.0).unwrap_or(60.0);
    Duration::from_secs_f64(secs)
}

/// A GET (from byte `from` when given), with the token when the caller allows one.
fn request(agent: &ureq::Agent, url: &str, from: Option<u64>, token: Option<String>) -> Result<ureq::http::Response<ureq::Body>, String> {
    let mut req = agent.get(url);
    if let Some(from) = from {
        req = req.header("Range", format!("bytes={from}-"));
    }
    if let Some(token) = token {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    req.call().map_err(|e| e.to_string())
}

/// An exclusive claim on a `.part` file between processes: a `{part}.lock` file created with
/// `create_new`, removed on drop. A lock left by a run that died is taken over after it has not
/// changed for twice the idle timeout.
struct PartLock(PathBuf);

impl PartLock {
    fn acquire(part: &Path, progress: &mut dyn FnMut(&str)) -> Result<Self, String> {
        let path = PathBuf::from(format!("{}.lock", part.display()));
        let mut told = false;
        loop {
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                    let idle = age(part).or_else(|| age(&path)).unwrap_or_default();
                    if idle > 2 * idle_timeout() {
                        fs::remove_file(&path).ok();
                        continue;
                    }
                    if !told {
                        progress(&format!("waiting for another emberlm process downloading {}", part.display()));
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }
}

impl Drop for PartLock {
    fn drop(&mut self) {
        fs::remove_file(&self.0).ok();
    }
}

/// Retries network failures and 5xx/429 answers with backoff; other answers are returned.
fn with_retries(mut call: impl FnMut() -> Result<ureq::http::Response<ureq::Body>, String>, what: &str) -> Result<ureq::http::Response<ureq::Body>, String> {
    let mut problem = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        match call() {
            Ok(res) if res.status().as_u16() >= 500 || res.status().as_u16() == 429 => problem = format!("HTTP {}", res.status().as_u16()),
            Ok(res) => return Ok(res),
            Err(e) => problem = e,
        }
    }
    Err(format!("{what}: {problem} after {ATTEMPTS} tries (offline? the Hub is unreachable)"))
}

/// Whether the file's content has the listed hash (true when the listing gives none).
fn verify(path: &Path, f: &RepoFile) -> Result<bool, String> {
    let (want, mut hasher): (&str, Box<dyn FnMut(&[u8]) -> Option<String>>) = match (&f.sha256, &f.git_oid) {
        (Some(h), _) => {
            let mut s = Some(Sha256::new());
            (h, Box::new(move |b: &[u8]| if b.is_empty() { s.take().map(|s| hex(&s.finalize())) } else { s.as_mut().map(|s| s.update(b)).and(None) }))
        }
        (None, Some(h)) => {
            let mut s = Some(Sha1::new());
            s.as_mut().unwrap().update(format!("blob {}\0", f.size));
            (h, Box::new(move |b: &[u8]| if b.is_empty() { s.take().map(|s| hex(&s.finalize())) } else { s.as_mut().map(|s| s.update(b)).and(None) }))
        }
        _ => return Ok(true),
    };
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher(&buf[..n]);
    }
    Ok(hasher(&[]).is_some_and(|got| got.eq_ignore_ascii_case(want)))
}

/// The current UTC time as RFC 3339 (`2026-11-23T10:00:00Z`), as the npm package writes `savedAt`.
fn utc_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    fs::create_dir_all(path.parent().unwrap()).map_err(|e| format!("{}: {e}", path.display()))?;
    let tmp = PathBuf::from(format!("{}.part", path.display()));
    fs::write(&tmp, bytes).and_then(|_| fs::rename(&tmp, path)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Percent-encodes one URL path segment.
fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The `rel="next"` URL of a `Link` header, made absolute against the Hub.
fn next_page(link: &str, hub: &str) -> Option<String> {
    let part = link.split(',').find(|p| p.contains("rel=\"next\""))?;
    let url = part.split_once('<')?.1.split_once('>')?.0;
    Some(if url.starts_with('/') { format!("{hub}{url}") } else { url.to_string() })
}

/// (shard number, shard count) of a split GGUF name (`-00001-of-00003.gguf`).
fn shard_of(path: &str) -> Option<(u32, u32)> {
    let stem = path.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (_, no) = head.rsplit_once('-')?;
    (no.len() == 5 && count.len() == 5).then(|| Some((no.parse().ok()?, count.parse().ok()?)))?
}

/// All shards of `first` in order (itself when not split).
fn shards(repo: &str, first: &RepoFile, files: &[RepoFile]) -> Result<Vec<RepoFile>, String> {
    let Some((_, count)) = shard_of(&first.path) else { return Ok(vec![first.clone()]) };
    let prefix = &first.path[..first.path.len() - "-00001-of-00000.gguf".len()];
    (1..=count)
        .map(|i| {
            let name = format!("{prefix}-{i:05}-of-{count:05}.gguf");
            files.iter().find(|f| f.path == name).cloned().ok_or_else(|| format!("split GGUF {}: shard {name} is missing from {repo}", first.path))
        })
        .collect()
}

/// The quantisation named in a GGUF file name (`SmolLM2-135M-Instruct.Q4_K_M.gguf` → `Q4_K_M`),
/// by the npm package's `quantOf` pattern.
fn quant_of(path: &str) -> Option<String> {
    static QUANT: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = QUANT.get_or_init(|| regex::Regex::new(r"(?i)[-._](I?Q\d(?:_[0-9A-Z]+)*|F16|BF16|F32)[-._]").unwrap());
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = match shard_of(base) {
        Some(_) => format!("{}.gguf", &base[..base.len() - "-00001-of-00000.gguf".len()]),
        None => base.to_string(),
    };
    re.captures(&base).map(|c| c[1].to_uppercase())
}

/// The shard files a `model.safetensors.index.json` names, in first-use order.
fn index_shards(repo: &str, index: &str, files: &[RepoFile]) -> Result<Vec<RepoFile>, String> {
    let v: Value = serde_json::from_str(index).map_err(|e| format!("{repo}: model.safetensors.index.json is not valid JSON ({e})"))?;
    let map = v["weight_map"].as_object().ok_or_else(|| format!("{repo}: model.safetensors.index.json has no weight_map"))?;
    let mut names: Vec<&str> = Vec::new();
    for n in map.values().filter_map(Value::as_str) {
        check_repo_path(&format!("{repo}: shard named by model.safetensors.index.json"), n)?;
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
        .iter()
        .map(|n| files.iter().find(|f| f.path == *n).cloned().ok_or_else(|| format!("{repo}: shard {n} named by the index is not in the repo")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> RepoFile {
        RepoFile { path: path.into(), size, sha256: None, git_oid: None }
    }

    #[test]
    fn repo_ids_quant_names_and_shards() {
        assert!(looks_like_repo("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@main"));
        assert!(!looks_like_repo("../x") && !looks_like_repo("model.gguf") && !looks_like_repo("a/b/c"));
        assert!(!looks_like_repo("models/nope.gguf") && !looks_like_repo("./a/b") && !looks_like_repo("owner/weights.safetensors"));
        assert_eq!(quant_of("SmolLM2-135M-Instruct.Q4_K_M.gguf").as_deref(), Some("Q4_K_M"));
        assert_eq!(quant_of("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf").as_deref(), Some("Q4_K_M"));
        assert_eq!(quant_of("m-BF16.gguf").as_deref(), Some("BF16"));
        assert_eq!(shard_of("a-00002-of-00003.gguf"), Some((2, 3)));
        let req = HubRequest::new("o/r@v1", Some("http://127.0.0.1:9/".into()), None, PathBuf::from("/c"));
        assert_eq!(req.folder(), PathBuf::from("/c/http%3A%2F%2F127.0.0.1%3A9/o/r/v1"));
        let req = HubRequest::new("o/r@refs/pr/1", None, None, PathBuf::from("/c"));
        assert_eq!(req.folder(), PathBuf::from("/c/huggingface.co/o/r/refs%2Fpr%2F1"));
        let files = [f("m-Q8_0.gguf", 9), f("m-Q4_K_M.gguf", 5), f("m-Q4_0.gguf", 4), f("m-F16-00002-of-00002.gguf", 1), f("m-F16-00001-of-00002.gguf", 1)];
        let pick = |quant: Option<&str>| {
            let mut r = HubRequest::new("o/r", None, None, PathBuf::new());
            r.quant = quant.map(str::to_string);
            r.select(&files).map(|(_, w, _)| w.into_iter().map(|f| f.path).collect::<Vec<_>>())
        };
        assert_eq!(pick(None).unwrap(), ["m-Q4_K_M.gguf"]);
        assert_eq!(pick(Some("f16")).unwrap(), ["m-F16-00001-of-00002.gguf", "m-F16-00002-of-00002.gguf"]);
        let err = pick(Some("Q2_K")).unwrap_err();
        assert!(err.contains("no Q2_K") && err.contains("Q4_K_M"), "{err}");
        assert!(utc_now().len() == 20 && utc_now().ends_with('Z'));
        assert_eq!(next_page("<https://h/api?cursor=x>; rel=\"next\"", "https://h").as_deref(), Some("https://h/api?cursor=x"));
    }

    #[test]
    fn one_path_rule_for_everything_a_hub_names() {
        for ok in ["model.gguf", "q/x.gguf", "refs/pr/1", "a b/ü.json", "x..y.gguf"] {
            check_repo_path("file", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let long = "a".repeat(1025);
        for bad in [
            "",
            "../../x.gguf",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/..",
            ".",
            "a\\b",
            "a\0b",
            "a\nb",
            &long,
            ".emberlm/auto.json",
            "x/.emberlm/y",
            "m.gguf.part",
        ] {
            let e = check_repo_path("listed file", bad).unwrap_err();
            assert!(e.contains("listed file") && e.contains("refused"), "{bad:?}: {e}");
        }
        for ok in ["HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "a/b", "o_1/r.v2"] {
            check_repo_id(ok).unwrap();
        }
        for bad in ["a", "a/b/c", "../b", "a/..", "./b", "a/.hidden", "-a/b", "a/b c", "a/b@c", "a/b..c", ""] {
            assert!(check_repo_id(bad).is_err(), "{bad:?}");
        }
        // Revisions, `--file` and the repo id are checked before any request or path.
        let cache = PathBuf::from("/nonexistent-emberlm-cache");
        let mut progress = |_: &str| {};
        let err = HubRequest::new("evil/repo@../../x", None, None, cache.clone()).fetch(&mut progress).unwrap_err();
        assert!(err.contains("revision \"../../x\" is refused"), "{err}");
        let mut r = HubRequest::new("evil/repo", None, None, cache.clone());
        r.file = Some("../../../.bashrc".into());
        assert!(r.fetch(&mut progress).unwrap_err().contains("--file \"../../../.bashrc\" is refused"));
        let err = HubRequest::new("evil/repo", Some("file:///etc".into()), None, cache).fetch(&mut progress).unwrap_err();
        assert!(err.contains("must start with https://"), "{err}");
    }

    #[test]
    fn cache_keys_tell_hubs_files_and_choices_apart() {
        assert_eq!(hub_folder("https://huggingface.co"), "huggingface.co");
        assert_eq!(hub_folder("https://HF.example:8443"), "hf.example_8443");
        assert_ne!(hub_folder("http://h"), hub_folder("https://h"));
        assert_ne!(hub_folder("https://h/mirror"), hub_folder("https://h"));
        let manifest = |file: &str| {
            let mut r = HubRequest::new("o/r", None, None, PathBuf::from("/c"));
            r.file = Some(file.into());
            r.manifest_path()
        };
        assert_ne!(manifest("q/x.gguf"), manifest("q_x.gguf"));
        assert_eq!(manifest("q/x.gguf").parent(), manifest("q_x.gguf").parent());
    }

    #[test]
    fn the_token_goes_only_to_the_hub_over_https_or_loopback() {
        let with_token = |hub: &str| {
            let mut r = HubRequest::new("o/r", Some(hub.into()), None, PathBuf::new());
            r.token = Some("hf_secret".into());
            r
        };
        let hf = with_token("https://huggingface.co");
        assert_eq!(hf.token_for("https://huggingface.co/api/models/o/r/tree/main").as_deref(), Some("hf_secret"));
        assert_eq!(hf.token_for("https://huggingface.co.evil.example/x"), None);
        assert_eq!(hf.token_for("https://evil.example/api?cursor=1"), None);
        assert_eq!(hf.token_for("http://huggingface.co/x"), None);
        assert_eq!(with_token("http://hub.example").token_for("http://hub.example/o/r/resolve/main/a"), None, "no token in clear text");
        let local = with_token("http://127.0.0.1:8080");
        assert_eq!(local.token_for("http://127.0.0.1:8080/api/models/o/r/tree/main").as_deref(), Some("hf_secret"));
        assert_eq!(local.token_for("http://127.0.0.1:9999/x"), None);
        let v6 = with_token("http://[::1]:8080");
        assert_eq!(v6.token_for("http://[::1]:8080/api/models/o/r/tree/main").as_deref(), Some("hf_secret"));
        assert_eq!(with_token("http://localhost.evil.example").token_for("http://localhost.evil.example/x"), None);
    }
}
