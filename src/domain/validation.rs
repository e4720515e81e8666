//! Answer validation: the checks run on an answer once it finishes (and on demand), and the
//! shapes their results take in the log and on the message. The checks are pure functions
//! of the answer's facts, so the background job, the on-demand endpoint and the tests run
//! the same code; the judge is a model call (see `service::validation`), and only its reply
//! is parsed here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::{CheckName, MessageStatus, RatingValue};

/// One check's verdict. `detail` says why it failed (or why it passed in a way worth
/// knowing, such as a cancelled answer counted as not truncated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    pub name: CheckName,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The judge model's scores, 1 (bad) to 5 (good).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JudgeVerdict {
    pub relevance: u8,
    pub groundedness: u8,
    pub reason: String,
    pub model: String,
}

/// An answer's validation as the message carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    pub checks: Vec<CheckResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeVerdict>,
}

impl Validation {
    /// The bits of the checks that ran, and of those that failed (see [`CheckName::bit`]):
    /// what the report counts.
    pub fn masks(&self) -> (i32, i32) {
        self.checks.iter().fold((0, 0), |(run, failed), c| {
            let bit = c.name.bit();
            (run | bit, if c.passed { failed } else { failed | bit })
        })
    }
}

/// A user's rating of an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rating {
    pub rating: RatingValue,
    pub comment: Option<String>,
    pub rated_at: DateTime<Utc>,
}

/// The longest comment a rating keeps.
pub const MAX_RATING_COMMENT_CHARS: usize = 2_000;

/// What the checks look at.
#[derive(Clone, Debug, Default)]
pub struct AnswerFacts<'a> {
    pub text: &'a str,
    /// `None` when unknown (on demand without one): the truncation check then looks only
    /// at the finish reason.
    pub status: Option<MessageStatus>,
    /// The provider's `finish_reason` for the last model call (`stop`, `length`,
    /// `content_filter`, `tool_calls`), when it said one.
    pub finish_reason: Option<&'a str>,
    /// The provider's `refusal` text, when it sent one.
    pub refusal: Option<&'a str>,
    /// The chunk ids of the passages retrieved for the answer, in the order they were
    /// numbered; `None` when none were retrieved (the citations check then only runs if
    /// the text cites anyway).
    pub passages: Option<Vec<Option<Uuid>>>,
    /// The answer was asked to be JSON.
    pub expect_json: bool,
}

/// Phrases that open a refusal, compared case-insensitively with the answer's first
/// [`REFUSAL_WINDOW_CHARS`] characters (curly apostrophes read as straight ones). Short on
/// purpose: a phrase that also opens helpful answers ("I'm sorry to hear…") is not here.
/// Documented in the README.
pub const REFUSAL_PHRASES: &[&str] = &[
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i can't comply",
    "i cannot comply",
    "i'm not able to help with",
    "i am not able to help with",
    "i'm unable to help with",
    "i am unable to help with",
    "i won't be able to help with",
    "i must decline",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "sorry, but i can't",
    "as an ai language model, i cannot",
];

pub const REFUSAL_WINDOW_CHARS: usize = 200;

/// Runs every check that applies to the answer, in a fixed order.
pub fn run_checks(facts: &AnswerFacts<'_>) -> Vec<CheckResult> {
    let mut checks = vec![empty(facts), truncated(facts), refusal(facts)];
    checks.extend(citations(facts));
    if facts.expect_json {
        checks.push(json(facts));
    }
    checks
}

fn pass(name: CheckName) -> CheckResult {
    CheckResult {
        name,
        passed: true,
        detail: None,
    }
}

/// A detail is at most this long: it travels in frames (across instances too) and rows.
const MAX_DETAIL_CHARS: usize = 300;

fn fail(name: CheckName, detail: impl Into<String>) -> CheckResult {
    let detail = detail.into();
    CheckResult {
        name,
        passed: false,
        detail: Some(clip(&detail, MAX_DETAIL_CHARS)),
    }
}

fn empty(facts: &AnswerFacts<'_>) -> CheckResult {
    if facts.text.trim().is_empty() {
        fail(CheckName::Empty, "the answer has no text")
    } else {
        pass(CheckName::Empty)
    }
}

fn truncated(facts: &AnswerFacts<'_>) -> CheckResult {
    let name = CheckName::Truncated;
    match facts.status {
        Some(MessageStatus::Interrupted) => {
            return fail(name, "the answer was interrupted (its server stopped)")
        }
        Some(MessageStatus::Failed) => return fail(name, "the answer failed before it ended"),
        Some(MessageStatus::Cancelled) => {
            // The user stopped it: cut off on purpose, not by the model.
            return CheckResult {
                detail: Some("cancelled by the user".into()),
                ..pass(name)
            };
        }
        _ => {}
    }
    if facts.finish_reason == Some("length") {
        fail(
            name,
            "the model stopped at its token limit (finish_reason: length)",
        )
    } else {
        pass(name)
    }
}

fn refusal(facts: &AnswerFacts<'_>) -> CheckResult {
    let name = CheckName::Refusal;
    if let Some(refusal) = facts.refusal.filter(|r| !r.trim().is_empty()) {
        return fail(name, format!("the provider marked a refusal: {refusal}"));
    }
    if facts.finish_reason == Some("content_filter") {
        return fail(name, "the provider's content filter stopped the answer");
    }
    let opening: String = facts
        .text
        .trim_start()
        .chars()
        .take(REFUSAL_WINDOW_CHARS)
        .collect::<String>()
        .to_lowercase()
        .replace(['\u{2019}', '\u{2018}'], "'");
    match REFUSAL_PHRASES.iter().find(|p| opening.contains(*p)) {
        Some(phrase) => fail(name, format!("the answer declines (\"{phrase}\")")),
        None => pass(name),
    }
}

/// Markers `[n]` (or `[1, 2]`) must name a retrieved passage by its number, and a bracketed
/// chunk id must be one retrieved. Runs when passages were retrieved or the text cites.
fn citations(facts: &AnswerFacts<'_>) -> Option<CheckResult> {
    let name = CheckName::Citations;
    let prose = outside_code(facts.text);
    let markers = bracketed(&prose);
    let numbers: Vec<&str> = markers
        .iter()
        .filter(|m| {
            m.split(',')
                .all(|n| !n.trim().is_empty() && n.trim().bytes().all(|b| b.is_ascii_digit()))
        })
        .flat_map(|m| m.split(',').map(str::trim))
        .collect();
    let ids: Vec<Uuid> = markers
        .iter()
        .filter_map(|m| Uuid::parse_str(m.trim()).ok())
        .collect();
    if facts.passages.is_none() && numbers.is_empty() && ids.is_empty() {
        return None;
    }
    let passages = facts.passages.clone().unwrap_or_default();
    let count = passages.len();
    let bad_numbers: Vec<&str> = numbers
        .iter()
        .copied()
        .filter(|n| !matches!(n.parse::<usize>(), Ok(i) if (1..=count).contains(&i)))
        .collect();
    let bad_ids: Vec<Uuid> = ids
        .into_iter()
        .filter(|id| !passages.contains(&Some(*id)))
        .collect();
    Some(if bad_numbers.is_empty() && bad_ids.is_empty() {
        pass(name)
    } else {
        let mut reasons = Vec::new();
        if !bad_numbers.is_empty() {
            reasons.push(format!(
                "marker{} [{}] point{} to no passage ({count} retrieved)",
                if bad_numbers.len() == 1 { "" } else { "s" },
                bad_numbers.join("], ["),
                if bad_numbers.len() == 1 { "s" } else { "" },
            ));
        }
        if !bad_ids.is_empty() {
            let ids: Vec<String> = bad_ids.iter().map(Uuid::to_string).collect();
            reasons.push(format!("cites chunks never retrieved: {}", ids.join(", ")));
        }
        fail(name, reasons.join("; "))
    })
}

fn json(facts: &AnswerFacts<'_>) -> CheckResult {
    let name = CheckName::Json;
    match serde_json::from_str::<serde_json::Value>(facts.text.trim()) {
        Ok(_) => pass(name),
        Err(e) => fail(name, format!("the answer is not valid JSON: {e}")),
    }
}

/// The text without fenced code blocks and inline code, where `[0]` is an index, not a
/// citation.
fn outside_code(text: &str) -> String {
    let mut prose = String::with_capacity(text.len());
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        prose.push('\n');
    }
    prose
}

/// The contents of every `[...]` that is not a Markdown link's text (`[x](url)`).
fn bracketed(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find([']', '[']) else {
            break;
        };
        if after.as_bytes()[close] == b'[' {
            rest = &after[close..];
            continue;
        }
        let inner = &after[..close];
        let tail = &after[close + 1..];
        if !tail.starts_with('(') && inner.len() <= 80 {
            found.push(inner);
        }
        rest = tail;
    }
    found
}

fn clip(text: &str, max: usize) -> String {
    let mut clipped: String = text.chars().take(max).collect();
    if clipped.len() < text.len() {
        clipped.push('…');
    }
    clipped
}

/// What the judge model is asked (documented in the README). The user message carries the
/// question, the passages (if any) and the answer.
pub const JUDGE_PROMPT: &str = "You grade an AI assistant's answer. Score two things from 1 \
(worst) to 5 (best): relevance (does the answer address the user's question?) and \
groundedness (is every claim supported by the passages given? With no passages: is it free \
of invented facts?). Reply with JSON only, exactly: {\"relevance\": <1-5>, \"groundedness\": \
<1-5>, \"reason\": \"<one sentence>\"}";

/// The judge's reply read as a verdict: the JSON object in it (models wrap it in prose or
/// code fences at times), scores within 1..=5, a reason of one line.
pub fn parse_judge_reply(reply: &str, model: &str) -> Result<JudgeVerdict, String> {
    let start = reply
        .find('{')
        .ok_or("the judge's reply holds no JSON object")?;
    let end = reply
        .rfind('}')
        .ok_or("the judge's reply holds no JSON object")?;
    if end < start {
        return Err("the judge's reply holds no JSON object".into());
    }
    #[derive(Deserialize)]
    struct Reply {
        relevance: serde_json::Value,
        groundedness: serde_json::Value,
        #[serde(default)]
        reason: String,
    }
    let parsed: Reply = serde_json::from_str(&reply[start..=end])
        .map_err(|e| format!("the judge's reply is not the JSON asked for: {e}"))?;
    let score = |field: &str, value: &serde_json::Value| -> Result<u8, String> {
        value
            .as_f64()
            .filter(|v| v.fract() == 0.0 && (1.0..=5.0).contains(v))
            .map(|v| v as u8)
            .ok_or_else(|| format!("the judge's {field} is not a whole number from 1 to 5"))
    };
    let reason: String = parsed
        .reason
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(500)
        .collect();
    Ok(JudgeVerdict {
        relevance: score("relevance", &parsed.relevance)?,
        groundedness: score("groundedness", &parsed.groundedness)?,
        reason,
        model: model.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(text: &str) -> AnswerFacts<'_> {
        AnswerFacts {
            text,
            status: Some(MessageStatus::Complete),
            ..Default::default()
        }
    }

    fn verdict(checks: &[CheckResult], name: CheckName) -> Option<bool> {
        checks.iter().find(|c| c.name == name).map(|c| c.passed)
    }

    #[test]
    fn a_plain_good_answer_passes_the_three_checks_that_always_run() {
        let checks = run_checks(&facts("Paris is the capital of France."));
        let names: Vec<_> = checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [CheckName::Empty, CheckName::Truncated, CheckName::Refusal]
        );
        assert!(checks.iter().all(|c| c.passed && c.detail.is_none()));
    }

    #[test]
    fn empty_fails_on_whitespace_only() {
        assert_eq!(
            verdict(&run_checks(&facts(" \n\t ")), CheckName::Empty),
            Some(false)
        );
    }

    #[test]
    fn truncated_follows_finish_reason_and_status() {
        let length = AnswerFacts {
            finish_reason: Some("length"),
            ..facts("Once upon a")
        };
        assert_eq!(
            verdict(&run_checks(&length), CheckName::Truncated),
            Some(false)
        );
        let stop = AnswerFacts {
            finish_reason: Some("stop"),
            ..facts("Done.")
        };
        assert_eq!(
            verdict(&run_checks(&stop), CheckName::Truncated),
            Some(true)
        );
        for (status, passed) in [
            (MessageStatus::Interrupted, false),
            (MessageStatus::Failed, false),
            (MessageStatus::Cancelled, true),
        ] {
            let f = AnswerFacts {
                status: Some(status),
                ..facts("partial")
            };
            assert_eq!(
                verdict(&run_checks(&f), CheckName::Truncated),
                Some(passed),
                "{status:?}"
            );
        }
        // A cancelled answer passes, and says why, even when the provider had said `length`.
        let cancelled = run_checks(&AnswerFacts {
            status: Some(MessageStatus::Cancelled),
            finish_reason: Some("length"),
            ..facts("partial")
        });
        let truncated = cancelled
            .iter()
            .find(|c| c.name == CheckName::Truncated)
            .unwrap();
        assert!(truncated.passed);
        assert_eq!(truncated.detail.as_deref(), Some("cancelled by the user"));
    }

    #[test]
    fn refusal_from_the_provider_field_the_filter_or_the_phrase_list() {
        let field = AnswerFacts {
            refusal: Some("I can't do that."),
            ..facts("")
        };
        assert_eq!(
            verdict(&run_checks(&field), CheckName::Refusal),
            Some(false)
        );
        let filter = AnswerFacts {
            finish_reason: Some("content_filter"),
            ..facts("x")
        };
        assert_eq!(
            verdict(&run_checks(&filter), CheckName::Refusal),
            Some(false)
        );
        let phrase = run_checks(&facts("I’m sorry, but I can’t help with that request."));
        assert_eq!(verdict(&phrase, CheckName::Refusal), Some(false));
        // Sympathy is not a refusal, nor is a phrase deep inside a long answer.
        let kind = run_checks(&facts("I'm sorry to hear that. Here is what to do: rest."));
        assert_eq!(verdict(&kind, CheckName::Refusal), Some(true));
        let late = format!("{} I cannot help with the rest.", "word ".repeat(60));
        assert_eq!(
            verdict(&run_checks(&facts(&late)), CheckName::Refusal),
            Some(true)
        );
    }

    #[test]
    fn citations_must_point_at_retrieved_passages() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let retrieved = Some(vec![Some(a), Some(b)]);
        let good = AnswerFacts {
            passages: retrieved.clone(),
            ..facts("Tea came from China [1], and Britain took to it [1, 2].")
        };
        assert_eq!(
            verdict(&run_checks(&good), CheckName::Citations),
            Some(true)
        );
        let bad = AnswerFacts {
            passages: retrieved.clone(),
            ..facts("As shown [3].")
        };
        let checks = run_checks(&bad);
        let failed = checks
            .iter()
            .find(|c| c.name == CheckName::Citations)
            .unwrap();
        assert!(!failed.passed);
        let why = failed.detail.as_deref().unwrap();
        assert!(
            why.contains("marker [3] points to no passage (2 retrieved)"),
            "{why}"
        );
        assert!(!why.contains("never retrieved"), "{why}");
        let stranger_text = format!("See [{}].", Uuid::from_u128(9));
        let stranger = AnswerFacts {
            passages: retrieved,
            ..facts(&stranger_text)
        };
        let checks = run_checks(&stranger);
        let failed = checks
            .iter()
            .find(|c| c.name == CheckName::Citations)
            .unwrap();
        assert!(!failed.passed);
        assert_eq!(
            failed.detail.as_deref(),
            Some(format!("cites chunks never retrieved: {}", Uuid::from_u128(9)).as_str())
        );
        let by_id_text = format!("See [{a}].");
        let by_id = AnswerFacts {
            passages: Some(vec![Some(a)]),
            ..facts(&by_id_text)
        };
        assert_eq!(
            verdict(&run_checks(&by_id), CheckName::Citations),
            Some(true)
        );
    }

    #[test]
    fn citations_ignore_code_links_and_run_only_when_relevant() {
        // No passages and no markers: the check does not run.
        assert_eq!(
            verdict(&run_checks(&facts("Hello.")), CheckName::Citations),
            None
        );
        // Indexes in code and link texts are not citations.
        let code = "Use `xs[0]` or\n```\nlet y = xs[1];\n```\nsee [the docs](https://x.y) and [2](https://x.y/2).";
        assert_eq!(
            verdict(&run_checks(&facts(code)), CheckName::Citations),
            None
        );
        // A marker with nothing retrieved fails.
        assert_eq!(
            verdict(&run_checks(&facts("As [1] says.")), CheckName::Citations),
            Some(false)
        );
    }

    #[test]
    fn a_long_detail_is_clipped() {
        let many: String = (10..400).map(|n| format!("[{n}] ")).collect();
        let checks = run_checks(&facts(&many));
        let detail = checks
            .iter()
            .find(|c| c.name == CheckName::Citations)
            .and_then(|c| c.detail.clone())
            .unwrap();
        assert_eq!(detail.chars().count(), MAX_DETAIL_CHARS + 1, "{detail}");
        assert!(detail.ends_with('…'));
    }

    #[test]
    fn json_runs_only_when_asked() {
        assert_eq!(verdict(&run_checks(&facts("{}")), CheckName::Json), None);
        let ok = AnswerFacts {
            expect_json: true,
            ..facts(" {\"a\": 1}\n")
        };
        assert_eq!(verdict(&run_checks(&ok), CheckName::Json), Some(true));
        let bad = AnswerFacts {
            expect_json: true,
            ..facts("{\"a\": 1")
        };
        assert_eq!(verdict(&run_checks(&bad), CheckName::Json), Some(false));
    }

    #[test]
    fn masks_mark_what_ran_and_what_failed() {
        let v = Validation {
            checks: run_checks(&AnswerFacts {
                expect_json: true,
                ..facts("not json")
            }),
            judge: None,
        };
        assert_eq!(v.masks(), (1 | 2 | 4 | 16, 16));
    }

    #[test]
    fn a_judge_reply_is_parsed_and_checked() {
        let reply = "Sure:\n```json\n{\"relevance\": 5, \"groundedness\": 2, \"reason\": \"On topic.\\nmore\"}\n```";
        let v = parse_judge_reply(reply, "judge").unwrap();
        assert_eq!((v.relevance, v.groundedness), (5, 2));
        assert_eq!(v.reason, "On topic.");
        assert_eq!(v.model, "judge");
        for bad in [
            "no json",
            "{\"relevance\": 6, \"groundedness\": 2}",
            "{\"relevance\": 0, \"groundedness\": 2}",
            "{\"relevance\": 2.5, \"groundedness\": 2}",
            "{\"relevance\": \"5\", \"groundedness\": 2}",
            "} {",
        ] {
            assert!(parse_judge_reply(bad, "j").is_err(), "{bad}");
        }
    }
}
