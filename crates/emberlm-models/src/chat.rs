//! Chat templates: the model's own Jinja template (`tokenizer_config.json` `chat_template`, or
//! GGUF `tokenizer.chat_template`) rendered with minijinja, set up like transformers'
//! `apply_chat_template`: `trim_blocks` and `lstrip_blocks`, Python string methods
//! (`.strip()`, `.split()`, ...), `raise_exception`, `strftime_now`, and a `tojson` that writes
//! what Python's `json.dumps` writes.
//!
//! Templates come from model files, so they are hostile input: rendering is bounded in steps
//! and bytes built (minijinja fuel), output size, and the widths that filters pad to, and every bound broken
//! is a template error, never a hang or an allocation failure.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

/// Fuel for one render. minijinja charges a unit per instruction and per ~64 bytes of any
/// string or list a template builds (output, `~`, `+`, `replace`, ...), so this bounds both
/// time (nested `range(100000)` loops stop within a second) and memory (a string doubled in a
/// loop stops near 5M × 64 B = 320 MB). A 2,000-message, 2 MB conversation fits in 6% of it.
pub const TEMPLATE_FUEL: u64 = 5_000_000;
/// The longest prompt text a template may write (a million-token conversation is ~4 MiB).
pub const TEMPLATE_MAX_OUTPUT: usize = 16 << 20;
/// The widest indent or padding a template may ask of `tojson`, `indent` or `format`.
pub const TEMPLATE_MAX_WIDTH: usize = 256;

fn too_wide(what: &str, n: usize) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{what} {n} is wider than the {TEMPLATE_MAX_WIDTH} a template may ask for"))
}

/// Refuses a printf/`str.format` string that pads to a width (or precision) past the bound.
fn check_format_widths(format: &str) -> std::result::Result<(), Error> {
    let mut digits = 0usize;
    let mut value = 0usize;
    for c in format.chars().chain(std::iter::once(' ')) {
        if let Some(d) = c.to_digit(10) {
            digits += 1;
            value = value.saturating_mul(10).saturating_add(d as usize);
        } else {
            if digits > 0 && value > TEMPLATE_MAX_WIDTH {
                return Err(too_wide("a format width of", value));
            }
            digits = 0;
            value = 0;
        }
    }
    Ok(())
}

/// minijinja's `indent` with the width bounded.
fn bounded_indent(
    value: minijinja::value::StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, Error> {
    let w = width.or(kwargs.get::<Option<usize>>("width")?).unwrap_or(4);
    if w > TEMPLATE_MAX_WIDTH {
        return Err(too_wide("an indent of", w));
    }
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// minijinja's `format` filter with the widths bounded.
fn bounded_format(
    state: &mut minijinja::State,
    format: &Value,
    args: minijinja::value::Rest<minijinja::value::ValueOrKwargs>,
) -> std::result::Result<Value, Error> {
    check_format_widths(format.as_str().unwrap_or_default())?;
    minijinja::filters::format(state, format, args)
}

/// A writer that refuses to grow past [`TEMPLATE_MAX_OUTPUT`]. Bytes are kept as written (a
/// write may end inside a character) and turned into text once rendering is done.
struct CappedOutput(Vec<u8>);

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            return Err(std::io::Error::other(format!("the chat template wrote more than {} MiB", TEMPLATE_MAX_OUTPUT >> 20)));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`: ", " and ": " separators
/// on one line, "," and ": " with an indent.
fn py_json(v: &Json, indent: Option<usize>, depth: usize, out: &mut String) {
    let pad = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                pad(out, depth + 1);
                py_json(item, indent, depth + 1, out);
            }
            pad(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                pad(out, depth + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                py_json(item, indent, depth + 1, out);
            }
            pad(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    if let Some(n) = indent.filter(|&n| n > TEMPLATE_MAX_WIDTH) {
        return Err(too_wide("tojson(indent) of", n));
    }
    let json = serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Today's date as Python's `strftime` would print it (UTC), for templates that date prompts.
fn strftime_now(format: String) -> String {
    let secs = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let name = MONTHS[(month - 1) as usize];
    format
        .replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%Y", &year.to_string())
        .replace("%B", name)
        .replace("%b", &name[..3])
}

impl ChatTemplate {
    /// Renders `messages` (a JSON array of `{"role", "content", ...}`); `extra` adds variables
    /// to the template context (`tools`, `date_string`, ...).
    pub fn render(&self, messages: &Json, add_generation_prompt: bool, extra: Option<&Json>) -> Result<String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| ModelError::ChatTemplate(format!("{e:#}")))?,
        );
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(|state, value, method, args| {
            if method == "format" || method == "center" || method == "ljust" || method == "rjust" || method == "zfill" {
                check_format_widths(value.as_str().unwrap_or_default())?;
                for a in args {
                    if let Some(n) = a.as_usize().filter(|&n| n > TEMPLATE_MAX_WIDTH) {
                        return Err(too_wide(&format!("`.{method}` width"), n));
                    }
                }
            }
            minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
        });
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("indent", bounded_indent);
        env.add_filter("format", bounded_format);
        let err = |e: Error| ModelError::ChatTemplate(format!("{e:#}"));
        let template = env.template_from_str(&self.source).map_err(err)?;
        let mut ctx = serde_json::Map::new();
        if let Some(Json::Object(extra)) = extra {
            ctx.extend(extra.clone());
        }
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        ctx.insert("bos_token".into(), self.bos_token.clone().map_or(Json::String(String::new()), Json::String));
        ctx.insert("eos_token".into(), self.eos_token.clone().map_or(Json::String(String::new()), Json::String));
        let mut out = CappedOutput(Vec::new());
        template.render_captured_to(Value::from(minijinja::value::Serde(&ctx)), &mut out).map_err(|e| {
            // Out of fuel or past the output cap: say which bound, not only "rendering failed".
            let bound = match e.kind() {
                ErrorKind::OutOfFuel => format!(" (past its budget of {TEMPLATE_FUEL} steps or {} MB built)", TEMPLATE_FUEL * 64 / 1_000_000),
                ErrorKind::WriteFailure => format!(" (more than {} MiB of output)", TEMPLATE_MAX_OUTPUT >> 20),
                _ => String::new(),
            };
            ModelError::ChatTemplate(format!("{e:#}{bound}"))
        })?;
        String::from_utf8(out.0).map_err(|e| ModelError::ChatTemplate(format!("the template wrote invalid UTF-8: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        let v: Json = serde_json::json!({"name": "f", "args": [1, "é", {"x": null}], "e": {}});
        let mut out = String::new();
        py_json(&v, None, 0, &mut out);
        assert_eq!(out, r#"{"name": "f", "args": [1, "é", {"x": null}], "e": {}}"#);
        let mut out = String::new();
        py_json(&serde_json::json!({"a": [1]}), Some(2), 0, &mut out);
        assert_eq!(out, "{\n  \"a\": [\n    1\n  ]\n}");
    }

    fn render(source: &str) -> Result<String> {
        let t = ChatTemplate { source: source.into(), bos_token: None, eos_token: None };
        t.render(&serde_json::json!([{"role": "user", "content": "hi"}]), true, None)
    }

    #[test]
    fn hostile_templates_end_in_errors_within_bounds() {
        let started = web_time::Instant::now();
        let cases = [
            ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "steps"),
            // Strings and lists that double or square each round: fuel pays for their bytes.
            ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}", "steps"),
            ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}", "steps"),
            ("{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s | replace('x', ns.s) %}{% endfor %}", "steps"),
            ("{% macro grow(s, n) %}{% if n %}{{ grow(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}{% endmacro %}{{ grow('x', 64) }}", "steps"),
            ("{% for a in range(100000) %}{{ 'x' * 10000 }}{% endfor %}", "MiB of output"),
            ("{{ messages | tojson(indent=4611686018427387904) }}", "wider than"),
            ("{{ 'a\nb' | indent(1000000000000) }}", "wider than"),
            ("{{ 'a\nb' | indent(width=1000000000000) }}", "wider than"),
            ("{{ '%1000000000s' | format('x') }}", "wider than"),
            ("{{ '{:>1000000000}'.format('x') }}", "wider than"),
            ("{{ 'x'.center(1000000000) }}", "wider than"),
        ];
        for (source, want) in cases {
            let e = render(source).unwrap_err().to_string();
            assert!(e.contains(want), "{source}: {e}");
        }
        assert!(started.elapsed().as_secs() < 30, "hostile templates took {:?}", started.elapsed());
        // Ordinary uses still work.
        assert_eq!(render("{{ 'a\nb' | indent(2) }}|{{ '%3s' | format('x') }}|{{ '{:>3}'.format('y') }}").unwrap(), "a\n  b|  x|  y");
        assert_eq!(render("{{ {'a': 1} | tojson(indent=2) }}").unwrap(), "{\n  \"a\": 1\n}");
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
    }
}
