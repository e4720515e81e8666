//! Turning an uploaded document into plain text for the knowledge base.
//!
//! Two steps: [`sniff`] decides what a file is **from its bytes** (the name only helps to tell
//! Markdown from plain text), and [`extract`] turns it into text:
//!
//! - Text and Markdown are taken as they are (UTF-8 only; BOM stripped, line ends normalised).
//! - HTML is rendered to reading text with `html2text`: block structure kept as line breaks (no
//!   wrapping inside a paragraph), headings/list items/quotes with a Markdown-like prefix, links
//!   as their text, `<head>`, scripts, styles, `<nav>` and form controls dropped, entities
//!   decoded, tables flattened to one cell a line.
//! - PDF text is taken page by page with `pdf-extract` (on `lopdf`); pages are separated by a
//!   blank line, and a page that fails is skipped rather than failing the document.
//!
//! Robustness against damaged or hostile files:
//! - `pdf-extract`, `lopdf` and `html2text` can panic on bad input, so every call into them runs
//!   under [`std::panic::catch_unwind`] and a panic becomes [`ExtractError::Unreadable`]. (The
//!   panic hook still runs, so the default hook prints the caught panic to stderr; and this needs
//!   `panic = "unwind"`, the default.)
//! - `pdf-extract` recurses without limit along `/Parent` chains and into nested form XObjects;
//!   a cycle there is an endless loop or a stack overflow, and a stack overflow aborts the whole
//!   process (it cannot be caught). Before extraction, `/Parent` cycles are cut, and a page whose
//!   forms nest deeper than 32 levels or are drawn more than 10 000 times is skipped. A page
//!   without a media box (a panic in `pdf-extract`) gets US Letter.
//! - Not guarded: time. A pathological file can take seconds (e.g. HTML nested 20 000 levels
//!   deep: rendering is quadratic in the depth, ~1 s for 200 KiB); run extraction off the async
//!   executor (`spawn_blocking`) and, if needed, under a timeout and an upload size limit.
//!
//! Error messages are meant to be shown to the uploader as they are.

use std::cell::RefCell;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use pdf_extract::content::Content;
use pdf_extract::{Dictionary, Document, Object, ObjectId};
use thiserror::Error;

/// What a document is, decided by [`sniff`] from its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentKind {
    Text,
    Markdown,
    Html,
    Pdf,
}

impl DocumentKind {
    /// The MIME type to store and serve the original document with.
    pub fn mime(&self) -> &'static str {
        match self {
            DocumentKind::Text => "text/plain",
            DocumentKind::Markdown => "text/markdown",
            DocumentKind::Html => "text/html",
            DocumentKind::Pdf => "application/pdf",
        }
    }
}

/// The text of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// UTF-8 text with `\n` line ends. For a PDF, pages are separated by a blank line.
    pub text: String,
    /// The number of pages, for a PDF.
    pub pages: Option<usize>,
}

/// Why a document could not be turned into text. The messages are safe to show to the uploader.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExtractError {
    /// Not a kind of file the knowledge base takes; the text names what was detected.
    #[error("unsupported file type: {0}; upload a PDF, HTML, Markdown or plain-text (UTF-8) file")]
    UnsupportedType(String),
    /// The file claims to be a supported kind but cannot be read.
    #[error("the document could not be read: {0}")]
    Unreadable(String),
    /// The document has no text (only whitespace, or a PDF of scanned images).
    #[error("the document contains no extractable text")]
    Empty,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How far into a file content checks look.
const SNIFF_WINDOW: usize = 1024;

/// Decides what a document is from its content.
///
/// - `%PDF-` at the start (or, in a file that is not UTF-8 text, anywhere in the first KiB, where
///   PDF readers accept it) makes it a PDF, whatever its name.
/// - Known binary formats (images, archives and Office files, executables, compressed data) and
///   anything else that is not UTF-8 text (NUL bytes, invalid UTF-8, UTF-16) are refused with
///   [`ExtractError::UnsupportedType`] naming what was found.
/// - UTF-8 text is HTML when it starts (after a BOM, whitespace, an XML declaration, doctype or
///   comments) with markup and has an `<html>`, `<head>` or `<body>` tag in its first KiB, or
///   `<!doctype html`; a file named `.html`/`.htm` that starts with a tag is HTML too.
/// - Other text is Markdown if named `.md`/`.markdown` (and the like) or if its structure is
///   obviously Markdown (ATX headings); otherwise plain text. A name like `x.pdf` never makes a
///   non-PDF file a PDF.
pub fn sniff(name: &str, bytes: &[u8]) -> Result<DocumentKind, ExtractError> {
    if bytes.starts_with(b"%PDF-") {
        return Ok(DocumentKind::Pdf);
    }
    if let Some(what) = binary_format(bytes) {
        return Err(ExtractError::UnsupportedType(what.to_string()));
    }
    let text = match decode_text(bytes) {
        Ok(text) => text,
        Err(err) => {
            // A PDF with some bytes before its header (PDF readers accept it within 1 KiB).
            if memfind(&bytes[..bytes.len().min(SNIFF_WINDOW)], b"%PDF-").is_some() {
                return Ok(DocumentKind::Pdf);
            }
            return Err(err);
        }
    };
    let ext = extension(name);
    if looks_like_html(text, &ext) {
        return Ok(DocumentKind::Html);
    }
    if matches!(ext.as_str(), "md" | "markdown" | "mdown" | "mkd" | "mkdn")
        || looks_like_markdown(text)
    {
        return Ok(DocumentKind::Markdown);
    }
    Ok(DocumentKind::Text)
}

/// Extracts the text of a document of the given kind (as decided by [`sniff`]).
pub fn extract(kind: DocumentKind, bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let extracted = match kind {
        DocumentKind::Text | DocumentKind::Markdown => Extracted {
            text: normalize_newlines(decode_text(bytes)?),
            pages: None,
        },
        DocumentKind::Html => Extracted {
            text: html_to_text(decode_text(bytes)?)?,
            pages: None,
        },
        DocumentKind::Pdf => pdf_to_text(bytes)?,
    };
    if extracted.text.trim().is_empty() {
        return Err(ExtractError::Empty);
    }
    Ok(extracted)
}

/// The lower-cased extension of a file name, without the dot ("" when there is none).
fn extension(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// The bytes as UTF-8 text without BOM, or why they are not text.
fn decode_text(bytes: &[u8]) -> Result<&str, ExtractError> {
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(ExtractError::UnsupportedType(
            "UTF-16 encoded text (save the file as UTF-8)".into(),
        ));
    }
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    if memchr_nul(bytes) {
        return Err(ExtractError::UnsupportedType(
            "binary data (the file contains NUL bytes)".into(),
        ));
    }
    std::str::from_utf8(bytes).map_err(|_| {
        ExtractError::UnsupportedType("binary data or text that is not UTF-8 encoded".into())
    })
}

fn memchr_nul(bytes: &[u8]) -> bool {
    bytes.contains(&0)
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Names a known binary format from its magic bytes.
fn binary_format(b: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "PNG image"),
        (b"\xFF\xD8\xFF", "JPEG image"),
        (b"GIF87a", "GIF image"),
        (b"GIF89a", "GIF image"),
        (b"II*\0", "TIFF image"),
        (b"MM\0*", "TIFF image"),
        (b"\0\0\x01\0", "icon image"),
        (b"\x7FELF", "ELF executable"),
        (b"\xCA\xFE\xBA\xBE", "Mach-O or Java class file"),
        (b"\xCF\xFA\xED\xFE", "Mach-O executable"),
        (b"\0asm", "WebAssembly module"),
        (b"\x1F\x8B", "gzip-compressed data"),
        (b"\xFD7zXZ\0", "xz-compressed data"),
        (b"\x28\xB5\x2F\xFD", "zstd-compressed data"),
        (b"7z\xBC\xAF\x27\x1C", "7-Zip archive"),
        (b"Rar!\x1A\x07", "RAR archive"),
        (
            b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1",
            "legacy Microsoft Office document (.doc/.xls/.ppt)",
        ),
        (b"{\\rtf", "RTF document"),
        (b"SQLite format 3\0", "SQLite database"),
        (b"OggS", "Ogg audio/video"),
        (b"fLaC", "FLAC audio"),
        (b"ID3", "MP3 audio"),
        (b"\x1A\x45\xDF\xA3", "Matroska/WebM video"),
        (b"wOFF", "web font"),
        (b"wOF2", "web font"),
    ];
    if let Some((_, what)) = MAGICS.iter().find(|(magic, _)| b.starts_with(magic)) {
        return Some(what);
    }
    if b.len() >= 12 && &b[..4] == b"RIFF" {
        return Some(match &b[8..12] {
            b"WEBP" => "WebP image",
            b"WAVE" => "WAV audio",
            b"AVI " => "AVI video",
            _ => "RIFF media file",
        });
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return Some(match &b[8..12] {
            b"avif" | b"avis" => "AVIF image",
            b"heic" | b"heix" | b"mif1" | b"msf1" => "HEIF image",
            _ => "MP4/QuickTime media file",
        });
    }
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") || b.starts_with(b"PK\x07\x08")
    {
        return Some(zip_flavour(b));
    }
    if b.starts_with(b"MZ") && b[..b.len().min(SNIFF_WINDOW)].contains(&0) {
        return Some("Windows executable");
    }
    if b.len() >= 10 && b.starts_with(b"BZh") && b[3].is_ascii_digit() && &b[4..10] == b"1AY&SY" {
        return Some("bzip2-compressed data");
    }
    None
}

/// Tells Office and other ZIP-based formats apart by the names of their first entries.
fn zip_flavour(b: &[u8]) -> &'static str {
    let head = &b[..b.len().min(8 * SNIFF_WINDOW)];
    let has = |needle: &[u8]| memfind(head, needle).is_some();
    if has(b"application/epub+zip") {
        "EPUB e-book"
    } else if has(b"application/vnd.oasis.opendocument") {
        "OpenDocument file (.odt/.ods/.odp)"
    } else if has(b"word/") {
        "Word document (.docx)"
    } else if has(b"xl/") {
        "Excel workbook (.xlsx)"
    } else if has(b"ppt/") {
        "PowerPoint presentation (.pptx)"
    } else {
        "ZIP archive"
    }
}

/// Whether UTF-8 text is an HTML document.
fn looks_like_html(text: &str, ext: &str) -> bool {
    let head = text.as_bytes();
    let head = &head[..head.len().min(SNIFF_WINDOW)];
    let lower = head.to_ascii_lowercase();
    let start = lower
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(lower.len());
    let lower = &lower[start..];
    if !lower.starts_with(b"<") {
        return false;
    }
    if lower.starts_with(b"<!doctype html")
        || has_tag(lower, b"html")
        || has_tag(lower, b"head")
        || has_tag(lower, b"body")
    {
        return true;
    }
    // A fragment saved as .html (`<p>…</p>`): the name only decides between kinds of text.
    matches!(ext, "html" | "htm" | "xhtml")
        && lower
            .get(1)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'!')
}

/// Whether `<name` followed by `>`, `/` or whitespace occurs in (lower-cased) `hay`.
fn has_tag(hay: &[u8], name: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = memfind(&hay[from..], b"<") {
        let at = from + i + 1;
        if hay[at..].starts_with(name) {
            match hay.get(at + name.len()) {
                Some(c) if *c == b'>' || *c == b'/' || c.is_ascii_whitespace() => return true,
                _ => {}
            }
        }
        from = at;
    }
    false
}

/// Whether text has obvious Markdown structure: it opens with an ATX heading (`# Title`), or has
/// several of them, or a heading and a fenced code block.
fn looks_like_markdown(text: &str) -> bool {
    let mut headings = 0;
    let mut fences = 0;
    let mut first = true;
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(200) {
        let is_heading = {
            let hashes = line.bytes().take_while(|c| *c == b'#').count();
            (1..=6).contains(&hashes)
                && line[hashes..].starts_with([' ', '\t'])
                && !line[hashes..].trim().is_empty()
        };
        if is_heading {
            if first {
                return true;
            }
            headings += 1;
        } else if line.starts_with("```") || line.starts_with("~~~") {
            fences += 1;
        }
        first = false;
    }
    headings >= 2 || (headings >= 1 && fences >= 2)
}

/// `\r\n` and lone `\r` to `\n`.
fn normalize_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Tidies extracted text: `\n` line ends, control characters (other than tab and newline) and
/// trailing spaces removed, no more than one blank line in a row, no leading or trailing blank
/// lines. With `squeeze_spaces` (PDF, where justified lines come out with gaps of several
/// spaces), runs of spaces inside a line become one; indentation is kept.
fn tidy(text: &str, squeeze_spaces: bool) -> String {
    let text = normalize_newlines(text);
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.split('\n') {
        let line: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .map(|c| if c == '\u{A0}' { ' ' } else { c })
            .collect();
        let mut line = line.trim_end();
        let squeezed;
        if squeeze_spaces && line.trim_start().contains("  ") {
            let body = line.trim_start();
            let mut joined = line[..line.len() - body.len()].to_string();
            joined.push_str(
                &body
                    .split(' ')
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            squeezed = joined;
            line = &squeezed;
        }
        if line.trim().is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        out.push_str(line);
        blank_run = 0;
    }
    out
}

/// The description of a caught panic is not shown: it is internal and may be long.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, ()> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| ())
}

/// Elements that are not reading text: site navigation, controls, and what the page hides.
/// (The document's own style sheets are not applied.)
const HIDDEN: &str =
    "nav, noscript, template, button, select, dialog, [hidden], [aria-hidden=true] \
    { display: none }";

fn html_to_text(html: &str) -> Result<String, ExtractError> {
    // Wide enough never to wrap a paragraph: line breaks come from block structure only.
    const WIDTH: usize = 1 << 20;
    let rendered = guarded(|| {
        html2text::config::with_decorator(ReadableDecorator)
            .add_agent_css(HIDDEN)?
            .raw_mode(true)
            .no_link_wrapping()
            .allow_width_overflow()
            .string_from_read(html.as_bytes(), WIDTH)
    });
    match rendered {
        Ok(Ok(text)) => Ok(tidy(&text, false)),
        Ok(Err(_)) | Err(()) => Err(ExtractError::Unreadable(
            "the HTML could not be parsed".into(),
        )),
    }
}

/// Renders HTML as reading text: headings, list items and quotes keep a Markdown-like prefix
/// (`# `, `* `, `1. `, `> `); links are just their text (no `[…]`, no URL); images are their alt
/// text; emphasis and code are unmarked.
#[derive(Clone, Copy, Debug)]
struct ReadableDecorator;

impl html2text::render::TextDecorator for ReadableDecorator {
    type Annotation = ();

    fn decorate_link_start(&mut self, _url: &str) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_link_end(&mut self) -> String {
        String::new()
    }
    fn decorate_em_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_em_end(&self) -> String {
        String::new()
    }
    fn decorate_strong_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strong_end(&self) -> String {
        String::new()
    }
    fn decorate_strikeout_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_strikeout_end(&self) -> String {
        String::new()
    }
    fn decorate_code_start(&self) -> (String, ()) {
        (String::new(), ())
    }
    fn decorate_code_end(&self) -> String {
        String::new()
    }
    fn decorate_preformat_first(&self) {}
    fn decorate_preformat_cont(&self) {}
    fn decorate_image(&mut self, _src: &str, title: &str) -> (String, ()) {
        (title.to_string(), ())
    }
    fn header_prefix(&self, level: usize) -> String {
        "#".repeat(level) + " "
    }
    fn quote_prefix(&self) -> String {
        "> ".to_string()
    }
    fn unordered_item_prefix(&self) -> String {
        "* ".to_string()
    }
    fn ordered_item_prefix(&self, i: i64) -> String {
        format!("{i}. ")
    }
    fn make_subblock_decorator(&self) -> Self {
        *self
    }
}

fn pdf_to_text(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let damaged = || ExtractError::Unreadable("the PDF is damaged or truncated".into());
    let mut doc = match guarded(|| Document::load_mem(bytes)) {
        Ok(Ok(doc)) => doc,
        Ok(Err(pdf_extract::Error::Decryption(_))) => return Err(encrypted()),
        Ok(Err(_)) | Err(()) => return Err(damaged()),
    };
    if doc.is_encrypted() {
        // Many PDFs are encrypted with an empty user password (only to restrict printing or
        // copying); they open without asking. Others need a password we do not have.
        match guarded(|| doc.decrypt("")) {
            Ok(Ok(())) => {}
            _ => return Err(encrypted()),
        }
    }
    let pages: Vec<(u32, ObjectId)> = match guarded(|| doc.get_pages().into_iter().collect()) {
        Ok(pages) => pages,
        Err(()) => return Err(damaged()),
    };
    if pages.is_empty() {
        return Err(ExtractError::Unreadable("the PDF has no pages".into()));
    }
    if guarded(|| repair_page_tree(&mut doc, &pages)).is_err() {
        return Err(damaged());
    }
    // Fast path: the whole document in one pass. pdf-extract's per-page entry point walks the
    // page tree on every call (quadratic: 5 000 pages took 18 s), so it is only the fallback.
    let bounded = pages
        .iter()
        .all(|&(_, id)| guarded(|| forms_are_bounded(&doc, id)) == Ok(true));
    if bounded {
        let texts = Rc::new(RefCell::new(Vec::new()));
        let whole = guarded(|| {
            let mut sink = PageSink(Rc::clone(&texts));
            let mut output = PageOutput {
                inner: pdf_extract::PlainTextOutput::new(&mut sink as &mut dyn io::Write),
                pages: Rc::clone(&texts),
            };
            pdf_extract::output_doc(&doc, &mut output)
        });
        if let Ok(Ok(())) = whole {
            let texts = texts.take();
            let text = join_pages(texts.iter().map(|page| String::from_utf8_lossy(page)));
            return Ok(Extracted {
                text,
                pages: Some(pages.len()),
            });
        }
    }
    // Page by page, skipping the pages that fail: a bad page (a broken font or content stream,
    // forms nested without bound) does not lose the others.
    let mut texts = Vec::new();
    for &(number, id) in &pages {
        let mut page_text = String::new();
        let result = guarded(|| {
            if !forms_are_bounded(&doc, id) {
                return Err(());
            }
            let mut output = pdf_extract::PlainTextOutput::new(&mut page_text);
            pdf_extract::output_doc_page(&doc, &mut output, number).map_err(|_| ())
        });
        if let Ok(Ok(())) = result {
            texts.push(page_text);
        }
    }
    if texts.is_empty() {
        return Err(ExtractError::Unreadable(
            "no page of the PDF could be read".into(),
        ));
    }
    Ok(Extracted {
        text: join_pages(texts.iter().map(String::as_str)),
        pages: Some(pages.len()),
    })
}

/// Pages' text, tidied, separated by a blank line.
fn join_pages<S: AsRef<str>>(pages: impl Iterator<Item = S>) -> String {
    let mut text = String::new();
    for page in pages {
        let page = tidy(page.as_ref(), true);
        if !page.is_empty() {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&page);
        }
    }
    text
}

/// pdf-extract's plain-text output, with each page's text kept apart.
struct PageOutput<'a> {
    inner: pdf_extract::PlainTextOutput<&'a mut dyn io::Write>,
    pages: Rc<RefCell<Vec<Vec<u8>>>>,
}

/// Where [`PageOutput`]'s inner output writes: the last page.
struct PageSink(Rc<RefCell<Vec<Vec<u8>>>>);

impl io::Write for PageSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(page) = self.0.borrow_mut().last_mut() {
            page.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl pdf_extract::OutputDev for PageOutput<'_> {
    fn begin_page(
        &mut self,
        page_num: u32,
        media_box: &pdf_extract::MediaBox,
        art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), pdf_extract::OutputError> {
        self.pages.borrow_mut().push(Vec::new());
        self.inner.begin_page(page_num, media_box, art_box)
    }
    fn end_page(&mut self) -> Result<(), pdf_extract::OutputError> {
        self.inner.end_page()
    }
    fn output_character(
        &mut self,
        trm: &pdf_extract::Transform,
        width: f64,
        spacing: f64,
        font_size: f64,
        char: &str,
    ) -> Result<(), pdf_extract::OutputError> {
        self.inner
            .output_character(trm, width, spacing, font_size, char)
    }
    fn begin_word(&mut self) -> Result<(), pdf_extract::OutputError> {
        self.inner.begin_word()
    }
    fn end_word(&mut self) -> Result<(), pdf_extract::OutputError> {
        self.inner.end_word()
    }
    fn end_line(&mut self) -> Result<(), pdf_extract::OutputError> {
        self.inner.end_line()
    }
}

// pdf-extract follows a page's `/Parent` chain (for inherited resources and media box) and
// nested form XObjects (`Do`) by unbounded recursion. On a hostile file a cycle there is an
// endless loop or a stack overflow, and a stack overflow aborts the whole process: unlike a
// panic it cannot be caught. So `/Parent` cycles are cut before extraction, and pages whose
// forms nest too deep (or cyclically) or too often are skipped.

/// The maximum nesting of form XObjects on a page (real documents use a few levels).
const MAX_FORM_DEPTH: usize = 32;
/// The maximum number of form XObjects drawn on one page (stops exponential fan-out).
const MAX_FORM_CALLS: usize = 10_000;
/// The maximum length of a `/Parent` chain (real page trees are a few levels deep).
const MAX_TREE_DEPTH: usize = 256;

/// Cuts `/Parent` cycles above pages, and gives a page without a media box (which pdf-extract
/// panics on) the US Letter one PDF readers assume.
fn repair_page_tree(doc: &mut Document, pages: &[(u32, ObjectId)]) {
    for &(_, page) in pages {
        let mut chain = vec![page];
        let mut media_box = false;
        let mut cut = None;
        loop {
            let node = *chain.last().expect("the chain starts with the page");
            let Ok(dict) = doc.get_dictionary(node) else {
                break;
            };
            media_box |= dict.has(b"MediaBox");
            match dict.get(b"Parent").and_then(Object::as_reference) {
                Ok(parent) if chain.contains(&parent) || chain.len() >= MAX_TREE_DEPTH => {
                    cut = Some(node);
                    break;
                }
                Ok(parent) => chain.push(parent),
                Err(_) => break,
            }
        }
        if let Some(node) = cut {
            if let Ok(dict) = doc.get_dictionary_mut(node) {
                dict.remove(b"Parent");
            }
        }
        if !media_box {
            if let Ok(dict) = doc.get_dictionary_mut(page) {
                let letter: Vec<Object> = vec![0.into(), 0.into(), 612.into(), 792.into()];
                dict.set("MediaBox", letter);
            }
        }
    }
}

/// Whether pdf-extract's recursion into this page's form XObjects stays within the limits. It
/// walks the forms as pdf-extract does: a name drawn by `Do` is looked up in the current
/// resources, and a form without resources of its own uses its caller's.
fn forms_are_bounded(doc: &Document, page: ObjectId) -> bool {
    let Ok(content) = doc.get_page_content(page) else {
        return true;
    };
    let Some(resources) = inherited_resources(doc, page) else {
        return true;
    };
    let mut calls = 0;
    forms_within_limits(doc, &content, resources, 0, &mut calls)
}

fn forms_within_limits(
    doc: &Document,
    content: &[u8],
    resources: &Dictionary,
    depth: usize,
    calls: &mut usize,
) -> bool {
    if memfind(content, b"Do").is_none() {
        return true;
    }
    // Content pdf-extract cannot decode makes it panic (caught): no recursion there.
    let Ok(content) = Content::decode(content) else {
        return true;
    };
    for operation in content.operations.iter().filter(|op| op.operator == "Do") {
        let Some(name) = operation.operands.first().and_then(|o| o.as_name().ok()) else {
            continue;
        };
        let stream = resolve(doc, resources.get(b"XObject").ok())
            .and_then(|o| o.as_dict().ok())
            .and_then(|xobjects| resolve(doc, xobjects.get(name).ok()))
            .and_then(|o| o.as_stream().ok());
        let Some(stream) = stream else { continue };
        *calls += 1;
        if depth >= MAX_FORM_DEPTH || *calls > MAX_FORM_CALLS {
            return false;
        }
        let inner = resolve(doc, stream.dict.get(b"Resources").ok())
            .and_then(|o| o.as_dict().ok())
            .unwrap_or(resources);
        let data = match stream.decompressed_content() {
            Ok(data) => data,
            Err(_) => stream.content.clone(),
        };
        if !forms_within_limits(doc, &data, inner, depth + 1, calls) {
            return false;
        }
    }
    true
}

/// A page's resources, inherited along its (acyclic, after [`repair_page_tree`]) `/Parent` chain.
fn inherited_resources(doc: &Document, page: ObjectId) -> Option<&Dictionary> {
    let mut node = doc.get_dictionary(page).ok()?;
    for _ in 0..MAX_TREE_DEPTH {
        if let Some(resources) =
            resolve(doc, node.get(b"Resources").ok()).and_then(|o| o.as_dict().ok())
        {
            return Some(resources);
        }
        let parent = node.get(b"Parent").and_then(Object::as_reference).ok()?;
        node = doc.get_dictionary(parent).ok()?;
    }
    None
}

fn resolve<'a>(doc: &'a Document, object: Option<&'a Object>) -> Option<&'a Object> {
    doc.dereference(object?).ok().map(|(_, object)| object)
}

fn encrypted() -> ExtractError {
    ExtractError::Unreadable("the PDF is password-protected".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid PDF with one page per entry of `pages`, each showing its text in Helvetica, with
    /// the cross-reference table's byte offsets computed as it is written.
    pub(crate) fn make_pdf(pages: &[&str]) -> Vec<u8> {
        let n = pages.len();
        // Objects: 1 catalog, 2 page tree, 3 font, then per page i: 4+2i page, 5+2i contents.
        let mut objects: Vec<String> = Vec::new();
        objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
        let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
        objects.push(format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            n
        ));
        objects.push(
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
                .into(),
        );
        for (i, page) in pages.iter().enumerate() {
            objects.push(format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                5 + 2 * i
            ));
            let mut content = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
            for line in page.lines() {
                let escaped = line
                    .replace('\\', "\\\\")
                    .replace('(', "\\(")
                    .replace(')', "\\)");
                content.push_str(&format!("({escaped}) Tj T*\n"));
            }
            content.push_str("ET");
            objects.push(format!(
                "<< /Length {} >>\nstream\n{}\nendstream",
                content.len(),
                content
            ));
        }
        pdf_from_objects(&objects)
    }

    /// A PDF of the given objects (numbered from 1, the first being the catalog), with a correct
    /// cross-reference table.
    fn pdf_from_objects(objects: &[String]) -> Vec<u8> {
        let mut pdf: Vec<u8> = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in objects.iter().enumerate() {
            offsets.push(pdf.len());
            pdf.extend_from_slice(format!("{} 0 obj\n{}\nendobj\n", i + 1, body).as_bytes());
        }
        let xref = pdf.len();
        pdf.extend_from_slice(
            format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
        );
        for offset in offsets {
            pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        pdf.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{}\n%%EOF\n",
                objects.len() + 1,
                xref
            )
            .as_bytes(),
        );
        pdf
    }

    fn stream(content: &str, dict: &str) -> String {
        format!(
            "<< {dict} /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        )
    }

    fn refused(name: &str, bytes: &[u8]) -> String {
        match sniff(name, bytes) {
            Err(ExtractError::UnsupportedType(what)) => what,
            other => panic!("{name}: expected UnsupportedType, got {other:?}"),
        }
    }

    #[test]
    fn mime_types() {
        assert_eq!(DocumentKind::Text.mime(), "text/plain");
        assert_eq!(DocumentKind::Markdown.mime(), "text/markdown");
        assert_eq!(DocumentKind::Html.mime(), "text/html");
        assert_eq!(DocumentKind::Pdf.mime(), "application/pdf");
    }

    #[test]
    fn pdf_is_sniffed_by_content_not_name() {
        let pdf = make_pdf(&["Hello"]);
        assert_eq!(sniff("notes.txt", &pdf), Ok(DocumentKind::Pdf));
        assert_eq!(sniff("no-extension", &pdf), Ok(DocumentKind::Pdf));
        // Some bytes before the header, as PDF readers accept.
        let mut prefixed = b"\xFF\x00junk\n".to_vec();
        prefixed.extend_from_slice(&pdf);
        assert_eq!(sniff("x.bin", &prefixed), Ok(DocumentKind::Pdf));
    }

    #[test]
    fn text_named_pdf_is_text() {
        assert_eq!(
            sniff("report.pdf", b"just some notes\nand more"),
            Ok(DocumentKind::Text)
        );
        assert_eq!(
            sniff("report.PDF", b"# Title\n\nbody"),
            Ok(DocumentKind::Markdown)
        );
        // Mentioning the magic inside text does not make it a PDF.
        assert_eq!(
            sniff("x.pdf", b"A file starts with %PDF-1.7 ..."),
            Ok(DocumentKind::Text)
        );
        // Not text and not a PDF: refused, not parsed as PDF.
        refused("report.pdf", b"\x01\x02\xFE\xFF\xC3\x28 garbage");
    }

    #[test]
    fn binary_formats_are_refused_by_name() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01";
        assert_eq!(refused("picture.txt", png), "PNG image");
        assert_eq!(
            refused("a.md", b"\xFF\xD8\xFF\xE0\0\x10JFIF\0"),
            "JPEG image"
        );
        assert_eq!(refused("a.html", b"GIF89a\x01\0\x01\0"), "GIF image");
        assert_eq!(refused("a.txt", b"\x7FELF\x02\x01\x01\0"), "ELF executable");
        assert_eq!(
            refused("a.txt", b"\x1F\x8B\x08\0\0\0\0\0"),
            "gzip-compressed data"
        );
        assert_eq!(
            refused(
                "a.txt",
                b"PK\x03\x04\x14\0\x06\0\x08\0\0\0!\0[Content_Types].xml....word/document.xml"
            ),
            "Word document (.docx)"
        );
        assert_eq!(
            refused("a.zip", b"PK\x03\x04\x14\0\0\0\0\0readme.txt"),
            "ZIP archive"
        );
        assert_eq!(refused("a.txt", b"RIFF\x10\0\0\0WEBPVP8 "), "WebP image");
        assert!(refused("a.txt", b"plain\0text").contains("NUL"));
        assert!(refused("a.txt", b"\xFF\xFEh\0i\0").contains("UTF-16"));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let what = refused("latin1.txt", b"caf\xE9 cr\xE8me");
        assert!(what.contains("not UTF-8"), "{what}");
        let message = sniff("latin1.txt", b"caf\xE9").unwrap_err().to_string();
        assert!(message.starts_with("unsupported file type: "), "{message}");
    }

    #[test]
    fn html_is_sniffed_by_content() {
        for html in [
            "<!DOCTYPE html><html><body>x</body></html>",
            "\u{FEFF}  \n<!doctype HTML>\n<title>t</title>",
            "<HTML lang=en><p>x",
            "<?xml version=\"1.0\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\">",
            "<!-- generated -->\n<head><meta charset=utf-8></head><body>x</body>",
            "<meta charset=\"utf-8\"><body class=a>x</body>",
        ] {
            assert_eq!(sniff("page.txt", html.as_bytes()), Ok(DocumentKind::Html), "{html}");
        }
        // A fragment is HTML only when named so.
        assert_eq!(sniff("frag.html", b"<p>Hello</p>"), Ok(DocumentKind::Html));
        assert_eq!(sniff("frag.txt", b"<p>Hello</p>"), Ok(DocumentKind::Text));
        // Text that merely mentions tags is not HTML.
        assert_eq!(
            sniff("notes.txt", b"Put the script in <head> or <body>."),
            Ok(DocumentKind::Text)
        );
        assert_eq!(
            sniff("a.md", b"# Embedding\n\nUse `<body>` tags."),
            Ok(DocumentKind::Markdown)
        );
    }

    #[test]
    fn markdown_by_extension_or_structure() {
        assert_eq!(
            sniff("README.md", b"plain words"),
            Ok(DocumentKind::Markdown)
        );
        assert_eq!(
            sniff("notes.markdown", b"plain words"),
            Ok(DocumentKind::Markdown)
        );
        assert_eq!(
            sniff("notes", b"# Title\n\nSome text."),
            Ok(DocumentKind::Markdown)
        );
        assert_eq!(
            sniff("notes.txt", b"intro\n\n## One\n\ntext\n\n## Two\n"),
            Ok(DocumentKind::Markdown)
        );
        assert_eq!(
            sniff("notes.txt", b"intro\n#hashtag\nmore"),
            Ok(DocumentKind::Text)
        );
        assert_eq!(sniff("empty.txt", b""), Ok(DocumentKind::Text));
    }

    #[test]
    fn text_is_taken_as_is_with_bom_and_crlf_normalised() {
        let got = extract(
            DocumentKind::Text,
            b"\xEF\xBB\xBFline one\r\nline two\rline three\n",
        )
        .unwrap();
        assert_eq!(
            got,
            Extracted {
                text: "line one\nline two\nline three\n".into(),
                pages: None
            }
        );
        let md = extract(DocumentKind::Markdown, "# Café\r\n\r\n* a\r\n".as_bytes()).unwrap();
        assert_eq!(md.text, "# Café\n\n* a\n");
    }

    #[test]
    fn empty_documents() {
        assert_eq!(extract(DocumentKind::Text, b""), Err(ExtractError::Empty));
        assert_eq!(
            extract(DocumentKind::Markdown, b"\xEF\xBB\xBF \r\n\t\n"),
            Err(ExtractError::Empty)
        );
        assert_eq!(
            extract(
                DocumentKind::Html,
                b"<html><head><title>t</title><script>x()</script></head><body> </body></html>"
            ),
            Err(ExtractError::Empty)
        );
        assert_eq!(
            extract(DocumentKind::Pdf, &make_pdf(&[""])),
            Err(ExtractError::Empty)
        );
    }

    #[test]
    fn html_to_readable_text() {
        let html = br#"<!DOCTYPE html><html><head><title>Title &amp; head</title>
            <style>body { color: red }</style>
            <script>document.write("<p>injected</p>"); var secret = 1;</script></head>
            <body><nav><ul><li><a href="/">Home page</a></li><li><a href="/docs">All docs</a></li></ul></nav>
            <h1>Caf&eacute; &amp; bar</h1><button>Copy to clipboard</button><p>First paragraph with a <a href="https://example.org/x">link</a>
            and&nbsp;entities &#169; &lt;tag&gt;.</p><p>Second paragraph.</p>
            <ul><li>one</li><li>two</li></ul>
            <table><tr><td>cell A</td><td>cell B</td></tr></table>
            <script type="module">import("x")</script></body></html>"#;
        assert_eq!(sniff("page.htm", html), Ok(DocumentKind::Html));
        let text = extract(DocumentKind::Html, html).unwrap().text;
        assert!(
            !text.contains("injected") && !text.contains("secret") && !text.contains("import"),
            "{text}"
        );
        assert!(
            !text.contains("color") && !text.contains("Title & head"),
            "{text}"
        );
        assert!(
            !text.contains("Home page") && !text.contains("clipboard"),
            "navigation and controls dropped: {text}"
        );
        assert!(text.contains("# Café & bar"), "{text}");
        assert!(
            text.contains("with a link and") && !text.contains("example.org"),
            "{text}"
        );
        assert!(text.contains("entities © <tag>."), "{text}");
        // Blocks on lines of their own; a paragraph is not broken inside.
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(lines.iter().any(|l| l.ends_with("Café & bar")), "{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("First paragraph") && l.ends_with("<tag>.")),
            "{text}"
        );
        assert!(lines.contains(&"Second paragraph."), "{text}");
        assert!(
            lines.iter().any(|l| l.ends_with("one")) && lines.iter().any(|l| l.ends_with("two")),
            "{text}"
        );
        assert!(
            lines.contains(&"cell A") && lines.contains(&"cell B"),
            "{text}"
        );
    }

    #[test]
    fn pdf_text_of_every_page() {
        let pdf = make_pdf(&[
            "Hello from page one.\nSecond line here.",
            "Page two (with parentheses).",
        ]);
        assert_eq!(sniff("doc.pdf", &pdf), Ok(DocumentKind::Pdf));
        let got = extract(DocumentKind::Pdf, &pdf).unwrap();
        assert_eq!(got.pages, Some(2));
        assert!(got.text.contains("Hello from page one."), "{:?}", got.text);
        assert!(got.text.contains("Second line here."), "{:?}", got.text);
        assert!(
            got.text.contains("Page two (with parentheses)."),
            "{:?}",
            got.text
        );
        let one = got.text.find("page one").unwrap();
        let two = got.text.find("Page two").unwrap();
        assert!(one < two);
        assert!(
            got.text[one..two].contains("\n\n"),
            "pages are separated: {:?}",
            got.text
        );
    }

    #[test]
    fn truncated_or_broken_pdf_is_unreadable() {
        let pdf = make_pdf(&["Some text that will be cut off."]);
        for cut in [pdf.len() / 2, pdf.len() - 30, 20, 5] {
            match extract(DocumentKind::Pdf, &pdf[..cut]) {
                Err(ExtractError::Unreadable(_)) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(matches!(
            extract(DocumentKind::Pdf, b"%PDF-1.4\nnonsense"),
            Err(ExtractError::Unreadable(_))
        ));
        assert!(matches!(
            extract(DocumentKind::Pdf, b"not a pdf at all"),
            Err(ExtractError::Unreadable(_))
        ));
        let message = extract(DocumentKind::Pdf, &pdf[..pdf.len() / 2])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "the document could not be read: the PDF is damaged or truncated"
        );
    }

    #[test]
    fn corrupted_pdfs_never_panic() {
        // Deterministic byte mutations of a valid PDF: each must give Ok or an error, not a panic.
        let pdf = make_pdf(&["Mutation target one.", "Mutation target two."]);
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut bytes = pdf.clone();
            for _ in 0..(1 + next() % 8) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = match next() % 4 {
                    0 => b'0' + (next() % 10) as u8,
                    1 => b" /<>[]()RobjTf"[(next() % 14) as usize],
                    _ => next() as u8,
                };
            }
            let _ = extract(DocumentKind::Pdf, &bytes);
        }
    }

    #[test]
    fn hostile_page_trees_and_forms_do_not_hang_or_overflow() {
        // Without the guards, pdf-extract loops forever (release) or overflows the stack, which
        // aborts the process (debug), on each of these.
        let catalog = "<< /Type /Catalog /Pages 2 0 R >>".to_string();
        let font = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string();
        let text = stream("BT /F1 12 Tf 72 720 Td (Readable page) Tj ET", "");
        let page = |parent: u32, contents: u32, resources: &str| {
            format!("<< /Type /Page /Parent {parent} 0 R /MediaBox [0 0 612 792] /Contents {contents} 0 R {resources} >>")
        };
        // A page that is its own parent, and a page-tree node that is its own parent.
        for objects in [
            vec![
                catalog.clone(),
                "<< /Type /Pages /Kids [4 0 R] /Count 1 >>".into(),
                font.clone(),
                page(4, 5, ""),
                text.clone(),
            ],
            vec![
                catalog.clone(),
                "<< /Type /Pages /Kids [4 0 R] /Count 1 /Parent 2 0 R >>".into(),
                font.clone(),
                page(2, 5, ""),
                text.clone(),
            ],
        ] {
            assert!(matches!(
                extract(DocumentKind::Pdf, &pdf_from_objects(&objects)),
                Err(ExtractError::Unreadable(_))
            ));
        }
        // A cycle above a page that has its own resources: cut, and the page is read.
        let objects = vec![
            catalog.clone(),
            "<< /Type /Pages /Kids [4 0 R] /Count 1 /Parent 2 0 R >>".into(),
            font.clone(),
            page(2, 5, "/Resources << /Font << /F1 3 0 R >> >>"),
            text.clone(),
        ];
        assert_eq!(
            extract(DocumentKind::Pdf, &pdf_from_objects(&objects))
                .unwrap()
                .text,
            "Readable page"
        );
        // Form XObjects that draw themselves, each other, or fan out 2^40 times; the second page
        // is fine and is still read.
        let form = |content: &str, resources: &str| {
            stream(
                content,
                &format!("/Type /XObject /Subtype /Form /BBox [0 0 10 10] {resources}"),
            )
        };
        let two_pages = "<< /Type /Pages /Kids [4 0 R 7 0 R] /Count 2 >>".to_string();
        let fine_page = page(2, 8, "/Resources << /Font << /F1 9 0 R >> >>");
        let fine_text = stream("BT /F1 12 Tf 72 720 Td (The fine page) Tj ET", "");
        let mut cases = vec![
            vec![
                form("/X Do", "/Resources << /XObject << /X 3 0 R >> >>"),
                stream("/X Do", ""),
            ],
            vec![form("/X Do", ""), stream("/X Do", "")],
            vec![form("/B Do", ""), stream("/A Do", "")],
        ];
        let mut fan_out = vec![form("BT ET", ""), stream("/X39 Do", "")];
        for i in 1..40 {
            fan_out.push(form(&format!("/X{} Do /X{} Do", i - 1, i - 1), ""));
        }
        cases.push(fan_out);
        for (case, extra) in cases.into_iter().enumerate() {
            let xobjects = match case {
                2 => "/A 3 0 R /B 6 0 R".to_string(),
                3 => (0..40)
                    .map(|i| format!("/X{i} {} 0 R", if i == 0 { 3 } else { 9 + i }))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => "/X 3 0 R".to_string(),
            };
            let mut objects = vec![
                catalog.clone(),
                two_pages.clone(),
                extra[0].clone(),
                page(2, 5, &format!("/Resources << /XObject << {xobjects} >> >>")),
                extra[1].clone(),
                match case {
                    2 => form("/A Do", ""),
                    _ => "<< >>".into(),
                },
                fine_page.clone(),
                fine_text.clone(),
                font.clone(),
            ];
            objects.extend(extra[2..].iter().cloned());
            let got = extract(DocumentKind::Pdf, &pdf_from_objects(&objects)).unwrap();
            assert_eq!(
                (got.text.as_str(), got.pages),
                ("The fine page", Some(2)),
                "case {case}"
            );
        }
    }

    #[test]
    fn a_failing_page_does_not_lose_the_others() {
        // Page 1 uses a font its resources do not have (pdf-extract panics on it).
        let objects = vec![
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 /MediaBox [0 0 612 792] >>".into(),
            "<< /Type /Page /Parent 2 0 R /Contents 4 0 R /Resources << >> >>".into(),
            stream("BT /F9 12 Tf 72 720 Td (Broken page) Tj ET", ""),
            "<< /Type /Page /Parent 2 0 R /Contents 6 0 R /Resources << /Font << /F1 7 0 R >> >> >>".into(),
            stream("BT /F1 12 Tf 72 720 Td (Good page) Tj ET", ""),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into(),
        ];
        let got = extract(DocumentKind::Pdf, &pdf_from_objects(&objects)).unwrap();
        assert_eq!((got.text.as_str(), got.pages), ("Good page", Some(2)));
    }

    #[test]
    fn page_without_media_box_is_read() {
        let objects = vec![
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
            "<< /Type /Page /Parent 2 0 R /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".into(),
            stream("BT /F1 12 Tf 72 720 Td (No media box) Tj ET", ""),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into(),
        ];
        assert_eq!(
            extract(DocumentKind::Pdf, &pdf_from_objects(&objects))
                .unwrap()
                .text,
            "No media box"
        );
    }

    #[test]
    fn error_messages_are_user_safe() {
        assert_eq!(
            ExtractError::Empty.to_string(),
            "the document contains no extractable text"
        );
        assert_eq!(
            ExtractError::UnsupportedType("PNG image".into()).to_string(),
            "unsupported file type: PNG image; upload a PDF, HTML, Markdown or plain-text (UTF-8) file"
        );
    }
}
