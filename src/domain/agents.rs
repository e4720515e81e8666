//! Agents: named instructions, a model and its sampling, the tools the agent may use, the
//! knowledge bases it may search and the agents it may hand off to. An agent is versioned:
//! every change is a new version, kept, so an answer can name the exact version that gave
//! it. The rules here are pure; the service checks what needs storage (the model in the
//! catalogue, the agents handed off to).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::{AgentTool, ResponseFormat, Visibility};

pub const MAX_AGENT_NAME_CHARS: usize = 100;
pub const MAX_AGENT_DESCRIPTION_CHARS: usize = 2_000;
pub const MAX_AGENT_INSTRUCTIONS_CHARS: usize = 20_000;
/// Agents one agent may hand off to.
pub const MAX_HANDOFFS: usize = 16;
pub const MAX_AGENT_MAX_TOKENS: u32 = 200_000;

/// What an agent is, as one version states it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDefinition {
    pub name: String,
    pub description: String,
    pub instructions: String,
    /// A catalogue model; `None`: the server's default.
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub tools: Vec<AgentTool>,
    pub knowledge_base_ids: Vec<Uuid>,
    pub handoff_agent_ids: Vec<Uuid>,
    /// Absent in definitions stored before answers could be asked to be JSON: text.
    #[serde(default)]
    pub response_format: ResponseFormat,
}

/// An agent at one version.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub version: i32,
    pub visibility: Visibility,
    pub definition: AgentDefinition,
    pub created_at: DateTime<Utc>,
    /// When this version was made.
    pub updated_at: DateTime<Utc>,
}

impl AgentRecord {
    /// Whether `user` may see and chat with it: its owner, or anyone when it is public.
    pub fn usable_by(&self, user: Uuid) -> bool {
        self.owner_id == user || self.visibility == Visibility::Public
    }
}

/// A change to an agent: the fields given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub instructions: Option<String>,
    /// `Some("")` returns to the server's default model.
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub tools: Option<Vec<AgentTool>>,
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    pub handoff_agent_ids: Option<Vec<Uuid>>,
    pub visibility: Option<Visibility>,
    pub response_format: Option<ResponseFormat>,
}

impl AgentPatch {
    /// Only `visibility` is set (what an admin may change on an agent not their own).
    pub fn only_visibility(&self) -> bool {
        *self
            == AgentPatch {
                visibility: self.visibility,
                ..AgentPatch::default()
            }
    }

    /// `definition` with this patch applied (not yet checked).
    pub fn apply(&self, definition: &AgentDefinition) -> AgentDefinition {
        let mut next = definition.clone();
        if let Some(name) = &self.name {
            next.name = name.clone();
        }
        if let Some(description) = &self.description {
            next.description = description.clone();
        }
        if let Some(instructions) = &self.instructions {
            next.instructions = instructions.clone();
        }
        if let Some(model) = &self.model {
            next.model = (!model.is_empty()).then(|| model.clone());
        }
        if self.temperature.is_some() {
            next.temperature = self.temperature;
        }
        if self.top_p.is_some() {
            next.top_p = self.top_p;
        }
        if self.max_tokens.is_some() {
            next.max_tokens = self.max_tokens;
        }
        if let Some(tools) = &self.tools {
            next.tools = tools.clone();
        }
        if let Some(ids) = &self.knowledge_base_ids {
            next.knowledge_base_ids = ids.clone();
        }
        if let Some(ids) = &self.handoff_agent_ids {
            next.handoff_agent_ids = ids.clone();
        }
        if let Some(format) = self.response_format {
            next.response_format = format;
        }
        next
    }
}

/// Checks what needs no storage and puts the definition in its canonical form (names
/// trimmed, lists without repeats in their first order). `Err((field, why))`.
pub fn check(
    mut definition: AgentDefinition,
    agent_id: Option<Uuid>,
) -> Result<AgentDefinition, (&'static str, String)> {
    definition.name = definition.name.trim().to_string();
    let chars = |s: &str| s.chars().count();
    if definition.name.is_empty() || chars(&definition.name) > MAX_AGENT_NAME_CHARS {
        return Err((
            "name",
            format!("must be 1 to {MAX_AGENT_NAME_CHARS} characters"),
        ));
    }
    if chars(&definition.description) > MAX_AGENT_DESCRIPTION_CHARS {
        return Err((
            "description",
            format!("must be at most {MAX_AGENT_DESCRIPTION_CHARS} characters"),
        ));
    }
    if chars(&definition.instructions) > MAX_AGENT_INSTRUCTIONS_CHARS {
        return Err((
            "instructions",
            format!("must be at most {MAX_AGENT_INSTRUCTIONS_CHARS} characters"),
        ));
    }
    for (field, text) in [
        ("name", &definition.name),
        ("description", &definition.description),
        ("instructions", &definition.instructions),
    ] {
        if text.contains('\0') {
            return Err((field, "must not contain NUL characters".into()));
        }
    }
    if let Some(t) = definition.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(("temperature", "must be between 0 and 2".into()));
        }
    }
    if let Some(p) = definition.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(("topP", "must be above 0 and at most 1".into()));
        }
    }
    if let Some(n) = definition.max_tokens {
        if n == 0 || n > MAX_AGENT_MAX_TOKENS {
            return Err(("maxTokens", format!("must be 1 to {MAX_AGENT_MAX_TOKENS}")));
        }
    }
    dedupe(&mut definition.tools);
    dedupe(&mut definition.knowledge_base_ids);
    dedupe(&mut definition.handoff_agent_ids);
    if definition.handoff_agent_ids.len() > MAX_HANDOFFS {
        return Err(("handoffAgentIds", format!("at most {MAX_HANDOFFS} agents")));
    }
    if agent_id.is_some_and(|id| definition.handoff_agent_ids.contains(&id)) {
        return Err((
            "handoffAgentIds",
            "an agent cannot hand off to itself".into(),
        ));
    }
    Ok(definition)
}

fn dedupe<T: PartialEq + Clone>(items: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::with_capacity(items.len());
    items.retain(|item| {
        let new = !seen.contains(item);
        if new {
            seen.push(item.clone());
        }
        new
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> AgentDefinition {
        AgentDefinition {
            name: " Helper ".into(),
            description: String::new(),
            instructions: "Be brief.".into(),
            model: None,
            temperature: Some(0.5),
            top_p: None,
            max_tokens: None,
            tools: vec![AgentTool::CurrentTime, AgentTool::CurrentTime],
            knowledge_base_ids: vec![],
            handoff_agent_ids: vec![],
            response_format: ResponseFormat::Text,
        }
    }

    #[test]
    fn a_definition_is_trimmed_and_its_lists_lose_repeats() {
        let checked = check(definition(), None).unwrap();
        assert_eq!(checked.name, "Helper");
        assert_eq!(checked.tools, vec![AgentTool::CurrentTime]);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let me = Uuid::from_u128(7);
        type Change = Box<dyn Fn(&mut AgentDefinition)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|d| d.name = "   ".into()), "name"),
            (Box::new(|d| d.name = "n".repeat(101)), "name"),
            (
                Box::new(|d| d.description = "d".repeat(2_001)),
                "description",
            ),
            (
                Box::new(|d| d.instructions = "i".repeat(20_001)),
                "instructions",
            ),
            (Box::new(|d| d.instructions = "a\0b".into()), "instructions"),
            (Box::new(|d| d.temperature = Some(2.5)), "temperature"),
            (Box::new(|d| d.temperature = Some(-0.1)), "temperature"),
            (Box::new(|d| d.top_p = Some(0.0)), "topP"),
            (Box::new(|d| d.max_tokens = Some(0)), "maxTokens"),
            (
                Box::new(move |d| d.handoff_agent_ids = vec![me]),
                "handoffAgentIds",
            ),
            (
                Box::new(|d| d.handoff_agent_ids = (0..17).map(Uuid::from_u128).collect()),
                "handoffAgentIds",
            ),
        ];
        for (change, field) in cases {
            let mut d = definition();
            change(&mut d);
            assert_eq!(check(d, Some(me)).unwrap_err().0, field);
        }
    }

    #[test]
    fn a_patch_changes_what_it_names() {
        let patch = AgentPatch {
            instructions: Some("New".into()),
            model: Some(String::new()),
            ..AgentPatch::default()
        };
        let mut before = definition();
        before.model = Some("m".into());
        let after = patch.apply(&before);
        assert_eq!(after.instructions, "New");
        assert_eq!(after.model, None);
        assert_eq!(after.name, before.name);
        assert!(!patch.only_visibility());
        let publish = AgentPatch {
            visibility: Some(Visibility::Public),
            ..AgentPatch::default()
        };
        assert!(publish.only_visibility());
    }
}
