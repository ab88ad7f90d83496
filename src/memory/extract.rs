//! Fact extraction from a user's message: the prompt, the GBNF grammar that makes the model's
//! output parse by construction, the parser, and the checks around the model.
//!
//! Why a grammar: small local models write broken JSON often enough that mem0 users lose facts
//! silently. Here the sampler can only pick tokens that continue a valid
//! `{"facts": ["...", ...]}` with at most [`MAX_FACTS`] facts of at most [`MAX_FACT_CHARS`]
//! characters, so the output is bounded in tokens and always parses unless generation is cut
//! short (which [`MAX_TOKENS`] is sized to prevent); a parse failure is still reported, never
//! ignored.
//!
//! Why checks around the model: a 135M model invents facts. Messages without a first-person word
//! or without a content word ("hi", "What is the capital of France?") say nothing about the user
//! and are not sent to the model at all; a fact that shares no content word with the message is
//! not derived from it and is dropped.
//!
//! Why recalled memories are marked: a fact recalled into a turn's prompt is often said back
//! ("as I said, I live in Lisbon"), and learning it again feeds a loop that fills memory with
//! rephrasings (mem0's tracker reports 97.8% junk after one). The extractor is told which facts
//! are already known, and a fact that adds nothing to one of them ([`repeats`]) is dropped. Only
//! the user's message is ever extracted from, never the model's reply, so a recalled memory the
//! reply repeats is not a source either.

use serde::Deserialize;

use crate::llm::{ChatMessage, ChatRole};

/// Facts one message yields at most.
pub const MAX_FACTS: usize = 3;
/// Longest fact, in characters (grammar-enforced).
pub const MAX_FACT_CHARS: usize = 80;
/// Token budget of one extraction: the grammar's longest output is `MAX_FACTS` ×
/// `MAX_FACT_CHARS` characters plus punctuation, and no token is shorter than one character.
pub const MAX_TOKENS: u32 = 256;
/// Known facts listed in the extraction prompt at most (the turn recalls at most
/// [`super::RECALL_K`]).
pub const MAX_KNOWN_LISTED: usize = super::RECALL_K;
/// Longest part of a message given to the extractor, in characters: facts sit in what a person
/// writes about themselves, not in pasted documents.
pub const MAX_INPUT_CHARS: usize = 1000;

/// The output grammar (root rule `root`).
pub fn grammar() -> String {
    format!(
        r#"root ::= "{{\"facts\": [" ( fact ( ", " fact ){{0,{more}}} )? "]}}"
fact ::= "\"" [A-Za-z0-9] [^"\\\x00-\x1f]{{1,{len}}} "\""
"#,
        more = MAX_FACTS - 1,
        len = MAX_FACT_CHARS - 1,
    )
}

const SYSTEM: &str = "You extract facts about the user from the user's message, for a long-term \
memory. A fact is something lasting the user says about themselves: where they live, their job, \
family, pets, likes, plans. Write each fact as a short sentence that starts with \"User\". \
Questions, greetings and small talk contain no facts: answer with an empty list.";

/// Few-shot examples as earlier turns: small models copy a demonstrated format far better than
/// they follow a described one.
const EXAMPLES: [(&str, &str); 3] = [
    (
        "My sister is called Ana and I love jazz.",
        r#"{"facts": ["User has a sister called Ana", "User loves jazz"]}"#,
    ),
    ("Thanks, that helps!", r#"{"facts": []}"#),
    (
        "I moved to Berlin last year for my job as an engineer.",
        r#"{"facts": ["User lives in Berlin", "User works as an engineer"]}"#,
    ),
];

/// The conversation to render with the chat template; `known` are the memories recalled into
/// the message's turn, listed as already stored.
pub fn messages(message: &str, known: &[String]) -> Vec<ChatMessage> {
    let mut system = SYSTEM.to_string();
    if !known.is_empty() {
        system.push_str(" Already known about the user (never list these again):");
        for fact in known.iter().take(MAX_KNOWN_LISTED) {
            system.push_str("\n- ");
            system.extend(fact.chars().take(super::MAX_MEMORY_CHARS));
        }
    }
    let mut out = vec![ChatMessage {
        role: ChatRole::System,
        content: system,
    }];
    for (user, answer) in EXAMPLES {
        out.push(ChatMessage {
            role: ChatRole::User,
            content: user.to_string(),
        });
        out.push(ChatMessage {
            role: ChatRole::Assistant,
            content: answer.to_string(),
        });
    }
    out.push(ChatMessage {
        role: ChatRole::User,
        content: message.chars().take(MAX_INPUT_CHARS).collect(),
    });
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    facts: Vec<String>,
}

/// Parses the model's output. An error carries the reason and the output, for the history.
pub fn parse(output: &str) -> Result<Vec<String>, String> {
    let parsed: Output = serde_json::from_str(output.trim())
        .map_err(|err| format!("unparseable extraction output ({err}): {output:?}"))?;
    Ok(parsed
        .facts
        .into_iter()
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect())
}

/// Words too common to tie a fact to a message.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "are", "was", "were", "has", "have", "had", "with", "that", "this",
    "from", "user", "users", "you", "your", "they", "them", "their", "his", "her", "she", "him",
    "its", "who", "what", "when", "where", "which", "how", "why", "not", "but", "all", "any",
    "can", "could", "would", "should", "will", "just", "very", "also", "about", "into", "than",
    "then", "there", "here", "some", "does", "did", "doing", "been", "being", "our", "ours",
    "mine", "myself", "like", "likes", "called", "named", "name", "is", "am", "a", "an", "to",
    "of", "in", "on", "at", "by", "as", "it", "be", "or", "so", "do", "my", "me", "i", "we", "us",
];

/// Content words of `text`, lowercased.
fn content_words(text: &str) -> Vec<String> {
    super::normalize(text)
        .split(' ')
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(w))
        .map(str::to_string)
        .collect()
}

/// First-person words: a message without one says nothing about its writer.
const FIRST_PERSON: &[&str] = &["i", "i'm", "im", "my", "me", "mine", "myself", "we", "our"];

/// Whether a message can hold a fact about the user at all (checked before using the model).
pub fn worth_extracting(message: &str) -> bool {
    let lower = message.to_lowercase();
    let first_person = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .any(|w| FIRST_PERSON.contains(&w));
    first_person && !content_words(message).is_empty()
}

/// The facts that share a content word with the message they were extracted from, deduplicated
/// by normalized text.
pub fn grounded(facts: Vec<String>, message: &str) -> Vec<String> {
    let source = content_words(message);
    let mut seen = Vec::new();
    facts
        .into_iter()
        .filter(|fact| {
            content_words(fact)
                .iter()
                .any(|w| source.iter().any(|s| shares_stem(s, w)))
        })
        .filter(|fact| {
            let key = super::normalize(fact);
            let new = !seen.contains(&key);
            seen.push(key);
            new
        })
        .collect()
}

/// Words that reverse a fact, as [`super::normalize`] leaves them ("don't" becomes "don t", so
/// every n't contraction leaves a "t"): a fact with one its known memory lacks says something new.
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "t", "cannot", "nor", "without", "anymore",
];

/// Whether `fact` only repeats `known`: every content word of the fact (by stem) and every
/// negation in it is already in the known memory. "User lives in Lisbon" repeats "I live in
/// Lisbon"; "User lives in Porto" and "User no longer lives in Lisbon" do not.
pub fn repeats(fact: &str, known: &str) -> bool {
    let known_words = content_words(known);
    let known_norm = super::normalize(known);
    let known_all: Vec<&str> = known_norm.split(' ').collect();
    let fact_norm = super::normalize(fact);
    let negations_known = fact_norm
        .split(' ')
        .filter(|w| NEGATIONS.contains(w))
        .all(|w| known_all.contains(&w));
    negations_known
        && content_words(fact)
            .iter()
            .all(|w| known_words.iter().any(|k| shares_stem(k, w)))
}

/// Same word up to a short suffix ("work"/"works", "nurse"/"nurses", "living"/"live").
fn shares_stem(a: &str, b: &str) -> bool {
    let stem = |w: &str| -> String {
        let n = w.chars().count();
        w.chars().take(n.saturating_sub(2).max(4).min(n)).collect()
    };
    a == b || stem(a) == stem(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_match_the_grammar_shape_and_parse() {
        for (_, answer) in EXAMPLES {
            assert!(parse(answer).is_ok(), "{answer}");
        }
        assert_eq!(parse(r#"{"facts": []}"#).unwrap(), Vec::<String>::new());
        assert!(parse(r#"{"facts": ["a""#).is_err());
        let g = grammar();
        assert!(g.contains("{0,2}") && g.contains("{1,79}"), "{g}");
    }

    #[test]
    fn greetings_and_impersonal_questions_are_not_extracted() {
        assert!(!worth_extracting("hi"));
        assert!(!worth_extracting("Hello!"));
        assert!(!worth_extracting("What is the capital of France?"));
        assert!(worth_extracting("I live in Lisbon and I work as a nurse."));
        assert!(worth_extracting("My dog is called Rex"));
    }

    #[test]
    fn facts_must_share_a_content_word_with_the_message() {
        let msg = "I live in Lisbon and I work as a nurse.";
        let facts = vec![
            "User lives in Lisbon".to_string(),
            "User works as a nurse".to_string(),
            "User likes pizza".to_string(),
            "user lives in lisbon.".to_string(),
        ];
        assert_eq!(
            grounded(facts, msg),
            ["User lives in Lisbon", "User works as a nurse"]
        );
    }

    #[test]
    fn a_fact_that_adds_nothing_to_a_known_memory_repeats_it() {
        assert!(repeats("User lives in Lisbon", "I live in Lisbon"));
        assert!(repeats(
            "User works as a nurse",
            "User works as a nurse in Lisbon"
        ));
        assert!(repeats("The user is a nurse.", "User works as a nurse"));
        assert!(!repeats("User lives in Porto", "I live in Lisbon"));
        assert!(!repeats(
            "User no longer lives in Lisbon",
            "I live in Lisbon"
        ));
        assert!(!repeats("User does not like jazz", "User likes jazz"));
        assert!(!repeats(
            "User has a sister called Eva",
            "User has a sister called Ann"
        ));
    }

    #[test]
    fn known_facts_are_listed_in_the_prompt_only_when_there_are_some() {
        let plain = messages("I live in Lisbon.", &[]);
        assert!(!plain[0].content.contains("Already known"));
        let known = messages("I live in Lisbon.", &["User lives in Lisbon".to_string()]);
        assert!(known[0]
            .content
            .ends_with("never list these again):\n- User lives in Lisbon"));
        assert_eq!(known.len(), plain.len());
    }
}
