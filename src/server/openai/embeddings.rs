//! `POST /v1/embeddings`: the daemon's embedding model in OpenAI's shape, floats or base64
//! (little-endian f32, as OpenAI encodes them).

use http::{Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::body;
use super::super::docs::embed_texts;
use super::super::error::ApiError;
use super::super::respond::{ok, ResBody};
use super::super::App;
use crate::error_code::ErrorCode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    /// Accepted and ignored.
    #[allow(dead_code)]
    user: Option<String>,
}

pub(super) async fn embeddings(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: EmbeddingsRequest = body::json(req, &app.config).await?;
    let bad = |message: String| ApiError::bad_request(ErrorCode::InvalidRequest, message);
    let model = app.embedder.model_name();
    if let Some(asked) = &body.model {
        if asked != model {
            return Err(ApiError::not_found(
                ErrorCode::UnknownModel,
                format!("model: '{asked}' is not an embedding model here; this daemon embeds with {model}"),
            ));
        }
    }
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad(format!(
                "encoding_format: '{other}' is not float or base64"
            )))
        }
    };
    if let Some(dimensions) = body.dimensions {
        if dimensions != crate::embed::DIM {
            return Err(bad(format!(
                "dimensions: {model} has {} dimensions and cannot be shortened",
                crate::embed::DIM
            )));
        }
    }
    let inputs =
        match body.input {
            Value::String(text) => vec![text],
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Value::Array(_) => return Err(bad(
                "input: token arrays are not supported; send text (a string or a list of strings)"
                    .into(),
            )),
            _ => return Err(bad("input: must be a string or a list of strings".into())),
        };
    let (vectors, tokens) = embed_texts(app, inputs).await?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(encode_base64(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    ok(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// Standard base64 with padding (RFC 4648), as OpenAI's `encoding_format: base64`.
fn encode_base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::encode_base64(plain.as_bytes()), encoded);
        }
    }
}
