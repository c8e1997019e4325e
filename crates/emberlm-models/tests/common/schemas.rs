//! JSON schemas for the constrained-decoding tests: a validator for the subset they use, and
//! random schemas (seeded) to hold generation to.

use serde_json::{json, Value};

/// The schema subset these tests use, checked by hand: type, properties, required,
/// additionalProperties false, enum, min/max, min/maxLength, items, min/maxItems.
pub fn validate(v: &Value, s: &Value, at: &str) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{at}: {what} ({v})"));
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        return if options.contains(v) { Ok(()) } else { fail("not in enum") };
    }
    match s["type"].as_str() {
        Some("object") => {
            let Some(o) = v.as_object() else { return fail("not an object") };
            let props = s["properties"].as_object().cloned().unwrap_or_default();
            for r in s["required"].as_array().into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return fail(&format!("missing {r}"));
                }
            }
            for (k, val) in o {
                match props.get(k) {
                    Some(ps) => validate(val, ps, &format!("{at}.{k}"))?,
                    None if s["additionalProperties"] == json!(false) => return fail(&format!("extra key {k}")),
                    None => {}
                }
            }
            Ok(())
        }
        Some("array") => {
            let Some(a) = v.as_array() else { return fail("not an array") };
            if s.get("minItems").is_some_and(|m| (a.len() as u64) < m.as_u64().unwrap())
                || s.get("maxItems").is_some_and(|m| a.len() as u64 > m.as_u64().unwrap())
            {
                return fail("item count");
            }
            a.iter().enumerate().try_for_each(|(i, x)| validate(x, &s["items"], &format!("{at}[{i}]")))
        }
        Some("string") => {
            let Some(t) = v.as_str() else { return fail("not a string") };
            let n = t.chars().count() as u64;
            if s.get("minLength").is_some_and(|m| n < m.as_u64().unwrap()) || s.get("maxLength").is_some_and(|m| n > m.as_u64().unwrap()) {
                return fail("length");
            }
            let shaped = |shape: &str| {
                t.len() == shape.len()
                    && t.bytes().zip(shape.bytes()).all(|(c, p)| {
                        if p == b'x' {
                            c.is_ascii_hexdigit()
                        } else if p == b'9' {
                            c.is_ascii_digit()
                        } else {
                            c == p
                        }
                    })
            };
            match s.get("format").and_then(Value::as_str) {
                None => Ok(()),
                Some("date")
                    if shaped("9999-99-99") && (1..=12).contains(&t[5..7].parse::<u32>().unwrap()) && (1..=31).contains(&t[8..].parse::<u32>().unwrap()) =>
                {
                    Ok(())
                }
                Some("uuid") if shaped("xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") => Ok(()),
                Some(f) => fail(&format!("not a {f}")),
            }
        }
        Some("integer") => {
            let Some(i) = v.as_i64() else { return fail("not an integer") };
            if s.get("minimum").is_some_and(|m| i < m.as_i64().unwrap()) || s.get("maximum").is_some_and(|m| i > m.as_i64().unwrap()) {
                return fail("out of range");
            }
            Ok(())
        }
        Some("number") => {
            let Some(x) = v.as_f64() else { return fail("not a number") };
            let out_of_range = s.get("minimum").is_some_and(|m| x < m.as_f64().unwrap()) || s.get("maximum").is_some_and(|m| x > m.as_f64().unwrap());
            let off_step = s.get("multipleOf").and_then(Value::as_f64).is_some_and(|m| ((x / m) - (x / m).round()).abs() > 1e-9);
            if out_of_range || off_step {
                return fail("out of range or off its multipleOf");
            }
            Ok(())
        }
        Some("boolean") => v.as_bool().map(|_| ()).ok_or(format!("{at}: not a boolean")),
        other => Err(format!("{at}: schema type {other:?} not covered by this validator")),
    }
}

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A value schema; `depth` bounds nesting (objects and arrays in objects, two levels).
fn random_value(rng: &mut Rng, depth: u32) -> Value {
    let kinds = if depth < 2 { 8 } else { 6 };
    match rng.below(kinds) {
        0 => json!({"type": "integer", "minimum": -(rng.below(50) as i64), "maximum": rng.below(1000) as i64}),
        // Bounded in range and in digits (multipleOf): an unbounded fraction lets a noise model run on.
        1 => json!({"type": "number", "minimum": -10, "maximum": 10, "multipleOf": 0.25}),
        2 => json!({"type": "boolean"}),
        3 => {
            let n = 1 + rng.below(4);
            let options: Vec<Value> = (0..n).map(|k| if rng.below(3) == 0 { json!(k) } else { json!(format!("opt{}", rng.below(100))) }).collect();
            let mut unique: Vec<Value> = Vec::new();
            for o in options {
                if !unique.contains(&o) {
                    unique.push(o);
                }
            }
            json!({"enum": unique})
        }
        4 => match rng.below(3) {
            0 => json!({"type": "string", "format": "date"}),
            1 => json!({"type": "string", "format": "uuid"}),
            _ => json!({"type": "string", "minLength": rng.below(3), "maxLength": 3 + rng.below(10)}),
        },
        5 => json!({"type": "string", "maxLength": 1 + rng.below(6)}),
        6 => json!({"type": "array", "items": random_value(rng, depth + 1), "minItems": rng.below(2), "maxItems": 1 + rng.below(3)}),
        _ => random_object(rng, depth + 1),
    }
}

pub fn random_object(rng: &mut Rng, depth: u32) -> Value {
    let n = 1 + rng.below(4) as usize;
    let mut props = serde_json::Map::new();
    let mut required = Vec::new();
    for k in 0..n {
        let name = format!("f{k}_{}", rng.below(1000));
        props.insert(name.clone(), random_value(rng, depth));
        if rng.below(3) != 0 {
            required.push(json!(name));
        }
    }
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}
