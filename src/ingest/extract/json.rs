//! JSON: pretty-printed with keys in their order and spelling, indentation bounded by the text
//! limit.

use super::*;

/// Validates with serde_json (which also bounds nesting depth) and re-indents by two spaces
/// without building a value tree, so key order and the exact spelling of strings and numbers are
/// kept.
pub(super) fn pretty_json(text: &str, limits: &Limits) -> Result<String, ExtractError> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(ExtractError::Corrupt(format!("invalid json: {e}")));
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut indent = 0usize;
    let newline = |out: &mut String, indent: usize| {
        out.push('\n');
        for _ in 0..indent {
            out.push_str("  ");
        }
    };
    let mut i = 0usize;
    while i < bytes.len() {
        // Indentation can multiply the size of deeply nested compact JSON, so check as we go.
        check_text_size(out.len(), limits)?;
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                out.push_str(text.get(start..i.min(bytes.len())).unwrap_or_default());
                continue;
            }
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { '}' } else { ']' };
                let next = bytes[i + 1..]
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                    .map(|p| i + 1 + p);
                out.push(char::from(open));
                if next.is_some_and(|j| bytes[j] == close as u8) {
                    out.push(close);
                    i = next.map_or(bytes.len(), |j| j + 1);
                    continue;
                }
                indent += 1;
                newline(&mut out, indent);
            }
            close @ (b'}' | b']') => {
                indent = indent.saturating_sub(1);
                newline(&mut out, indent);
                out.push(char::from(close));
            }
            b',' => {
                out.push(',');
                newline(&mut out, indent);
            }
            b':' => out.push_str(": "),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // A number or a literal (`true`, `false`, `null`): ASCII up to a delimiter.
                let start = i;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b',' | b'}' | b']' | b':' | b'"' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    i += 1;
                }
                out.push_str(text.get(start..i).unwrap_or_default());
                continue;
            }
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn json_is_pretty_printed_keeping_order_and_spelling() {
        let input =
            r#"{"b":1,"a":[1.50,2e3,{"c":"x,y:{}[] \"q\""}],"e":{},"f":[ ],"g":null,"h":true}"#;
        let extracted = ok("data.json", input.as_bytes());
        assert_eq!(extracted.format, Format::Json);
        let expected = r#"{
  "b": 1,
  "a": [
    1.50,
    2e3,
    {
      "c": "x,y:{}[] \"q\""
    }
  ],
  "e": {},
  "f": [],
  "g": null,
  "h": true
}"#;
        assert_eq!(texts(&extracted), [expected]);
    }

    #[test]
    fn json_indentation_is_bounded_by_the_text_limit() {
        // Compact but deeply nested JSON grows with indentation; it must hit the limit, not memory.
        let input = format!("{}{}", "[".repeat(100), "]".repeat(100)).repeat(50);
        let input = format!("[{}]", input.replace("][", "],["));
        let limits = Limits {
            max_text_bytes: 4096,
            ..Limits::default()
        };
        let e = err_with("deep.json", input.as_bytes(), &limits);
        assert!(matches!(e, ExtractError::TextTooLarge { .. }), "{e}");
    }
}
