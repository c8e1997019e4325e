//! Generation loop: prefill the prompt, then decode one token per step until EOS, a stop
//! token or the token budget, streaming each token to a callback, with the figures users ask
//! for (time to first token, prefill and decode tok/s).

use emberlm_core::GpuDevice;
use web_time::Instant;

use crate::error::Result;
use crate::model::Session;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation stops after producing any of these (EOS and the chat template's end token).
    pub stop_tokens: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    /// True when a stop token ended generation (it is included in `generated_ids`).
    pub stopped: bool,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// Greedy decoding (argmax on the GPU; 4 bytes read back per token).
pub async fn generate_greedy(
    dev: &GpuDevice,
    session: &mut Session<'_>,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let mut out = Generation {
        prompt_ids: prompt.to_vec(),
        ..Default::default()
    };
    if options.max_new_tokens == 0 {
        return Ok(out);
    }
    let start = Instant::now();
    let mut next = session.step(dev, prompt, false).await?.argmax;
    let prefill = start.elapsed().as_secs_f64();
    out.ttft_ms = prefill * 1e3;
    out.prefill_tok_s = prompt.len() as f64 / prefill.max(1e-9);
    let decode_start = Instant::now();
    loop {
        out.generated_ids.push(next);
        on_token(next);
        if options.stop_tokens.contains(&next) {
            out.stopped = true;
            break;
        }
        if out.generated_ids.len() >= options.max_new_tokens {
            break;
        }
        next = session.step(dev, &[next], false).await?.argmax;
    }
    let decoded = out.generated_ids.len().saturating_sub(1);
    out.decode_tok_s = decoded as f64 / decode_start.elapsed().as_secs_f64().max(1e-9);
    Ok(out)
}
