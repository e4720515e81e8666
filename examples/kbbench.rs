//! Knowledge-base figures for BENCHMARKS.md, each printed beside its ceiling from the same run.
//!
//! - `cargo run --release --example kbbench -- search`: search latency (full-text in SQLite
//!   FTS5, and the exact in-process vector scan at 1536 dimensions) and the vectors' memory,
//!   at 10,000 and 100,000 passages. Ceilings: a `SELECT 1` through the same pool, and one
//!   read pass over the same vector array.
//! - `cargo run --release --example kbbench -- ingest FILE.pdf`: ingestion pages per second
//!   (type check, text extraction, chunking, and the chunks' transaction in SQLite; no
//!   embeddings). Ceiling: parsing the PDF's objects alone (`lopdf`).
//! - `cargo run --release --example kbbench -- recall DIR QUESTIONS.json`: recall@5 of
//!   full-text search over a directory's Markdown documents, for questions whose
//!   answering passage is marked by a verbatim excerpt.

use std::time::{Duration, Instant};

use chat_server::domain::follow_ups::NewJob;
use chat_server::domain::knowledge::{DocumentRecord, KnowledgeBaseRecord, NewChunk};
use chat_server::domain::types::DocumentStatus;
use chat_server::knowledge::chunks::{split, DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS};
use chat_server::knowledge::extract::{extract, sniff};
use chat_server::service::knowledge::{normalise, query_terms, VectorIndex};
use chat_server::store::{NewRole, NewUser, Store};
use uuid::Uuid;

const DIMS: usize = 1536;

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 20_000) as f32 / 10_000.0 - 1.0
    }
}

fn word(i: usize) -> String {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ren", "tu", "sa", "vo", "ne", "qui", "dar", "el", "po",
    ];
    let mut w = String::new();
    let mut n = i + 1;
    while n > 0 {
        w.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    w
}

/// A fresh SQLite store in a directory of its own, removed on drop.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn scratch_store() -> (Store, Scratch) {
    let dir = std::env::temp_dir().join(format!("kbbench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/kb.db?mode=rwc", dir.display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, Scratch(dir))
}

async fn knowledge_base(store: &Store) -> (KnowledgeBaseRecord, DocumentRecord) {
    let user = store
        .create_user(
            NewUser {
                email: format!("{}@bench.test", Uuid::now_v7()),
                password_hash: "x".into(),
                display_name: None,
            },
            NewRole::User,
        )
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let kb = KnowledgeBaseRecord {
        id: Uuid::now_v7(),
        owner_id: user.id,
        name: "bench".into(),
        description: String::new(),
        document_count: 0,
        created_at: now,
    };
    store.insert_knowledge_base(&kb).await.unwrap();
    let doc = DocumentRecord {
        id: Uuid::now_v7(),
        knowledge_base_id: kb.id,
        name: "bench.txt".into(),
        mime_type: "text/plain".into(),
        size: 0,
        status: DocumentStatus::Processing,
        progress: 0.0,
        error: None,
        chunk_count: 0,
        created_at: now,
    };
    let job = NewJob {
        kind: "bench",
        payload: serde_json::json!({}),
        priority: 0,
        dedupe_key: None,
    };
    store.insert_document(&doc, Vec::new(), &job).await.unwrap();
    (kb, doc)
}

fn percentiles(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(times[times.len() / 2]),
        ms(times[times.len() * 95 / 100]),
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|n| n.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

async fn search(n: usize) {
    let (store, _dir) = scratch_store().await;
    let (kb, doc) = knowledge_base(&store).await;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
    const VOCABULARY: usize = 20_000;
    let chunks: Vec<NewChunk> = (0..n)
        .map(|i| {
            let text: Vec<String> = (0..180).map(|_| word(rng.below(VOCABULARY))).collect();
            NewChunk {
                id: Uuid::now_v7(),
                position: i as i32,
                text: text.join(" "),
                embedding: Some((0..DIMS).map(|_| rng.unit()).collect()),
            }
        })
        .collect();
    let started = Instant::now();
    store.store_chunks(&doc, &chunks).await.unwrap();
    let stored = started.elapsed();
    drop(chunks);

    let queries: Vec<Vec<String>> = (0..200)
        .map(|_| {
            query_terms(
                &(0..3)
                    .map(|_| word(rng.below(VOCABULARY)))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect();
    let mut fulltext = Vec::new();
    for q in &queries {
        let t = Instant::now();
        let hits = store.fulltext_search(&[kb.id], q, 50).await.unwrap();
        fulltext.push(t.elapsed());
        std::hint::black_box(hits);
    }
    let mut floor = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        store.ping().await.unwrap();
        floor.push(t.elapsed());
    }

    let before = rss_kib();
    let t = Instant::now();
    let index = VectorIndex::new(store.chunk_vectors(kb.id).await.unwrap());
    let loaded = t.elapsed();
    let after = rss_kib();
    let mut scans = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..50 {
        let mut q: Vec<f32> = (0..DIMS).map(|_| rng.unit()).collect();
        normalise(&mut q);
        let t = Instant::now();
        std::hint::black_box(index.nearest(&q, 50));
        scans.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(index.read_pass());
        reads.push(t.elapsed());
    }
    let (ft50, ft95) = percentiles(fulltext);
    let (fl50, fl95) = percentiles(floor);
    let (v50, v95) = percentiles(scans);
    let (r50, r95) = percentiles(reads);
    println!(
        "passages: {n} ({DIMS} dims), stored in one transaction in {:.1} s",
        stored.as_secs_f64()
    );
    println!("  full-text (FTS5 bm25, 3-word OR query, top 50): p50 {ft50:.2} ms, p95 {ft95:.2} ms   | ceiling SELECT 1: p50 {fl50:.3} ms, p95 {fl95:.3} ms");
    println!(
        "  vectors: loaded in {:.2} s, {:.1} MiB held (RSS +{:.1} MiB)",
        loaded.as_secs_f64(),
        index.bytes() as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1024.0
    );
    println!("  exact cosine scan, top 50: p50 {v50:.2} ms, p95 {v95:.2} ms   | ceiling one read pass over the array: p50 {r50:.2} ms, p95 {r95:.2} ms");
}

async fn ingest(path: &str) {
    let bytes = std::fs::read(path).expect("read the PDF");
    let t = Instant::now();
    let parsed = pdf_extract::Document::load_mem(&bytes).expect("parse");
    let pages = parsed.get_pages().len();
    let parse = t.elapsed();
    drop(parsed);
    let (store, _dir) = scratch_store().await;
    let (_kb, doc) = knowledge_base(&store).await;
    let mut runs = Vec::new();
    let mut chunk_count = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let kind = sniff(path, &bytes).unwrap();
        let text = extract(kind, &bytes).unwrap();
        let pieces = split(kind, &text.text, DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS);
        let chunks: Vec<NewChunk> = pieces
            .into_iter()
            .enumerate()
            .map(|(i, p)| NewChunk {
                id: Uuid::now_v7(),
                position: i as i32,
                text: p.text,
                embedding: None,
            })
            .collect();
        store.store_chunks(&doc, &chunks).await.unwrap();
        chunk_count = chunks.len();
        runs.push(t.elapsed());
    }
    runs.sort();
    let best = runs[0].as_secs_f64();
    println!("{path}: {pages} pages, {chunk_count} chunks");
    println!("  ingestion without embeddings (sniff, extract, split, store): best of 3 {best:.2} s = {:.0} pages/s", pages as f64 / best);
    println!(
        "  ceiling: parsing the PDF's objects alone {:.2} s = {:.0} pages/s",
        parse.as_secs_f64(),
        pages as f64 / parse.as_secs_f64()
    );
}

#[derive(serde::Deserialize)]
struct Question {
    question: String,
    file: String,
    answer: String,
}

async fn recall(dir: &str, questions: &str) {
    let questions: Vec<Question> =
        serde_json::from_str(&std::fs::read_to_string(questions).unwrap()).unwrap();
    let (store, _tmp) = scratch_store().await;
    let (kb, _) = knowledge_base(&store).await;
    // The Markdown files of the directory (a documentation set often ships HTML beside them).
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut total_chunks = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(path).unwrap();
        let Ok(kind) = sniff(&name, &bytes) else {
            continue;
        };
        let Ok(text) = extract(kind, &bytes) else {
            continue;
        };
        let doc = DocumentRecord {
            id: Uuid::now_v7(),
            knowledge_base_id: kb.id,
            name: name.clone(),
            mime_type: kind.mime().into(),
            size: bytes.len() as i64,
            status: DocumentStatus::Processing,
            progress: 0.0,
            error: None,
            chunk_count: 0,
            created_at: chrono::Utc::now(),
        };
        let job = NewJob {
            kind: "bench",
            payload: serde_json::json!({}),
            priority: 0,
            dedupe_key: None,
        };
        store.insert_document(&doc, Vec::new(), &job).await.unwrap();
        let chunks: Vec<NewChunk> =
            split(kind, &text.text, DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS)
                .into_iter()
                .enumerate()
                .map(|(i, p)| NewChunk {
                    id: Uuid::now_v7(),
                    position: i as i32,
                    text: p.text,
                    embedding: None,
                })
                .collect();
        total_chunks += chunks.len();
        store.store_chunks(&doc, &chunks).await.unwrap();
    }
    let mut found = 0;
    let mut at_one = 0;
    let mut missed = Vec::new();
    for q in &questions {
        let hits = store
            .fulltext_search(&[kb.id], &query_terms(&q.question), 5)
            .await
            .unwrap();
        let ids: Vec<Uuid> = hits.iter().map(|h| h.0).collect();
        let passages = store.passages(&ids).await.unwrap();
        let rank = ids.iter().position(|id| {
            passages.iter().any(|p| {
                p.chunk_id == *id && p.document_name == q.file && p.text.contains(&q.answer)
            })
        });
        match rank {
            Some(0) => {
                found += 1;
                at_one += 1;
            }
            Some(_) => found += 1,
            None => missed.push(q.question.clone()),
        }
    }
    let n = questions.len() as f64;
    println!(
        "corpus: {} files, {total_chunks} chunks; {} questions",
        files.len(),
        questions.len()
    );
    println!(
        "  full-text recall@5: {:.2} ({found}/{}); recall@1: {:.2}",
        found as f64 / n,
        questions.len(),
        at_one as f64 / n
    );
    println!("  ceiling: 1.00 (each marked passage is in the corpus)");
    for m in missed {
        println!("  missed: {m}");
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("search") => {
            let sizes: Vec<usize> = match args.get(1) {
                Some(n) => vec![n.parse().unwrap()],
                None => vec![10_000, 100_000],
            };
            for n in sizes {
                search(n).await;
            }
        }
        Some("ingest") => ingest(args.get(1).expect("a PDF path")).await,
        Some("recall") => {
            recall(
                args.get(1).expect("a directory"),
                args.get(2).expect("questions.json"),
            )
            .await
        }
        _ => eprintln!("usage: kbbench search [N] | ingest FILE.pdf | recall DIR QUESTIONS.json"),
    }
}
