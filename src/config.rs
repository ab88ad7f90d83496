//! Configuration: defaults < `hearth.toml` < `HEARTH_*` environment < command-line flags,
//! parsed and validated into one [`Config`] before anything binds or loads.
//!
//! Two stages, as in ripgrep's low/high args: [`RawConfig`] is what the user wrote (every field
//! optional, unknown keys rejected), [`Config`] is the resolved, validated value the daemon runs on.
//! Nothing reads the environment after this module has run.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Nice steps below the daemon for background threads: CFS weights nice 10 at ~1/10 of nice 0
/// (110 vs 1024), so an embedding batch in flight yields most of the CPU to decode without
/// stopping (see `priority`).
pub const DEFAULT_BACKGROUND_NICE: u32 = 10;

/// Name of the optional config file inside the config dir.
pub const CONFIG_FILE_NAME: &str = "hearth.toml";

/// Every setting as the user may write it, in the file, the environment or on the command line.
///
/// One naming rule (a test holds every field to it): the field name is the TOML key, the flag
/// is that name with dashes, the environment variable that name upper-cased behind `HEARTH_`.
/// `--allow-origin` and `--compat-allow-origin`, the first spellings of two flags, are hidden
/// aliases.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where chats, settings and logs live [default: the platform data dir, e.g. ~/.local/share/hearth].
    #[arg(long, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unix socket path [default: $XDG_RUNTIME_DIR/hearth/hearth.sock, else DATA_DIR/run/hearth.sock].
    #[arg(long, env = "HEARTH_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Directory holding the model files listed in models/manifest.toml [default: DATA_DIR/models].
    #[arg(long, env = "HEARTH_MODELS_DIR", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Chat model name: from the manifest or one added with `hearth models add` [default: the
    /// manifest's default chat model].
    #[arg(long, env = "HEARTH_MODEL", value_name = "NAME")]
    pub model: Option<String>,
    /// Seconds an idle chat model stays loaded; 0 keeps models loaded [default: 1800].
    #[arg(long, env = "HEARTH_MODEL_TTL_SECS", value_name = "SECS")]
    pub model_ttl_secs: Option<u64>,
    /// Chat models loaded at once; loading another unloads the least recently used idle one
    /// [default: 1].
    #[arg(long, env = "HEARTH_MAX_LOADED_MODELS", value_name = "N")]
    pub max_loaded_models: Option<u32>,
    /// The model titles and memory extraction run on [default: the model the chat used].
    #[arg(long, env = "HEARTH_BACKGROUND_MODEL", value_name = "NAME")]
    pub background_model: Option<String>,
    /// Threads for inference, fixed [default: adaptive: up to the physical cores (at most 8) for
    /// prompts, and for decoding fewer while other programs keep cores busy].
    #[arg(long, env = "HEARTH_THREADS", value_name = "N")]
    pub threads: Option<u32>,
    /// Context size in tokens [default: 4096].
    #[arg(long, env = "HEARTH_CTX", value_name = "TOKENS")]
    pub ctx: Option<u32>,
    /// Prompt micro-batch size in tokens; cancellation is checked between batches [default: 256].
    #[arg(long, env = "HEARTH_BATCH", value_name = "TOKENS")]
    pub batch: Option<u32>,
    /// Generation requests that may wait behind the running ones before new ones get 503 [default: 8].
    #[arg(long, env = "HEARTH_QUEUE_DEPTH", value_name = "N")]
    pub queue_depth: Option<u32>,
    /// Chat generations decoded together in one batch per model (each keeps its own KV
    /// sequence and prefix cache; more wait in the queue) [default: 4].
    #[arg(long, env = "HEARTH_PARALLEL", value_name = "N")]
    pub parallel: Option<u32>,
    /// Disk space for saved conversations' KV state (`DATA_DIR/kv/`), least recently used
    /// deleted first; 0 turns snapshots off [default: 2147483648].
    #[arg(long, env = "HEARTH_KV_CACHE_BYTES", value_name = "BYTES")]
    pub kv_cache_bytes: Option<u64>,
    /// Largest JSON request body in bytes [default: 1048576].
    #[arg(long, env = "HEARTH_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Simultaneous client connections [default: 256].
    #[arg(long, env = "HEARTH_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Seconds a client may take to send its request headers, and may keep a connection idle between requests [default: 10].
    #[arg(long, env = "HEARTH_HEADER_TIMEOUT_SECS", value_name = "SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a client may take to send a JSON request body, and the grace before an upload must keep the minimum rate [default: 30].
    #[arg(long, env = "HEARTH_BODY_TIMEOUT_SECS", value_name = "SECS")]
    pub body_timeout_secs: Option<u64>,
    /// Slowest average upload rate accepted after the body timeout's grace, in KiB/s [default: 16].
    #[arg(long, env = "HEARTH_MIN_UPLOAD_KIB_PER_SEC", value_name = "KIB")]
    pub min_upload_kib_per_sec: Option<u64>,
    /// Seconds a streaming client may stop reading before its generation is cancelled [default: 30].
    #[arg(long, env = "HEARTH_STALL_TIMEOUT_SECS", value_name = "SECS")]
    pub stall_timeout_secs: Option<u64>,
    /// Seconds of grace for running streams and jobs at shutdown [default: 10].
    #[arg(long, env = "HEARTH_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Largest uploaded document in bytes [default: 67108864].
    #[arg(long, env = "HEARTH_MAX_UPLOAD_BYTES", value_name = "BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Seconds one file's text extraction may take [default: 60].
    #[arg(long, env = "HEARTH_EXTRACT_TIMEOUT_SECS", value_name = "SECS")]
    pub extract_timeout_secs: Option<u64>,
    /// Address space of one extraction worker process, in MiB: a file whose parsing needs more
    /// fails with extract_resource_limit [default: 1024].
    #[arg(long, env = "HEARTH_EXTRACT_MEMORY_MIB", value_name = "MIB")]
    pub extract_memory_mib: Option<u64>,
    /// Extraction worker processes at most (files beyond wait) [default: 2].
    #[arg(long, env = "HEARTH_EXTRACT_WORKERS", value_name = "N")]
    pub extract_workers: Option<u32>,
    /// Embedding model (a manifest name with role embed): `all-minilm-l6-v2` (fp32, exact) or
    /// `all-minilm-l6-v2-int8` (a quarter of the size; `./models/fetch embed-int8`). Vectors of
    /// another model are re-embedded at start [default: all-minilm-l6-v2].
    #[arg(long, env = "HEARTH_EMBED_MODEL", value_name = "NAME")]
    pub embed_model: Option<String>,
    /// Threads for the embedding model [default: as --threads].
    #[arg(long, env = "HEARTH_EMBED_THREADS", value_name = "N")]
    pub embed_threads: Option<u32>,
    /// Chunks retrieved per question in `docs`/`all` search mode [default: 5].
    #[arg(long, env = "HEARTH_RETRIEVAL_K", value_name = "N")]
    pub retrieval_k: Option<u32>,
    /// Cosine similarity a chunk needs to be used as context [default: 0.3].
    #[arg(long, env = "HEARTH_RETRIEVAL_MIN_SCORE", value_name = "SCORE")]
    pub retrieval_min_score: Option<f32>,
    /// Vectors a scope needs before it gets an HNSW graph (smaller scopes are scanned exactly)
    /// [default: 20000].
    #[arg(long, env = "HEARTH_HNSW_MIN_VECTORS", value_name = "N")]
    pub hnsw_min_vectors: Option<u64>,
    /// sled page cache in MiB; sled's own default (1 GiB) is far too big for a desktop daemon [default: 64].
    #[arg(long, env = "HEARTH_CACHE_MB", value_name = "MIB")]
    pub cache_mb: Option<u64>,
    /// Nice steps below the daemon's priority for background threads (document embedding, index
    /// builds), so replies get the CPU first; 0 runs them at the same priority; Linux only
    /// [default: 10].
    #[arg(long, env = "HEARTH_BACKGROUND_NICE", value_name = "STEPS")]
    pub background_nice: Option<u32>,
    /// Also listen on this loopback TCP address (e.g. 127.0.0.1:8765), with a bearer token from
    /// DATA_DIR/tcp-token; for clients that cannot use a Unix socket [default: off].
    #[arg(long, env = "HEARTH_TCP", value_name = "ADDR")]
    pub tcp: Option<String>,
    /// Origins allowed to call the TCP listener (CORS), comma-separated [default: none].
    #[arg(
        long,
        alias = "allow-origin",
        env = "HEARTH_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Serve another backend's API on a second, loopback-only listener, so an unchanged client
    /// of it runs on hearth; `electronaichat` is the original ElectronAIChat backend (its `/api`
    /// routes on 127.0.0.1:8000) [default: off].
    #[arg(long, env = "HEARTH_COMPAT", value_name = "API")]
    pub compat: Option<String>,
    /// Loopback address of the compat listener [default: 127.0.0.1:8000, the original's].
    #[arg(long, env = "HEARTH_COMPAT_LISTEN", value_name = "ADDR")]
    pub compat_listen: Option<String>,
    /// Origins allowed to call the compat listener (CORS), comma-separated; requests without an
    /// Origin and `Origin: null` (the packaged app's file:// page) are always allowed
    /// [default: http://localhost:5173,http://localhost:3000, the app's dev servers].
    #[arg(
        long,
        alias = "compat-allow-origin",
        env = "HEARTH_COMPAT_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub compat_origins: Option<Vec<String>>,
    /// A folder to watch: its supported files are ingested into the library scope and kept in
    /// sync (repeatable; HEARTH_WATCH names one; in hearth.toml `watch = ["~/Documents/notes"]`;
    /// folder names may contain commas) [default: none].
    #[arg(long, env = "HEARTH_WATCH", value_name = "DIR")]
    pub watch: Option<Vec<PathBuf>>,
    /// Milliseconds a watched file's size and mtime must stay unchanged before it is ingested
    /// [default: 2000].
    #[arg(long, env = "HEARTH_WATCH_STABLE_MS", value_name = "MS")]
    pub watch_stable_ms: Option<u64>,
    /// Seconds between full reconcile scans of the watched folders [default: 300].
    #[arg(long, env = "HEARTH_WATCH_RESCAN_SECS", value_name = "SECS")]
    pub watch_rescan_secs: Option<u64>,
    /// Largest watched file in bytes; larger ones are skipped [default: as max_upload_bytes].
    #[arg(long, env = "HEARTH_WATCH_MAX_FILE_BYTES", value_name = "BYTES")]
    pub watch_max_file_bytes: Option<u64>,
    /// Extra ignore globs for watched folders, e.g. `*.log` or `drafts/**` (repeatable)
    /// [default: none; hidden files, node_modules and editor/download temporaries are always ignored].
    #[arg(
        long,
        env = "HEARTH_WATCH_IGNORE",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub watch_ignore: Option<Vec<String>>,
    /// Read watched files that have more than one hard link (another name for the same bytes may
    /// be outside the folder) [default: false: they are skipped as `hardlink`].
    #[arg(long, env = "HEARTH_WATCH_FOLLOW_HARDLINKS", value_name = "BOOL")]
    pub watch_follow_hardlinks: Option<bool>,
    /// Log filter in `tracing` syntax [default: warn,hearth=info].
    #[arg(long, env = "HEARTH_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

impl RawConfig {
    /// Overlays `over` on `self`: every field set in `over` wins.
    fn overlay(self, over: RawConfig) -> RawConfig {
        RawConfig {
            data_dir: over.data_dir.or(self.data_dir),
            socket: over.socket.or(self.socket),
            models_dir: over.models_dir.or(self.models_dir),
            model: over.model.or(self.model),
            model_ttl_secs: over.model_ttl_secs.or(self.model_ttl_secs),
            max_loaded_models: over.max_loaded_models.or(self.max_loaded_models),
            background_model: over.background_model.or(self.background_model),
            threads: over.threads.or(self.threads),
            ctx: over.ctx.or(self.ctx),
            batch: over.batch.or(self.batch),
            queue_depth: over.queue_depth.or(self.queue_depth),
            parallel: over.parallel.or(self.parallel),
            kv_cache_bytes: over.kv_cache_bytes.or(self.kv_cache_bytes),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            max_connections: over.max_connections.or(self.max_connections),
            header_timeout_secs: over.header_timeout_secs.or(self.header_timeout_secs),
            body_timeout_secs: over.body_timeout_secs.or(self.body_timeout_secs),
            min_upload_kib_per_sec: over.min_upload_kib_per_sec.or(self.min_upload_kib_per_sec),
            stall_timeout_secs: over.stall_timeout_secs.or(self.stall_timeout_secs),
            shutdown_grace_secs: over.shutdown_grace_secs.or(self.shutdown_grace_secs),
            cache_mb: over.cache_mb.or(self.cache_mb),
            background_nice: over.background_nice.or(self.background_nice),
            max_upload_bytes: over.max_upload_bytes.or(self.max_upload_bytes),
            extract_timeout_secs: over.extract_timeout_secs.or(self.extract_timeout_secs),
            extract_memory_mib: over.extract_memory_mib.or(self.extract_memory_mib),
            extract_workers: over.extract_workers.or(self.extract_workers),
            embed_model: over.embed_model.or(self.embed_model),
            embed_threads: over.embed_threads.or(self.embed_threads),
            retrieval_k: over.retrieval_k.or(self.retrieval_k),
            retrieval_min_score: over.retrieval_min_score.or(self.retrieval_min_score),
            hnsw_min_vectors: over.hnsw_min_vectors.or(self.hnsw_min_vectors),
            tcp: over.tcp.or(self.tcp),
            allowed_origins: over.allowed_origins.or(self.allowed_origins),
            compat: over.compat.or(self.compat),
            compat_listen: over.compat_listen.or(self.compat_listen),
            compat_origins: over.compat_origins.or(self.compat_origins),
            watch: over.watch.or(self.watch),
            watch_stable_ms: over.watch_stable_ms.or(self.watch_stable_ms),
            watch_rescan_secs: over.watch_rescan_secs.or(self.watch_rescan_secs),
            watch_max_file_bytes: over.watch_max_file_bytes.or(self.watch_max_file_bytes),
            watch_ignore: over.watch_ignore.or(self.watch_ignore),
            watch_follow_hardlinks: over.watch_follow_hardlinks.or(self.watch_follow_hardlinks),
            log: over.log.or(self.log),
        }
    }
}

/// The validated configuration the daemon runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Absolute data dir (created 0700 by the daemon).
    pub data_dir: PathBuf,
    /// Absolute socket path.
    pub socket: PathBuf,
    /// Absolute models dir.
    pub models_dir: PathBuf,
    /// Chat model name; `None` means the manifest's default.
    pub model: Option<String>,
    pub pool: PoolConfig,
    pub llm: LlmConfig,
    pub server: ServerConfig,
    pub rag: RagConfig,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
    /// Nice steps below the daemon for background threads (0: none).
    pub background_nice: i32,
    /// Optional loopback TCP listener.
    pub tcp: Option<std::net::SocketAddr>,
    /// Origins allowed on the TCP listener.
    pub allowed_origins: Vec<String>,
    /// The compatibility listener for another backend's clients, when on.
    pub compat: Option<CompatConfig>,
    /// The drop folder.
    pub library: LibraryConfig,
    pub log_filter: String,
    /// The config file that was read, if any (shown by `hearth status`).
    pub config_file: Option<PathBuf>,
}

/// APIs the compat listener can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatApi {
    /// The original ElectronAIChat FastAPI backend.
    ElectronAiChat,
}

/// The compatibility listener.
#[derive(Debug, Clone)]
pub struct CompatConfig {
    pub api: CompatApi,
    /// Loopback only (checked here).
    pub addr: std::net::SocketAddr,
    /// Allowed `Origin`s besides none and `null`.
    pub origins: Vec<String>,
}

/// The original backend's address, hard-coded in its client.
pub const DEFAULT_COMPAT_LISTEN: &str = "127.0.0.1:8000";
/// The ElectronAIChat renderer's dev-server origins (Vite, and CRA-style 3000).
pub const DEFAULT_COMPAT_ORIGINS: [&str; 2] = ["http://localhost:5173", "http://localhost:3000"];

/// Drop-folder settings.
#[derive(Debug, Clone)]
pub struct LibraryConfig {
    pub roots: Vec<PathBuf>,
    /// A file must keep its size and mtime this long before it is ingested.
    pub stable: Duration,
    /// Full reconcile scan interval.
    pub rescan: Duration,
    /// Larger files are skipped (`too_large`) without being read.
    pub max_file_bytes: u64,
    /// User ignore globs, on top of the built-in rules.
    pub ignore: Vec<String>,
    /// Read files with more than one hard link (default: skip them as `hardlink`).
    pub follow_hardlinks: bool,
    /// How long a document no file refers to any more is kept for a rename to re-link it.
    pub orphan_grace: Duration,
}

/// How many chat models stay loaded, and for how long.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Idle time after which a model is unloaded; `None` keeps models loaded.
    pub ttl: Option<Duration>,
    pub max_loaded: usize,
    /// The model background jobs run on; `None` means the model of the chat.
    pub background_model: Option<String>,
}

/// Inference settings.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Threads for prompts, and the most for decoding (a fixed count when not adaptive).
    pub threads: u32,
    /// Decode threads follow contention ([`crate::llm`]'s thread policy) instead of staying at
    /// `threads`: true unless `threads` was configured.
    pub adaptive_threads: bool,
    pub n_ctx: NonZeroU32,
    pub n_batch: u32,
    pub queue_depth: usize,
    /// Interactive generations batched together (KV sequences besides the background one).
    pub parallel: u32,
    /// Disk bytes for KV snapshots (0: off).
    pub kv_cache_bytes: u64,
    /// How long the inference thread waits on a client that stopped reading.
    pub stall_timeout: Duration,
}

/// Documents, embeddings and retrieval.
#[derive(Debug, Clone)]
pub struct RagConfig {
    pub max_upload_bytes: u64,
    pub extract_timeout: Duration,
    /// `RLIMIT_AS` of an extraction worker.
    pub extract_memory_mib: u64,
    pub extract_workers: usize,
    /// The embedding model's manifest name (checked against the manifest at start).
    pub embed_model: String,
    pub embed_threads: usize,
    pub retrieval_k: usize,
    pub retrieval_min_score: f32,
    pub hnsw_min_vectors: usize,
}

/// HTTP server limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_body_bytes: u64,
    pub max_connections: usize,
    /// Also the idle time allowed between requests on a kept-alive connection (hyper starts the
    /// header timer when a connection goes idle).
    pub header_timeout: Duration,
    /// A JSON body must have arrived within this; an upload gets it as grace (see
    /// `min_upload_bytes_per_sec`).
    pub body_timeout: Duration,
    /// After `body_timeout`, an upload must have averaged at least this rate: it may take
    /// `body_timeout + received / rate` in all, so a stalled or trickling body ends with 408.
    pub min_upload_bytes_per_sec: u64,
    pub shutdown_grace: Duration,
}

// Defaults, each with the reason for its value.

/// Most inference threads by default: past 8, llama.cpp's CPU decode is bound by memory
/// bandwidth, and more threads only add barrier waits.
const MAX_DEFAULT_THREADS: usize = 8;

/// Default inference threads: the physical cores this process may run on, at most
/// [`MAX_DEFAULT_THREADS`].
pub fn default_threads() -> usize {
    let allowed = std::thread::available_parallelism().map_or(4, std::num::NonZeroUsize::get);
    num_cpus::get_physical()
        .min(allowed)
        .clamp(1, MAX_DEFAULT_THREADS)
}

/// Copy tools and browsers write in bursts with pauses under a second; two quiet seconds mean
/// the writer is done in practice, and keep "saved → searchable" within a few seconds.
const DEFAULT_WATCH_STABLE_MS: u64 = 2000;
/// The watcher catches changes within a second; the scan is the safety net for what it misses
/// (network folders, overflow) and costs one lstat per file, so every five minutes is cheap.
const DEFAULT_WATCH_RESCAN_SECS: u64 = 300;
/// A renamed or moved file is seen as "old path gone" + "new path appeared", in either order;
/// a minute is far longer than the gap between the two.
const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// 4096 tokens hold a long conversation for a small model and cost ~100 MB of KV cache for a
/// 135M model; users with bigger models raise it.
const DEFAULT_CTX: u32 = 4096;
/// Prompt micro-batch: small enough that a cancel is noticed within ~0.5 s of prefill on a
/// slow CPU, big enough to keep prefill efficient.
const DEFAULT_BATCH: u32 = 256;
/// One generation runs at a time; eight may wait. More waiting than that means the client should
/// back off (503 + Retry-After) rather than queue without bound.
const DEFAULT_QUEUE_DEPTH: u32 = 8;
/// Four streams batched: a chat window, a second window or user, an OpenAI client and one more.
/// On 2 cores a decode step of four tokens costs little more than one (the weights are read
/// once per step), so aggregate tokens/s rise while each stream slows only a little.
const DEFAULT_PARALLEL: u32 = 4;
/// Beyond 16, KV cells per stream get thin in a desktop-sized context and each step's batch
/// stops fitting the CPU's caches.
const MAX_PARALLEL: u64 = 16;
/// 2 GiB of KV snapshots: about 25 conversations of 3,000 tokens on a 1.5B model (~28 KiB of
/// KV state per token), or 90 on a 135M one.
const DEFAULT_KV_CACHE_BYTES: u64 = 2 << 30;
/// JSON bodies are messages and settings: 1 MiB is far above any sane chat message.
const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// A desktop daemon has a handful of clients; 256 leaves room for SSE listeners without letting
/// a runaway client exhaust file descriptors.
const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// Slow-header (slowloris) defence.
const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// A JSON body is at most `max_body_bytes` (1 MiB): any client sends that in well under a
/// second; 30 s is for a paused debugger, not a plan. Without it, 16 connections sending half a
/// body held every connection slot for as long as they liked.
const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Uploads come over a local socket or loopback at hundreds of MB/s; 16 KiB/s is slower than any
/// working client (a 64 MiB upload may take over an hour) and still ends a trickle.
const DEFAULT_MIN_UPLOAD_KIB_PER_SEC: u64 = 16;
/// A client that reads nothing for this long is treated as gone.
const DEFAULT_STALL_TIMEOUT_SECS: u64 = 30;
/// Desktop apps expect a quick exit; 10 s lets a reply in flight finish its last tokens.
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Uploads: 64 MiB holds a long PDF; bigger files are rarely documents one chats with.
const DEFAULT_MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Extraction of a sane document takes well under a second; a minute means a hostile file.
const DEFAULT_EXTRACT_TIMEOUT_SECS: u64 = 60;
/// A book-length PDF extracts in well under 300 MiB; 1 GiB leaves room for the parser's 256 MiB
/// stack reservation and large DOCX files, and still stops a decompression bomb early.
const DEFAULT_EXTRACT_MEMORY_MIB: u64 = 1024;
/// As the drop folder's files extracted at once (`library::worker::PREPARE_CONCURRENCY`); an
/// upload beside them waits for one.
const DEFAULT_EXTRACT_WORKERS: u32 = 2;
/// The embedder the daemon uses: the exact fp32 all-MiniLM-L6-v2 (see models/manifest.toml).
pub const DEFAULT_EMBED_MODEL: &str = "all-minilm-l6-v2";
/// Five ~250-token chunks (~1,250 tokens) leave most of a 4k context to the conversation.
const DEFAULT_RETRIEVAL_K: u32 = 5;
/// all-MiniLM-L6-v2 cosine: related passages score ~0.4–0.8, unrelated text ~0–0.2.
const DEFAULT_RETRIEVAL_MIN_SCORE: f32 = 0.3;
/// An exact scan of 20k MiniLM vectors takes ~1 ms on one core; below that a graph only adds
/// build time and memory.
const DEFAULT_HNSW_MIN_VECTORS: u64 = 20_000;
/// sled's cache; RSS is known to run several times over it, so keep it small.
const DEFAULT_CACHE_MB: u64 = 64;
const DEFAULT_LOG: &str = "warn,hearth=info";
/// Half an hour: a desktop app keeps its model warm across a working session, and a machine left
/// alone gets its memory back (Ollama's 5 minutes reloads too often on a slow disk).
const DEFAULT_MODEL_TTL_SECS: u64 = 1800;
/// One model: on a desktop, RAM is the limit (a 7B Q4 model needs ~5 GB with its cache).
const DEFAULT_MAX_LOADED_MODELS: u32 = 1;

/// Where the default config file and dirs live.
pub fn project_dirs() -> anyhow::Result<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "hearth")
        .context("cannot determine the home directory; pass --data-dir")
}

/// The config file to read: `HEARTH_CONFIG` if set, else `hearth.toml` in the config dir.
pub fn default_config_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HEARTH_CONFIG") {
        return Some(PathBuf::from(path));
    }
    project_dirs()
        .ok()
        .map(|dirs| dirs.config_dir().join(CONFIG_FILE_NAME))
}

/// Builds the [`Config`] from a config file (if it exists) and the flags/env clap collected.
pub fn load(config_file: Option<&Path>, from_cli: RawConfig) -> anyhow::Result<Config> {
    let mut file_used = None;
    let mut raw = RawConfig::default();
    if let Some(path) = config_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                raw = toml::from_str(&text)
                    .with_context(|| format!("{}: invalid config", path.display()))?;
                file_used = Some(path.to_path_buf());
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => bail!("{}: {err}", path.display()),
        }
    }
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    let mut config = resolve(raw.overlay(from_cli), runtime_dir.as_deref())?;
    config.config_file = file_used;
    Ok(config)
}

/// The local listener's address: a Unix socket path (default `$XDG_RUNTIME_DIR/hearth/hearth.sock`,
/// else `DATA_DIR/run/hearth.sock`), checked against the 103 bytes `sun_path` allows.
#[cfg(unix)]
fn local_endpoint(
    given: Option<PathBuf>,
    runtime_dir: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let socket = match given {
        Some(path) => absolute(&expand_home(&path))?,
        None => match runtime_dir {
            Some(dir) if dir.is_absolute() => dir.join("hearth").join("hearth.sock"),
            _ => data_dir.join("run").join("hearth.sock"),
        },
    };
    // sun_path is 108 bytes on Linux (104 on macOS) including the NUL; fail here with a clear
    // message rather than with EINVAL at bind time.
    let socket_len = socket.as_os_str().len();
    if socket_len > 103 {
        bail!(
            "socket path is {socket_len} bytes, longer than the 103 a Unix socket allows: {}",
            socket.display()
        );
    }
    Ok(socket)
}

/// The local listener's address on Windows: a named pipe, `\\.\pipe\hearth-<user>-<hash of the
/// data dir>` unless given (see `server::pipe`).
#[cfg(windows)]
fn local_endpoint(
    given: Option<PathBuf>,
    _runtime_dir: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let name = match given {
        Some(name) => name.to_string_lossy().into_owned(),
        None => {
            let user = std::env::var("USERNAME").unwrap_or_default();
            crate::sys::pipe_name::default_pipe_name(&user, data_dir)
        }
    };
    crate::sys::pipe_name::check_pipe_name(&name).map_err(anyhow::Error::msg)?;
    Ok(PathBuf::from(name))
}

/// Resolves defaults and validates ranges. Pure apart from looking up the home directory.
pub fn resolve(raw: RawConfig, runtime_dir: Option<&Path>) -> anyhow::Result<Config> {
    let compat = compat_config(&raw)?;
    let data_dir = match raw.data_dir {
        Some(dir) => absolute(&expand_home(&dir))?,
        None => project_dirs()?.data_dir().to_path_buf(),
    };
    let socket = local_endpoint(raw.socket, runtime_dir, &data_dir)?;
    let models_dir = match raw.models_dir {
        Some(dir) => absolute(&expand_home(&dir))?,
        None => data_dir.join("models"),
    };

    // Unset: adaptive, up to the physical cores. Hyper-threads share a core's execution units, so
    // a second llama.cpp thread on one only adds barrier waits.
    let adaptive_threads = raw.threads.is_none();
    let threads = raw
        .threads
        .unwrap_or(u32::try_from(default_threads()).unwrap_or(4));
    check_range("threads", u64::from(threads), 1, 256)?;
    let ctx = raw.ctx.unwrap_or(DEFAULT_CTX);
    check_range("ctx", u64::from(ctx), 256, 1 << 20)?;
    let batch = raw.batch.unwrap_or(DEFAULT_BATCH);
    check_range("batch", u64::from(batch), 16, 8192)?;
    let queue_depth = raw.queue_depth.unwrap_or(DEFAULT_QUEUE_DEPTH);
    check_range("queue_depth", u64::from(queue_depth), 1, 1024)?;
    let parallel = raw.parallel.unwrap_or(DEFAULT_PARALLEL);
    check_range("parallel", u64::from(parallel), 1, MAX_PARALLEL)?;
    let kv_cache_bytes = raw.kv_cache_bytes.unwrap_or(DEFAULT_KV_CACHE_BYTES);
    check_range("kv_cache_bytes", kv_cache_bytes, 0, 1 << 50)?;
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    check_range("max_body_bytes", max_body_bytes, 1024, 1 << 30)?;
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    check_range("max_connections", u64::from(max_connections), 1, 65536)?;
    let header_timeout = raw
        .header_timeout_secs
        .unwrap_or(DEFAULT_HEADER_TIMEOUT_SECS);
    check_range("header_timeout_secs", header_timeout, 1, 3600)?;
    let body_timeout = raw.body_timeout_secs.unwrap_or(DEFAULT_BODY_TIMEOUT_SECS);
    check_range("body_timeout_secs", body_timeout, 1, 3600)?;
    let min_upload_kib = raw
        .min_upload_kib_per_sec
        .unwrap_or(DEFAULT_MIN_UPLOAD_KIB_PER_SEC);
    check_range("min_upload_kib_per_sec", min_upload_kib, 1, 1 << 20)?;
    let stall_timeout = raw.stall_timeout_secs.unwrap_or(DEFAULT_STALL_TIMEOUT_SECS);
    check_range("stall_timeout_secs", stall_timeout, 1, 3600)?;
    let grace = raw
        .shutdown_grace_secs
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
    check_range("shutdown_grace_secs", grace, 0, 3600)?;
    let cache_mb = raw.cache_mb.unwrap_or(DEFAULT_CACHE_MB);
    check_range("cache_mb", cache_mb, 4, 1 << 16)?;
    let background_nice = raw.background_nice.unwrap_or(DEFAULT_BACKGROUND_NICE);
    check_range("background_nice", u64::from(background_nice), 0, 19)?;
    let max_upload_bytes = raw.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES);
    check_range("max_upload_bytes", max_upload_bytes, 1024, 1 << 34)?;
    let extract_timeout = raw
        .extract_timeout_secs
        .unwrap_or(DEFAULT_EXTRACT_TIMEOUT_SECS);
    check_range("extract_timeout_secs", extract_timeout, 1, 3600)?;
    let extract_memory_mib = raw.extract_memory_mib.unwrap_or(DEFAULT_EXTRACT_MEMORY_MIB);
    // A worker reserves 256 MiB of stack for the PDF parser's thread alone.
    check_range("extract_memory_mib", extract_memory_mib, 512, 1 << 20)?;
    let extract_workers = raw.extract_workers.unwrap_or(DEFAULT_EXTRACT_WORKERS);
    check_range("extract_workers", u64::from(extract_workers), 1, 16)?;
    let embed_threads = raw.embed_threads.unwrap_or(threads);
    check_range("embed_threads", u64::from(embed_threads), 1, 256)?;
    let retrieval_k = raw.retrieval_k.unwrap_or(DEFAULT_RETRIEVAL_K);
    check_range("retrieval_k", u64::from(retrieval_k), 1, 50)?;
    let min_score = raw
        .retrieval_min_score
        .unwrap_or(DEFAULT_RETRIEVAL_MIN_SCORE);
    if !(min_score.is_finite() && (-1.0..=1.0).contains(&min_score)) {
        bail!("retrieval_min_score: {min_score} is out of range -1..=1");
    }
    let hnsw_min_vectors = raw.hnsw_min_vectors.unwrap_or(DEFAULT_HNSW_MIN_VECTORS);
    check_range("hnsw_min_vectors", hnsw_min_vectors, 100, 1 << 32)?;
    let tcp = match &raw.tcp {
        None => None,
        Some(text) => {
            let addr: std::net::SocketAddr = text
                .parse()
                .with_context(|| format!("tcp: '{text}' is not an address like 127.0.0.1:8765"))?;
            // A TCP port is reachable by every local user and, via DNS rebinding, by web
            // pages; it is loopback-only, behind a token, always.
            if !addr.ip().is_loopback() {
                bail!("tcp: {addr} is not a loopback address; hearth only listens on 127.0.0.0/8 or ::1");
            }
            Some(addr)
        }
    };
    let watch_stable = raw.watch_stable_ms.unwrap_or(DEFAULT_WATCH_STABLE_MS);
    check_range("watch_stable_ms", watch_stable, 50, 3_600_000)?;
    let watch_rescan = raw.watch_rescan_secs.unwrap_or(DEFAULT_WATCH_RESCAN_SECS);
    check_range("watch_rescan_secs", watch_rescan, 1, 7 * 24 * 3600)?;
    let watch_max_file_bytes = raw.watch_max_file_bytes.unwrap_or(max_upload_bytes);
    check_range("watch_max_file_bytes", watch_max_file_bytes, 1, 1 << 34)?;
    let mut watch = Vec::new();
    for dir in raw.watch.unwrap_or_default() {
        let dir = absolute(&expand_home(&dir))?;
        if dir.to_str().is_none() {
            bail!("watch: {} is not a UTF-8 path", dir.display());
        }
        watch.push(dir);
    }
    let watch_ignore = raw.watch_ignore.unwrap_or_default();
    // The same check the drop folder's rules make when they compile the globs.
    let mut globs = globset::GlobSetBuilder::new();
    for glob in &watch_ignore {
        globs.add(
            globset::Glob::new(glob)
                .map_err(|err| anyhow::anyhow!("watch_ignore '{glob}': {err}"))?,
        );
    }
    globs
        .build()
        .map_err(|err| anyhow::anyhow!("watch_ignore: {err}"))?;
    for (key, model) in [
        ("model", &raw.model),
        ("background_model", &raw.background_model),
    ] {
        if model.as_deref() == Some("") {
            bail!("{key}: must not be empty");
        }
    }
    let ttl = raw.model_ttl_secs.unwrap_or(DEFAULT_MODEL_TTL_SECS);
    check_range("model_ttl_secs", ttl, 0, 365 * 24 * 3600)?;
    let max_loaded = raw.max_loaded_models.unwrap_or(DEFAULT_MAX_LOADED_MODELS);
    check_range("max_loaded_models", u64::from(max_loaded), 1, 64)?;

    Ok(Config {
        data_dir,
        socket,
        models_dir,
        model: raw.model,
        pool: PoolConfig {
            ttl: (ttl > 0).then(|| Duration::from_secs(ttl)),
            max_loaded: usize::try_from(max_loaded)?,
            background_model: raw.background_model,
        },
        llm: LlmConfig {
            threads,
            adaptive_threads,
            n_ctx: NonZeroU32::new(ctx).context("ctx: must be positive")?,
            n_batch: batch.min(ctx),
            queue_depth: usize::try_from(queue_depth)?,
            parallel,
            kv_cache_bytes,
            stall_timeout: Duration::from_secs(stall_timeout),
        },
        server: ServerConfig {
            max_body_bytes,
            max_connections: usize::try_from(max_connections)?,
            header_timeout: Duration::from_secs(header_timeout),
            body_timeout: Duration::from_secs(body_timeout),
            min_upload_bytes_per_sec: min_upload_kib * 1024,
            shutdown_grace: Duration::from_secs(grace),
        },
        rag: RagConfig {
            max_upload_bytes,
            extract_timeout: Duration::from_secs(extract_timeout),
            extract_memory_mib,
            extract_workers: usize::try_from(extract_workers)?,
            embed_model: raw
                .embed_model
                .unwrap_or_else(|| DEFAULT_EMBED_MODEL.to_string()),
            embed_threads: usize::try_from(embed_threads)?,
            retrieval_k: usize::try_from(retrieval_k)?,
            retrieval_min_score: min_score,
            hnsw_min_vectors: usize::try_from(hnsw_min_vectors)?,
        },
        cache_bytes: cache_mb * 1024 * 1024,
        background_nice: i32::try_from(background_nice)?,
        tcp,
        allowed_origins: raw.allowed_origins.unwrap_or_default(),
        compat,
        library: LibraryConfig {
            roots: watch,
            stable: Duration::from_millis(watch_stable),
            rescan: Duration::from_secs(watch_rescan),
            max_file_bytes: watch_max_file_bytes,
            ignore: watch_ignore,
            follow_hardlinks: raw.watch_follow_hardlinks.unwrap_or(false),
            orphan_grace: ORPHAN_GRACE,
        },
        log_filter: raw.log.unwrap_or_else(|| DEFAULT_LOG.to_string()),
        config_file: None,
    })
}

/// The compat listener: off unless `compat` names an API; loopback addresses only, since the
/// original client sends no token (the listener's other guards are in `server::compat`).
fn compat_config(raw: &RawConfig) -> anyhow::Result<Option<CompatConfig>> {
    let Some(api) = &raw.compat else {
        if raw.compat_listen.is_some() {
            bail!("compat_listen is set but compat is not; add --compat electronaichat");
        }
        return Ok(None);
    };
    let api = match api.to_ascii_lowercase().as_str() {
        "electronaichat" => CompatApi::ElectronAiChat,
        other => bail!("compat: unknown API '{other}'; the one hearth speaks is 'electronaichat'"),
    };
    let text = raw
        .compat_listen
        .as_deref()
        .unwrap_or(DEFAULT_COMPAT_LISTEN);
    let addr: std::net::SocketAddr = text.parse().with_context(|| {
        format!("compat_listen: '{text}' is not an address like {DEFAULT_COMPAT_LISTEN}")
    })?;
    if !addr.ip().is_loopback() {
        bail!(
            "compat_listen: {addr} is not a loopback address; the compat listener has no token, \
             so it only listens on 127.0.0.0/8 or ::1"
        );
    }
    let origins = raw.compat_origins.clone().unwrap_or_else(|| {
        DEFAULT_COMPAT_ORIGINS
            .iter()
            .map(|o| (*o).to_string())
            .collect()
    });
    for origin in &origins {
        if origin == "*" {
            bail!("compat_origins: a wildcard would let every web page drive the listener; list origins");
        }
    }
    Ok(Some(CompatConfig { api, addr, origins }))
}

fn check_range(name: &str, value: u64, min: u64, max: u64) -> anyhow::Result<()> {
    if value < min || value > max {
        bail!("{name}: {value} is out of range {min}..={max}");
    }
    Ok(())
}

/// Expands a leading `~/` (config files are written by hand and people write `~`).
fn expand_home(path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf()) {
            return home.join(rest);
        }
    }
    path.to_path_buf()
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: cannot make absolute", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_and_defaults_fill_the_rest() {
        let file: RawConfig = toml::from_str("ctx = 2048\nthreads = 3\ndata_dir = \"/d\"").unwrap();
        let cli = RawConfig {
            threads: Some(1),
            ..RawConfig::default()
        };
        let config = resolve(file.overlay(cli), Some(Path::new("/run/user/1"))).unwrap();
        assert_eq!(config.llm.threads, 1);
        assert_eq!(config.llm.n_ctx.get(), 2048);
        assert_eq!(config.socket, Path::new("/run/user/1/hearth/hearth.sock"));
        assert_eq!(config.models_dir, Path::new("/d/models"));
        assert_eq!(config.llm.queue_depth, 8);
    }

    #[test]
    fn socket_falls_back_to_data_dir_without_runtime_dir() {
        let raw = RawConfig {
            data_dir: Some("/d".into()),
            ..RawConfig::default()
        };
        let config = resolve(raw, None).unwrap();
        assert_eq!(config.socket, Path::new("/d/run/hearth.sock"));
    }

    #[test]
    fn out_of_range_and_unknown_keys_are_errors() {
        let raw = RawConfig {
            data_dir: Some("/d".into()),
            ctx: Some(10),
            ..RawConfig::default()
        };
        let err = resolve(raw, None).unwrap_err().to_string();
        assert!(err.contains("ctx: 10 is out of range"), "{err}");
        assert!(toml::from_str::<RawConfig>("ctxx = 1").is_err());
        let long = RawConfig {
            data_dir: Some("/d".into()),
            socket: Some(PathBuf::from(format!("/{}", "s".repeat(120)))),
            ..RawConfig::default()
        };
        assert!(resolve(long, None).is_err());
    }

    #[test]
    fn tcp_is_loopback_only() {
        let with = |tcp: &str| {
            resolve(
                RawConfig {
                    data_dir: Some("/d".into()),
                    tcp: Some(tcp.into()),
                    ..RawConfig::default()
                },
                None,
            )
        };
        assert!(with("127.0.0.1:8765").is_ok());
        assert!(with("[::1]:8765").is_ok());
        assert!(with("0.0.0.0:8765").is_err());
        assert!(with("192.168.1.2:8765").is_err());
        assert!(with("localhost").is_err());
    }

    #[test]
    fn compat_is_off_by_default_and_loopback_only() {
        let with = |compat: Option<&str>, listen: Option<&str>| {
            resolve(
                RawConfig {
                    data_dir: Some("/d".into()),
                    compat: compat.map(str::to_string),
                    compat_listen: listen.map(str::to_string),
                    ..RawConfig::default()
                },
                None,
            )
        };
        assert!(with(None, None).unwrap().compat.is_none());
        let on = with(Some("electronaichat"), None).unwrap().compat.unwrap();
        assert_eq!(on.addr.to_string(), DEFAULT_COMPAT_LISTEN);
        assert_eq!(on.origins, DEFAULT_COMPAT_ORIGINS);
        assert!(with(Some("ElectronAIChat"), Some("[::1]:8001")).is_ok());
        assert!(with(Some("electronaichat"), Some("0.0.0.0:8000")).is_err());
        assert!(with(Some("electronaichat"), Some("10.0.0.2:8000")).is_err());
        assert!(with(Some("ollama"), None).is_err());
        // A listen address without the API is a mistake, not silently ignored.
        assert!(with(None, Some("127.0.0.1:8000")).is_err());
    }
}
