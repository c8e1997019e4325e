//! Incremental content hashes for the npm package's download checks. WebCrypto only digests a
//! whole buffer at once; these take a multi-GB file piece by piece as it streams in.

use sha1::Sha1;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

enum State {
    Sha256(Sha256),
    Sha1(Sha1),
}

#[wasm_bindgen]
pub struct ContentHasher {
    state: State,
}

#[wasm_bindgen]
impl ContentHasher {
    /// A SHA-256 of the content: what the Hub lists as an LFS file's `oid`.
    #[wasm_bindgen(js_name = sha256)]
    pub fn sha256() -> ContentHasher {
        Self { state: State::Sha256(Sha256::new()) }
    }

    /// Git's blob id of a `size`-byte content: SHA-1 of `"blob {size}\0"` + content, what the Hub
    /// lists as a small (non-LFS) file's `oid`.
    #[wasm_bindgen(js_name = gitBlobSha1)]
    pub fn git_blob_sha1(size: f64) -> ContentHasher {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", size as u64).as_bytes());
        Self { state: State::Sha1(h) }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(bytes),
            State::Sha1(h) => h.update(bytes),
        }
    }

    /// The lowercase hex digest; the hasher is spent.
    #[wasm_bindgen(js_name = finishHex)]
    pub fn finish_hex(self) -> String {
        let bytes: Vec<u8> = match self.state {
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
