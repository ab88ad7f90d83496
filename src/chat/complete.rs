//! Stateless completions: messages (or a raw prompt) in, tokens out, nothing stored. The OpenAI
//! surface (`server/openai`) runs on this; `/api/v1` chats run on [`ChatService::send`].
//!
//! The same engine as a chat turn: the model from the pool (loaded on demand, leased until the
//! generation ends), the prompt rendered with the model's template and checked against its
//! context, an interactive generation, cancellation when the client goes away or the daemon
//! shuts down. On top: stop strings, matched across token boundaries (text that could be the
//! start of a stop string is held back until it is known not to be).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    worker_vanished, ChatError, ChatService, CLIENT_CHANNEL_CAPACITY, GEN_CHANNEL_CAPACITY,
};
use crate::error_code::ErrorCode;
use crate::llm::{CancelFlag, ChatMessage, Finish, GenEvent, Generation, Priority, Sampling};
use crate::pool::Lease;
use crate::store::FinishReason;

/// Most stop strings a request may give (OpenAI allows 4).
pub const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// What to complete.
pub enum Input {
    /// Rendered with the model's chat template, the assistant's turn opened.
    Messages(Vec<ChatMessage>),
    /// Tokenized as it is (no template): `/v1/completions`.
    Raw(String),
}

/// A stateless completion request.
pub struct CompleteRequest {
    pub input: Input,
    /// `None`: the daemon's default model.
    pub model: Option<String>,
    pub sampling: Sampling,
    /// `None`: until the model stops or the context is full.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// A GBNF grammar the output must follow.
    pub grammar: Option<String>,
    pub keep_alive: Option<Duration>,
}

/// What the caller sees, in order: `Token`*, then `Done` or `Error`.
#[derive(Debug)]
pub enum CompleteEvent {
    Token(String),
    Done(Completed),
    Error { code: ErrorCode, message: String },
}

#[derive(Debug, Clone)]
pub struct Completed {
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the KV cache.
    pub cached_tokens: u32,
}

/// A started completion: the model that runs it and its events.
pub struct Started {
    pub model: String,
    pub prompt_tokens: u32,
    pub events: mpsc::Receiver<CompleteEvent>,
}

impl ChatService {
    /// Starts a stateless completion. Errors here happen before anything is generated.
    pub async fn complete(&self, req: CompleteRequest) -> Result<Started, ChatError> {
        if req.stop.len() > MAX_STOPS {
            return Err(ChatError::Invalid(format!(
                "stop: at most {MAX_STOPS} sequences"
            )));
        }
        if req
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(ChatError::Invalid(format!(
                "stop: each sequence must be 1 to {MAX_STOP_BYTES} bytes"
            )));
        }
        let model = req
            .model
            .clone()
            .unwrap_or_else(|| self.pool.default_model().to_string());
        let llm = self.pool.get(&model, req.keep_alive).await?;
        let render = (*llm).clone();
        let prompt = tokio::task::spawn_blocking(move || match req.input {
            Input::Messages(messages) => render.chat_prompt(&messages),
            Input::Raw(text) => render.raw_prompt(&text),
        })
        .await
        .map_err(|err| ChatError::Invalid(format!("prompt assembly failed: {err}")))??;
        let n_ctx = llm.n_ctx() as usize;
        // At least one token must fit after the prompt.
        if prompt.len() + 1 > n_ctx {
            return Err(ChatError::TooLong {
                tokens: prompt.len(),
                budget: n_ctx.saturating_sub(1),
            });
        }
        let room = u32::try_from(n_ctx - prompt.len()).unwrap_or(u32::MAX);
        let max_tokens = req.max_tokens.map_or(room, |m| m.min(room));
        let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        let cancel = CancelFlag::default();
        let (gen_tx, gen_rx) = mpsc::channel(GEN_CHANNEL_CAPACITY);
        llm.submit(Generation {
            prompt,
            sampling: req.sampling,
            max_tokens,
            priority: Priority::Interactive,
            cancel: cancel.clone(),
            events: gen_tx,
            grammar: req.grammar,
            // OpenAI's API names no conversation: snapshots match by tokens alone.
            conversation: None,
        })?;
        let (out_tx, out_rx) = mpsc::channel(CLIENT_CHANNEL_CAPACITY);
        let run = Run {
            _lease: llm,
            cancel,
            stops: StopMatcher::new(req.stop),
            shutdown: self.shutdown.clone(),
        };
        self.tasks.spawn(run.forward(gen_rx, out_tx));
        Ok(Started {
            model,
            prompt_tokens,
            events: out_rx,
        })
    }
}

struct Run {
    /// Keeps the model loaded until the generation ends.
    _lease: Lease,
    cancel: CancelFlag,
    stops: StopMatcher,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Run {
    async fn forward(
        mut self,
        mut gen_rx: mpsc::Receiver<GenEvent>,
        out: mpsc::Sender<CompleteEvent>,
    ) {
        let started = Instant::now();
        let mut client_gone = false;
        let mut shutting_down = false;
        let mut stopped = false;
        let outcome = loop {
            tokio::select! {
                event = gen_rx.recv() => match event {
                    Some(GenEvent::Started) => {}
                    Some(GenEvent::Token(piece)) => {
                        if stopped {
                            continue;
                        }
                        let (text, hit) = self.stops.push(&piece);
                        if hit {
                            // The stop string itself is not part of the output.
                            stopped = true;
                            self.cancel.cancel();
                        }
                        if !text.is_empty() && !client_gone && out.send(CompleteEvent::Token(text)).await.is_err() {
                            client_gone = true;
                            self.cancel.cancel();
                        }
                    }
                    Some(GenEvent::Finished(outcome)) => break outcome,
                    None => break worker_vanished(),
                },
                () = out.closed(), if !client_gone => {
                    client_gone = true;
                    self.cancel.cancel();
                }
                () = self.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    self.cancel.cancel();
                }
            }
        };
        if client_gone {
            tracing::debug!(
                ms = started.elapsed().as_millis(),
                "client went away; completion cancelled"
            );
            return;
        }
        if !stopped {
            // Held-back text that never became a stop string.
            let rest = self.stops.finish();
            if !rest.is_empty() && out.send(CompleteEvent::Token(rest)).await.is_err() {
                return;
            }
        }
        let event = if shutting_down {
            CompleteEvent::Error {
                code: ErrorCode::ShuttingDown,
                message: "the daemon is shutting down".into(),
            }
        } else if outcome.finish == Finish::Error {
            CompleteEvent::Error {
                code: ErrorCode::InferenceFailed,
                message: outcome.error.unwrap_or_else(|| "inference failed".into()),
            }
        } else {
            CompleteEvent::Done(Completed {
                finish_reason: match outcome.finish {
                    _ if stopped => FinishReason::Stop,
                    Finish::Stop => FinishReason::Stop,
                    Finish::Length => FinishReason::Length,
                    _ => FinishReason::Cancelled,
                },
                prompt_tokens: outcome.prompt_tokens,
                completion_tokens: outcome.completion_tokens,
                cached_tokens: outcome.prompt_reused,
            })
        };
        let _ = out.send(event).await;
    }
}

/// Finds stop strings in streamed text. Text is released as soon as it cannot be part of a stop
/// string; the longest tail that is a prefix of one is held back.
struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops,
            pending: String::new(),
        }
    }

    /// Adds a piece; returns the text that may be emitted now and whether a stop string was hit
    /// (then the text is everything before it, and nothing more will be emitted).
    fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (piece.to_string(), false);
        }
        self.pending.push_str(piece);
        let first_hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_hit {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return (text, true);
        }
        // Hold back the longest suffix of `pending` that begins some stop string.
        let mut hold = 0;
        for stop in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if tail.len() > hold && stop.starts_with(tail) {
                    hold = tail.len();
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let text = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (text, false)
    }

    /// The held-back text at the end of a generation that hit no stop string.
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            let (text, hit) = m.push(piece);
            out.push_str(&text);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_are_found_across_pieces_and_never_emitted() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".into(), true));
        assert_eq!(run(&["END"], &["x E", "N", "D y"]), ("x ".into(), true));
        // A near miss is released in full.
        assert_eq!(run(&["END"], &["x E", "N", "d"]), ("x ENd".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        // The earliest of several.
        assert_eq!(run(&["c", "b"], &["abc"]), ("a".into(), true));
        // Multi-byte characters around a held-back prefix.
        assert_eq!(run(&["é!"], &["aé", "b"]), ("aéb".into(), false));
        assert_eq!(run(&["é!"], &["aé", "!"]), ("a".into(), true));
    }
}
