//! Chat templates: the model's own Jinja template (`tokenizer_config.json` `chat_template`, or
//! GGUF `tokenizer.chat_template`) rendered with minijinja, set up like transformers'
//! `apply_chat_template`: `trim_blocks` and `lstrip_blocks`, Python string methods
//! (`.strip()`, `.split()`, ...), `raise_exception`, `strftime_now`, and a `tojson` that writes
//! what Python's `json.dumps` writes.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
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
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
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
        template.render(Value::from_serialize(&ctx)).map_err(err)
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

    #[test]
    fn strftime_now_formats_a_date() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
    }
}
