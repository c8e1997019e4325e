//! Generation with a tool-call parser following the reply, as the wasm engine and the CLI run it.

use emberlm_models::constraint::Constraint;
use emberlm_models::tokenizer::{StreamDecoder, TextTokenizer};
use emberlm_models::tools::{ToolEvent, ToolPrompt};
use emberlm_models::{generate_constrained, Backend, GenerateOptions, Generation, Model, Session};

/// Generates after `ids` (under `constraint`, if any) from a fresh session; returns what
/// `prompt`'s parser handed on, token by token and at the end, and the generation.
pub fn generate_events<B: Backend>(
    dev: &B,
    model: &Model<B>,
    ids: &[u32],
    opts: &GenerateOptions,
    constraint: Option<&mut Constraint>,
    prompt: &ToolPrompt,
    tok: &TextTokenizer,
    seed: u64,
) -> (Vec<ToolEvent>, Generation) {
    let mut session = Session::new(dev, model).unwrap();
    let mut stream = prompt.stream(Some(tok), seed);
    let mut decoder = StreamDecoder::new(true);
    let mut events = Vec::new();
    let out = pollster::block_on(generate_constrained(dev, model, &mut session, ids, opts, constraint, |id, _| {
        events.extend(stream.push_token(id, &decoder.push(tok, id).unwrap()));
        true
    }))
    .unwrap();
    events.extend(stream.finish());
    (events, out)
}
