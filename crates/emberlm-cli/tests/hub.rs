//! The CLI with Hub repos, against the mock Hub (tests/mock-hub, needs `node`): the repo's
//! default GGUF (Q4_K_M, decoded in the kernels) and `--quant F16` give transformers' greedy
//! ids; dropped, corrupted and refused requests are recovered from; a second run with the Hub
//! gone loads from the cache; the cache layout and manifest are the npm package's; bad
//! quantisations, repos and revisions are named in the error.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const REPO: &str = "emberlm-test/tiny-llama-GGUF";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct MockHub {
    child: Child,
    url: String,
}

impl MockHub {
    fn start(faults: &[&str]) -> Self {
        let mut cmd = Command::new("node");
        cmd.arg(root().join("tests/mock-hub/cli.mjs")).stdout(Stdio::piped()).stderr(Stdio::inherit());
        for f in faults {
            cmd.args(["--fault", f]);
        }
        cmd.args(["--page-size", "2"]); // the file list comes in pages
        let mut child = cmd.spawn().expect("node must be installed to run the mock Hub");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("mock Hub on ").unwrap_or_else(|| panic!("mock Hub said {line:?}")).to_string();
        Self { child, url }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn reference(dir: &str) -> (Vec<u64>, Vec<u64>) {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/tiny").join(dir).join("reference.json")).unwrap()).unwrap();
    let ids = |k: &str| v["cases"][0][k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    (ids("input_ids"), ids("generated_ids"))
}

/// Runs `emberlm generate` on a prompt; Ok(generated ids) or Err(stderr).
fn generate(cache: &Path, hub: &str, extra: &[&str], prompt: &[u64], n: usize) -> Result<Vec<u64>, String> {
    run(cache, hub, extra, prompt, n).map(|(ids, _)| ids)
}

/// Ok((generated ids, stderr)) or Err(stderr).
fn run(cache: &Path, hub: &str, extra: &[&str], prompt: &[u64], n: usize) -> Result<(Vec<u64>, String), String> {
    command(cache, hub, extra, prompt, n).output().map(|out| parse(&out)).unwrap()
}

fn command(cache: &Path, hub: &str, extra: &[&str], prompt: &[u64], n: usize) -> Command {
    let ids = prompt.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emberlm"));
    cmd.args(["generate", "--model", REPO, "--hub", hub, "--prompt-ids", &ids, "--max-new-tokens", &n.to_string(), "--json"])
        .args(extra)
        .env("EMBERLM_CACHE", cache);
    cmd
}

fn parse(out: &std::process::Output) -> Result<(Vec<u64>, String), String> {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(stderr);
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    Ok((v["generated_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect(), stderr))
}

#[test]
fn hub_repos_download_verify_cache_and_generate() {
    let cache = std::env::temp_dir().join(format!("emberlm-cli-hub-{}", std::process::id()));
    std::fs::remove_dir_all(&cache).ok();
    let (k_prompt, k_want) = reference("llama-kquant");
    let (f_prompt, f_want) = reference("llama");
    let hub_url;
    {
        // A refused listing page, a refused download, a connection dropped mid-file (LFS bodies
        // come from /__lfs/ after the Hub's redirect) and a corrupted resumption.
        let hub = MockHub::start(&[
            r#"{"match":"/tree/","kind":"status","status":503}"#,
            r#"{"match":"/resolve/","kind":"status","status":500}"#,
            r#"{"match":"/__lfs/","kind":"drop","at":0.3}"#,
            r#"{"match":"/__lfs/","kind":"corrupt"}"#,
        ]);
        hub_url = hub.url.clone();
        let (ids, log) = run(&cache, &hub.url, &[], &k_prompt, k_want.len()).unwrap();
        assert_eq!(ids, k_want, "default GGUF (Q4_K_M)");
        assert!(log.contains("HTTP 500; retrying") && log.contains("did not match the Hub's hash; retrying"), "{log}");
        let resumed = log.lines().any(|l| l.starts_with("downloading tiny-llama-Q4_K_M.gguf (") && !l.contains("(0 of"));
        assert!(resumed, "no Range resume after the dropped connection:\n{log}");
        assert_eq!(generate(&cache, &hub.url, &["--quant", "f16"], &f_prompt, f_want.len()).unwrap(), f_want, "--quant F16");

        let err = generate(&cache, &hub.url, &["--quant", "Q2_K"], &k_prompt, 1).unwrap_err();
        assert!(err.contains("no Q2_K GGUF") && err.contains("Q4_K_M") && err.contains("F16"), "{err}");
        let err = generate(&cache, &hub.url, &["--revision", "v9"], &k_prompt, 1).unwrap_err();
        assert!(err.contains("revision \"v9\""), "{err}");
        let missing = Command::new(env!("CARGO_BIN_EXE_emberlm"))
            .args(["generate", "--model", "emberlm-test/nope", "--hub", &hub.url, "--prompt", "hi"])
            .env("EMBERLM_CACHE", &cache)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&missing.stderr);
        assert!(!missing.status.success() && err.contains("not found") && err.contains("emberlm-test/nope"), "{err}");
    }
    // The npm package's layout: {host}/{repo}/{revision}/{path}, manifest under .emberlm/.
    // A Hub other than https://host is one encoded segment, so http and https never share.
    let host = hub_url.replace(':', "%3A").replace('/', "%2F");
    let folder = cache.join(host).join(REPO).join("main");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(folder.join(".emberlm/auto.json")).unwrap()).unwrap();
    assert_eq!(manifest["weights"][0]["path"], "tiny-llama-Q4_K_M.gguf");
    assert!(manifest["weights"][0]["sha256"].as_str().is_some_and(|h| h.len() == 64));
    assert!(folder.join(".emberlm/quant=F16.json").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&folder).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".part")).collect();
    assert!(leftovers.is_empty(), "part files left: {leftovers:?}");

    // The Hub is gone: both choices load from the cache, with --offline too.
    assert_eq!(generate(&cache, &hub_url, &["--offline"], &k_prompt, k_want.len()).unwrap(), k_want);
    assert_eq!(generate(&cache, &hub_url, &["--quant", "F16"], &f_prompt, f_want.len()).unwrap(), f_want);
    let err = generate(&cache, &hub_url, &["--quant", "Q8_0", "--offline"], &k_prompt, 1).unwrap_err();
    assert!(err.contains("not in the cache") && err.contains("--offline"), "{err}");
    let err = generate(&cache, &hub_url, &["--quant", "Q8_0"], &k_prompt, 1).unwrap_err();
    assert!(err.contains("unreachable"), "{err}");
    std::fs::remove_dir_all(&cache).ok();
}

/// A hostile Hub's listing (issue: untrusted Hubs): paths escaping the cache, the cache's own
/// files, entries without hashes, pagination to another host or in a loop. Each is refused with
/// an error naming it, and nothing lands outside the cache folder.
#[test]
fn hostile_listings_are_refused_and_write_nothing_outside_the_cache() {
    let base = std::env::temp_dir().join(format!("emberlm-cli-hostile-{}", std::process::id()));
    std::fs::remove_dir_all(&base).ok();
    let cache = base.join("a/b/c/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let lfs = |path: &str| format!(r#"{{"type":"file","path":"{path}","size":5,"oid":"{}","lfs":{{"oid":"{}","size":5}}}}"#, "1".repeat(40), "2".repeat(64));
    let listing = |entry: String| format!(r#"{{"match":"/tree/","kind":"listing","add":[{entry}]}}"#);
    let same_page = format!(r#"{{"match":"/tree/","kind":"listing","times":50,"link":"/api/models/{REPO}/tree/main?recursive=true"}}"#);
    let cases = [
        (listing(lfs("../../../../escaped.gguf")), r#"listed file "../../../../escaped.gguf" is refused"#),
        (listing(lfs("/tmp/emberlm-absolute.gguf")), r#"listed file "/tmp/emberlm-absolute.gguf" is refused"#),
        (listing(lfs(".emberlm/auto.json")), "one of the cache's own files"),
        (listing(r#"{"type":"file","path":"extra.json","size":3}"#.to_string()), "gives no hash for \"extra.json\""),
        (r#"{"match":"/tree/","kind":"listing","link":"http://evil.example:1/api/models/x/tree/main"}"#.to_string(), "the next page is on another server"),
        (same_page, "returned to a page already read"),
    ];
    for (fault, want) in &cases {
        let hub = MockHub::start(&[fault]);
        let err = generate(&cache, &hub.url, &[], &[1, 2, 3], 1).unwrap_err();
        assert!(err.contains(want), "fault {fault}: {err}");
    }
    // A resumed download answered with a 206 that starts elsewhere: the part is thrown away
    // and fetched again, never spliced.
    let hub = MockHub::start(&[r#"{"match":"/__lfs/","kind":"drop","at":0.5}"#, r#"{"match":"/__lfs/","kind":"badrange"}"#]);
    let (f_prompt, f_want) = reference("llama");
    let (ids, log) = run(&cache, &hub.url, &["--quant", "F16"], &f_prompt, f_want.len()).unwrap();
    assert_eq!(ids, f_want);
    assert!(log.contains("came with Content-Range \"bytes 0-"), "{log}");
    drop(hub);
    let escaped: Vec<_> = walk(&base).into_iter().filter(|p| !p.starts_with(&cache)).collect();
    assert!(escaped.is_empty(), "written outside the cache: {escaped:?}");
    assert!(!Path::new("/tmp/emberlm-absolute.gguf").exists());
    std::fs::remove_dir_all(&base).ok();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Two runs fetching the same file at once take turns on its part file (one waits, both get
/// the model); a Hub that accepts requests and never answers is given up on, not waited on
/// forever (EMBERLM_NET_TIMEOUT=2 here, 60 s by default).
#[test]
fn concurrent_runs_share_a_download_and_a_silent_hub_times_out() {
    let cache = std::env::temp_dir().join(format!("emberlm-cli-concurrent-{}", std::process::id()));
    std::fs::remove_dir_all(&cache).ok();
    let (prompt, want) = reference("llama");
    let hub = MockHub::start(&[r#"{"match":"/__lfs/","kind":"slow","chunk":4096,"delayMs":15}"#]);
    let runs: Vec<_> = (0..2)
        .map(|_| command(&cache, &hub.url, &["--quant", "F16"], &prompt, want.len()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outs: Vec<_> = runs.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut logs = String::new();
    for out in &outs {
        let (ids, log) = parse(out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids, want);
        logs.push_str(&log);
    }
    assert!(logs.contains("waiting for another emberlm process"), "{logs}");
    let left: Vec<_> = walk(&cache).into_iter().filter(|p| p.to_string_lossy().ends_with(".part") || p.to_string_lossy().ends_with(".lock")).collect();
    assert!(left.is_empty(), "{left:?}");
    drop(hub);

    let hub = MockHub::start(&[r#"{"match":"/tree/","kind":"hang","times":20}"#]);
    let started = std::time::Instant::now();
    // Only here a short bound: the other tests keep the default, so a loaded machine cannot
    // turn a slow answer into a retry they did not plan for.
    let out = command(&cache.join("other"), &hub.url, &[], &prompt, 1).env("EMBERLM_NET_TIMEOUT", "2").output().unwrap();
    let err = parse(&out).unwrap_err();
    assert!(err.contains("unreachable") && (err.contains("timed out") || err.contains("timeout") || err.contains("Timeout")), "{err}");
    assert!(started.elapsed().as_secs() < 60, "gave up after {:?}", started.elapsed());
    std::fs::remove_dir_all(&cache).ok();
}
