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
/// Repetition penalty over the title's own tokens: greedy decoding of a small model otherwise
/// loops on a fragment ("How to Grow Tomatoes on ailing,iling,iling,i", seen with SmolLM2-135M).
pub const REPEAT_PENALTY: f32 = 1.3;
/// Punctuation a title word may hold inside it ("What's", "Node.js", "C++", "Q&A", "24/7",
/// "Wi-Fi"); anything else inside a word (commas, colons…) marks a broken one.
const WORD_PUNCTUATION: &str = "'’-.+&/#";

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

/// Whether `text` holds a fragment repeated back to back: a unit of 3 or more characters twice
/// ("ilingiling", "a'sa'sa'sa") or a shorter one four times ("aaaa", "abababab").
pub fn has_repeated_fragment(text: &str) -> bool {
    let chars: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let n = chars.len();
    for unit in 1..=n / 2 {
        let times = if unit >= 3 { 2 } else { 4 };
        if unit * times > n {
            continue;
        }
        for start in 0..=n - unit * times {
            let first = &chars[start..start + unit];
            if first.iter().all(|c| c.is_whitespace()) {
                continue;
            }
            if (1..times).all(|k| &chars[start + k * unit..start + (k + 1) * unit] == first) {
                return true;
            }
        }
    }
    false
}

/// Whether a title is broken output rather than words: a word with a fragment repeated back to
/// back, a word with punctuation inside it that words do not have, a word without a letter or
/// digit, or one word three times. A word the user's message holds is always accepted (the
/// user may well ask about "couscous" or "Mississippi").
fn garbled(title: &str, message: &str) -> bool {
    let message_words: Vec<String> = message
        .split_whitespace()
        .map(|w| trim_punctuation(w).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let words: Vec<String> = title
        .split_whitespace()
        .map(|w| trim_punctuation(w).to_lowercase())
        .collect();
    let broken = |word: &String| {
        if message_words.contains(word) {
            return false;
        }
        !word.chars().any(char::is_alphanumeric)
            || word
                .chars()
                .any(|c| !c.is_alphanumeric() && !WORD_PUNCTUATION.contains(c))
            || has_repeated_fragment(word)
    };
    words.iter().any(broken)
        || words
            .iter()
            .any(|w| words.iter().filter(|other| *other == w).count() >= 3)
}

/// A word without the punctuation that may end or start it in a title ("Paris," "(Draft)").
fn trim_punctuation(word: &str) -> &str {
    word.trim_matches(|c: char| ",;:!?()[]\"'’.".contains(c))
}

/// The title to store for the model's output `raw` on a chat that starts with `message`.
///
/// A small model sometimes repeats a few-shot example's title for an unrelated message, or
/// loops on a fragment; such a title is as wrong as an empty one and falls back to the
/// message's first words.
pub fn clean(raw: &str, message: &str) -> String {
    let copied = |title: &String| {
        EXAMPLES.iter().any(|(example, example_title)| {
            super::normalize(title) == super::normalize(example_title)
                && super::normalize(example) != super::normalize(message)
        })
    };
    shorten(&strip_think(raw))
        .filter(|title| !copied(title) && !garbled(title, message))
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

    #[test]
    fn looping_and_broken_titles_fall_back_to_the_message() {
        // Seen with SmolLM2-135M before the repetition penalty (issue 20).
        let msg = "How do I grow tomatoes on my balcony?";
        assert_eq!(
            clean("How to Grow Tomatoes on ailing,iling,iling,i", msg),
            "How do I grow tomatoes on"
        );
        let msg = "How do you keep a conversation going?";
        assert_eq!(
            clean("A: How do you keep aaron'sa'sa'sa'sa'sa", msg),
            "How do you keep a conversation"
        );
        assert_eq!(
            clean("Tips Tips Tips", msg),
            "How do you keep a conversation"
        );
        assert_eq!(clean("Hmm ?!?! ok", msg), "How do you keep a conversation");
        // Real titles pass, with the punctuation words have.
        assert_eq!(clean("What's New in Node.js", msg), "What's New in Node.js");
        assert_eq!(clean("C++ Q&A, 24/7", msg), "C++ Q&A, 24/7");
        assert_eq!(
            clean("Keeping Conversations Going", msg),
            "Keeping Conversations Going"
        );
        // A repeated fragment the user wrote is the user's word.
        assert_eq!(
            clean("Mississippi River Facts", "Tell me about the Mississippi."),
            "Mississippi River Facts"
        );
        assert_eq!(
            clean("Mississippi River Facts", msg),
            "How do you keep a conversation"
        );
    }

    #[test]
    fn repeated_fragments_are_found() {
        assert!(has_repeated_fragment("iling,iling,"));
        assert!(has_repeated_fragment("a'sa'sa'sa"));
        assert!(has_repeated_fragment("aaaa"));
        assert!(has_repeated_fragment("ABCabc"));
        assert!(!has_repeated_fragment("aaa"));
        assert!(!has_repeated_fragment("hahaha"));
        assert!(!has_repeated_fragment("Baking Sourdough Bread"));
        assert!(!has_repeated_fragment("bookkeeper"));
    }
}
