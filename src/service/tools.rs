//! An agent's tools: what its model is offered, and running what the model asks for. The
//! server decides what runs: a call to a tool the agent does not have (whatever a prompt or
//! a document told the model) gets an error result, never a run. Every call and result
//! goes to a [`ToolSink`] (the log and the answer's room) before and after it runs.
//!
//! `ask_agent` is the multi-agent orchestration: another agent the caller may hand off to
//! answers a question as a sub-turn (its own instructions, model and tools, whole answers
//! rather than streamed), and its answer is the tool's result. Its calls are recorded like
//! the caller's, marked with the `ask_agent` call they belong to. Depth is bounded by
//! `AGENT_MAX_DEPTH`; an agent already in the chain is refused (a cycle).

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use uuid::Uuid;

use super::chat::{ChatService, Turn};
use super::ServiceResult;
use crate::config::AgentsConfig;
use crate::domain::agents::AgentRecord;
use crate::domain::events::{ToolCalled, ToolReturned};
use crate::domain::knowledge::Passage;
use crate::domain::types::{AgentTool, MessageRole, ResponseFormat};
use crate::llm::{ChatMessage, ChatRequest, Sampling, ToolCall, ToolSpec};

/// Where a turn's tool calls and results go.
pub trait ToolSink: Send + Sync {
    /// Records a call before it runs; returns the id it is recorded under (the model's,
    /// made unique within the answer if the model repeated one).
    fn called(&self, called: ToolCalled) -> BoxFuture<'_, ServiceResult<String>>;
    /// Records a call's result.
    fn returned<'a>(
        &'a self,
        returned: ToolReturned,
        name: &'a str,
    ) -> BoxFuture<'a, ServiceResult<()>>;
}

/// Records tool calls in the log alone: for answers that do not stream (`POST /api/chat`).
pub struct LogSink<'a> {
    chat: &'a ChatService,
    turn: &'a Turn,
    /// Every call id taken in this answer (a model may repeat one).
    ids: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl<'a> LogSink<'a> {
    pub fn new(chat: &'a ChatService, turn: &'a Turn) -> Self {
        Self {
            chat,
            turn,
            ids: Default::default(),
        }
    }
}

/// `id`, or (if this answer used it already) `id-2`, `id-3`, …; taken in `ids`.
pub fn unique_call_id(
    ids: &std::sync::Mutex<std::collections::HashSet<String>>,
    id: &str,
) -> String {
    let mut ids = ids.lock().unwrap_or_else(|e| e.into_inner());
    let base = match id.trim() {
        "" => "call".to_string(),
        id => id.to_string(),
    };
    let mut candidate = base.clone();
    let mut n = 1;
    while !ids.insert(candidate.clone()) {
        n += 1;
        candidate = format!("{base}-{n}");
    }
    candidate
}

impl ToolSink for LogSink<'_> {
    fn called(&self, mut called: ToolCalled) -> BoxFuture<'_, ServiceResult<String>> {
        async move {
            called.call_id = unique_call_id(&self.ids, &called.call_id);
            let id = called.call_id.clone();
            self.chat.record_tool_call(self.turn, called).await?;
            Ok(id)
        }
        .boxed()
    }

    fn returned<'a>(
        &'a self,
        returned: ToolReturned,
        _name: &'a str,
    ) -> BoxFuture<'a, ServiceResult<()>> {
        async move {
            self.chat.record_tool_result(self.turn, returned).await?;
            Ok(())
        }
        .boxed()
    }
}

/// Who is calling: the agent, how deep in hand-offs, the agents above it, and the
/// `ask_agent` call it answers (none at the top).
#[derive(Clone)]
pub struct Scope {
    pub agent: Arc<AgentRecord>,
    pub depth: u32,
    pub chain: Vec<Uuid>,
    pub parent_call_id: Option<String>,
}

impl Scope {
    /// The answer's own agent.
    pub fn top(agent: Arc<AgentRecord>) -> Self {
        Self {
            chain: vec![agent.id],
            agent,
            depth: 0,
            parent_call_id: None,
        }
    }

    fn has(&self, tool: AgentTool) -> bool {
        self.agent.definition.tools.contains(&tool)
    }
}

/// What a tool gave back.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolOutcome {
    pub ok: bool,
    pub content: String,
    /// For `ask_agent`: the agent that answered, and its version.
    pub answered_by: Option<(Uuid, i32)>,
    /// For `search_knowledge`: the passages given to the model.
    pub citations: Vec<Passage>,
}

impl ToolOutcome {
    fn ok(content: impl Into<String>) -> Self {
        Self {
            ok: true,
            content: content.into(),
            answered_by: None,
            citations: Vec::new(),
        }
    }

    fn error(content: impl Into<String>) -> Self {
        Self {
            ok: false,
            content: content.into(),
            answered_by: None,
            citations: Vec::new(),
        }
    }
}

/// Runs one turn's tool calls.
pub struct Toolbox<'a> {
    pub chat: &'a ChatService,
    pub turn: &'a Turn,
    pub sink: &'a dyn ToolSink,
    pub settings: &'a AgentsConfig,
}

#[derive(Deserialize)]
struct SearchArgs {
    query: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AskAgentArgs {
    agent_id: String,
    message: String,
}

impl Toolbox<'_> {
    /// The tools offered to `scope`'s model: its agent's, with `ask_agent` only while a
    /// hand-off may still go deeper, and describing the agents it may ask.
    pub async fn specs(&self, scope: &Scope) -> Vec<ToolSpec> {
        let mut specs = Vec::new();
        for tool in &scope.agent.definition.tools {
            match tool {
                AgentTool::CurrentTime => specs.push(ToolSpec {
                    name: tool.as_str().into(),
                    description: "The current date and time (UTC, RFC 3339).".into(),
                    parameters: serde_json::json!({"type": "object", "properties": {}}),
                }),
                AgentTool::SearchKnowledge => specs.push(ToolSpec {
                    name: tool.as_str().into(),
                    description: "Searches the knowledge bases attached to you for passages \
                                  that answer a query."
                        .into(),
                    parameters: serde_json::json!({
                        "type": "object",
                        "properties": {"query": {"type": "string", "description": "what to look for"}},
                        "required": ["query"],
                    }),
                }),
                AgentTool::AskAgent if scope.depth < self.settings.max_depth => {
                    let mut agents = Vec::new();
                    for id in &scope.agent.definition.handoff_agent_ids {
                        if let Ok(Some(agent)) = self.chat.store().find_agent(*id).await {
                            agents.push(format!(
                                "{} ({}): {}",
                                agent.id, agent.definition.name, agent.definition.description
                            ));
                        }
                    }
                    specs.push(ToolSpec {
                        name: tool.as_str().into(),
                        description: format!(
                            "Asks another agent and returns its answer. Agents you may ask:\n{}",
                            agents.join("\n")
                        ),
                        parameters: serde_json::json!({
                            "type": "object",
                            "properties": {
                                "agentId": {"type": "string", "description": "the agent's id"},
                                "message": {"type": "string", "description": "what to ask it"},
                            },
                            "required": ["agentId", "message"],
                        }),
                    });
                }
                AgentTool::AskAgent => {}
            }
        }
        specs
    }

    /// Records `calls` (made in `step`), runs them side by side, records each result as it
    /// comes, and returns the results as the messages the model's next step needs.
    pub async fn run_calls(
        &self,
        scope: &Scope,
        step: u32,
        calls: Vec<ToolCall>,
    ) -> Vec<ChatMessage> {
        let mut recorded = Vec::with_capacity(calls.len());
        for call in calls {
            let called = ToolCalled {
                message_id: self.turn.assistant_message_id,
                call_id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                step,
                agent_id: Some(scope.agent.id),
                parent_call_id: scope.parent_call_id.clone(),
            };
            match self.sink.called(called).await {
                Ok(id) => recorded.push((id, call)),
                Err(err) => {
                    // Not recorded, so not run: history never shows a result without its call.
                    tracing::warn!(error = %err, tool = %call.name, "recording a tool call failed");
                    recorded.push((String::new(), call));
                }
            }
        }
        let runs = recorded.into_iter().map(|(id, call)| async move {
            let outcome = if id.is_empty() {
                ToolOutcome::error("the call could not be recorded, so it did not run")
            } else {
                match tokio::time::timeout(
                    self.settings.tool_timeout,
                    self.run_one(scope, &id, &call),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => ToolOutcome::error(format!(
                        "`{}` did not finish within {} ms",
                        call.name,
                        self.settings.tool_timeout.as_millis()
                    )),
                }
            };
            if !id.is_empty() {
                let returned = ToolReturned {
                    message_id: self.turn.assistant_message_id,
                    call_id: id.clone(),
                    ok: outcome.ok,
                    content: outcome.content.clone(),
                    agent_id: outcome.answered_by.map(|(id, _)| id),
                    agent_version: outcome.answered_by.map(|(_, v)| v),
                    citations: outcome.citations.clone(),
                };
                if let Err(err) = self.sink.returned(returned, &call.name).await {
                    tracing::warn!(error = %err, tool = %call.name, "recording a tool result failed");
                }
            }
            // The model knows the call by the id it gave.
            ChatMessage::tool_result(call.id, outcome.content)
        });
        futures::future::join_all(runs).await
    }

    /// Runs one call, if the agent has the tool.
    async fn run_one(&self, scope: &Scope, call_id: &str, call: &ToolCall) -> ToolOutcome {
        let tool: Option<AgentTool> = call.name.parse().ok();
        let Some(tool) = tool.filter(|t| scope.has(*t)) else {
            return ToolOutcome::error(format!(
                "there is no tool `{}` available to you; your tools are: {}",
                call.name,
                scope
                    .agent
                    .definition
                    .tools
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match tool {
            AgentTool::CurrentTime => ToolOutcome::ok(
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            AgentTool::SearchKnowledge => match serde_json::from_str::<SearchArgs>(&call.arguments)
            {
                Ok(args) => self.search_knowledge(scope, args).await,
                Err(err) => ToolOutcome::error(format!(
                    "the arguments must be a JSON object with `query`: {err}"
                )),
            },
            AgentTool::AskAgent => match serde_json::from_str::<AskAgentArgs>(&call.arguments) {
                Ok(args) => self.ask_agent(scope, call_id, args).await,
                Err(err) => ToolOutcome::error(format!(
                    "the arguments must be a JSON object with `agentId` and `message`: {err}"
                )),
            },
        }
    }

    /// Searches the agent's knowledge bases (those its owner still owns) and gives the
    /// model the passages, numbered, with their documents; the answer cites them.
    async fn search_knowledge(&self, scope: &Scope, args: SearchArgs) -> ToolOutcome {
        let ids = &scope.agent.definition.knowledge_base_ids;
        if ids.is_empty() {
            return ToolOutcome::error("no knowledge base is attached to you");
        }
        let Some(knowledge) = self.chat.knowledge() else {
            return ToolOutcome::error("knowledge search is not available");
        };
        let found = knowledge
            .search_for_agent(
                scope.agent.owner_id,
                ids,
                &args.query,
                self.turn.owner_id,
                self.turn.priority,
            )
            .await;
        match found {
            Ok(found) if found.passages.is_empty() => {
                ToolOutcome::ok(format!("No passage matches `{}`.", args.query))
            }
            Ok(found) => {
                let listed: Vec<String> = found
                    .passages
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        format!(
                            "[{}] {} ({}):\n{}",
                            i + 1,
                            p.document_name,
                            p.chunk_id,
                            p.snippet
                        )
                    })
                    .collect();
                ToolOutcome {
                    citations: found.passages,
                    ..ToolOutcome::ok(format!(
                        "Passages ({} search), best first:\n\n{}",
                        found.mode.as_str(),
                        listed.join("\n\n")
                    ))
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "a knowledge search failed");
                ToolOutcome::error("the knowledge search failed")
            }
        }
    }

    /// Hands a question to another agent the caller may ask, and returns its answer.
    fn ask_agent<'s>(
        &'s self,
        scope: &'s Scope,
        call_id: &'s str,
        args: AskAgentArgs,
    ) -> BoxFuture<'s, ToolOutcome> {
        async move {
            let Ok(id) = args.agent_id.trim().parse::<Uuid>() else {
                return ToolOutcome::error("`agentId` must be the id of an agent you may ask");
            };
            if !scope.agent.definition.handoff_agent_ids.contains(&id) {
                return ToolOutcome::error(format!("you may not ask agent {id}"));
            }
            if scope.chain.contains(&id) {
                return ToolOutcome::error(format!(
                    "refused: agent {id} is already answering in this chain (a cycle)"
                ));
            }
            if scope.depth >= self.settings.max_depth {
                return ToolOutcome::error(format!(
                    "refused: hand-offs may nest at most {} deep",
                    self.settings.max_depth
                ));
            }
            // The agents an agent hands off to are those its owner may use, whoever chats.
            let agent = match self.chat.store().find_agent(id).await {
                Ok(Some(agent)) if agent.usable_by(scope.agent.owner_id) => Arc::new(agent),
                Ok(_) => return ToolOutcome::error(format!("there is no agent {id}")),
                Err(err) => {
                    tracing::warn!(error = %err, "loading an agent to ask failed");
                    return ToolOutcome::error("the agent could not be loaded");
                }
            };
            let mut chain = scope.chain.clone();
            chain.push(agent.id);
            let inner = Scope {
                agent: agent.clone(),
                depth: scope.depth + 1,
                chain,
                parent_call_id: Some(call_id.to_string()),
            };
            let mut outcome = match self.sub_turn(&inner, args.message).await {
                Ok(answer) => ToolOutcome::ok(answer),
                Err(err) => ToolOutcome::error(format!(
                    "agent {} could not answer: {err}",
                    agent.definition.name
                )),
            };
            outcome.answered_by = Some((agent.id, agent.version));
            outcome
        }
        .boxed()
    }

    /// `scope`'s agent answers `message`, with its own bounded loop of whole answers.
    async fn sub_turn(&self, scope: &Scope, message: String) -> Result<String, String> {
        let definition = &scope.agent.definition;
        let mut messages = Vec::new();
        if !definition.instructions.trim().is_empty() {
            messages.push(ChatMessage::text(
                MessageRole::System,
                definition.instructions.clone(),
            ));
        }
        messages.push(ChatMessage::text(MessageRole::User, message));
        let model = definition
            .model
            .clone()
            .unwrap_or_else(|| self.chat.models().default_id());
        let tools = self.specs(scope).await;
        for step in 1..=self.settings.max_steps {
            let last = step == self.settings.max_steps;
            let request = ChatRequest {
                model: model.clone(),
                messages: messages.clone(),
                sampling: sampling_of(&scope.agent),
                tools: if last { Vec::new() } else { tools.clone() },
            };
            let completion = self
                .chat
                .complete_agent_step(self.turn.owner_id, self.turn.priority, request)
                .await
                .map_err(|e| e.to_string())?;
            if completion.tool_calls.is_empty() || last {
                return Ok(completion.content);
            }
            let calls = completion.tool_calls;
            messages.push(ChatMessage::calling(completion.content, calls.clone()));
            messages.extend(self.run_calls(scope, step, calls).await);
        }
        Err("no answer within the step limit".into())
    }
}

/// An agent's sampling parameters.
pub fn sampling_of(agent: &AgentRecord) -> Sampling {
    Sampling {
        temperature: agent.definition.temperature,
        top_p: agent.definition.top_p,
        max_tokens: agent.definition.max_tokens,
        json: agent.definition.response_format == ResponseFormat::Json,
    }
}
