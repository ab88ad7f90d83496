//! Tool calling on `/v1/chat/completions`: OpenAI's `tools` / `tool_choice` / `tool` messages
//! onto the Hermes format Qwen2.5 (and most open instruct models) were trained on. llama-cpp-2
//! has no Jinja path, so the tool prompt is rendered here: the functions go into the system
//! message inside `<tools></tools>`, a call is `<tool_call>{"name","arguments"}</tool_call>`, a
//! result goes back as `<tool_response>` in a user turn.
//!
//! `tool_choice: "required"` or a named function constrains the output with a grammar to one
//! valid call of the allowed functions (their parameters converted by `chat::schema`); `auto`
//! lets the model answer or call, and the answer is parsed for `<tool_call>` blocks.

use serde::Deserialize;
use serde_json::{json, Value};

use super::super::error::ApiError;
use crate::error_code::ErrorCode;
use crate::llm::{ChatMessage, ChatRole};

/// Most tools one request may offer.
const MAX_TOOLS: usize = 64;
const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tool {
    #[serde(rename = "type")]
    kind: String,
    function: Function,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Function {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    /// Accepted: calls are always grammar-exact when forced.
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// What the model may do with the offered tools.
pub(super) enum Mode {
    /// Answer or call (the answer is parsed for calls).
    Auto(Vec<String>),
    /// Exactly one call of one of these functions, grammar-constrained.
    Required { names: Vec<String>, grammar: String },
}

impl Mode {
    fn names(&self) -> &[String] {
        match self {
            Mode::Auto(names) | Mode::Required { names, .. } => names,
        }
    }

    /// The grammar the output must follow, if any.
    pub(super) fn grammar(&self) -> Option<String> {
        match self {
            Mode::Auto(_) => None,
            Mode::Required { grammar, .. } => Some(grammar.clone()),
        }
    }
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidRequest, message)
}

/// The tool mode of a request, and the system prompt block that describes the tools. `None`
/// when no tools are offered or `tool_choice` is `none`.
pub(super) fn mode(
    tools: Option<Vec<Tool>>,
    choice: Option<Value>,
) -> Result<Option<(Mode, String)>, ApiError> {
    let tools = tools.unwrap_or_default();
    if tools.is_empty() {
        return match choice {
            None => Ok(None),
            Some(Value::String(s)) if s == "none" => Ok(None),
            Some(_) => Err(bad("tool_choice: needs tools".into())),
        };
    }
    if tools.len() > MAX_TOOLS {
        return Err(bad(format!("tools: at most {MAX_TOOLS}")));
    }
    let mut functions = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(bad(format!(
                "tools[{i}].type: '{}' is not supported (function only)",
                tool.kind
            )));
        }
        let name = &tool.function.name;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !valid {
            return Err(bad(format!(
                "tools[{i}].function.name: 1 to 64 letters, digits, '_' or '-'"
            )));
        }
        let parameters = tool
            .function
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        functions.push((name.clone(), parameters));
    }
    let names: Vec<String> = functions.iter().map(|(n, _)| n.clone()).collect();
    let forced: Option<Vec<(String, Value)>> = match &choice {
        None => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(Value::String(s)) if s == "none" => return Ok(None),
        Some(Value::String(s)) if s == "required" => Some(functions.clone()),
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.function.name: is required".into()))?;
            let one: Vec<_> = functions
                .iter()
                .filter(|(n, _)| n == name)
                .cloned()
                .collect();
            if one.is_empty() {
                return Err(bad(format!(
                    "tool_choice.function.name: '{name}' is not among the tools"
                )));
            }
            Some(one)
        }
        Some(_) => return Err(bad(
            "tool_choice: none, auto, required or {\"type\":\"function\",\"function\":{\"name\"}}"
                .into(),
        )),
    };
    let block = prompt_block(&tools);
    let mode = match forced {
        None => Mode::Auto(names),
        Some(allowed) => {
            let grammar = crate::chat::schema::tool_call_grammar(&allowed)
                .map_err(|err| bad(format!("{err}")))?;
            Mode::Required {
                names: allowed.into_iter().map(|(n, _)| n).collect(),
                grammar,
            }
        }
    };
    Ok(Some((mode, block)))
}

/// The system prompt block that offers the tools (the Hermes / Qwen2.5 wording).
fn prompt_block(tools: &[Tool]) -> String {
    let mut out = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        let f = &tool.function;
        let mut function = json!({"name": f.name});
        if let Some(d) = &f.description {
            function["description"] = json!(d);
        }
        function["parameters"] = f
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        out.push('\n');
        out.push_str(&json!({"type": "function", "function": function}).to_string());
    }
    out.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// Puts the tool block into the conversation's system message (adding one if there is none).
pub(super) fn with_tools(mut messages: Vec<ChatMessage>, block: &str) -> Vec<ChatMessage> {
    match messages.first_mut() {
        Some(first) if first.role == ChatRole::System => {
            first.content = format!("{}\n\n{block}", first.content);
        }
        _ => messages.insert(
            0,
            ChatMessage {
                role: ChatRole::System,
                content: format!("You are a helpful assistant.\n\n{block}"),
            },
        ),
    }
    messages
}

/// An assistant message's `tool_calls` as the model writes them, after its content.
pub(super) fn assistant_calls(content: &str, calls: &Value, i: usize) -> Result<String, ApiError> {
    let calls = calls
        .as_array()
        .ok_or_else(|| bad(format!("messages[{i}].tool_calls: must be a list")))?;
    let mut out = content.to_string();
    for (j, call) in calls.iter().enumerate() {
        let f = &call["function"];
        let name = f["name"].as_str().ok_or_else(|| {
            bad(format!(
                "messages[{i}].tool_calls[{j}].function.name: is required"
            ))
        })?;
        // Arguments are a JSON string in OpenAI's API; the model saw (and writes) an object.
        let arguments = match f["arguments"].as_str() {
            Some(text) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
            None => f["arguments"].clone(),
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "{OPEN}\n{}\n{CLOSE}",
            json!({"name": name, "arguments": arguments})
        ));
    }
    Ok(out)
}

/// A `tool` message as the model expects it: a user turn holding the result.
pub(super) fn tool_result(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// The calls in a reply, and the text around them. A block that is not a call of an offered
/// function (bad JSON, unknown name) stays text.
pub(super) fn parse(text: &str, mode: &Mode) -> (String, Vec<Value>) {
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut tail = text;
    while let Some(start) = tail.find(OPEN) {
        let after = &tail[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            break;
        };
        let body = after[..end].trim();
        let call: Option<(String, Value)> =
            serde_json::from_str::<Value>(body).ok().and_then(|v| {
                let name = v["name"].as_str()?.to_string();
                mode.names()
                    .contains(&name)
                    .then(|| (name, v["arguments"].clone()))
            });
        match call {
            Some((name, arguments)) => {
                rest.push_str(&tail[..start]);
                let arguments = if arguments.is_null() {
                    json!({})
                } else {
                    arguments
                };
                calls.push(json!({
                    "id": format!("call_{}", uuid::Uuid::now_v7().simple()),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments.to_string()},
                }));
            }
            None => rest.push_str(&tail[..start + OPEN.len() + end + CLOSE.len()]),
        }
        tail = &after[end + CLOSE.len()..];
    }
    rest.push_str(tail);
    (rest.trim().to_string(), calls)
}

/// While streaming with tools offered: text is held back as long as the reply could still be a
/// tool call (it starts with `<tool_call>` after whitespace); then it is either streamed as it
/// comes or kept whole for parsing at the end.
pub(super) struct StreamGate {
    held: String,
    /// `Some(true)`: a call, keep everything; `Some(false)`: text, pass through.
    decided: Option<bool>,
}

impl StreamGate {
    pub(super) fn new(forced: bool) -> StreamGate {
        StreamGate {
            held: String::new(),
            decided: forced.then_some(true),
        }
    }

    /// Text that may be streamed now.
    pub(super) fn push(&mut self, piece: &str) -> String {
        match self.decided {
            Some(false) => piece.to_string(),
            Some(true) => {
                self.held.push_str(piece);
                String::new()
            }
            None => {
                self.held.push_str(piece);
                let start = self.held.trim_start();
                if start.starts_with(OPEN) {
                    self.decided = Some(true);
                    String::new()
                } else if OPEN.starts_with(start) {
                    String::new()
                } else {
                    self.decided = Some(false);
                    std::mem::take(&mut self.held)
                }
            }
        }
    }

    /// What was held back: the whole reply when it may hold calls.
    pub(super) fn finish(self) -> (String, bool) {
        (self.held, self.decided != Some(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_parsed_out_of_replies_and_unknown_ones_stay_text() {
        let mode = Mode::Auto(vec!["get_weather".into()]);
        let (text, calls) = parse(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            &mode,
        );
        assert_eq!(text, "Let me check.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        let (text, calls) = parse("<tool_call>{\"name\": \"rm_rf\"}</tool_call>", &mode);
        assert!(calls.is_empty() && text.contains("rm_rf"));
    }

    #[test]
    fn the_gate_holds_a_possible_call_and_passes_text() {
        let mut gate = StreamGate::new(false);
        assert_eq!(gate.push(" <tool"), "");
        assert_eq!(gate.push("_call>{"), "");
        assert_eq!(gate.finish(), (" <tool_call>{".to_string(), true));
        let mut gate = StreamGate::new(false);
        assert_eq!(gate.push("<to"), "");
        assert_eq!(gate.push("day"), "<today");
        assert_eq!(gate.push(" is"), " is");
        assert_eq!(gate.finish(), (String::new(), false));
    }
}
