//! Generation loop: prefill the prompt, then decode one token per step until EOS, a stop
//! token, the caller's callback or the token budget, with the figures users ask for (time to
//! first token, prefill and decode tok/s), on any [`Backend`]. Greedy decoding keeps the argmax
//! on the backend (4 bytes read back per token on the GPU, the next step queued before they
//! arrive); sampling reads the logits back and samples on the CPU, as do log-probabilities
//! ([`GenerateOptions::logprobs`]), whatever the sampling.

use web_time::Instant;

use crate::backend::{Backend, BackendKind};
use crate::constraint::Constraint;
use crate::error::{ModelError, Result};
use crate::model::{Model, Session, StepOutput};
use crate::sampling::{Sampler, SamplingOptions};
use crate::tokenizer::TextTokenizer;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation stops after producing any of these (EOS and the chat template's end token).
    pub stop_tokens: Vec<u32>,
    /// Temperature 0 with no repetition penalty is greedy.
    pub sampling: SamplingOptions,
    /// Also return the logits of the last prompt position.
    pub want_prompt_logits: bool,
    /// `Some(n)`: each generated token's log-probability and the `n` (at most
    /// [`MAX_TOP_LOGPROBS`]) likeliest tokens' at its position ([`TokenLogprobs`]).
    pub logprobs: Option<usize>,
    /// Where a constrained greedy step applies its grammar mask (sampling and logprobs read the
    /// logits back and mask them on the CPU whatever this says).
    pub mask_side: MaskSide,
}

/// Where [`generate_constrained`] masks a greedy step's logits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MaskSide {
    /// The backend's better side: the device on WebGPU (docs/PERFORMANCE.md), the CPU backend's
    /// own memory otherwise.
    #[default]
    Auto,
    /// Read the logits back and mask them on the CPU.
    Host,
    /// Upload the mask and pick the token on the device ([`Session::step_masked`]).
    Device,
}

/// The most alternatives [`GenerateOptions::logprobs`] asks for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A generated token's log-probability under the model: the log-softmax of the logits at its
/// position, before temperature, penalties or top-k/p/min-p truncation (what the model
/// predicted, not what the sampler drew from), and the likeliest tokens there, best first
/// (ties: the lower id first).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// A log-probability as the OpenAI-style APIs report it: a token the model rules out (−∞, which
/// JSON cannot hold) as −9999, as OpenAI does.
pub fn reported_logprob(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        -9999.0
    }
}

/// A token's entry in OpenAI's `logprobs.content` shape (plus its id), as the CLI's JSON and the
/// wasm API give it: its text (a partial UTF-8 character's bytes replaced; `bytes` exact), its
/// reported log-probability and, for the generated token, the top alternatives.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogprobEntry {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<LogprobEntry>>,
}

impl TokenLogprobs {
    /// `id`'s entry from the logits it was picked from, with the `top` likeliest alternatives.
    /// Non-finite logits count as impossible (−∞); all of them non-finite gives −∞ everywhere.
    pub fn from_logits(logits: &[f32], id: u32, top: usize) -> Self {
        let max = logits.iter().copied().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().filter(|v| v.is_finite()).map(|&v| ((v - max) as f64).exp()).sum();
        let log_total = max as f64 + sum.ln();
        let logprob = |v: f32| if v.is_finite() && max.is_finite() { (v as f64 - log_total) as f32 } else { f32::NEG_INFINITY };
        // The `top` largest finite logits, kept sorted (best first, lower id first on ties).
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        for (i, &v) in logits.iter().enumerate() {
            if top == 0 || !v.is_finite() || (best.len() == top && v <= best[top - 1].1) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= v);
            best.insert(at, (i as u32, v));
            best.truncate(top);
        }
        let chosen = logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
        Self { id, logprob: logprob(chosen), top: best.into_iter().map(|(i, v)| (i, logprob(v))).collect() }
    }

    /// This token's [`LogprobEntry`], spelled by `tokenizer` (no text without one).
    pub fn entry(&self, tokenizer: Option<&TextTokenizer>) -> LogprobEntry {
        let one = |id: u32, logprob: f32| {
            let bytes = tokenizer.and_then(|t| t.token_bytes(id)).unwrap_or_default();
            LogprobEntry { id, token: String::from_utf8_lossy(&bytes).into_owned(), bytes, logprob: reported_logprob(logprob), top_logprobs: None }
        };
        LogprobEntry { top_logprobs: Some(self.top.iter().map(|&(id, lp)| one(id, lp)).collect()), ..one(self.id, self.logprob) }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            stop_tokens: Vec::new(),
            sampling: SamplingOptions::default(),
            want_prompt_logits: false,
            logprobs: None,
            mask_side: MaskSide::Auto,
        }
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
    /// One per generated token when [`GenerateOptions::logprobs`] asked for them.
    pub logprobs: Vec<TokenLogprobs>,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// Generates after `prompt`, the whole conversation so far: the part the session already holds
/// (its longest common prefix with what the session ran before) is not prefilled again.
/// `on_token` sees every new token (and its log-probabilities when asked for) and returns
/// `false` to stop (stop strings, a cancelled request).
pub async fn generate<B: Backend>(
    dev: &B,
    model: &Model<B>,
    session: &mut Session<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32, Option<&TokenLogprobs>) -> bool,
) -> Result<Generation> {
    generate_constrained(dev, model, session, prompt, options, None, on_token).await
}

/// [`generate`] whose output follows `constraint` ([`crate::constraint`]): each step's logits
/// are masked to the tokens the grammar allows before sampling (greedy too), a stop token is
/// allowed only where the grammar may end, and generation stops once the grammar is complete
/// (`stopped`, as at a stop token). Log-probabilities stay the model's own, before the mask.
pub async fn generate_constrained<B: Backend>(
    dev: &B,
    model: &Model<B>,
    session: &mut Session<B>,
    prompt: &[u32],
    options: &GenerateOptions,
    mut constraint: Option<&mut Constraint>,
    mut on_token: impl FnMut(u32, Option<&TokenLogprobs>) -> bool,
) -> Result<Generation> {
    let mut out = Generation { prompt_ids: prompt.to_vec(), ..Default::default() };
    if options.max_new_tokens == 0 && !options.want_prompt_logits {
        return Ok(out);
    }
    if options.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
        return Err(ModelError::Config(format!("top logprobs: at most {MAX_TOP_LOGPROBS} alternatives")));
    }
    let mut sampler = Sampler::new(&options.sampling)?;
    // A greedy constrained step needs only the token: its mask can go to the device instead.
    let mask_on_device = constraint.is_some()
        && sampler.is_greedy()
        && options.logprobs.is_none()
        && !options.want_prompt_logits
        && match options.mask_side {
            MaskSide::Auto => dev.kind() == BackendKind::WebGpu,
            MaskSide::Host => false,
            MaskSide::Device => true,
        };
    let need_logits = !sampler.is_greedy() || options.logprobs.is_some() || (constraint.is_some() && !mask_on_device);
    // Samples from the step's logits, noting the model's log-probabilities first (the mask and
    // the sampler rewrite the logits).
    let mut pick = |logits: &mut [f32], history: &[u32], out: &mut Generation, constraint: &mut Option<&mut Constraint>| -> Result<u32> {
        let snapshot = options.logprobs.map(|_| logits.to_vec());
        if let Some(c) = constraint {
            c.mask(logits, &options.stop_tokens)?;
        }
        let id = sampler.sample(logits, history);
        if let (Some(top), Some(raw)) = (options.logprobs, snapshot) {
            out.logprobs.push(TokenLogprobs::from_logits(&raw, id, top));
        }
        if let Some(c) = constraint {
            c.follow(id, &options.stop_tokens)?;
        }
        Ok(id)
    };
    let mut history = prompt.to_vec();
    let start = Instant::now();
    out.reused_tokens = session.reuse_prefix(prompt);
    let mut new = &prompt[out.reused_tokens..];
    // A prompt longer than one step's buffers can hold runs in steps of the most they hold.
    let max_step = Session::max_step_tokens(dev, model);
    while new.len() > max_step {
        session.fill(dev, model, &new[..max_step]).await?;
        new = &new[max_step..];
    }
    let first = match &mut constraint {
        Some(c) if mask_on_device => StepOutput { argmax: step_masked_on_device(dev, model, session, new, c, &options.stop_tokens).await?, logits: None },
        _ => step_masking(dev, model, session, new, need_logits || options.want_prompt_logits, &mut constraint).await?,
    };
    let prefill = start.elapsed().as_secs_f64();
    out.ttft_ms = prefill * 1e3;
    out.prefill_tok_s = (prompt.len() - out.reused_tokens) as f64 / prefill.max(1e-9);
    if options.want_prompt_logits {
        out.prompt_logits = first.logits.clone();
    }
    if options.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut next = match first.logits {
        Some(mut logits) if need_logits => pick(&mut logits, &history, &mut out, &mut constraint)?,
        _ => first.argmax,
    };
    let decode_start = Instant::now();
    // Takes a new token; false when generation ends with it.
    let mut accept = |out: &mut Generation, history: &mut Vec<u32>, token: u32, complete: bool| {
        out.generated_ids.push(token);
        history.push(token);
        let go_on = on_token(token, out.logprobs.last().filter(|l| l.id == token && out.logprobs.len() == out.generated_ids.len()));
        if options.stop_tokens.contains(&token) || complete {
            out.stopped = true;
            return false;
        }
        go_on && out.generated_ids.len() < options.max_new_tokens
    };
    let complete = |c: &Option<&mut Constraint>| c.as_ref().is_some_and(|c| c.is_complete());
    if accept(&mut out, &mut history, next, complete(&constraint)) {
        if let (Some(c), true) = (&mut constraint, mask_on_device) {
            loop {
                next = step_masked_on_device(dev, model, session, &[next], c, &options.stop_tokens).await?;
                if !accept(&mut out, &mut history, next, c.is_complete()) {
                    break;
                }
            }
        } else if need_logits {
            loop {
                let step = step_masking(dev, model, session, &[next], true, &mut constraint).await?;
                let mut logits = step.logits.ok_or_else(|| ModelError::Config("the backend returned no logits".into()))?;
                next = pick(&mut logits, &history, &mut out, &mut constraint)?;
                if !accept(&mut out, &mut history, next, complete(&constraint)) {
                    break;
                }
            }
        } else {
            // Greedy: the backend keeps the token and may queue steps ahead of the read-back.
            let budget = options.max_new_tokens - out.generated_ids.len();
            session.decode_greedy(dev, model, next, budget, |token| accept(&mut out, &mut history, token, false)).await?;
        }
    }
    let decoded = out.generated_ids.len().saturating_sub(1);
    out.decode_tok_s = decoded as f64 / decode_start.elapsed().as_secs_f64().max(1e-9);
    Ok(out)
}

/// One greedy constrained step with the mask applied on the device ([`Session::step_masked`]):
/// the mask is computed while the device runs the step, and the token taken is followed.
async fn step_masked_on_device<B: Backend>(
    dev: &B,
    model: &Model<B>,
    session: &mut Session<B>,
    tokens: &[u32],
    constraint: &mut Constraint,
    stop_tokens: &[u32],
) -> Result<u32> {
    let vocab = model.config.vocab;
    let id = session.step_masked(dev, model, tokens, || constraint.allowed_words(vocab, stop_tokens)).await?;
    constraint.follow(id, stop_tokens)?;
    Ok(id)
}

/// One step, submitted first: the constraint's mask for the token it will give is computed
/// while the GPU runs it (on the CPU backend the step has run by then).
async fn step_masking<B: Backend>(
    dev: &B,
    model: &Model<B>,
    session: &mut Session<B>,
    tokens: &[u32],
    want_logits: bool,
    constraint: &mut Option<&mut Constraint>,
) -> Result<StepOutput> {
    let pending = session.submit_step(dev, model, tokens, want_logits)?;
    if let Some(c) = constraint {
        c.prepare()?;
    }
    session.finish_step(dev, pending).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_from_logits_skip_non_finite_values_and_break_ties_by_id() {
        let logits = [1.0, f32::NAN, 3.0, f32::INFINITY, 3.0, f32::NEG_INFINITY, 2.0];
        let l = TokenLogprobs::from_logits(&logits, 4, 3);
        // Finite values only: log(e^1 + 2e^3 + e^2).
        let log_total = (1f64.exp() + 2.0 * 3f64.exp() + 2f64.exp()).ln();
        assert!((l.logprob as f64 - (3.0 - log_total)).abs() < 1e-6, "{l:?}");
        assert_eq!(l.top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 4, 6]);
        assert_eq!(TokenLogprobs::from_logits(&logits, 1, 0), TokenLogprobs { id: 1, logprob: f32::NEG_INFINITY, top: vec![] });
        assert_eq!(TokenLogprobs::from_logits(&logits, 99, 1).logprob, f32::NEG_INFINITY);
        let none = TokenLogprobs::from_logits(&[f32::NAN, f32::NEG_INFINITY], 0, 2);
        assert!(none.logprob == f32::NEG_INFINITY && none.top.is_empty());
        assert_eq!(reported_logprob(f32::NEG_INFINITY), -9999.0);
    }
}
