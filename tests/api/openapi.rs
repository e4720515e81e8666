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
