//! Small closed vocabularies shared by the layers: roles and message states. Their string
//! forms are what the database and the JSON API hold.

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What an account may do. `admin` adds the user administration endpoints.
    Role { User => "user", Admin => "admin" }
);

string_enum!(
    /// Where a user's model calls stand among others' of the same class in the model queue.
    Priority { Low => "low", Normal => "normal", High => "high" }
);

// Not derived: `string_enum!` does not take attributes on variants.
#[allow(clippy::derivable_impls)]
impl Default for Priority {
    fn default() -> Self {
        Self::Normal
    }
}

impl Priority {
    /// Its rank in the queue: 0 is served first.
    pub fn rank(self) -> usize {
        match self {
            Self::High => 0,
            Self::Normal => 1,
            Self::Low => 2,
        }
    }
}

string_enum!(
    /// Where a background job is in its life: waiting (`queued`, perhaps until a later
    /// `runAt`), claimed by a worker (`running`), or ended.
    JobStatus {
        Queued => "queued",
        Running => "running",
        Done => "done",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// Why an answer came from a model other than the conversation's: its model's circuit
    /// breaker was open, its queue was full, or its wait would have passed
    /// `QUEUE_MAX_WAIT_MS`.
    FallbackReason {
        CircuitOpen => "circuit_open",
        QueueFull => "queue_full",
        QueueWait => "queue_wait",
    }
);

string_enum!(
    /// The built-in tools an agent may be given.
    AgentTool {
        SearchKnowledge => "search_knowledge",
        AskAgent => "ask_agent",
        CurrentTime => "current_time",
    }
);

string_enum!(
    /// Where a knowledge-base document's ingestion is.
    DocumentStatus {
        Pending => "pending",
        Processing => "processing",
        Ready => "ready",
        Failed => "failed",
    }
);

string_enum!(
    /// How a knowledge search ranked: by words and meaning fused, or by words alone (no
    /// embedding model).
    SearchMode { Hybrid => "hybrid", Fulltext => "fulltext" }
);

string_enum!(
    /// Who may chat with an agent: its owner, or everyone (set by an admin).
    Visibility { Private => "private", Public => "public" }
);

string_enum!(
    /// Who wrote a message.
    MessageRole { User => "user", Assistant => "assistant", System => "system" }
);

string_enum!(
    /// Where a message is in its life. Only assistant messages are ever anything but
    /// `complete`.
    MessageStatus {
        Complete => "complete",
        Streaming => "streaming",
        Cancelled => "cancelled",
        Failed => "failed",
        Interrupted => "interrupted",
    }
);

string_enum!(
    /// What an agent's answers are: prose, or one JSON object (asked of the provider, and
    /// checked by the `json` check).
    ResponseFormat { Text => "text", Json => "json" }
);

#[allow(clippy::derivable_impls)]
impl Default for ResponseFormat {
    fn default() -> Self {
        Self::Text
    }
}

string_enum!(
    /// A user's verdict on an answer.
    RatingValue { Up => "up", Down => "down" }
);

string_enum!(
    /// The checks run on an answer (see `domain::validation`). Each has a fixed bit in the
    /// messages table's `checks_run` / `checks_failed` masks, so adding one needs no
    /// migration and the report counts each with one expression.
    CheckName {
        Empty => "empty",
        Truncated => "truncated",
        Refusal => "refusal",
        Citations => "citations",
        Json => "json",
    }
);

impl CheckName {
    /// Its bit in the masks: never change one, only add.
    pub fn bit(self) -> i32 {
        match self {
            Self::Empty => 1,
            Self::Truncated => 2,
            Self::Refusal => 4,
            Self::Citations => 8,
            Self::Json => 16,
        }
    }
}

/// A tool call as an answer's history holds it: what the model asked for and, once it
/// returned, the result (`ok` and `content` are `None` while it runs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallRecord {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    pub step: u32,
    pub ok: Option<bool>,
    pub content: Option<String>,
    /// The agent whose model called it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<uuid::Uuid>,
    /// Set for a call made inside an `ask_agent` sub-turn: that call's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_call_id: Option<String>,
    /// For `ask_agent`: the agent that answered, and its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by_version: Option<i32>,
}

/// Token counts reported by the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}
