//! A bounded reader of a GGUF file's header: the metadata a model list shows (architecture,
//! parameter count, quantization, trained context, chat template, licence), read *after* the
//! file's sha256 was verified, and without trusting a single length in it.
//!
//! GGUF is a parser input with a long CVE history; this reader is ours, so it is strict: every
//! count and length is checked against a named cap and against the bytes left in the file before
//! anything is allocated or skipped, nesting is bounded, and a bad header is an error value, never
//! a panic or a huge allocation. Large arrays (a 150k-token vocabulary) are skipped, not kept;
//! only the keys the list shows are kept, and strings only up to a small cap.
//!
//! Layout (little-endian): `GGUF`, version (u32; 2 and 3 supported), tensor count (u64), key/value
//! count (u64), the key/values, then per tensor: name, dimension count (u32), dimensions (u64
//! each), element type (u32), data offset (u64).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Most key/values a header may declare (real models have a few dozen).
const MAX_KEYS: u64 = 65_536;
/// Most tensors (a 70B model has ~720).
const MAX_TENSORS: u64 = 1_000_000;
/// Most elements in one array (vocabularies and merge lists run to ~150k-250k).
const MAX_ARRAY: u64 = 16 * 1024 * 1024;
/// Longest string anywhere in the header (chat templates are a few KiB; the longest strings in
/// real files are well under this).
const MAX_STRING: u64 = 16 * 1024 * 1024;
/// Longest string value kept (a chat template); longer values are read past and dropped.
const MAX_KEPT_STRING: u64 = 256 * 1024;
/// Arrays of arrays allowed, at most this deep.
const MAX_DEPTH: u32 = 2;
/// A tensor has at most this many dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// What the model list shows of a GGUF file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    /// `general.architecture`, e.g. `llama`, `qwen2`, `gemma3`.
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// Sum of all tensors' element counts (an output matrix stored apart from tied embeddings
    /// counts twice: Qwen2.5-1.5B shows 1.78B).
    pub parameters: u64,
    pub tensors: u64,
    /// `general.file_type` as llama.cpp names it (`Q4_K_M`, `Q4_1`, `F16`, …).
    pub quantization: Option<String>,
    /// `<architecture>.context_length`: the context the model was trained for.
    pub context_length: Option<u64>,
    /// `tokenizer.chat_template`, when present and not longer than [`MAX_KEPT_STRING`].
    pub chat_template: Option<String>,
    /// True when the file has a chat template (also one too long to keep).
    pub has_chat_template: bool,
    /// `general.license`.
    pub license: Option<String>,
}

impl GgufInfo {
    /// The chat format the template follows, recognised by its markers (llama.cpp recognises
    /// the same ones); `None` without a template or for one we do not know.
    pub fn template_family(&self) -> Option<&'static str> {
        let template = self.chat_template.as_deref()?;
        let families: [(&str, &str); 7] = [
            ("<|im_start|>", "chatml"),
            ("<|start_header_id|>", "llama3"),
            ("<start_of_turn>", "gemma"),
            ("[INST]", "mistral"),
            ("<|user|>", "phi3"),
            ("<|User|>", "deepseek"),
            ("### Instruction", "alpaca"),
        ];
        families
            .iter()
            .find(|(marker, _)| template.contains(marker))
            .map(|(_, family)| *family)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (no GGUF magic)")]
    NotGguf,
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("the header declares {count} {what}; at most {limit} are accepted")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("a header string is {0} bytes long; at most {MAX_STRING} are accepted")]
    StringTooLong(u64),
    #[error("the header ends early: it declares more than the file holds")]
    Truncated,
    #[error("unknown value type {0} in the header")]
    BadType(u32),
    #[error("arrays nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a tensor has {0} dimensions; at most {MAX_DIMS} are accepted")]
    BadTensor(u32),
    #[error("cannot read the header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header of the GGUF file at `path` (verify its hash first: see `models::verify`).
pub fn read(path: &Path) -> Result<GgufInfo, GgufError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    read_from(BufReader::new(file), len)
}

/// Reads a header from `reader`, which holds `len` bytes in all.
pub fn read_from<R: Read + Seek>(reader: R, len: u64) -> Result<GgufInfo, GgufError> {
    let mut r = Bounded {
        inner: reader,
        left: len,
    };
    if r.bytes::<4>()? != *b"GGUF" {
        return Err(GgufError::NotGguf);
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version(version));
    }
    let tensors = r.u64()?;
    let keys = r.u64()?;
    cap("tensors", tensors, MAX_TENSORS)?;
    cap("key/values", keys, MAX_KEYS)?;
    let mut info = GgufInfo {
        version,
        tensors,
        ..GgufInfo::default()
    };
    let mut file_type = None;
    let mut context_lengths: Vec<(String, u64)> = Vec::new();
    for _ in 0..keys {
        let key = r.string(MAX_KEPT_STRING)?.unwrap_or_default();
        let kind = r.u32()?;
        let value = r.value(kind, 0)?;
        match (key.as_str(), value) {
            ("general.architecture", Value::Text(v)) => info.architecture = Some(v),
            ("general.name", Value::Text(v)) => info.name = Some(v),
            ("general.license", Value::Text(v)) => info.license = Some(v),
            ("general.file_type", Value::Number(v)) => file_type = Some(v),
            ("tokenizer.chat_template", value) => {
                info.has_chat_template = true;
                if let Value::Text(v) = value {
                    info.chat_template = Some(v);
                }
            }
            (key, Value::Number(v)) if key.ends_with(".context_length") => {
                context_lengths.push((key.trim_end_matches(".context_length").to_string(), v));
            }
            _ => {}
        }
    }
    info.context_length = context_lengths
        .iter()
        .find(|(arch, _)| Some(arch.as_str()) == info.architecture.as_deref())
        .map(|(_, n)| *n);
    info.quantization = file_type.map(file_type_name);
    for _ in 0..tensors {
        r.skip_string()?;
        let dims = r.u32()?;
        if dims > MAX_DIMS {
            return Err(GgufError::BadTensor(dims));
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            elements = elements.saturating_mul(r.u64()?);
        }
        r.u32()?; // element type
        r.u64()?; // data offset
        info.parameters = info.parameters.saturating_add(elements);
    }
    Ok(info)
}

fn cap(what: &'static str, count: u64, limit: u64) -> Result<(), GgufError> {
    if count > limit {
        return Err(GgufError::TooMany { what, count, limit });
    }
    Ok(())
}

/// A value as far as the list cares: numbers and short strings kept, the rest read past.
enum Value {
    Number(u64),
    Text(String),
    Other,
}

/// A reader that knows how many bytes the file still holds, so no declared length can make it
/// allocate or seek past the end.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read + Seek> Bounded<R> {
    fn take(&mut self, n: u64) -> Result<(), GgufError> {
        if n > self.left {
            return Err(GgufError::Truncated);
        }
        self.left -= n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        self.take(N as u64)?;
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::UnexpectedEof => GgufError::Truncated,
                _ => GgufError::Io(err),
            })?;
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        /// Below this, reading through the buffer beats a seek (which drops a `BufReader`'s
        /// buffer): a vocabulary is ~150k short strings.
        const SEEK_FROM: u64 = 64 * 1024;
        self.take(n)?;
        if n < SEEK_FROM {
            let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
            if copied != n {
                return Err(GgufError::Truncated);
            }
            return Ok(());
        }
        let n = i64::try_from(n).map_err(|_| GgufError::Truncated)?;
        self.inner.seek(SeekFrom::Current(n))?;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A string: kept when at most `keep` bytes long and valid UTF-8, else read past (`None`).
    fn string(&mut self, keep: u64) -> Result<Option<String>, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(GgufError::StringTooLong(len));
        }
        if len > keep {
            self.skip(len)?;
            return Ok(None);
        }
        self.take(len)?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| GgufError::Truncated)?];
        self.inner
            .read_exact(&mut buf)
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::UnexpectedEof => GgufError::Truncated,
                _ => GgufError::Io(err),
            })?;
        Ok(String::from_utf8(buf).ok())
    }

    fn skip_string(&mut self) -> Result<(), GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(GgufError::StringTooLong(len));
        }
        self.skip(len)
    }

    fn value(&mut self, kind: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match kind {
            // u8, i8, bool
            0 | 1 | 7 => Value::Number(u64::from(self.bytes::<1>()?[0])),
            // u16, i16
            2 | 3 => Value::Number(u64::from(u16::from_le_bytes(self.bytes()?))),
            // u32, i32
            4 | 5 => Value::Number(u64::from(self.u32()?)),
            // f32
            6 => {
                self.skip(4)?;
                Value::Other
            }
            8 => match self.string(MAX_KEPT_STRING)? {
                Some(text) => Value::Text(text),
                None => Value::Other,
            },
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(GgufError::TooDeep);
                }
                let item = self.u32()?;
                let count = self.u64()?;
                cap("array elements", count, MAX_ARRAY)?;
                match fixed_size(item) {
                    Some(size) => self.skip(count.saturating_mul(size))?,
                    None => {
                        for _ in 0..count {
                            match item {
                                8 => self.skip_string()?,
                                9 => {
                                    self.value(9, depth + 1)?;
                                }
                                other => return Err(GgufError::BadType(other)),
                            }
                        }
                    }
                }
                Value::Other
            }
            // u64, i64
            10 | 11 => Value::Number(self.u64()?),
            // f64
            12 => {
                self.skip(8)?;
                Value::Other
            }
            other => return Err(GgufError::BadType(other)),
        })
    }
}

/// Bytes per element of a fixed-size type; `None` for strings and arrays (and unknown types,
/// which the caller rejects).
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// llama.cpp's names for `general.file_type` (`enum llama_ftype`).
fn file_type_name(file_type: u64) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        other => return format!("type {other}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn models_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
    }

    /// A header with the given key/values (already encoded) and no tensors.
    fn header(version: u32, tensors: u64, keys: u64, body: &[u8]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&tensors.to_le_bytes());
        out.extend_from_slice(&keys.to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    fn string(text: &str) -> Vec<u8> {
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn parse(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
        read_from(Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn a_small_header_is_read() {
        let mut body = string("general.architecture");
        body.extend_from_slice(&8u32.to_le_bytes());
        body.extend(string("llama"));
        body.extend(string("llama.context_length"));
        body.extend_from_slice(&4u32.to_le_bytes());
        body.extend_from_slice(&4096u32.to_le_bytes());
        body.extend(string("general.file_type"));
        body.extend_from_slice(&4u32.to_le_bytes());
        body.extend_from_slice(&15u32.to_le_bytes());
        // An array of strings that is read past.
        body.extend(string("tokenizer.ggml.tokens"));
        body.extend_from_slice(&9u32.to_le_bytes());
        body.extend_from_slice(&8u32.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend(string("a"));
        body.extend(string("b"));
        body.extend(string("tokenizer.chat_template"));
        body.extend_from_slice(&8u32.to_le_bytes());
        body.extend(string("<|im_start|>{{ m }}"));
        // One tensor of 4 × 8 elements.
        body.extend(string("w"));
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&4u64.to_le_bytes());
        body.extend_from_slice(&8u64.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        let info = parse(&header(3, 1, 5, &body)).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.context_length, Some(4096));
        assert_eq!(info.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(info.template_family(), Some("chatml"));
        assert_eq!((info.tensors, info.parameters), (1, 32));
    }

    #[test]
    fn hostile_headers_are_errors_without_allocating() {
        // Not GGUF, an unknown version.
        assert!(matches!(parse(b"GGML\0\0\0\0"), Err(GgufError::NotGguf)));
        assert!(matches!(
            parse(&header(9, 0, 0, &[])),
            Err(GgufError::Version(9))
        ));
        // Counts beyond the caps.
        assert!(matches!(
            parse(&header(3, 0, u64::MAX, &[])),
            Err(GgufError::TooMany { .. })
        ));
        assert!(matches!(
            parse(&header(3, u64::MAX, 0, &[])),
            Err(GgufError::TooMany { .. })
        ));
        // A key of 2^60 bytes; a key longer than the file.
        let huge = (1u64 << 60).to_le_bytes();
        assert!(matches!(
            parse(&header(3, 0, 1, &huge)),
            Err(GgufError::StringTooLong(_))
        ));
        let long = 1000u64.to_le_bytes();
        assert!(matches!(
            parse(&header(3, 0, 1, &long)),
            Err(GgufError::Truncated)
        ));
        // An array of 2^40 u64s (skipped by seeking, so it must be refused before).
        let mut body = string("k");
        body.extend_from_slice(&9u32.to_le_bytes());
        body.extend_from_slice(&10u32.to_le_bytes());
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            parse(&header(3, 0, 1, &body)),
            Err(GgufError::TooMany { .. })
        ));
        // An array whose elements would run past the end of the file.
        let mut body = string("k");
        body.extend_from_slice(&9u32.to_le_bytes());
        body.extend_from_slice(&10u32.to_le_bytes());
        body.extend_from_slice(&1000u64.to_le_bytes());
        assert!(matches!(
            parse(&header(3, 0, 1, &body)),
            Err(GgufError::Truncated)
        ));
        // Arrays of arrays of arrays.
        let mut body = string("k");
        for _ in 0..3 {
            body.extend_from_slice(&9u32.to_le_bytes());
            body.extend_from_slice(&9u32.to_le_bytes());
            body.extend_from_slice(&1u64.to_le_bytes());
        }
        assert!(parse(&header(3, 0, 1, &body)).is_err());
        // An unknown value type; a tensor with too many dimensions; a header cut short.
        let mut body = string("k");
        body.extend_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            parse(&header(3, 0, 1, &body)),
            Err(GgufError::BadType(99))
        ));
        let mut body = string("t");
        body.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            parse(&header(3, 1, 0, &body)),
            Err(GgufError::BadTensor(1000))
        ));
        let full = header(3, 0, 1, &string("general.name"));
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn the_pinned_models_headers_are_read() {
        let smol = read(&models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
        assert_eq!(smol.architecture.as_deref(), Some("llama"));
        assert_eq!(smol.quantization.as_deref(), Some("Q4_1"));
        assert_eq!(smol.context_length, Some(8192));
        assert_eq!(smol.template_family(), Some("chatml"));
        assert!(
            (130_000_000..140_000_000).contains(&smol.parameters),
            "{}",
            smol.parameters
        );
        let qwen = read(&models_dir().join("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf")).unwrap();
        assert_eq!(qwen.architecture.as_deref(), Some("qwen2"));
        assert_eq!(qwen.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(qwen.context_length, Some(32768));
        assert_eq!(qwen.template_family(), Some("chatml"));
        assert!(
            // 1.54B weights, plus the output matrix the file stores apart from the tied
            // embeddings (151,936 × 1,536): the tensors hold 1.78B elements.
            (1_700_000_000..1_800_000_000).contains(&qwen.parameters),
            "{}",
            qwen.parameters
        );
        let tiny = read(&models_dir().join("tiny-random.gguf")).unwrap();
        assert_eq!(tiny.architecture.as_deref(), Some("llama"));
        assert!(tiny.parameters > 0);
    }
}
