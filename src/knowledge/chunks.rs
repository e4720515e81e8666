//! Splitting extracted text into overlapping chunks for embedding and retrieval.
//!
//! Uses `text-splitter`: its Markdown splitter for Markdown (it keeps sections under their
//! headings, and splits at headings, then paragraphs, then lines, sentences and words), its
//! plain-text splitter otherwise (paragraphs, lines, sentences, words). The server has no
//! tokenizer, so sizes are in estimated tokens of [`CHARS_PER_TOKEN`] characters each: a chunk
//! holds at most `max_tokens * 4` characters.

use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

use super::extract::DocumentKind;

/// The estimate of characters per token (English prose in common BPE vocabularies).
pub const CHARS_PER_TOKEN: usize = 4;
/// The proposed chunk size, in estimated tokens.
pub const DEFAULT_MAX_TOKENS: usize = 300;
/// The proposed overlap between consecutive chunks, in estimated tokens.
pub const DEFAULT_OVERLAP_TOKENS: usize = 50;

/// A piece of a document's extracted text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's position in the document, from 0, without gaps.
    pub index: usize,
    /// The chunk's text, trimmed and never empty.
    pub text: String,
    /// The byte offset of `text` in the extracted text it was split from.
    pub start: usize,
}

/// The estimated number of tokens in `text` (characters / 4, rounded up).
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(CHARS_PER_TOKEN)
}

/// Splits extracted text into chunks of at most `max_tokens` estimated tokens, consecutive
/// chunks sharing up to `overlap_tokens`.
///
/// `max_tokens` is at least 1. The overlap is capped at half the chunk size (text-splitter needs
/// it below the chunk size, and more than half would mostly repeat text). text-splitter overlaps
/// chunks cut from the same section (paragraph, or Markdown section); a chunk that starts a new
/// section starts with it, without the end of the previous one.
pub fn split(
    kind: DocumentKind,
    text: &str,
    max_tokens: usize,
    overlap_tokens: usize,
) -> Vec<Chunk> {
    let capacity = max_tokens.max(1).saturating_mul(CHARS_PER_TOKEN);
    let overlap = overlap_tokens
        .saturating_mul(CHARS_PER_TOKEN)
        .min(capacity / 2);
    let config = ChunkConfig::new(capacity)
        .with_trim(true)
        .with_overlap(overlap)
        .expect("the overlap is below the capacity");
    let pieces: Vec<(usize, &str)> = match kind {
        DocumentKind::Markdown => MarkdownSplitter::new(config).chunk_indices(text).collect(),
        DocumentKind::Text | DocumentKind::Html | DocumentKind::Pdf => {
            TextSplitter::new(config).chunk_indices(text).collect()
        }
    };
    pieces
        .into_iter()
        .filter(|(_, piece)| !piece.trim().is_empty())
        .enumerate()
        .map(|(index, (start, piece))| Chunk {
            index,
            text: piece.to_string(),
            start,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sentences of 12 words, paragraphs of 5 sentences (about 480 characters).
    fn prose(words: usize) -> String {
        let vocabulary = [
            "retrieval",
            "augmented",
            "generation",
            "splits",
            "documents",
            "into",
            "chunks",
            "of",
            "text",
            "and",
        ];
        let mut out = String::new();
        for i in 0..words {
            if i > 0 {
                out.push_str(match i % 60 {
                    0 => ".\n\n",
                    _ if i % 12 == 0 => ". ",
                    _ => " ",
                });
            }
            out.push_str(vocabulary[(i * 7 + i / 3) % vocabulary.len()]);
        }
        out.push('.');
        out
    }

    fn check_invariants(text: &str, chunks: &[Chunk], max_tokens: usize) {
        assert!(!chunks.is_empty());
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.index, i);
            assert!(!chunk.text.is_empty());
            assert_eq!(chunk.text, chunk.text.trim(), "chunk {i} is trimmed");
            assert!(
                chunk.text.chars().count() <= max_tokens * CHARS_PER_TOKEN,
                "chunk {i} is too long"
            );
            assert!(estimate_tokens(&chunk.text) <= max_tokens);
            assert_eq!(
                &text[chunk.start..chunk.start + chunk.text.len()],
                chunk.text,
                "chunk {i} offset"
            );
        }
    }

    #[test]
    fn chunk_sizes_within_capacity() {
        let text = prose(3000);
        for kind in [
            DocumentKind::Text,
            DocumentKind::Markdown,
            DocumentKind::Pdf,
        ] {
            let chunks = split(kind, &text, DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS);
            check_invariants(&text, &chunks, DEFAULT_MAX_TOKENS);
            // Chunks are not needlessly small either.
            let average = chunks.iter().map(|c| c.text.len()).sum::<usize>() / chunks.len();
            assert!(
                average > DEFAULT_MAX_TOKENS * CHARS_PER_TOKEN / 2,
                "{kind:?}: average {average}"
            );
        }
        // A single word longer than a chunk is still cut to size.
        let long_word = "x".repeat(1000);
        let chunks = split(DocumentKind::Text, &long_word, 10, 2);
        check_invariants(&long_word, &chunks, 10);
    }

    #[test]
    fn consecutive_chunks_overlap() {
        // text-splitter overlaps chunks cut from the same section (here one long paragraph); a
        // chunk that starts a new paragraph starts with it, without text of the previous one.
        let text = prose(60 * 20).replace(".\n\n", ". ");
        let chunks = split(DocumentKind::Text, &text, 100, 25);
        check_invariants(&text, &chunks, 100);
        assert!(chunks.len() > 5);
        for pair in chunks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let a_end = a.start + a.text.len();
            assert!(b.start > a.start, "chunks advance");
            assert!(
                b.start < a_end,
                "chunks overlap: {:?} / {:?}",
                a.text,
                b.text
            );
            // The shared text is at most the overlap (in characters; this text is ASCII).
            assert!(a_end - b.start <= 25 * CHARS_PER_TOKEN);
            assert!(
                a.text.ends_with(&text[b.start..a_end])
                    && b.text.starts_with(&text[b.start..a_end])
            );
        }
        // In paragraphed text, chunks inside a paragraph overlap; none crosses into another.
        let text = prose(3000);
        let chunks = split(DocumentKind::Text, &text, 100, 25);
        check_invariants(&text, &chunks, 100);
        let overlapping = chunks
            .windows(2)
            .filter(|p| p[1].start < p[0].start + p[0].text.len())
            .count();
        assert!(
            overlapping * 3 >= chunks.len(),
            "{overlapping} of {}",
            chunks.len()
        );
        // Without overlap, none.
        let chunks = split(DocumentKind::Text, &text, 100, 0);
        assert!(chunks
            .windows(2)
            .all(|p| p[1].start >= p[0].start + p[0].text.len()));
    }

    #[test]
    fn markdown_headings_respected() {
        let mut text = String::from("# Guide\n\nAn introduction paragraph.\n\n");
        let sections = [
            "Installing",
            "Configuring",
            "Running",
            "Upgrading",
            "Troubleshooting",
        ];
        for (i, name) in sections.iter().enumerate() {
            text.push_str(&format!("## {name}\n\n"));
            // Each section is about 60 % of a chunk: two never fit in one.
            for p in 0..3 {
                text.push_str(&format!(
                    "Section {i} paragraph {p} talks about {name} in some detail here, {}.\n\n",
                    "word ".repeat(6).trim()
                ));
            }
        }
        let chunks = split(DocumentKind::Markdown, &text, 80, 0);
        check_invariants(&text, &chunks, 80);
        for name in sections {
            let heading = format!("## {name}");
            let chunk = chunks
                .iter()
                .find(|c| c.text.contains(&heading))
                .expect("heading kept");
            assert!(
                chunk.text.starts_with(&heading),
                "a section starts its chunk: {:?}",
                chunk.text
            );
        }
        for chunk in &chunks {
            // A heading never sits at the end of a chunk, cut off from its section.
            let last_line = chunk.text.lines().last().unwrap();
            assert!(!last_line.starts_with('#'), "{:?}", chunk.text);
            // No chunk mixes the body of two sections.
            let bodies = sections
                .iter()
                .filter(|name| chunk.text.contains(&format!("about {name}")))
                .count();
            assert!(bodies <= 1, "{:?}", chunk.text);
        }
        // With overlap, each section still begins a chunk.
        let chunks = split(DocumentKind::Markdown, &text, 80, 10);
        check_invariants(&text, &chunks, 80);
        for name in sections {
            let heading = format!("## {name}");
            assert!(
                chunks.iter().any(|c| c.text.starts_with(&heading)),
                "{heading}"
            );
        }
    }

    #[test]
    fn multibyte_text_and_offsets() {
        let text = "Ünïcödé ţêxt wïth àccénts — and ✓ marks. ".repeat(200);
        let chunks = split(DocumentKind::Text, &text, 20, 5);
        check_invariants(&text, &chunks, 20);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(split(DocumentKind::Text, "", 300, 50).is_empty());
        assert!(split(DocumentKind::Markdown, " \n\n\t ", 300, 50).is_empty());
        let chunks = split(DocumentKind::Text, "  short text  ", 300, 50);
        assert_eq!(
            chunks,
            vec![Chunk {
                index: 0,
                text: "short text".into(),
                start: 2
            }]
        );
        // Zero size and an overlap not below the size do not panic.
        let text = prose(200);
        check_invariants(&text, &split(DocumentKind::Text, &text, 0, 0), 1);
        check_invariants(&text, &split(DocumentKind::Text, &text, 10, 50), 10);
    }

    #[test]
    fn token_estimate() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1);
    }
}
