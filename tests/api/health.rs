//! `GET /api/health`.

use crate::helpers::*;
use reqwest::StatusCode;

backend_test!(
    health_reports_ok_with_database_status,
    |app: TestApp| async move {
        let body = expect_json(app.get("/api/health", None).await, StatusCode::OK).await;

        assert_eq!(body["status"], "OK", "{body}");
        assert_eq!(body["database"], "ok", "{body}");
        timestamp(&body, "timestamp");
        assert!(
            body["version"].as_str().is_some_and(|v| !v.is_empty()),
            "`version` must be a non-empty string: {body}"
        );
        assert!(
            body["uptime"].as_f64().is_some_and(|u| u >= 0.0),
            "`uptime` must be a non-negative number: {body}"
        );
    }
);
