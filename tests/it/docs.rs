//! Documents and RAG with the real ONNX embedder: every format uploaded and found by search, the
//! progress stream, bad files rejected with nothing stored, dedup, deletion, cited answers, and
//! embeddings equal to Python onnxruntime's.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use http::Method;
use serde_json::{json, Value};

use crate::support::{models_dir, tiny, Daemon, Opts};

/// The benches' sentence generator (one file, shared with `hearth bench`).
#[path = "../../src/bench/corpus.rs"]
mod corpus;

/// The extractor's own PDF writer (one file, shared with its unit tests).
#[path = "../../src/ingest/extract/pdf_fixture.rs"]
pub(crate) mod pdf_fixture;

/// A text PDF with one line per page.
fn pdf(pages: &[&str]) -> Vec<u8> {
    let pages: Vec<[&str; 1]> = pages.iter().map(|page| [*page]).collect();
    let pages: Vec<&[&str]> = pages.iter().map(|page| &page[..]).collect();
    pdf_fixture::make_pdf(&pages)
}

/// A DOCX with a heading and paragraphs.
fn docx(heading: &str, paragraphs: &[&str]) -> Vec<u8> {
    let mut body = format!(
        r#"<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>{heading}</w:t></w:r></w:p>"#
    );
    for p in paragraphs {
        body.push_str(&format!(
            "<w:p><w:r><w:t xml:space=\"preserve\">{p}</w:t></w:r></w:p>"
        ));
    }
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#
    );
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("[Content_Types].xml", options).unwrap();
        zip.write_all(br#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#).unwrap();
        zip.start_file("word/document.xml", options).unwrap();
        zip.write_all(document.as_bytes()).unwrap();
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// Uploads with curl (a real multipart client) and returns the SSE events.
pub(crate) fn upload(d: &Daemon, chat: &str, filename: &str, bytes: &[u8]) -> Vec<(String, Value)> {
    upload_to(&d.socket, chat, filename, bytes)
}

/// Uploads with curl to a daemon's socket (usable from a thread of its own).
pub(crate) fn upload_to(
    socket: &Path,
    chat: &str,
    filename: &str,
    bytes: &[u8],
) -> Vec<(String, Value)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(filename);
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-N", "--unix-socket"])
        .arg(socket)
        .arg("-F")
        .arg(format!("file=@{}", path.display()))
        .arg(format!("http://h/api/v1/chats/{chat}/documents"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_sse(&String::from_utf8_lossy(&out.stdout))
}

fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

async fn search(d: &Daemon, scope: &str, query: &str) -> Vec<Value> {
    let res = d
        .client
        .call(
            Method::POST,
            "/api/v1/search",
            Some(&json!({"scope": scope, "query": query, "k": 5})),
        )
        .await
        .unwrap();
    res["results"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_format_is_extracted_and_its_sentence_found_first() {
    let d = Daemon::start(tiny()).await;
    let chat = d.new_chat("docs").await;
    let scope = format!("chat:{chat}");
    let filler =
        |topic: &str| format!("This paragraph talks about {topic} and nothing else at all.");
    // (file name, bytes, sentence in the file, query, page)
    type Case<'a> = (&'a str, Vec<u8>, &'a str, &'a str, Option<u64>);
    let cases: Vec<Case<'_>> = vec![
        (
            "notes.txt",
            format!("{}\n\nThe lighthouse keeper feeds seven cats every morning.\n\n{}", filler("weather"), filler("cooking")).into_bytes(),
            "The lighthouse keeper feeds seven cats",
            "who feeds the cats at the lighthouse",
            None,
        ),
        (
            "guide.md",
            format!("# Guide\n\n{}\n\n## Volcanoes\n\nMount Qorvath erupted in the year 1843 with great force.\n", filler("trains")).into_bytes(),
            "Mount Qorvath erupted in the year 1843",
            "when did Mount Qorvath erupt",
            None,
        ),
        (
            "lib.rs",
            b"// Computes the zebra stripe checksum for the warehouse inventory.\nfn zebra_checksum(x: u64) -> u64 { x * 31 }\n".to_vec(),
            "zebra stripe checksum",
            "zebra stripe checksum function",
            None,
        ),
        (
            "data.json",
            br#"{"planet":"Zorblax","moons":{"count":17,"largest":"Fenwick"}}"#.to_vec(),
            "Fenwick",
            "largest moon of planet Zorblax",
            None,
        ),
        (
            "page.html",
            b"<html><head><title>t</title><style>.a{color:red}</style><script>var secret='do not index';</script></head><body><h1>Gardens</h1><p>The tulip festival in Ostrava opens every April.</p></body></html>".to_vec(),
            "The tulip festival in Ostrava opens every April",
            "when does the tulip festival in Ostrava open",
            None,
        ),
        (
            "report.pdf",
            pdf(&[
                &filler("accounting"),
                "The submarine Nautilus reached a depth of 4000 meters in testing.",
                &filler("gardening"),
            ]),
            "The submarine Nautilus reached a depth of 4000 meters",
            "how deep did the submarine Nautilus go",
            Some(2),
        ),
        (
            "memo.docx",
            docx("Quarterly memo", &[&filler("parking"), "Penguins in the Oslo zoo eat forty kilograms of herring daily."]),
            "Penguins in the Oslo zoo eat forty kilograms of herring",
            "how much herring do the Oslo zoo penguins eat",
            None,
        ),
    ];
    for (filename, bytes, sentence, query, page) in cases {
        let events = upload(&d, &chat, filename, &bytes);
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(names.last(), Some(&"ready"), "{filename}: {events:?}");
        let stages: Vec<&str> = events
            .iter()
            .filter(|(e, _)| e == "progress")
            .map(|(_, d)| d["stage"].as_str().unwrap())
            .collect();
        assert_eq!(stages.first(), Some(&"received"), "{filename}: {stages:?}");
        let order = [
            "received",
            "extracting",
            "chunking",
            "embedding",
            "indexing",
        ];
        let positions: Vec<usize> = stages
            .iter()
            .map(|s| order.iter().position(|o| o == s).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] <= w[1]),
            "{filename}: stages out of order: {stages:?}"
        );
        let percents: Vec<u64> = events
            .iter()
            .filter(|(e, _)| e == "progress")
            .map(|(_, d)| d["progress"].as_u64().unwrap())
            .collect();
        assert!(
            percents.windows(2).all(|w| w[0] <= w[1]),
            "{filename}: {percents:?}"
        );
        let doc = &events.last().unwrap().1["document"];
        assert_eq!(doc["filename"], filename);
        assert!(doc["chunks"].as_u64().unwrap() >= 1);

        let results = search(&d, &scope, query).await;
        let best = &results[0];
        assert_eq!(best["filename"], filename, "{query}: {results:?}");
        assert!(
            best["text"].as_str().unwrap().contains(sentence),
            "{filename}: {best}"
        );
        assert_eq!(best["page"].as_u64(), page, "{filename}: {best}");
    }
    // The script in the HTML was not indexed.
    let results = search(&d, &scope, "var secret do not index").await;
    assert!(results
        .iter()
        .all(|r| !r["text"].as_str().unwrap().contains("do not index")));
    let list = d
        .client
        .call(
            Method::GET,
            &format!("/api/v1/chats/{chat}/documents"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(list["documents"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn bad_files_end_with_a_clear_error_and_store_nothing() {
    let d = Daemon::start(Opts {
        extra: vec!["--max-upload-bytes".into(), "100000".into()],
        ..tiny()
    })
    .await;
    let chat = d.new_chat("bad").await;
    let mut blob = vec![0u8; 4096];
    for (i, b) in blob.iter_mut().enumerate() {
        *b = (i * 7 % 256) as u8;
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "broken.pdf",
            b"%PDF-1.4\n1 0 obj << /Type /Catalog".to_vec(),
            "corrupt_document",
        ),
        ("blob.txt", blob, "unsupported_format"),
        ("empty.txt", Vec::new(), "empty_document"),
        ("spaces.md", b"   \n\n  \n".to_vec(), "empty_document"),
    ];
    for (filename, bytes, code) in cases {
        let events = upload(&d, &chat, filename, &bytes);
        let (event, data) = events.last().unwrap();
        assert_eq!(event, "error", "{filename}: {events:?}");
        assert_eq!(data["code"], code, "{filename}: {data}");
        assert!(!data["message"].as_str().unwrap().is_empty());
    }
    // Oversized: refused with 413 before the body is read.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "x".repeat(300_000)).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&d.socket)
        // Ask before sending the body, as large uploads should: the 413 then always arrives
        // intact (without it, the early answer races the upload and the reset of the unread
        // body can swallow it).
        .arg("-H")
        .arg("Expect: 100-continue")
        .arg("-F")
        .arg(format!("file=@{}", big.display()))
        .arg(format!("http://h/api/v1/chats/{chat}/documents"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    let health = d
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["store"]["documents"], 0);
    assert_eq!(health["store"]["chunks"], 0);
}

#[tokio::test]
async fn the_same_bytes_are_one_document_and_deletion_removes_it_from_search() {
    let d = Daemon::start(tiny()).await;
    let chat = d.new_chat("dedup").await;
    let text = b"The blue heron nests in the old mill by the river Tamsk.".to_vec();
    let first = upload(&d, &chat, "heron.txt", &text);
    let second = upload(&d, &chat, "heron-copy.txt", &text);
    let a = &first.last().unwrap().1["document"];
    let b = &second.last().unwrap().1["document"];
    assert_eq!(a["id"], b["id"]);
    let health = d
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["store"]["documents"], 1);
    let chunks = health["store"]["chunks"].as_u64().unwrap();
    assert_eq!(chunks, a["chunks"].as_u64().unwrap());

    // JSON mode answers once with the document.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.md");
    std::fs::write(&path, "# Other\n\nA different note about sailing boats.").unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-H", "Accept: application/json", "--unix-socket"])
        .arg(&d.socket)
        .arg("-F")
        .arg(format!("file=@{}", path.display()))
        .arg(format!("http://h/api/v1/chats/{chat}/documents"))
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["filename"], "other.md");

    let scope = format!("chat:{chat}");
    let id = a["id"].as_str().unwrap();
    assert_eq!(
        search(&d, &scope, "where does the heron nest").await[0]["document_id"],
        id
    );
    let got = d
        .client
        .call(Method::GET, &format!("/api/v1/documents/{id}"), None)
        .await
        .unwrap();
    assert_eq!(got["filename"], "heron.txt");
    d.client
        .call(Method::DELETE, &format!("/api/v1/documents/{id}"), None)
        .await
        .unwrap();
    let results = search(&d, &scope, "where does the heron nest").await;
    assert!(
        results.iter().all(|r| r["document_id"] != id),
        "{results:?}"
    );
    let (status, _) = d
        .client
        .request(Method::GET, &format!("/api/v1/documents/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404);

    // Deleting the chat removes its documents.
    d.client
        .call(Method::DELETE, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    let health = d
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["store"]["documents"], 0);
    assert_eq!(health["store"]["chunks"], 0);
}

#[tokio::test]
async fn a_question_answered_only_by_a_document_gets_sources_citing_it() {
    let d = Daemon::start(Opts::default()).await;
    let chat = d.new_chat("rag").await;
    let doc = pdf(&[
        "Company handbook, general section about the office kitchen and coffee machines.",
        "The secret launch code for project Falcon is 7-4-1-9, known only to the captain.",
    ]);
    let events = upload(&d, &chat, "handbook.pdf", &doc);
    assert_eq!(events.last().unwrap().0, "ready");
    let (_, events) = d
        .ask(
            &chat,
            json!({"content": "What is the launch code for project Falcon?", "search_mode": "docs", "options": {"temperature": 0, "max_tokens": 48}}),
        )
        .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(&names[..2], ["start", "sources"], "{names:?}");
    let sources = events[1].data["sources"].as_array().unwrap();
    assert_eq!(sources[0]["n"], 1);
    assert_eq!(sources[0]["type"], "document");
    assert_eq!(sources[0]["filename"], "handbook.pdf");
    assert_eq!(sources[0]["page"], 2);
    assert!(sources[0]["text"].as_str().unwrap().contains("7-4-1-9"));
    assert_eq!(events.last().unwrap().event, "done");
    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    assert_eq!(
        stored["messages"][1]["sources"][0]["filename"],
        "handbook.pdf"
    );

    // An unrelated question retrieves nothing, and says so: an empty sources event with a
    // reason (the model's prompt says so too, see chat::retrieve's unit tests).
    let (_, events) = d
        .ask(&chat, json!({"content": "Tell me about penguins in Antarctica.", "search_mode": "docs", "options": {"max_tokens": 8}}))
        .await;
    let sources = events
        .iter()
        .find(|e| e.event == "sources")
        .unwrap_or_else(|| panic!("a sources event: {events:?}"));
    assert_eq!(sources.data["sources"], json!([]), "{sources:?}");
    assert_eq!(sources.data["reason"], "no_match", "{sources:?}");

    // A question about "the document" in a chat with one document gets its best excerpts even
    // under the cut-off, marked as such.
    let (_, events) = d
        .ask(&chat, json!({"content": "What does the document say?", "search_mode": "docs", "options": {"max_tokens": 8}}))
        .await;
    let sources = &events
        .iter()
        .find(|e| e.event == "sources")
        .unwrap_or_else(|| panic!("a sources event: {events:?}"))
        .data;
    let list = sources["sources"].as_array().unwrap();
    assert!(!list.is_empty(), "{sources}");
    assert!(sources.get("reason").is_none(), "{sources}");
    for s in list {
        assert_eq!(s["filename"], "handbook.pdf", "{sources}");
        assert_eq!(s["below_threshold"], true, "{sources}");
        assert!(s["score"].as_f64().unwrap() < 0.3, "{sources}");
    }
    // Stored with the reply, mark included.
    let stored = d
        .client
        .call(Method::GET, &format!("/api/v1/chats/{chat}"), None)
        .await
        .unwrap();
    let last = stored["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["sources"][0]["below_threshold"], true, "{last}");

    // A chat with no documents, and an empty library: the reason says there is nothing.
    let empty = d.new_chat("empty").await;
    let (_, events) = d
        .ask(&empty, json!({"content": "What does the report conclude?", "search_mode": "docs", "options": {"max_tokens": 8}}))
        .await;
    let sources = events.iter().find(|e| e.event == "sources").unwrap();
    assert_eq!(sources.data["sources"], json!([]));
    assert_eq!(sources.data["reason"], "no_documents");

    // Normal mode never retrieves.
    let (_, events) = d
        .ask(&chat, json!({"content": "What is the launch code for project Falcon?", "options": {"max_tokens": 8}}))
        .await;
    assert!(events.iter().all(|e| e.event != "sources"));
}

#[tokio::test]
async fn embeddings_match_python_onnxruntime_and_a_float64_reference() {
    let d = Daemon::start(tiny()).await;
    // The embedder loads on first use, so an idle daemon has not paid for it.
    let health = d
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["models"]["embed"]["state"], "idle", "{health}");
    let texts = [
        "hello world",
        "The quick brown fox jumps over the lazy dog.",
        "Embeddings map text to vectors; similar meanings land close together.",
    ];
    let res = d
        .client
        .call(
            Method::POST,
            "/api/v1/embeddings",
            Some(&json!({"input": texts})),
        )
        .await
        .unwrap();
    let data = res["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(res["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    let single = d
        .client
        .call(
            Method::POST,
            "/api/v1/embeddings",
            Some(&json!({"input": "hello world"})),
        )
        .await
        .unwrap();
    assert_eq!(single["data"][0]["embedding"], data[0]["embedding"]);
    // Usage counts real tokens ([CLS] hello world [SEP]), not the tokenizer file's padding to
    // 128 (regression, issue 20: "hello" was 128 tokens, two inputs 256).
    assert_eq!(single["usage"]["prompt_tokens"], 4, "{}", single["usage"]);
    assert_eq!(single["usage"]["total_tokens"], 4);
    let mut each = 0;
    for text in texts {
        let one = d
            .client
            .call(
                Method::POST,
                "/api/v1/embeddings",
                Some(&json!({ "input": text })),
            )
            .await
            .unwrap();
        each += one["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    assert_eq!(res["usage"]["prompt_tokens"].as_u64().unwrap(), each);
    assert!(each < 3 * 20, "{each}");
    let health = d
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["models"]["embed"]["state"], "ready", "{health}");

    let got: Vec<Vec<f64>> = (0..texts.len())
        .map(|i| {
            data[i]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    // The same file through Python onnxruntime: the same numbers.
    let onnx = reference_vectors(&["--onnx", "all-MiniLM-L6-v2.fp32.onnx"], &texts);
    for (i, (got, expected)) in got.iter().zip(&onnx).enumerate() {
        assert_eq!(got.len(), 384);
        let worst = got
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "text {i}: max difference {worst}");
    }
    // An independent float64 forward pass of the model's own weights (no ONNX at all): the
    // daemon's fp32 file is the model, not an approximation of it (the int8 file reached 0.998).
    let exact = reference_vectors(&["--float64"], &texts);
    for (i, (got, expected)) in got.iter().zip(&exact).enumerate() {
        let cosine: f64 = got.iter().zip(expected).map(|(a, b)| a * b).sum();
        assert!(
            cosine >= 0.9999,
            "text {i}: cosine {cosine} against float64"
        );
    }
}

/// Vectors from tests/embed_reference.py in `mode` for `texts`.
fn reference_vectors(mode: &[&str], texts: &[&str]) -> Vec<Vec<f64>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/embed_reference.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(models_dir())
        .args(mode)
        .args(texts)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn hnsw_agrees_with_the_exact_scan_on_10k_real_embeddings() {
    use hearth::index::{dot, hnsw::Graph};
    let d = Daemon::start(Opts {
        extra: vec!["--embed-threads".into(), "2".into()],
        ..tiny()
    })
    .await;
    // Distinct sentences, the same generator `hearth bench --rag` uses.
    let texts = corpus::sentences(10_200);
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
    for batch in texts.chunks(256) {
        let res = d
            .client
            .call(
                Method::POST,
                "/api/v1/embeddings",
                Some(&json!({"input": batch})),
            )
            .await
            .unwrap();
        for item in res["data"].as_array().unwrap() {
            vectors.push(
                item["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            );
        }
    }
    let (corpus, queries) = vectors.split_at(10_000);
    let data: Vec<f32> = corpus.iter().flatten().copied().collect();
    let graph = tokio::task::spawn_blocking(move || Graph::build(&data, 384, [0; 32], 100))
        .await
        .unwrap();
    let mut found = 0;
    for query in queries {
        let mut exact: Vec<(f32, usize)> = corpus
            .iter()
            .enumerate()
            .map(|(i, v)| (dot(v, query), i))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: std::collections::HashSet<usize> = exact[..10].iter().map(|(_, i)| *i).collect();
        found += graph
            .search(query)
            .iter()
            .take(10)
            .filter(|(row, _)| truth.contains(row))
            .count();
    }
    let recall = found as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.95, "recall@10 = {recall}");
    eprintln!(
        "recall@10 over {} queries on 10k real embeddings: {recall:.4}",
        queries.len()
    );
}

#[tokio::test]
async fn a_store_written_with_the_int8_embedder_is_re_embedded_by_the_exact_one() {
    // The previous version embedded with the int8 file: a real store written by it (not
    // vectors faked under another model id).
    let int8 = "all-minilm-l6-v2-int8";
    let mut d = Daemon::start(Opts {
        extra: vec!["--embed-model".into(), int8.into()],
        ..tiny()
    })
    .await;
    let chat = d.new_chat("int8").await;
    let events = upload(
        &d,
        &chat,
        "owl.txt",
        b"The snowy owl hunts lemmings on the tundra at dusk.",
    );
    let doc = events.last().unwrap().1["document"].clone();
    let id = doc["id"].as_str().unwrap().to_string();
    let old = doc["model"].as_str().unwrap().to_string();
    assert!(old.starts_with(&format!("{int8}@")), "{doc}");
    let embedded = d
        .client
        .call(
            Method::POST,
            "/v1/embeddings",
            Some(&json!({"input": "snowy owl", "model": int8})),
        )
        .await
        .unwrap();
    assert_eq!(embedded["model"], int8, "{embedded}");
    assert!(d.terminate().success());

    // The default (fp32) embedder: the int8 vectors are replaced, never mixed in.
    d.opts.extra.clear();
    d.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let now = loop {
        let got = d
            .client
            .call(Method::GET, &format!("/api/v1/documents/{id}"), None)
            .await
            .unwrap();
        let model = got["model"].as_str().unwrap().to_string();
        if model != old {
            break model;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never re-embedded: {got}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(now.starts_with("all-minilm-l6-v2@"), "{now}");
    let results = search(&d, &format!("chat:{chat}"), "what does the snowy owl hunt").await;
    assert_eq!(results.len(), 1, "one copy, not two: {results:?}");
    assert_eq!(results[0]["document_id"], id.as_str());
    assert!(results[0]["score"].as_f64().unwrap() > 0.3, "{results:?}");
    let (status, err) = d
        .client
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&json!({"input": "snowy owl", "model": int8})),
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "{err}");
}

#[tokio::test]
async fn an_unknown_embed_model_is_a_start_error() {
    let d = Daemon::stopped(Opts {
        extra: vec!["--embed-model".into(), "tiny-random".into()],
        ..tiny()
    });
    let out = d.command().output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'tiny-random' is not an embedding model")
            && stderr.contains("all-minilm-l6-v2-int8"),
        "{stderr}"
    );
    assert!(!d.socket.exists(), "refused before binding");
    // A sidecar's parent reads the code.
    let out = d.command().arg("--sidecar").output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["code"], "unknown_model", "{line}");
}

#[tokio::test]
async fn a_missing_onnx_runtime_is_an_error_not_a_crash() {
    // A models dir with the chat model and the embedder's model and tokenizer, but no runtime.
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "tiny-random.gguf",
        "all-MiniLM-L6-v2.fp32.onnx",
        "all-MiniLM-L6-v2.tokenizer.json",
        "all-MiniLM-L6-v2.config.json",
        "all-MiniLM-L6-v2.special_tokens_map.json",
        "all-MiniLM-L6-v2.tokenizer_config.json",
    ] {
        std::fs::copy(models_dir().join(file), dir.path().join(file)).unwrap();
    }
    let d = Daemon::start(Opts {
        models_dir: Some(dir.path().to_path_buf()),
        ..tiny()
    })
    .await;
    let (status, err) = d
        .client
        .request(
            Method::POST,
            "/api/v1/embeddings",
            Some(&json!({"input": "hello"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "embedder_unavailable");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("libonnxruntime"),
        "{err}"
    );
    let health = d
        .client
        .call(Method::GET, "/api/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health["models"]["embed"]["state"], "failed");
    assert_eq!(
        health["status"], "ok",
        "chat still works without the embedder"
    );
}
