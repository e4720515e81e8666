//! Answer validation (#26): every answer is checked by a background job (`empty`,
//! `truncated`, `refusal`, `citations`, `json`, and a judge model when one is set), the
//! verdicts are `answer_validated` events shown on the message and sent to the room; users
//! rate answers (`message_rated`, over REST and the WebSocket); an admin reads the quality
//! report. The upstream is the mock, scripted per conversation by its system prompt.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::mock_llm::{MockLlm, Reply, Whole};
use crate::streaming::streaming_app_with;
use crate::titles::job_with_status;
use crate::ws_client::WsClient;

/// The start of what the judge is asked (src/domain/validation.rs).
const JUDGE_PROMPT_START: &str = "You grade an AI assistant's answer.";

async fn validated_app(backend: Backend, extra: &[(&str, &str)]) -> Option<(TestApp, MockLlm)> {
    let mut env = vec![
        ("VALIDATION_ENABLED", "true"),
        ("JOB_RETRY_BASE_MS", "20"),
        ("UPSTREAM_MAX_RETRIES", "0"),
    ];
    env.extend_from_slice(extra);
    streaming_app_with(backend, 0, &env).await
}

/// A conversation whose system prompt is `key`, so the mock's script for `key` answers in it.
async fn scripted_conversation(app: &TestApp, token: &str, key: &str) -> String {
    let created = expect_json(
        app.post(
            "/api/conversations",
            Some(token),
            &json!({"title": "checks", "systemPrompt": key}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    str_field(&created, "id")
}

fn unique_key(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::now_v7())
}

/// The message `message_id` of the conversation, once `ready` holds for it (10 s at most).
async fn message_when(
    app: &TestApp,
    token: &str,
    conversation: &str,
    message_id: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = app.get_conversation(token, conversation).await["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == message_id)
            .cloned()
            .unwrap_or(Value::Null);
        if ready(&found) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message {message_id} never got there: {found}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn validated(app: &TestApp, token: &str, conversation: &str, message_id: &str) -> Value {
    message_when(app, token, conversation, message_id, |m| {
        !m["validation"].is_null()
    })
    .await
}

/// `name`'s verdict in a validation (`None` when it did not run).
fn verdict(validation: &Value, name: &str) -> Option<bool> {
    validation["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["passed"].as_bool().unwrap())
}

fn detail(validation: &Value, name: &str) -> String {
    validation["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

async fn answer(ws: &mut WsClient, conversation: &str, text: &str) -> String {
    let done = ws.chat(Some(conversation), text).await;
    str_field(&done.complete, "messageId")
}

backend_test!(
    each_check_passes_on_a_good_answer_and_fails_on_a_bad_one,
    backend | backend: Backend | async move {
        let Some((app, mock)) = validated_app(backend, &[]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let key = unique_key("checks");
        mock.script(&key, vec![
            Reply::Text("Lisbon is the capital of Portugal.".into()),
            Reply::Text(String::new()),
            Reply::Ended { text: "Once upon a time there".into(), finish: "length" },
            Reply::Refusal("I can't help with that.".into()),
            Reply::Text("I'm sorry, but I can't help with that request.".into()),
            Reply::Text("As the handbook says [2], rest well.".into()),
        ]);
        let conversation = scripted_conversation(&app, &user.access, &key).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let mut ids = Vec::new();
        for question in ["capital?", "empty?", "story?", "bad?", "bad again?", "cite?"] {
            ids.push(answer(&mut ws, &conversation, question).await);
        }
        let mut results = Vec::new();
        for id in &ids {
            results.push(validated(&app, &user.access, &conversation, id).await["validation"].clone());
        }
        // A check landing between two turns changes no context: the early request stands,
        // and each answer took one upstream request.
        assert_eq!(mock.requests().len(), ids.len(), "{:?}", mock.requests());
        let good = &results[0];
        for name in ["empty", "truncated", "refusal"] {
            assert_eq!(verdict(good, name), Some(true), "{name}: {good}");
        }
        assert_eq!(verdict(good, "citations"), None, "nothing retrieved, nothing cited");
        assert_eq!(verdict(good, "json"), None, "no JSON asked for");

        assert_eq!(verdict(&results[1], "empty"), Some(false), "{}", results[1]);
        assert_eq!(verdict(&results[1], "truncated"), Some(true));

        assert_eq!(verdict(&results[2], "truncated"), Some(false), "{}", results[2]);
        assert!(detail(&results[2], "truncated").contains("length"));
        assert_eq!(verdict(&results[2], "empty"), Some(true));

        // The provider's refusal field, then the documented phrase list.
        assert_eq!(verdict(&results[3], "refusal"), Some(false), "{}", results[3]);
        assert!(detail(&results[3], "refusal").contains("I can't help with that."));
        assert_eq!(verdict(&results[4], "refusal"), Some(false), "{}", results[4]);

        assert_eq!(verdict(&results[5], "citations"), Some(false), "{}", results[5]);
        assert!(detail(&results[5], "citations").contains("[2]"));
        assert_eq!(verdict(&results[5], "refusal"), Some(true));

        // Each verdict is an `answer_validated` event by the server, and none came twice.
        let events = app.events(&user.access, &conversation, "").await;
        let validations: Vec<&Value> = events.iter().filter(|e| e["type"] == "answer_validated").collect();
        assert_eq!(validations.len(), ids.len(), "{validations:?}");
        assert!(validations.iter().all(|e| e["actorId"].is_null()));
        let first = validations.iter().find(|e| e["data"]["messageId"] == ids[0].as_str()).unwrap();
        assert_eq!(first["data"]["checks"], good["checks"]);

        // Counted per check and verdict.
        let metrics = crate::hardening_support::metrics_text(&app).await;
        let failed_refusals = metrics
            .lines()
            .filter(|l| l.starts_with("chat_validation_checks_total{") && l.contains("check=\"refusal\"") && l.contains("verdict=\"fail\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>();
        assert_eq!(failed_refusals, 2.0, "{metrics}");
    }
);

backend_test!(
    an_agent_that_asks_for_json_gets_it_asked_and_checked,
    backend | backend: Backend | async move {
        let Some((app, mock)) = validated_app(backend, &[]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let key = unique_key("json-agent");
        let agent = expect_json(
            app.post("/api/agents", Some(&user.access), &json!({
                "name": "Extractor", "instructions": key, "responseFormat": "json",
            })).await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(agent["responseFormat"], "json");
        mock.script(&key, vec![
            Reply::Text("{\"city\": \"Lisbon\"}".into()),
            Reply::Text("{\"city\": \"Lisb".into()),
        ]);
        let created = expect_json(
            app.post("/api/conversations", Some(&user.access), &json!({"title": "json", "agentId": agent["id"]})).await,
            StatusCode::CREATED,
        )
        .await;
        let conversation = str_field(&created, "id");
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let good = answer(&mut ws, &conversation, "Where?").await;
        let bad = answer(&mut ws, &conversation, "Where again?").await;
        let good = validated(&app, &user.access, &conversation, &good).await;
        let bad = validated(&app, &user.access, &conversation, &bad).await;
        assert_eq!(verdict(&good["validation"], "json"), Some(true), "{good}");
        assert_eq!(verdict(&bad["validation"], "json"), Some(false), "{bad}");
        assert!(detail(&bad["validation"], "json").contains("not valid JSON"));
        // The provider was asked for a JSON object.
        let asked: Vec<Value> = mock
            .requests()
            .into_iter()
            .filter(|r| r["messages"][0]["content"].as_str().is_some_and(|c| c.contains(&key)))
            .collect();
        assert_eq!(asked.len(), 2);
        assert!(asked.iter().all(|r| r["response_format"]["type"] == "json_object"), "{asked:?}");
        // An agent without it asks for nothing of the kind.
        let plain = expect_json(
            app.post("/api/agents", Some(&user.access), &json!({"name": "Plain"})).await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(plain["responseFormat"], "text");
    }
);

backend_test!(
    the_judge_scores_a_checked_answer_and_a_bad_verdict_is_not_recorded,
    backend | backend: Backend | async move {
        let Some((app, mock)) = validated_app(backend, &[("VALIDATION_JUDGE_MODEL", "mock-model")]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let key = unique_key("judged");
        mock.script(&key, vec![
            Reply::Text("Canberra is the capital of Australia.".into()),
            Reply::Text("Sydney, probably.".into()),
        ]);
        mock.script(JUDGE_PROMPT_START, vec![
            Reply::Text("{\"relevance\": 5, \"groundedness\": 4, \"reason\": \"Direct and correct.\"}".into()),
            Reply::Text("I would rate it highly.".into()),
        ]);
        let conversation = scripted_conversation(&app, &user.access, &key).await;
        let mut watcher = WsClient::authed(&app.address, &user.access).await;
        watcher.send(json!({"type": "join_conversation", "conversationId": conversation})).await;
        watcher.expect_type("joined").await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let first = answer(&mut ws, &conversation, "What is the capital of Australia?").await;
        let judged = message_when(&app, &user.access, &conversation, &first, |m| {
            !m["validation"]["judge"].is_null()
        })
        .await;
        let judge = &judged["validation"]["judge"];
        assert_eq!((judge["relevance"].as_i64(), judge["groundedness"].as_i64()), (Some(5), Some(4)), "{judged}");
        assert_eq!(judge["reason"], "Direct and correct.");
        assert_eq!(judge["model"], "mock-model");
        assert_eq!(verdict(&judged["validation"], "empty"), Some(true), "the checks stay beside the scores");

        // The judge read the question and the answer, in the background (not streamed).
        let asked: Vec<Value> = mock
            .requests()
            .into_iter()
            .filter(|r| r["messages"][0]["content"].as_str().is_some_and(|c| c.starts_with(JUDGE_PROMPT_START)))
            .collect();
        assert!(!asked.is_empty());
        let shown = asked[0]["messages"][1]["content"].as_str().unwrap();
        assert!(shown.contains("What is the capital of Australia?") && shown.contains("Canberra is the capital"), "{shown}");
        assert_eq!(asked[0]["stream"], Value::Null);

        // The room heard both: the checks, then the checks with the scores.
        let mut heard = Vec::new();
        while heard.len() < 2 {
            let frames = watcher.until("message_validated").await;
            let frame = frames.last().unwrap().clone();
            if frame["messageId"] == first.as_str() {
                heard.push(frame);
            }
        }
        assert!(heard[0]["validation"]["judge"].is_null(), "{heard:?}");
        assert_eq!(heard[1]["validation"]["judge"]["relevance"], 5);
        assert_eq!(heard[1]["conversationId"], conversation.as_str());

        // A reply that is not the JSON asked for fails the judge job for good; the checks stay.
        let second = answer(&mut ws, &conversation, "And of New Zealand?").await;
        let admin = &user; // the first user registered is the admin
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let jobs = as_array(expect_json(app.get("/api/admin/jobs?kind=judge", Some(&admin.access)).await, StatusCode::OK).await);
            if jobs.iter().any(|j| j["status"] == "failed") {
                let failed = jobs.iter().find(|j| j["status"] == "failed").unwrap();
                assert_eq!(failed["attempts"], 1, "a permanent failure is not retried: {failed}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no failed judge job: {jobs:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let second = validated(&app, &user.access, &conversation, &second).await;
        assert!(second["validation"]["judge"].is_null(), "{second}");
        assert_eq!(verdict(&second["validation"], "empty"), Some(true));
    }
);

backend_test!(
    ratings_change_and_go_through_the_log,
    backend | backend: Backend | async move {
        let Some((app, mock)) = validated_app(backend, &[("VALIDATION_ENABLED", "false")]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let key = unique_key("rated");
        mock.script(&key, vec![Reply::Text("Rest, fluids, patience.".into())]);
        let conversation = scripted_conversation(&app, &user.access, &key).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let message = answer(&mut ws, &conversation, "How do I get over a cold?").await;
        let path = format!("/api/conversations/{conversation}/messages/{message}/rating");

        let up = expect_json(
            app.send(app.client.put(app.url(&path)).bearer_auth(&user.access).json(&json!({"rating": "up", "comment": " Helpful "}))).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(up["rating"]["rating"], "up");
        assert_eq!(up["rating"]["comment"], "Helpful");
        timestamp(&up["rating"], "ratedAt");
        // The same again records nothing.
        expect_json(
            app.send(app.client.put(app.url(&path)).bearer_auth(&user.access).json(&json!({"rating": "up", "comment": "Helpful"}))).await,
            StatusCode::OK,
        )
        .await;
        let down = expect_json(
            app.send(app.client.put(app.url(&path)).bearer_auth(&user.access).json(&json!({"rating": "down"}))).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(down["rating"]["rating"], "down");
        assert!(down["rating"]["comment"].is_null());
        expect_status(app.delete(&path, Some(&user.access)).await, StatusCode::NO_CONTENT).await;
        expect_status(app.delete(&path, Some(&user.access)).await, StatusCode::NO_CONTENT).await;
        let now = message_when(&app, &user.access, &conversation, &message, |m| !m.is_null()).await;
        assert!(now["rating"].is_null(), "{now}");

        let events = app.events(&user.access, &conversation, "").await;
        let rated: Vec<&Value> = events.iter().filter(|e| e["type"] == "message_rated").collect();
        assert_eq!(rated.len(), 3, "{rated:?}");
        assert_eq!(rated[0]["data"]["rating"], "up");
        assert_eq!(rated[1]["data"]["rating"], "down");
        assert!(rated[2]["data"]["rating"].is_null() && rated[2]["data"].get("rating").is_some(), "a removal is `rating: null`");
        assert_eq!(rated[0]["actorId"], user.id.as_str());

        // Time travel: as of the second rating, the answer is rated down.
        let at = rated[1]["seq"].as_i64().unwrap();
        let then = expect_json(app.get(&format!("/api/conversations/{conversation}?atSeq={at}"), Some(&user.access)).await, StatusCode::OK).await;
        let rated_then = then["messages"].as_array().unwrap().iter().find(|m| m["id"] == message.as_str()).unwrap();
        assert_eq!(rated_then["rating"]["rating"], "down");
        let at = rated[0]["seq"].as_i64().unwrap();
        let then = expect_json(app.get(&format!("/api/conversations/{conversation}?atSeq={at}"), Some(&user.access)).await, StatusCode::OK).await;
        let rated_then = then["messages"].as_array().unwrap().iter().find(|m| m["id"] == message.as_str()).unwrap();
        assert_eq!(rated_then["rating"]["comment"], "Helpful");

        // Over the WebSocket: the event comes back (to a socket that has not joined the room).
        let mut other = WsClient::authed(&app.address, &user.access).await;
        other.send(json!({"type": "rate_message", "conversationId": conversation, "messageId": message, "rating": "up", "comment": "on second thought"})).await;
        let frame = other.expect_type("event").await;
        assert_eq!(frame["event"]["type"], "message_rated");
        assert_eq!(frame["event"]["data"]["comment"], "on second thought");

        // Rebuilding the projections from the log gives the rating back.
        let db = app.db().await;
        chat_server::store::rebuild_projections(&db).await.expect("rebuild");
        let rebuilt = message_when(&app, &user.access, &conversation, &message, |m| !m.is_null()).await;
        assert_eq!(rebuilt["rating"]["rating"], "up");
        assert_eq!(rebuilt["rating"]["comment"], "on second thought");

        // Counted.
        let metrics = crate::hardening_support::metrics_text(&app).await;
        assert!(metrics.lines().any(|l| l.starts_with("chat_message_ratings_total{") && l.contains("rating=\"down\"") && l.ends_with(" 1")), "{metrics}");

        // `rating: null` removes it over the WebSocket too; a frame without `rating` is an error.
        other.send(json!({"type": "rate_message", "conversationId": conversation, "messageId": message})).await;
        let error = other.expect_type("error").await;
        assert_eq!(error["code"], "VALIDATION_ERROR");
        assert!(error["message"].as_str().unwrap().contains("rating"), "{error}");
        other.send(json!({"type": "rate_message", "conversationId": conversation, "messageId": message, "rating": null})).await;
        let removed = other.expect_type("event").await;
        assert!(removed["event"]["data"]["rating"].is_null(), "{removed}");
        let now = message_when(&app, &user.access, &conversation, &message, |m| !m.is_null()).await;
        assert!(now["rating"].is_null(), "{now}");
    }
);

backend_test!(
    only_the_owner_rates_and_only_answers,
    backend | backend: Backend | async move {
        let Some((app, mock)) = validated_app(backend, &[("VALIDATION_ENABLED", "false")]).await else { return };
        let owner = app.register_user(&unique_email()).await;
        let stranger = app.register_user(&unique_email()).await;
        let key = unique_key("owned");
        mock.script(&key, vec![Reply::Text("Mine.".into())]);
        let conversation = scripted_conversation(&app, &owner.access, &key).await;
        let mut ws = WsClient::authed(&app.address, &owner.access).await;
        let done = ws.chat(Some(&conversation), "whose?").await;
        let message = str_field(&done.complete, "messageId");
        let question = str_field(done.start.as_ref().unwrap(), "userMessageId");
        let path = format!("/api/conversations/{conversation}/messages/{message}/rating");
        let put = |token: &str, body: Value, path: &str| {
            app.client.put(app.url(path)).bearer_auth(token.to_string()).json(&body)
        };

        expect_error(app.send(put(&stranger.access, json!({"rating": "up"}), &path)).await, StatusCode::NOT_FOUND, "CONVERSATION_NOT_FOUND").await;
        expect_error(app.delete(&path, Some(&stranger.access)).await, StatusCode::NOT_FOUND, "CONVERSATION_NOT_FOUND").await;
        let mut theirs = WsClient::authed(&app.address, &stranger.access).await;
        theirs.send(json!({"type": "rate_message", "conversationId": conversation, "messageId": message, "rating": "down"})).await;
        let error = theirs.expect_type("error").await;
        assert_eq!(error["code"], "CONVERSATION_NOT_FOUND", "{error}");

        // Bad input: a 4xx naming the field, never a 500.
        let user_message = format!("/api/conversations/{conversation}/messages/{question}/rating");
        let err = expect_error(app.send(put(&owner.access, json!({"rating": "up"}), &user_message)).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(err["message"].as_str().unwrap().contains("messageId"), "{err}");
        let missing = format!("/api/conversations/{conversation}/messages/{}/rating", uuid::Uuid::now_v7());
        expect_error(app.send(put(&owner.access, json!({"rating": "up"}), &missing)).await, StatusCode::NOT_FOUND, "MESSAGE_NOT_FOUND").await;
        for (body, field) in [
            (json!({"rating": "sideways"}), "rating"),
            (json!({}), "rating"),
            (json!({"rating": "up", "comment": "x".repeat(2001)}), "comment"),
            (json!({"rating": "up", "extra": 1}), "extra"),
        ] {
            let err = expect_error(app.send(put(&owner.access, body.clone(), &path)).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert!(err["message"].as_str().unwrap().contains(field), "{body}: {err}");
        }
        expect_error(
            app.send(put(&owner.access, json!({"rating": "up"}), &format!("/api/conversations/{conversation}/messages/not-a-uuid/rating"))).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        expect_error(app.send(app.client.put(app.url(&path)).json(&json!({"rating": "up"}))).await, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let events = app.events(&owner.access, &conversation, "").await;
        assert!(events.iter().all(|e| e["type"] != "message_rated"), "nothing was recorded: {events:?}");
    }
);

backend_test!(
    the_on_demand_check_runs_the_checks_and_stores_nothing,
    backend | backend: Backend | async move {
        let Some((app, mock)) = validated_app(backend, &[("VALIDATION_JUDGE_MODEL", "mock-model")]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let chunk = uuid::Uuid::now_v7();
        let body = json!({
            "text": format!("Tea reached Britain in the 1650s [1], see [{chunk}]."),
            "passages": [{"text": "Tea arrived in England in the 1650s.", "chunkId": chunk}],
        });
        let result = expect_json(app.post("/api/validation/check", Some(&user.access), &body).await, StatusCode::OK).await;
        assert_eq!(verdict(&result, "citations"), Some(true), "{result}");
        assert!(result.get("judge").is_none() || result["judge"].is_null());

        let bad = json!({"text": "Tea is from Mars [4].", "passages": [{"text": "Tea is from China."}], "expectJson": true, "finishReason": "length"});
        let result = expect_json(app.post("/api/validation/check", Some(&user.access), &bad).await, StatusCode::OK).await;
        assert_eq!(verdict(&result, "citations"), Some(false), "{result}");
        assert_eq!(verdict(&result, "json"), Some(false));
        assert_eq!(verdict(&result, "truncated"), Some(false));

        mock.script(JUDGE_PROMPT_START, vec![Reply::Text("{\"relevance\": 2, \"groundedness\": 1, \"reason\": \"Not supported.\"}".into())]);
        let judged = json!({"text": "Tea is from Mars.", "passages": [{"text": "Tea is from China."}], "judge": true, "question": "Where is tea from?"});
        let result = expect_json(app.post("/api/validation/check", Some(&user.access), &judged).await, StatusCode::OK).await;
        assert_eq!(result["judge"]["groundedness"], 1, "{result}");
        assert_eq!(result["judge"]["model"], "mock-model");
        let asked = mock.requests().into_iter().rev().find(|r| r["messages"][0]["content"].as_str().is_some_and(|c| c.starts_with(JUDGE_PROMPT_START))).unwrap();
        let shown = asked["messages"][1]["content"].as_str().unwrap();
        assert!(shown.contains("Where is tea from?") && shown.contains("[1] Tea is from China."), "{shown}");

        // A judge reply that cannot be read is the upstream's failure.
        mock.set_whole(Whole::Reply("five stars".into()));
        expect_error(app.post("/api/validation/check", Some(&user.access), &judged).await, StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;

        for (body, field) in [
            (json!({}), "text"),
            (json!({"text": 5}), "text"),
            (json!({"text": "x", "passages": [{"chunkId": "nope", "text": "t"}]}), "chunkId"),
        ] {
            let err = expect_error(app.post("/api/validation/check", Some(&user.access), &body).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert!(err["message"].as_str().unwrap().contains(field), "{body}: {err}");
        }
        expect_error(app.post("/api/validation/check", None, &json!({"text": "x"})).await, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let conversations = app.list_conversations(&user.access, "").await;
        assert!(conversations.is_empty(), "nothing stored");
    }
);

backend_test!(
    the_on_demand_judge_needs_a_judge_model,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = validated_app(backend, &[]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let err = expect_error(
            app.post("/api/validation/check", Some(&user.access), &json!({"text": "x", "judge": true})).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err["message"].as_str().unwrap().contains("VALIDATION_JUDGE_MODEL"), "{err}");
    }
);

backend_test!(
    a_check_job_survives_a_server_killed_while_it_waited,
    backend | backend: Backend | async move {
        let Some(scratch) = scratch(backend).await else { return };
        let mock = MockLlm::start(Duration::from_millis(0)).await;
        // The judge call hangs until the server is killed: its job is running then.
        mock.set_whole(Whole::Hang);
        let mut overrides: Vec<(&str, String)> = mock.env();
        overrides.extend([
            ("VALIDATION_ENABLED", "true".to_string()),
            ("VALIDATION_JUDGE_MODEL", "mock-model".to_string()),
            ("JOB_LEASE_MS", "1000".to_string()),
            ("UPSTREAM_MAX_RETRIES", "0".to_string()),
        ]);
        let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let vars = test_env(&scratch.database_url, &scratch.data_dir, &overrides);
        let (mut server, address) = crate::crash::start_server(&vars, &scratch.data_dir).await;
        let mut app = scratch;
        app.address = address;
        let admin = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &admin.access).await;
        let done = ws.chat(None, "Why is the sky blue?").await;
        let conversation = str_field(&done.complete, "conversationId");
        let message = str_field(&done.complete, "messageId");
        let running = job_with_status(&app, &admin.access, "judge", "running").await;
        server.kill().await.expect("SIGKILL the server");
        drop(ws);

        mock.set_whole(Whole::Reply("{\"relevance\": 3, \"groundedness\": 3, \"reason\": \"Fine.\"}".into()));
        let (_server, address) = crate::crash::start_server(&vars, &app.data_dir).await;
        app.address = address;
        let done = job_with_status(&app, &admin.access, "judge", "done").await;
        assert_eq!(done["id"], running["id"]);
        assert_eq!(done["attempts"], 2, "{done}");
        let judged = message_when(&app, &admin.access, &conversation, &message, |m| !m["validation"]["judge"].is_null()).await;
        assert_eq!(judged["validation"]["judge"]["reason"], "Fine.");
        // The checks the first server recorded are kept beside the scores, once each.
        assert_eq!(verdict(&judged["validation"], "empty"), Some(true));
        let events = app.events(&admin.access, &conversation, "").await;
        assert_eq!(events.iter().filter(|e| e["type"] == "answer_validated").count(), 2, "{events:?}");
    }
);

/// One answer row of a known history, written straight into the projection the report reads.
struct Seeded {
    model: &'static str,
    agent: Option<uuid::Uuid>,
    role: &'static str,
    status: &'static str,
    day: i64,
    run: i32,
    failed: i32,
    judge: Option<(i32, i32)>,
    rating: Option<&'static str>,
    first_ms: Option<i64>,
    total_ms: i64,
}

async fn seed(app: &TestApp, conversation: &str, rows: &[Seeded]) {
    use sea_orm::{ActiveModelTrait, Set};
    let db = app.db().await;
    let start = chrono::DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    for (i, r) in rows.iter().enumerate() {
        let at = start + chrono::Duration::days(r.day) + chrono::Duration::minutes(i as i64);
        entity::messages::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            conversation_id: Set(conversation.parse().unwrap()),
            position: Set(1_000 + i as i64),
            role: Set(r.role.into()),
            content: Set("seeded".into()),
            status: Set(r.status.into()),
            model: Set(Some(r.model.into())),
            prompt_tokens: Set(Some(10)),
            completion_tokens: Set(Some(20)),
            client_message_id: Set(None),
            instance_id: Set(None),
            fallback_reason: Set(None),
            tool_calls: Set(None),
            citations: Set(None),
            agent_id: Set(r.agent),
            first_chunk_ms: Set(r.first_ms),
            total_ms: Set(Some(r.total_ms)),
            validation: Set(None),
            checks_run: Set(Some(r.run)),
            checks_failed: Set(Some(r.failed)),
            judge_relevance: Set(r.judge.map(|j| j.0)),
            judge_groundedness: Set(r.judge.map(|j| j.1)),
            rating: Set(r.rating.map(Into::into)),
            rating_comment: Set(None),
            rated_at: Set(r.rating.map(|_| at)),
            created_at: Set(at),
            updated_at: Set(at),
        }
        .insert(&db)
        .await
        .expect("seed a message row");
    }
    let _ = db.close().await;
}

backend_test!(
    the_report_counts_a_known_history_per_model_and_agent,
    backend | backend: Backend | async move {
        let Some((app, mock)) = validated_app(backend, &[]).await else { return };
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let conversation = str_field(&app.create_conversation(&admin.access, "seeded").await, "id");
        let (agent, other_agent) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let row = |model, agent, run, failed, judge, rating, first_ms, total_ms| Seeded {
            model, agent, role: "assistant", status: "complete", day: 3, run, failed, judge, rating, first_ms, total_ms,
        };
        seed(&app, &conversation, &[
            row("m-a", None, 7, 0, Some((5, 4)), Some("up"), Some(100), 1000),
            row("m-a", None, 7, 2, Some((2, 3)), Some("down"), Some(200), 2000),
            row("m-a", None, 15, 8, None, None, Some(300), 3000),
            Seeded { status: "failed", ..row("m-a", None, 7, 5, Some((1, 1)), None, None, 4000) },
            row("m-b", Some(agent), 23, 16, Some((3, 5)), Some("up"), Some(50), 500),
            // The same model through an agent: a group of its own, ranked apart.
            row("m-a", Some(other_agent), 7, 0, None, None, Some(150), 1500),
            // Not counted: a user message, an answer before the window, one still streaming.
            Seeded { role: "user", ..row("m-a", None, 7, 7, None, None, Some(1), 1) },
            Seeded { day: -2, ..row("m-a", None, 7, 7, None, None, Some(1), 1) },
            Seeded { status: "streaming", ..row("m-a", None, 7, 7, None, None, Some(1), 1) },
        ])
        .await;
        let window = "from=2020-01-01T00:00:00Z&to=2020-01-11T00:00:00Z";
        let report = expect_json(app.get(&format!("/api/validation/report?{window}"), Some(&admin.access)).await, StatusCode::OK).await;
        assert_eq!(timestamp(&report, "from").to_rfc3339(), "2020-01-01T00:00:00+00:00");
        let groups = report["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 3, "{report}");
        let a = &groups[0];
        assert_eq!((a["model"].as_str(), a["agentId"].is_null(), a["answers"].as_i64()), (Some("m-a"), true, Some(4)), "{a}");
        assert_eq!(a["checks"], json!({
            "empty": {"run": 4, "failed": 1, "rate": 0.25},
            "truncated": {"run": 4, "failed": 1, "rate": 0.25},
            "refusal": {"run": 4, "failed": 1, "rate": 0.25},
            "citations": {"run": 1, "failed": 1, "rate": 1.0},
        }));
        assert_eq!(a["judge"]["count"], 3);
        assert_eq!(a["judge"]["histogram"], json!([1, 1, 0, 1, 0]), "the lower score of each: 4, 2, 1");
        let close = |v: &Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-9;
        assert!(close(&a["judge"]["mean"], 7.0 / 3.0), "{a}");
        assert!(close(&a["judge"]["relevanceMean"], 8.0 / 3.0));
        assert!(close(&a["judge"]["groundednessMean"], 8.0 / 3.0));
        assert_eq!(a["ratings"], json!({"up": 1, "down": 1}));
        assert_eq!(a["firstChunkMs"], json!({"p50": 200, "p95": 300}), "nearest rank over 100, 200, 300");
        assert_eq!(a["totalMs"], json!({"p50": 2000, "p95": 4000}));
        assert_eq!(a["tokens"], json!({"prompt": 40, "completion": 80}));
        let other = &groups[1];
        assert_eq!((other["model"].as_str(), other["agentId"].as_str()), (Some("m-a"), Some(other_agent.to_string().as_str())));
        assert_eq!(other["firstChunkMs"], json!({"p50": 150, "p95": 150}));
        assert_eq!(other["judge"], json!({"count": 0, "mean": null, "histogram": [0, 0, 0, 0, 0], "relevanceMean": null, "groundednessMean": null}));
        let b = &groups[2];
        assert_eq!((b["model"].as_str(), b["agentId"].as_str(), b["answers"].as_i64()), (Some("m-b"), Some(agent.to_string().as_str()), Some(1)));
        assert_eq!(b["checks"]["json"], json!({"run": 1, "failed": 1, "rate": 1.0}));
        assert_eq!(b["checks"]["empty"]["failed"], 0);
        assert_eq!(b["judge"]["histogram"], json!([0, 0, 1, 0, 0]));
        assert_eq!(b["firstChunkMs"], json!({"p50": 50, "p95": 50}));

        // Filters by model and by agent.
        for filter in ["model=m-b".to_string(), format!("agentId={agent}")] {
            let only = expect_json(app.get(&format!("/api/validation/report?{window}&{filter}"), Some(&admin.access)).await, StatusCode::OK).await;
            let models: Vec<&str> = only["groups"].as_array().unwrap().iter().map(|g| g["model"].as_str().unwrap()).collect();
            assert_eq!(models, ["m-b"], "{filter}");
        }
        // A window with nothing in it.
        let empty = expect_json(app.get("/api/validation/report?from=2019-01-01T00:00:00Z&to=2019-02-01T00:00:00Z", Some(&admin.access)).await, StatusCode::OK).await;
        assert_eq!(empty["groups"], json!([]));

        // A real answer, checked and rated, is in the default window (the last 30 days).
        let key = unique_key("reported");
        mock.script(&key, vec![Reply::Text("Reported.".into())]);
        let live = scripted_conversation(&app, &user.access, &key).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let message = answer(&mut ws, &live, "report me").await;
        validated(&app, &user.access, &live, &message).await;
        let path = format!("/api/conversations/{live}/messages/{message}/rating");
        expect_json(app.send(app.client.put(app.url(&path)).bearer_auth(&user.access).json(&json!({"rating": "down"}))).await, StatusCode::OK).await;
        let now = expect_json(app.get("/api/validation/report", Some(&admin.access)).await, StatusCode::OK).await;
        let live_group = now["groups"].as_array().unwrap().iter().find(|g| g["model"] == "mock-model").cloned().unwrap_or_default();
        assert_eq!(live_group["answers"], 1, "{now}");
        assert_eq!(live_group["ratings"], json!({"up": 0, "down": 1}));
        assert_eq!(live_group["checks"]["empty"], json!({"run": 1, "failed": 0, "rate": 0.0}));
        assert!(live_group["firstChunkMs"]["p50"].as_i64().is_some(), "{live_group}");
        assert!(live_group["totalMs"]["p50"].as_i64().unwrap() >= live_group["firstChunkMs"]["p50"].as_i64().unwrap());

        // Admins only; a window the wrong way round or too long is a 400 naming `from`.
        expect_error(app.get("/api/validation/report", Some(&user.access)).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        expect_error(app.get("/api/validation/report", None).await, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        for query in ["from=2020-01-02T00:00:00Z&to=2020-01-01T00:00:00Z", "from=2000-01-01T00:00:00Z&to=2020-01-01T00:00:00Z"] {
            let err = expect_error(app.get(&format!("/api/validation/report?{query}"), Some(&admin.access)).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert!(err["message"].as_str().unwrap().contains("from"), "{err}");
        }
        for query in ["from=yesterday", "agentId=nope"] {
            expect_error(app.get(&format!("/api/validation/report?{query}"), Some(&admin.access)).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        }
    }
);

backend_test!(
    citations_are_checked_against_the_passages_an_answer_retrieved,
    backend | backend: Backend | async move {
        use crate::knowledge::{create_kb, settled, upload_to};
        use crate::mock_llm::call;
        let Some((app, mock)) = validated_app(backend, &[]).await else { return };
        let owner = app.register_user(&unique_email()).await;
        let kb = create_kb(&app, &owner.access, "Manual").await;
        let uploaded = expect_json(
            upload_to(&app, &owner.access, &kb, "pump.txt", b"The pump is reset by holding the red button for ten seconds.").await,
            StatusCode::ACCEPTED,
        )
        .await;
        assert_eq!(settled(&app, &owner.access, &kb, &str_field(&uploaded, "id")).await["status"], "ready");
        let key = unique_key("cited");
        let agent = expect_json(
            app.post("/api/agents", Some(&owner.access), &json!({"name": "Support", "instructions": key, "tools": ["search_knowledge"], "knowledgeBaseIds": [kb]})).await,
            StatusCode::CREATED,
        )
        .await;
        let search = |id: &str| Reply::Calls { text: String::new(), calls: vec![call(id, "search_knowledge", json!({"query": "reset the pump red button"}))] };
        mock.script(&key, vec![
            search("s1"),
            Reply::Text("Hold the red button for ten seconds [1].".into()),
            search("s2"),
            Reply::Text("Hold it for ten seconds [1], or unplug it [3].".into()),
        ]);
        let created = expect_json(app.post("/api/conversations", Some(&owner.access), &json!({"agentId": agent["id"]})).await, StatusCode::CREATED).await;
        let conversation = str_field(&created, "id");
        let mut ws = WsClient::authed(&app.address, &owner.access).await;
        let good = ws.chat(Some(&conversation), "How do I reset the pump?").await;
        assert_eq!(good.complete["citations"].as_array().unwrap().len(), 1, "{}", good.complete);
        let bad = ws.chat(Some(&conversation), "Anything else?").await;
        let good = validated(&app, &owner.access, &conversation, &str_field(&good.complete, "messageId")).await;
        let bad = validated(&app, &owner.access, &conversation, &str_field(&bad.complete, "messageId")).await;
        assert_eq!(verdict(&good["validation"], "citations"), Some(true), "{good}");
        assert_eq!(verdict(&bad["validation"], "citations"), Some(false), "{bad}");
        let why = detail(&bad["validation"], "citations");
        assert!(why.contains("[3]") && !why.contains("[1]") && why.contains("1 retrieved"), "{why}");
    }
);
