//! Prompt assembly within an explicit token budget.
//!
//! The prompt is system prompt + as much recent history as fits + the new user message. History
//! is dropped oldest-first, whole turns at a time (a kept suffix always starts at a user message,
//! so the model never sees an answer without its question). A new message that does not fit even
//! without history is an error, never silently cut.
//!
//! Token counts come from rendering the real chat template and tokenizing (the `render` callback),
//! not from estimates; the suffix length is found by binary search, so a long chat costs
//! O(log n) renders.

use crate::llm::{ChatMessage, ChatRole, LlmError, Prompt};
use crate::store::{FinishReason, Message, Role};

/// Anything with a token length: the real [`Prompt`], or a stand-in in tests.
pub trait TokenLen {
    fn token_len(&self) -> usize;
}

impl TokenLen for Prompt {
    fn token_len(&self) -> usize {
        self.len()
    }
}

/// The assembled prompt and how it was cut.
#[derive(Debug)]
pub struct Plan<P = Prompt> {
    pub prompt: P,
    /// History messages included.
    pub history_kept: usize,
    /// History messages dropped (oldest first) to fit the budget.
    pub history_dropped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the message needs {tokens} prompt tokens but only {budget} fit the context")]
    TooLong { tokens: usize, budget: usize },
    #[error(transparent)]
    Llm(#[from] LlmError),
}

/// The stored messages that make up the conversation so far. Replies that failed before
/// producing any text are left out together with their question: they carry nothing to continue.
pub fn history(messages: &[Message]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for message in messages {
        let role = match message.role {
            Role::User => ChatRole::User,
            Role::Assistant => ChatRole::Assistant,
        };
        let failed_empty = message.role == Role::Assistant
            && message.content.is_empty()
            && matches!(
                message.finish_reason,
                Some(FinishReason::Error) | Some(FinishReason::Cancelled)
            );
        if failed_empty {
            if out.last().is_some_and(|m| m.role == ChatRole::User) {
                out.pop();
            }
            continue;
        }
        out.push(ChatMessage {
            role,
            content: message.content.clone(),
        });
    }
    out
}

/// Builds the prompt. `budget` is the number of prompt tokens allowed (context minus the output
/// reserve).
pub fn plan<P, R>(
    system: &str,
    history: &[ChatMessage],
    user: &str,
    budget: usize,
    render: R,
) -> Result<Plan<P>, PlanError>
where
    P: TokenLen,
    R: Fn(&[ChatMessage]) -> Result<P, LlmError>,
{
    let assemble = |start: usize| -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(history.len() - start + 2);
        // Always a system message, even an empty one: templates that insert their own default
        // when there is none (Qwen2.5's "You are Qwen, created by Alibaba Cloud…") never do.
        messages.push(ChatMessage {
            role: ChatRole::System,
            content: system.to_string(),
        });
        messages.extend_from_slice(&history[start..]);
        messages.push(ChatMessage {
            role: ChatRole::User,
            content: user.to_string(),
        });
        messages
    };

    let bare = render(&assemble(history.len()))?;
    if bare.token_len() > budget {
        return Err(PlanError::TooLong {
            tokens: bare.token_len(),
            budget,
        });
    }
    // Candidate starting points: every user message, oldest first, then "no history".
    let starts: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == ChatRole::User)
        .map(|(n, _)| n)
        .collect();
    // Fitting is monotonic in the start index: binary search for the first that fits.
    let (mut lo, mut hi) = (0, starts.len());
    let mut best: Option<(usize, P)> = None;
    while lo < hi {
        let mid = (lo + hi) / 2;
        let prompt = render(&assemble(starts[mid]))?;
        if prompt.token_len() <= budget {
            best = Some((starts[mid], prompt));
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let (start, prompt) = best.unwrap_or((history.len(), bare));
    Ok(Plan {
        prompt,
        history_kept: history.len() - start,
        history_dropped: start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T> TokenLen for Vec<T> {
        fn token_len(&self) -> usize {
            self.len()
        }
    }

    /// One "token" per word plus 2 per message of template overhead.
    fn render(messages: &[ChatMessage]) -> Result<Vec<()>, LlmError> {
        let n: usize = messages
            .iter()
            .map(|m| m.content.split_whitespace().count() + 2)
            .sum();
        Ok(vec![(); n])
    }

    fn turns(n: usize) -> Vec<ChatMessage> {
        (0..n)
            .flat_map(|i| {
                [
                    ChatMessage {
                        role: ChatRole::User,
                        content: format!("question {i} a b"),
                    },
                    ChatMessage {
                        role: ChatRole::Assistant,
                        content: format!("answer {i} c"),
                    },
                ]
            })
            .collect()
    }

    #[test]
    fn everything_fits_when_the_budget_allows() {
        let history = turns(3);
        let p = plan("sys", &history, "new q", 1000, render).unwrap();
        assert_eq!((p.history_kept, p.history_dropped), (6, 0));
        // sys(1+2) + 3 × (4+2 + 3+2) + new(2+2)
        assert_eq!(p.prompt.len(), 3 + 33 + 4);
    }

    #[test]
    fn oldest_whole_turns_are_dropped_first() {
        let history = turns(3);
        // Room for system + new + exactly one turn (11 tokens): 3 + 11 + 4 = 18.
        let p = plan("sys", &history, "new q", 18, render).unwrap();
        assert_eq!((p.history_kept, p.history_dropped), (2, 4));
        let p = plan("sys", &history, "new q", 17, render).unwrap();
        assert_eq!((p.history_kept, p.history_dropped), (0, 6));
    }

    #[test]
    fn a_message_that_cannot_fit_alone_is_an_error() {
        let err = plan("sys", &turns(1), "one two three four", 8, render).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::TooLong {
                    tokens: 9,
                    budget: 8
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn failed_empty_replies_leave_history_with_their_question() {
        let mk = |role, content: &str, finish| Message {
            id: crate::store::MessageId::new(),
            chat_id: crate::store::ChatId::new(),
            seq: 0,
            role,
            content: content.into(),
            created_at: 0,
            finish_reason: finish,
            usage: None,
            sources: Vec::new(),
        };
        let stored = vec![
            mk(Role::User, "hi", None),
            mk(Role::Assistant, "hello", Some(FinishReason::Stop)),
            mk(Role::User, "lost", None),
            mk(Role::Assistant, "", Some(FinishReason::Cancelled)),
            mk(Role::User, "again", None),
            mk(Role::Assistant, "partial", Some(FinishReason::Cancelled)),
        ];
        let contents: Vec<_> = history(&stored).into_iter().map(|m| m.content).collect();
        assert_eq!(contents, ["hi", "hello", "again", "partial"]);
    }
}
