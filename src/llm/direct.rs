//! A plain in-process decode loop with no queue, channels or HTTP: the baseline `hearth bench`
//! compares the daemon's socket + SSE path against. It uses the same template rendering and
//! tokenization as the daemon so both decode the same tokens.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;

use super::{backend, render, ChatMessage, LlmError};

/// A model loaded for direct decoding.
pub struct DirectModel {
    model: LlamaModel,
    template: LlamaChatTemplate,
}

/// Timings of one direct run.
#[derive(Debug, Clone)]
pub struct DirectRun {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill: Duration,
    /// From the first sampled token to the last one.
    pub first_to_last: Duration,
}

impl DirectModel {
    pub fn load(path: &Path) -> Result<DirectModel, LlmError> {
        let backend = backend()?;
        let params = LlamaModelParams::default().with_use_mmap(true);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|err| LlmError::Unavailable(err.to_string()))?;
        let template = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml"))
            .map_err(|err| LlmError::Template(err.to_string()))?;
        Ok(DirectModel { model, template })
    }

    /// Loads `path` and creates one context the way the daemon's worker does (mmap, `n_ctx`,
    /// two sequences in a unified cache): the baseline of the daemon's model load. Returns the
    /// time taken; everything is freed again.
    pub fn load_like_daemon(
        path: &Path,
        threads: u32,
        n_ctx: NonZeroU32,
    ) -> Result<Duration, LlmError> {
        let backend = backend()?;
        let started = Instant::now();
        let params = LlamaModelParams::default().with_use_mmap(true);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|err| LlmError::Unavailable(err.to_string()))?;
        let threads = i32::try_from(threads).unwrap_or(1);
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_n_seq_max(2)
            .with_kv_unified(true)
            .with_no_perf(true);
        let ctx = model
            .new_context(backend, ctx_params)
            .map_err(|err| LlmError::Inference(err.to_string()))?;
        let took = started.elapsed();
        drop(ctx);
        drop(model);
        Ok(took)
    }

    /// Greedy decoding of up to `max_tokens` tokens for `messages`, one thread count, fresh context.
    pub fn run(
        &self,
        messages: &[ChatMessage],
        threads: u32,
        n_ctx: NonZeroU32,
        max_tokens: usize,
    ) -> Result<DirectRun, LlmError> {
        let backend = backend()?;
        let prompt = render(&self.model, &self.template, messages)?;
        let threads = i32::try_from(threads).unwrap_or(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(512)
            .with_n_ubatch(512)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_no_perf(true);
        let inference = |err: &dyn std::fmt::Display| LlmError::Inference(err.to_string());
        let mut ctx = self
            .model
            .new_context(backend, params)
            .map_err(|e| inference(&e))?;
        let mut batch = LlamaBatch::new(prompt.len().max(512), 1);
        let started = Instant::now();
        for (pos, token) in prompt.iter().enumerate() {
            batch
                .add(
                    *token,
                    i32::try_from(pos).unwrap_or(i32::MAX),
                    &[0],
                    pos + 1 == prompt.len(),
                )
                .map_err(|e| inference(&e))?;
        }
        ctx.decode(&mut batch).map_err(|e| inference(&e))?;
        let prefill = started.elapsed();
        let mut sampler = LlamaSampler::greedy();
        let vocab = self.model.vocab();
        let mut pos = prompt.len();
        let mut idx = batch.n_tokens() - 1;
        let mut first = None;
        let mut last = Instant::now();
        let mut completion = 0;
        let mut piece = Vec::new();
        while completion < max_tokens && pos + 1 < n_ctx.get() as usize {
            let token = sampler.sample(&ctx, idx);
            if vocab.is_eog(token) {
                break;
            }
            // Detokenize like the daemon does, so both loops do the same work per token.
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            last = Instant::now();
            first.get_or_insert(last);
            completion += 1;
            batch.clear();
            batch
                .add(token, i32::try_from(pos).unwrap_or(i32::MAX), &[0], true)
                .map_err(|e| inference(&e))?;
            ctx.decode(&mut batch).map_err(|e| inference(&e))?;
            pos += 1;
            idx = 0;
        }
        Ok(DirectRun {
            prompt_tokens: prompt.len(),
            completion_tokens: completion,
            prefill,
            first_to_last: first.map_or(Duration::ZERO, |f| last.duration_since(f)),
        })
    }
}
