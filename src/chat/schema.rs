//! JSON Schema → GBNF: the grammar that makes a generation's output valid JSON of a schema
//! (`response_format` on `/v1/chat/completions`). llama-cpp-2 does not expose llama.cpp's own
//! converter, so this is ours, for the subset structured-output clients send (OpenAI's strict
//! mode, pydantic's schemas): `type` (object, array, string, number, integer, boolean, null, or a
//! list of them), `properties`/`required`/`additionalProperties: false`, `items`,
//! `minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf`, `minLength`/`maxLength`, and
//! `$ref` into `$defs`/`definitions`. Annotations (`title`, `description`, `default`,
//! `examples`, `$schema`, `strict`) are ignored. Anything else is refused by name: a keyword the
//! grammar cannot enforce would let invalid output through.
//!
//! Properties are generated in the order of the parsed schema (serde_json's map: by name),
//! required ones always, optional ones optionally; whitespace is bounded, numbers have at most 16
//! integer digits and 2 exponent digits (every value fits an f64), and string characters are
//! Unicode scalar values (no surrogates: a byte-level vocabulary cannot spell invalid UTF-8
//! through the grammar), so a model cannot wander into unbounded or unparsable output. One gap
//! remains: llama.cpp's grammar decodes a malformed UTF-8 sequence (a lead byte followed by
//! non-continuation bytes, which only byte-level vocabularies of untrained models produce) as
//! one code point, so `maxLength` can be exceeded by the replacement characters of such text.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// Deepest nesting of schemas followed (a `$ref` cycle is refused, not followed forever).
const MAX_DEPTH: usize = 32;
/// Most rules one schema may produce (a schema is request input).
const MAX_RULES: usize = 2000;
/// Longest array `maxItems` turned into a repetition bound.
const MAX_REPEAT: u64 = 1000;

/// Keywords that describe and constrain nothing.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "strict",
    "deprecated",
    "readOnly",
    "writeOnly",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    #[error("{path}: the keyword '{keyword}' is not supported in structured output")]
    Unsupported { path: String, keyword: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The shared rules every grammar uses.
const BASE: &str = r#"ws ::= [ \t\n]{0,16}
char ::= [^"\\\x7F\x00-\x1F\uD800-\uDFFF\U00110000-\U7FFFFFFF] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
string ::= "\"" char* "\""
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
"#;

/// A grammar for any JSON object (`response_format: {"type": "json_object"}`).
pub fn json_object_grammar() -> String {
    format!("root ::= ws object ws\n{BASE}")
}

/// The grammar whose language is the JSON documents valid against `schema`.
pub fn grammar_for(schema: &Value) -> Result<String, SchemaError> {
    let mut builder = Builder {
        root: schema,
        rules: BTreeMap::new(),
        refs: BTreeMap::new(),
        next: 0,
    };
    let root = builder.visit(schema, "schema", 0)?;
    let mut out = format!("root ::= ws {root} ws\n{BASE}");
    for (name, body) in &builder.rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    Ok(out)
}

/// A grammar for exactly one tool call in the Hermes/Qwen2.5 format the tool prompt asks for:
/// `<tool_call>\n{"name": "<one of names>", "arguments": <that function's parameters>}\n</tool_call>`.
/// `functions` are (name, parameters schema) pairs; each schema is converted like
/// [`grammar_for`]'s (with its own `$defs`).
pub fn tool_call_grammar(functions: &[(String, Value)]) -> Result<String, SchemaError> {
    let mut rules = BTreeMap::new();
    let mut next = 0;
    let mut calls = Vec::with_capacity(functions.len());
    for (name, parameters) in functions {
        let mut builder = Builder {
            root: parameters,
            rules: std::mem::take(&mut rules),
            refs: BTreeMap::new(),
            next,
        };
        let args = builder.visit(parameters, &format!("tools.{name}.parameters"), 0)?;
        let call = builder.rule(format!(
            "\"{{\" ws \"\\\"name\\\"\" ws \":\" ws {} ws \",\" ws \"\\\"arguments\\\"\" ws \":\" ws {args} ws \"}}\"",
            literal(&Value::String(name.clone()))
        ))?;
        calls.push(call);
        rules = builder.rules;
        next = builder.next;
    }
    let mut out = format!(
        "root ::= \"<tool_call>\\n\" ( {} ) \"\\n</tool_call>\"\n{BASE}",
        calls.join(" | ")
    );
    for (name, body) in &rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    Ok(out)
}

struct Builder<'a> {
    root: &'a Value,
    rules: BTreeMap<String, String>,
    /// `$ref` target → rule name (a def is generated once; recursion goes through the name).
    refs: BTreeMap<String, String>,
    next: usize,
}

impl Builder<'_> {
    fn rule(&mut self, body: String) -> Result<String, SchemaError> {
        if self.rules.len() >= MAX_RULES {
            return Err(SchemaError::Invalid {
                path: "schema".into(),
                message: format!("too large (more than {MAX_RULES} grammar rules)"),
            });
        }
        let name = format!("r{}", self.next);
        self.next += 1;
        self.rules.insert(name.clone(), body);
        Ok(name)
    }

    /// The grammar expression (usually a rule name) for `schema` at `path`.
    fn visit(&mut self, schema: &Value, path: &str, depth: usize) -> Result<String, SchemaError> {
        let invalid = |message: &str| SchemaError::Invalid {
            path: path.to_string(),
            message: message.to_string(),
        };
        if depth > MAX_DEPTH {
            return Err(invalid("nested too deeply (or a $ref cycle)"));
        }
        let obj = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Object(obj) => obj,
            _ => return Err(invalid("a schema must be an object")),
        };
        for key in obj.keys() {
            let known = ANNOTATIONS.contains(&key.as_str())
                || matches!(
                    key.as_str(),
                    "type"
                        | "properties"
                        | "required"
                        | "additionalProperties"
                        | "items"
                        | "minItems"
                        | "maxItems"
                        | "enum"
                        | "const"
                        | "anyOf"
                        | "oneOf"
                        | "minLength"
                        | "maxLength"
                        | "$ref"
                        | "$defs"
                        | "definitions"
                );
            if !known {
                return Err(SchemaError::Unsupported {
                    path: path.to_string(),
                    keyword: key.clone(),
                });
            }
        }
        if let Some(target) = obj.get("$ref") {
            return self.reference(target, path, depth);
        }
        if let Some(value) = obj.get("const") {
            return Ok(literal(value));
        }
        if let Some(values) = obj.get("enum") {
            let values = values
                .as_array()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| invalid("enum: must be a non-empty list"))?;
            let body = values.iter().map(literal).collect::<Vec<_>>().join(" | ");
            return self.rule(body);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = obj.get(key) {
                let options = options
                    .as_array()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| invalid(&format!("{key}: must be a non-empty list")))?;
                let mut alternatives = Vec::with_capacity(options.len());
                for (i, option) in options.iter().enumerate() {
                    alternatives.push(self.visit(
                        option,
                        &format!("{path}.{key}[{i}]"),
                        depth + 1,
                    )?);
                }
                return self.rule(alternatives.join(" | "));
            }
        }
        match obj.get("type") {
            None if obj.contains_key("properties") => self.object(obj, path, depth),
            None if obj.contains_key("items") => self.array(obj, path, depth),
            None => Ok("value".into()),
            Some(Value::String(kind)) => self.typed(kind, obj, path, depth),
            Some(Value::Array(kinds)) if !kinds.is_empty() => {
                let mut alternatives = Vec::with_capacity(kinds.len());
                for kind in kinds {
                    let kind = kind
                        .as_str()
                        .ok_or_else(|| invalid("type: a list of type names"))?;
                    alternatives.push(self.typed(kind, obj, path, depth)?);
                }
                self.rule(alternatives.join(" | "))
            }
            Some(_) => Err(invalid("type: a type name or a list of them")),
        }
    }

    fn typed(
        &mut self,
        kind: &str,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        match kind {
            "object" => self.object(obj, path, depth),
            "array" => self.array(obj, path, depth),
            "string" => self.string(obj, path),
            "number" => Ok("number".into()),
            "integer" => Ok("integer".into()),
            "boolean" => Ok("boolean".into()),
            "null" => Ok("null".into()),
            other => Err(SchemaError::Invalid {
                path: path.to_string(),
                message: format!("type: unknown type '{other}'"),
            }),
        }
    }

    fn string(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
    ) -> Result<String, SchemaError> {
        let min = bound(obj, "minLength", path)?;
        let max = bound(obj, "maxLength", path)?;
        if min.is_none() && max.is_none() {
            return Ok("string".into());
        }
        let min = min.unwrap_or(0);
        let repeat = match max {
            Some(max) if max < min => {
                return Err(SchemaError::Invalid {
                    path: path.to_string(),
                    message: "maxLength is below minLength".into(),
                })
            }
            Some(max) => format!("{{{min},{max}}}"),
            None => format!("{{{min},}}"),
        };
        self.rule(format!("\"\\\"\" char{repeat} \"\\\"\""))
    }

    fn array(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let item = match obj.get("items") {
            None => "value".to_string(),
            Some(items) => self.visit(items, &format!("{path}.items"), depth + 1)?,
        };
        let min = bound(obj, "minItems", path)?.unwrap_or(0);
        let max = bound(obj, "maxItems", path)?;
        if max.is_some_and(|max| max < min) {
            return Err(SchemaError::Invalid {
                path: path.to_string(),
                message: "maxItems is below minItems".into(),
            });
        }
        let more = format!("\",\" ws {item} ws");
        let body = match (min, max) {
            (_, Some(0)) => "\"[\" ws \"]\"".to_string(),
            (0, None) => format!("\"[\" ws ( {item} ws ( {more} )* )? \"]\""),
            (0, Some(max)) => format!("\"[\" ws ( {item} ws ( {more} ){{0,{}}} )? \"]\"", max - 1),
            (min, None) => format!("\"[\" ws {item} ws ( {more} ){{{},}} \"]\"", min - 1),
            (min, Some(max)) => format!(
                "\"[\" ws {item} ws ( {more} ){{{},{}}} \"]\"",
                min - 1,
                max - 1
            ),
        };
        self.rule(body)
    }

    fn object(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let invalid = |message: &str| SchemaError::Invalid {
            path: path.to_string(),
            message: message.to_string(),
        };
        match obj.get("additionalProperties") {
            None | Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(SchemaError::Unsupported {
                    path: path.to_string(),
                    keyword: "additionalProperties (only false is supported)".into(),
                })
            }
        }
        let empty = serde_json::Map::new();
        let properties = match obj.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid("properties: must be an object")),
        };
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(invalid("required: must be a list of names")),
        };
        if let Some(missing) = required.iter().find(|r| !properties.contains_key(**r)) {
            return Err(invalid(&format!(
                "required: '{missing}' is not among the properties"
            )));
        }
        if properties.is_empty() && obj.get("additionalProperties").is_none() {
            // `{"type": "object"}` alone: any object.
            return Ok("object".into());
        }
        // One `key: value` rule per property, in the schema's order.
        let mut kvs = Vec::with_capacity(properties.len());
        for (name, schema) in properties {
            let value = self.visit(schema, &format!("{path}.properties.{name}"), depth + 1)?;
            let key = literal(&Value::String(name.clone()));
            kvs.push((
                self.rule(format!("{key} ws \":\" ws {value} ws"))?,
                required.contains(&name.as_str()),
            ));
        }
        // after_i: the properties from i on, each after a comma; first_i: the same, the first
        // one emitted without a comma.
        let n = kvs.len();
        let mut after = vec![String::from("\"\""); n + 1];
        let mut first = vec![String::from("\"\""); n + 1];
        for i in (0..n).rev() {
            let (kv, required) = &kvs[i];
            let next_after = after[i + 1].clone();
            let next_first = first[i + 1].clone();
            after[i] = if *required {
                self.rule(format!("\",\" ws {kv} {next_after}"))?
            } else {
                self.rule(format!("( \",\" ws {kv} )? {next_after}"))?
            };
            first[i] = if *required {
                self.rule(format!("{kv} {next_after}"))?
            } else {
                self.rule(format!("{kv} {next_after} | {next_first}"))?
            };
        }
        self.rule(format!("\"{{\" ws {} \"}}\"", first[0]))
    }

    fn reference(
        &mut self,
        target: &Value,
        path: &str,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let target = target.as_str().unwrap_or_default();
        if let Some(name) = self.refs.get(target) {
            return Ok(name.clone());
        }
        let pointer = target
            .strip_prefix('#')
            .ok_or_else(|| SchemaError::Unsupported {
                path: path.to_string(),
                keyword: format!("$ref to '{target}' (only local #/$defs/… references)"),
            })?;
        let root = self.root;
        let schema = root.pointer(pointer).ok_or_else(|| SchemaError::Invalid {
            path: path.to_string(),
            message: format!("$ref: '{target}' is not in the schema"),
        })?;
        // Reserve the name first, so a recursive reference resolves to it.
        let name = format!("r{}", self.next);
        self.next += 1;
        self.refs.insert(target.to_string(), name.clone());
        let body = self.visit(schema, target, depth + 1)?;
        self.rules.insert(name.clone(), body);
        Ok(name)
    }
}

/// A non-negative integer keyword, bounded by [`MAX_REPEAT`].
fn bound(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<u64>, SchemaError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_REPEAT => Ok(Some(n)),
            _ => Err(SchemaError::Invalid {
                path: path.to_string(),
                message: format!("{key}: must be an integer from 0 to {MAX_REPEAT}"),
            }),
        },
    }
}

/// A JSON value as a GBNF string literal (its compact serialization, quoted).
fn literal(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unsupported_keywords_are_named_and_bad_schemas_refused() {
        let err = grammar_for(&json!({"type": "string", "pattern": "^a+$"})).unwrap_err();
        assert_eq!(
            err,
            SchemaError::Unsupported {
                path: "schema".into(),
                keyword: "pattern".into()
            }
        );
        let err = grammar_for(
            &json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}),
        )
        .unwrap_err();
        assert!(
            matches!(err, SchemaError::Unsupported { ref keyword, ref path } if keyword == "minimum" && path == "schema.properties.n"),
            "{err}"
        );
        assert!(
            grammar_for(&json!({"type": "object", "required": ["x"], "properties": {}})).is_err()
        );
        assert!(grammar_for(&json!({"type": "wat"})).is_err());
        assert!(grammar_for(&json!({"$ref": "#/$defs/missing"})).is_err());
        assert!(grammar_for(&json!({"$ref": "http://example.com/s.json"})).is_err());
    }

    #[test]
    fn recursive_references_and_all_supported_keywords_make_a_grammar() {
        let schema = json!({
            "title": "Tree", "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 20},
                "kind": {"enum": ["a", "b", 3, null]},
                "size": {"type": ["integer", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
                "fixed": {"const": "x\"y"},
                "either": {"anyOf": [{"type": "number"}, {"type": "boolean"}]},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}}
            },
            "required": ["name", "children"],
            "additionalProperties": false,
            "$defs": {"Tree": {"$ref": "#"}}
        });
        let grammar = grammar_for(&schema).unwrap();
        assert!(grammar.starts_with("root ::= ws "), "{grammar}");
        assert!(grammar.contains("\"\\\"fixed\\\"\""), "{grammar}");
        assert!(grammar.contains("char{1,20}"), "{grammar}");
    }
}
