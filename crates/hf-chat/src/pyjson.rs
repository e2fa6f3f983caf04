//! `json.dumps` as Python writes it, for the chat template's `tojson` filter.
//!
//! transformers renders chat templates with `tojson` bound to `json.dumps(x, ensure_ascii=False,
//! indent=indent, separators=separators, sort_keys=False)`. minijinja's own `tojson` writes compact,
//! HTML-escaped JSON, so a tool definition would tokenize differently from what vLLM caches.

use serde_json::Value;
use std::fmt::Write;

/// Python's defaults: `", "` and `": "` without indent, `","` and `": "` with one.
pub fn dumps(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    let item_sep = if indent.is_some() { "," } else { ", " };
    write_value(&mut out, value, indent, 0, item_sep);
    out
}

fn write_value(out: &mut String, v: &Value, indent: Option<usize>, depth: usize, sep: &str) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        // serde_json escapes exactly what Python does with ensure_ascii=False.
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, depth + 1);
                write_value(out, item, indent, depth + 1, sep);
            }
            newline(out, indent, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, indent, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_value(out, item, indent, depth + 1, sep);
            }
            newline(out, indent, depth);
            out.push('}');
        }
    }
}

fn newline(out: &mut String, indent: Option<usize>, depth: usize) {
    if let Some(width) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', width * depth));
    }
}

/// Python prints integral floats with a trailing `.0` and uses `repr` otherwise.
fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
            let _ = write!(out, "{f:.1}");
            return;
        }
    }
    let _ = write!(out, "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_separators_and_order() {
        let v = json!({"type": "function", "function": {"name": "get", "b": [1, 2.0, null], "a": "é\n\"<>"}});
        assert_eq!(
            dumps(&v, None),
            r#"{"type": "function", "function": {"name": "get", "b": [1, 2.0, null], "a": "é\n\"<>"}}"#
        );
    }

    #[test]
    fn indents_like_python() {
        let v = json!({"a": [1, {}], "b": []});
        assert_eq!(dumps(&v, Some(2)), "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}");
    }
}
