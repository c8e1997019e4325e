//! WGSL sources (one kernel per file in `shaders/`, embedded at compile time) and the small
//! preprocessor that makes their variants: `#if FLAG` / `#else` / `#endif` blocks (a condition
//! may join flags with `&&` and negate them with `!`),
//! `#include "lib/..."` of shared helpers, and `const NAME: u32` values injected after the
//! `enable` directives. A kernel's file name is its op name: `matvec` is `shaders/matvec.wgsl`.

use std::collections::BTreeMap;

macro_rules! shaders {
    ($($name:literal),* $(,)?) => {
        /// Every kernel, by name.
        pub const KERNELS: &[(&str, &str)] = &[
            $(($name, include_str!(concat!("../../../shaders/", $name, ".wgsl")))),*
        ];
    };
}

shaders!(
    "matvec",
    "matmul",
    "attention",
    "attention_prefill",
    "attention_reduce",
    "rms_norm",
    "head_rms_norm",
    "rope_kv_append",
    "latent_rope_append",
    "gated_activation",
    "short_conv",
    "ssm_scan_step",
    "ssm_scan_states",
    "ssm_scan_output",
    "embedding",
    "softmax",
    "logit_softcap",
    "argmax",
    "top_k",
    "moe_route",
    "moe_group",
    "moe_combine",
);

/// Helper files shared by several kernels (not kernels themselves), pulled in by `#include`.
pub const INCLUDES: &[(&str, &str)] = &[
    ("lib/weights.wgsl", include_str!("../../../shaders/lib/weights.wgsl")),
    ("lib/ranking.wgsl", include_str!("../../../shaders/lib/ranking.wgsl")),
    ("lib/row_reduce.wgsl", include_str!("../../../shaders/lib/row_reduce.wgsl")),
    ("lib/activation.wgsl", include_str!("../../../shaders/lib/activation.wgsl")),
    ("lib/ssm.wgsl", include_str!("../../../shaders/lib/ssm.wgsl")),
];

pub fn kernel_source(name: &str) -> Option<&'static str> {
    KERNELS.iter().find(|(n, _)| *n == name).map(|(_, src)| *src)
}

/// Which variant of a kernel: boolean flags for `#if` blocks and integer constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Variant {
    pub flags: Vec<&'static str>,
    pub consts: BTreeMap<&'static str, u32>,
}

impl Variant {
    pub fn flag(mut self, flag: &'static str) -> Self {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
            self.flags.sort_unstable();
        }
        self
    }

    pub fn flag_if(self, on: bool, flag: &'static str) -> Self {
        if on {
            self.flag(flag)
        } else {
            self
        }
    }

    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.consts.insert(name, value);
        self
    }

    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
}

/// Expands `#if`/`#else`/`#endif` and injects the constants. Nesting is supported; an unknown
/// flag is simply false. Unbalanced directives are a bug in our shader and reported as such.
pub fn preprocess(source: &str, variant: &Variant) -> Result<String, String> {
    let mut enables = String::new();
    let mut body = String::new();
    expand(source, variant, &mut enables, &mut body, 0)?;
    let mut out = enables;
    for (name, value) in &variant.consts {
        out.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    out.push_str(&body);
    Ok(out)
}

/// An `#if` condition: flags joined by `&&`, each optionally negated with `!`.
fn condition(expr: &str, variant: &Variant) -> bool {
    expr.split("&&").all(|term| {
        let term = term.trim();
        match term.strip_prefix('!') {
            Some(flag) => !variant.has(flag.trim()),
            None => variant.has(term),
        }
    })
}

fn expand(source: &str, variant: &Variant, enables: &mut String, body: &mut String, depth: usize) -> Result<(), String> {
    if depth > 4 {
        return Err("#include nested too deeply".into());
    }
    // Stack of (this block is active, parent was active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.last().map_or(true, |(on, parent)| *on && *parent);
    for (n, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(flag) = trimmed.strip_prefix("#if ") {
            let parent = active(&stack);
            stack.push((condition(flag, variant), parent));
        } else if trimmed.starts_with("#else") {
            let Some(top) = stack.last_mut() else {
                return Err(format!("line {}: #else without #if", n + 1));
            };
            top.0 = !top.0;
        } else if trimmed.starts_with("#endif") {
            if stack.pop().is_none() {
                return Err(format!("line {}: #endif without #if", n + 1));
            }
        } else if !active(&stack) {
            continue;
        } else if let Some(path) = trimmed.strip_prefix("#include ") {
            let path = path.trim().trim_matches('"');
            let Some((_, src)) = INCLUDES.iter().find(|(p, _)| *p == path) else {
                return Err(format!("line {}: unknown include `{path}`", n + 1));
            };
            expand(src, variant, enables, body, depth + 1)?;
        } else {
            let target = if trimmed.starts_with("enable ") { &mut *enables } else { &mut *body };
            target.push_str(line);
            target.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err("unterminated #if".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_select_blocks_and_constants_follow_enables() {
        let src = "#if A\nenable subgroups;\n#endif\nfn f() {\n#if A\n  a();\n#else\n  b();\n#if C\n  c();\n#endif\n#endif\n}\n";
        let on = preprocess(src, &Variant::default().flag("A").with("WG", 64)).unwrap();
        assert_eq!(on, "enable subgroups;\nconst WG: u32 = 64u;\nfn f() {\n  a();\n}\n");
        let off = preprocess(src, &Variant::default().flag("C")).unwrap();
        assert_eq!(off, "fn f() {\n  b();\n  c();\n}\n");
        assert!(preprocess("#if A\n", &Variant::default()).is_err());
        let both = "#if A && !B\nx\n#endif\n";
        assert!(preprocess(both, &Variant::default().flag("A")).unwrap().contains('x'));
        assert!(!preprocess(both, &Variant::default().flag("A").flag("B")).unwrap().contains('x'));
        assert!(!preprocess(both, &Variant::default()).unwrap().contains('x'));
        assert!(preprocess("#endif\n", &Variant::default()).is_err());
    }

    #[test]
    fn every_kernel_preprocesses_in_every_documented_variant() {
        for (name, src) in KERNELS {
            for flags in [&["W_F32"][..], &["W_Q4", "SUBGROUPS"][..]] {
                let mut v = Variant::default();
                for f in flags {
                    v = v.flag(f);
                }
                preprocess(src, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}
