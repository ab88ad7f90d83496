//! Automatic chat titles: the prompt, a grammar that allows only a few words on one line without
//! quotes, and the clean-up that makes any output (a reasoning model's `<think>` block, an empty
//! answer) a usable title, falling back to the first words of the user's message.

use crate::llm::{ChatMessage, ChatRole};

/// Words in a title at most.
pub const MAX_WORDS: usize = 6;
/// Characters in a title at most.
pub const MAX_CHARS: usize = 60;
/// Token budget: six short words and the end of turn.
pub const MAX_TOKENS: u32 = 24;
/// Characters of the message shown to the model: the start says what a chat is about.
const MAX_INPUT_CHARS: usize = 600;

/// The output grammar (root rule `root`): 1 to [`MAX_WORDS`] words of at most 20 characters,
/// separated by single spaces; no quotes, brackets, or line breaks.
pub fn grammar() -> String {
    format!(
        r#"root ::= word ( " " word ){{0,{more}}}
word ::= [^ \t\r\n"'`<>{{}}\[\]“”«»\x00-\x1f]{{1,20}}
"#,
        more = MAX_WORDS - 1
    )
}

const SYSTEM: &str = "You write a short title for a conversation, from its first message. \
Answer with the title only: two to five words.";

const EXAMPLES: [(&str, &str); 2] = [
    (
        "How do I bake sourdough bread at home without a starter?",
        "Baking Sourdough Bread",
    ),
    (
        "Can you explain how vaccines train the immune system?",
        "How Vaccines Work",
    ),
];

pub fn messages(message: &str) -> Vec<ChatMessage> {
    let mut out = vec![ChatMessage {
        role: ChatRole::System,
        content: SYSTEM.to_string(),
    }];
    for (user, title) in EXAMPLES {
        out.push(ChatMessage {
            role: ChatRole::User,
            content: user.to_string(),
        });
        out.push(ChatMessage {
            role: ChatRole::Assistant,
            content: title.to_string(),
        });
    }
    out.push(ChatMessage {
        role: ChatRole::User,
        content: message.chars().take(MAX_INPUT_CHARS).collect(),
    });
    out
}

/// Removes `<think>…</think>` blocks (and an unclosed `<think>` to the end).
fn strip_think(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => rest = &rest[start + end + "</think>".len()..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// At most [`MAX_WORDS`] words and [`MAX_CHARS`] characters of `text`'s first non-empty line,
/// without surrounding quotes and punctuation. `None` when nothing is left.
fn shorten(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line.strip_prefix("Title:").unwrap_or(line);
    let mut title = String::new();
    for word in line.split_whitespace().take(MAX_WORDS) {
        let word: String = word.chars().filter(|c| !"\"“”«»`".contains(*c)).collect();
        if word.is_empty() {
            continue;
        }
        if title.chars().count() + word.chars().count() + 1 > MAX_CHARS {
            break;
        }
        if !title.is_empty() {
            title.push(' ');
        }
        title.push_str(&word);
    }
    let title = title
        .trim_matches(|c: char| c.is_whitespace() || "'.,:;!?-".contains(c))
        .to_string();
    (!title.is_empty()).then_some(title)
}

/// The title to store for the model's output `raw` on a chat that starts with `message`.
///
/// A small model sometimes repeats a few-shot example's title for an unrelated message; that
/// title is as wrong as an empty one and also falls back to the message's first words.
pub fn clean(raw: &str, message: &str) -> String {
    let copied = |title: &String| {
        EXAMPLES.iter().any(|(example, example_title)| {
            super::normalize(title) == super::normalize(example_title)
                && super::normalize(example) != super::normalize(message)
        })
    };
    shorten(&strip_think(raw))
        .filter(|title| !copied(title))
        .or_else(|| shorten(message))
        .unwrap_or_else(|| crate::store::DEFAULT_CHAT_TITLE.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_blocks_quotes_and_empty_output_are_handled() {
        let msg = "How do I fix a flat bicycle tire on the road today?";
        assert_eq!(clean("\"Fixing a Flat Tire\"", msg), "Fixing a Flat Tire");
        assert_eq!(
            clean(
                "<think>The user asks about tires.</think>\nBike Tire Repair",
                msg
            ),
            "Bike Tire Repair"
        );
        assert_eq!(clean("<think>never closed", msg), "How do I fix a flat");
        assert_eq!(clean("   ", msg), "How do I fix a flat");
        assert_eq!(clean("Title: Flat Tires.", msg), "Flat Tires");
        assert_eq!(
            clean("one two three four five six seven eight", msg),
            "one two three four five six"
        );
        assert_eq!(clean("", "?!"), crate::store::DEFAULT_CHAT_TITLE);
        // A copied few-shot title is not a title of this chat.
        assert_eq!(
            clean("How Vaccines Work", "I live in Lisbon."),
            "I live in Lisbon"
        );
    }
}
