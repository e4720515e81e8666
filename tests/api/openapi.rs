//! The OpenAPI spec: served, committed, and printed by `chat-server openapi`, all the same.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;

const REGENERATE: &str = "regenerate it with `cargo run -- openapi > openapi/openapi.json`";

async fn served_spec(app: &TestApp) -> Value {
    expect_json(app.get("/api/openapi.json", None).await, StatusCode::OK).await
}

/// `/a/{id}/b` → `/a/{}/b`
fn blank_params(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for ch in path.chars() {
        match ch {
            '{' => {
                in_param = true;
                out.push('{');
            }
            '}' => {
                in_param = false;
                out.push('}');
            }
            _ if in_param => {}
            _ => out.push(ch),
        }
    }
    out
}

backend_test!(
    spec_is_served_with_the_api_paths,
    |app: TestApp| async move {
        let spec = served_spec(&app).await;
        let paths = spec["paths"].as_object().expect("`paths` object");
        for path in [
            "/api/health",
            "/api/auth/register",
            "/api/auth/login",
            "/api/auth/refresh",
            "/api/auth/logout",
            "/api/auth/me",
            "/api/admin/users",
            "/api/admin/users/{id}",
            "/api/conversations",
            "/api/conversations/{id}",
            "/api/conversations/{id}/events",
        ] {
            // Parameter names are the implementation's choice: compare with them blanked out.
            assert!(
                paths.keys().any(|p| blank_params(p) == blank_params(path)),
                "spec lacks {path}; has {:?}",
                paths.keys()
            );
        }
    }
);

backend_test!(spec_declares_bearer_auth, |app: TestApp| async move {
    let spec = served_spec(&app).await;
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .unwrap_or_else(|| panic!("no components.securitySchemes in the spec"));
    assert!(
        schemes.values().any(|s| s["type"] == "http"
            && s["scheme"]
                .as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case("bearer"))),
        "no HTTP bearer security scheme: {schemes:?}"
    );
});

backend_test!(
    served_spec_matches_the_committed_one,
    |app: TestApp| async move {
        let spec = served_spec(&app).await;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
        let committed = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {path} ({e}); {REGENERATE}"));
        let committed: Value = serde_json::from_str(&committed)
            .unwrap_or_else(|e| panic!("{path} is not JSON ({e}); {REGENERATE}"));
        assert!(
            spec == committed,
            "the served spec differs from {path}; {REGENERATE}"
        );
    }
);

backend_test!(
    openapi_command_prints_the_served_spec,
    |app: TestApp| async move {
        let spec = served_spec(&app).await;
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .arg("openapi")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(test_env(&app.database_url, &app.data_dir, &[]))
            .current_dir(&app.data_dir)
            .output()
            .await
            .expect("run chat-server openapi");
        assert!(
            output.status.success(),
            "chat-server openapi failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let printed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of `chat-server openapi` is not only JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        assert!(
            printed == spec,
            "`chat-server openapi` prints a different spec than the server serves"
        );
    }
);

backend_test!(docs_serve_swagger_ui, |app: TestApp| async move {
    let resp = app.get("/docs", None).await;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        body.to_lowercase().contains("swagger"),
        "not Swagger UI: {body:.200}"
    );
});

// Every JSON body the tests read is checked against the committed spec (`spec.rs`); the
// tests below pin down that the check is there and that it bites.

backend_test!(
    fields_without_a_value_are_null_and_match_the_spec,
    |app: TestApp| async move {
        // No display name, no system prompt, no model: each is sent as `null`, which the spec
        // must declare nullable (`expect_json` checks every body below against it).
        let user = app.register_user(&unique_email()).await;
        assert!(user.user["displayName"].is_null(), "{}", user.user);
        let me = expect_json(
            app.get("/api/auth/me", Some(&user.access)).await,
            StatusCode::OK,
        )
        .await;
        assert!(me["displayName"].is_null(), "{me}");
        app.login(&user.email).await;

        let created = app.create_conversation(&user.access, "untouched").await;
        for field in ["systemPrompt", "model"] {
            assert!(created[field].is_null(), "`{field}` in {created}");
        }
        let id = str_field(&created, "id");
        app.get_conversation(&user.access, &id).await;
        app.patch_conversation(&user.access, &id, serde_json::json!({"title": "renamed"}))
            .await;
        app.list_conversations(&user.access, "").await;
        app.events(&user.access, &id, "").await;
    }
);

mod validator {
    use serde_json::{json, Value};

    use crate::spec::{Spec, SPEC, SPEC_PATH};

    fn conversation(overrides: Value) -> Value {
        let mut body = json!({
            "id": "0193a3b4-0000-7000-8000-000000000001",
            "title": "t",
            "systemPrompt": null,
            "model": null,
            "createdAt": "2025-01-01T00:00:00Z",
            "updatedAt": "2025-01-01T00:00:00Z",
            "lastSeq": 1,
            "messages": [],
        });
        for (key, value) in overrides.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    }

    fn check(body: &Value) -> Result<(), String> {
        SPEC.check(
            &reqwest::Method::GET,
            "/api/conversations/0193a3b4-0000-7000-8000-000000000001",
            200,
            body,
        )
    }

    #[test]
    fn accepts_a_conversation_with_nulls_where_the_spec_says_nullable() {
        check(&conversation(json!({}))).unwrap();
        check(&conversation(
            json!({"systemPrompt": "be brief", "model": "m"}),
        ))
        .unwrap();
    }

    #[test]
    fn refuses_a_field_of_the_wrong_type_naming_operation_status_and_pointer() {
        let err = check(&conversation(json!({"title": 42}))).unwrap_err();
        for part in ["getConversation", "200", "\"/title\"", "\"title\":42"] {
            assert!(err.contains(part), "`{part}` missing from: {err}");
        }
    }

    #[test]
    fn refuses_null_where_the_spec_does_not_say_nullable() {
        let err = check(&conversation(json!({"title": null}))).unwrap_err();
        assert!(err.contains("\"/title\""), "{err}");
    }

    #[test]
    fn refuses_a_field_the_spec_does_not_declare() {
        let err = check(&conversation(json!({"surprise": true}))).unwrap_err();
        assert!(err.contains("surprise"), "{err}");
    }

    #[test]
    fn refuses_a_malformed_uuid_or_timestamp() {
        assert!(check(&conversation(json!({"id": "nope"}))).is_err());
        assert!(check(&conversation(json!({"createdAt": "yesterday"}))).is_err());
    }

    #[test]
    fn checks_an_undeclared_error_status_against_the_error_body_and_refuses_an_undeclared_success()
    {
        let put = reqwest::Method::PUT;
        let path = "/api/conversations";
        let error = json!({"message": "method not allowed", "code": "METHOD_NOT_ALLOWED"});
        SPEC.check(&put, path, 405, &error).unwrap();
        assert!(SPEC
            .check(&put, path, 405, &json!({"message": "no code"}))
            .is_err());
        let err = SPEC
            .check(&reqwest::Method::GET, "/api/health", 202, &json!({}))
            .unwrap_err();
        assert!(err.contains("does not declare this status"), "{err}");
    }

    /// The spec before the nullable declarations: the same body is refused, naming the field.
    #[test]
    fn without_the_nullable_declaration_a_null_is_refused() {
        let mut spec: Value =
            serde_json::from_str(&std::fs::read_to_string(SPEC_PATH).unwrap()).unwrap();
        let properties = &mut spec["components"]["schemas"]["Conversation"]["properties"];
        assert_eq!(properties["systemPrompt"]["nullable"], true);
        properties["systemPrompt"]
            .as_object_mut()
            .unwrap()
            .remove("nullable");
        let err = Spec::from_openapi(&spec)
            .check(
                &reqwest::Method::GET,
                "/api/conversations/0193a3b4-0000-7000-8000-000000000001",
                200,
                &conversation(json!({})),
            )
            .unwrap_err();
        assert!(err.contains("\"/systemPrompt\""), "{err}");
    }
}
