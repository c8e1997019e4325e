//! Generation loop: prefill the prompt, then decode one token per step until EOS, a stop
//! token, the caller's callback or the token budget, with the figures users ask for (time to
//! first token, prefill and decode tok/s), on any [`Backend`]. Greedy decoding keeps the argmax
//! on the backend (4 bytes read back per token on the GPU, the next step queued before they
//! arrive); sampling reads the logits back and samples on the CPU.

use web_time::Instant;

use crate::backend::Backend;
use crate::error::{ModelError, Result};
use crate::model::{Model, Session};
use crate::sampling::{Sampler, SamplingOptions};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation stops after producing any of these (EOS and the chat template's end token).
    pub stop_tokens: Vec<u32>,
    /// Temperature 0 with no repetition penalty is greedy.
    pub sampling: SamplingOptions,
    /// Also return the logits of the last prompt position.
    pub want_prompt_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 128, stop_tokens: Vec::new(), sampling: SamplingOptions::default(), want_prompt_logits: false }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Prompt tokens whose keys and values the session already held (not prefilled again).
    pub reused_tokens: usize,
    pub generated_ids: Vec<u32>,
    /// True when a stop token ended generation (it is included in `generated_ids`).
    pub stopped: bool,
    pub prompt_logits: Option<Vec<f32>>,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// Generates after `prompt`, the whole conversation so far: the part the session already holds
/// (its longest common prefix with what the session ran before) is not prefilled again.
/// `on_token` sees every new token and returns `false` to stop (stop strings, a cancelled request).
pub async fn generate<B: Backend>(
    dev: &B,
    model: &Model<B>,
    session: &mut Session<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let mut out = Generation { prompt_ids: prompt.to_vec(), ..Default::default() };
    if options.max_new_tokens == 0 && !options.want_prompt_logits {
        return Ok(out);
    }
    let mut sampler = Sampler::new(&options.sampling)?;
    let need_logits = !sampler.is_greedy();
    let mut history = prompt.to_vec();
    let start = Instant::now();
    out.reused_tokens = session.reuse_prefix(prompt);
    let new = &prompt[out.reused_tokens..];
    let first = session.step(dev, model, new, need_logits || options.want_prompt_logits).await?;
    let prefill = start.elapsed().as_secs_f64();
    out.ttft_ms = prefill * 1e3;
    out.prefill_tok_s = new.len() as f64 / prefill.max(1e-9);
    if options.want_prompt_logits {
        out.prompt_logits = first.logits.clone();
    }
    if options.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut next = match first.logits {
        Some(mut logits) if need_logits => sampler.sample(&mut logits, &history),
        _ => first.argmax,
    };
    let decode_start = Instant::now();
    // Takes a new token; false when generation ends with it.
    let mut accept = |out: &mut Generation, history: &mut Vec<u32>, token: u32| {
        out.generated_ids.push(token);
        history.push(token);
        let go_on = on_token(token);
        if options.stop_tokens.contains(&token) {
            out.stopped = true;
            return false;
        }
        go_on && out.generated_ids.len() < options.max_new_tokens
    };
    if accept(&mut out, &mut history, next) {
        if need_logits {
            loop {
                let step = session.step(dev, model, &[next], true).await?;
                let mut logits = step.logits.ok_or_else(|| ModelError::Config("the backend returned no logits".into()))?;
                next = sampler.sample(&mut logits, &history);
                if !accept(&mut out, &mut history, next) {
                    break;
                }
            }
        } else {
            // Greedy: the backend keeps the token and may queue steps ahead of the read-back.
            let budget = options.max_new_tokens - out.generated_ids.len();
            session.decode_greedy(dev, model, next, budget, |token| accept(&mut out, &mut history, token)).await?;
        }
    }
    let decoded = out.generated_ids.len().saturating_sub(1);
    out.decode_tok_s = decoded as f64 / decode_start.elapsed().as_secs_f64().max(1e-9);
    Ok(out)
}
