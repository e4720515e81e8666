//! Metric labels for routes: the template of the route a request matched, as the OpenAPI
//! document writes it (`/api/conversations/{id}`), never the path a client sent. poem-openapi
//! names path parameters by position (`:param0`), so templates are looked up by their shape
//! in the generated document, built once at start-up.

use std::collections::HashMap;

use poem::http::StatusCode;
use poem::PathPattern;

/// The label of every request that matched no route.
pub const UNMATCHED: &str = "unmatched";

pub struct RouteLabels {
    /// `/api/conversations/*` → `/api/conversations/{id}`
    by_shape: HashMap<String, String>,
}

impl RouteLabels {
    /// From the OpenAPI document's `paths`.
    pub fn from_spec(spec_json: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec_json).unwrap_or_default();
        let by_shape = spec["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .keys()
                    .map(|template| (shape(template, |s| s.starts_with('{')), template.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Self { by_shape }
    }

    /// The label for a request that matched `pattern` (if any) and was answered `status`.
    pub fn label(&self, pattern: Option<&PathPattern>, status: StatusCode) -> String {
        let Some(pattern) = pattern else {
            return UNMATCHED.into();
        };
        let key = shape(&pattern.0, |s| s.starts_with(':'));
        match self.by_shape.get(&key) {
            Some(template) => template.clone(),
            // Only a prefix matched (`/api` of `/api/no-such-thing`): no route did.
            None if status == StatusCode::NOT_FOUND => UNMATCHED.into(),
            // A route outside the document (the socket, the docs, metrics): its own template.
            None => pattern
                .0
                .split('/')
                .map(|s| match s.strip_prefix(':') {
                    Some(name) => format!("{{{name}}}"),
                    None => s.to_string(),
                })
                .collect::<Vec<_>>()
                .join("/"),
        }
    }
}

/// A template with its parameters replaced by `*`.
fn shape(template: &str, is_parameter: impl Fn(&str) -> bool) -> String {
    template
        .split('/')
        .map(|s| if is_parameter(s) { "*" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_parameters_get_the_documents_names() {
        let spec = r#"{"paths": {"/api/conversations/{id}": {}, "/api/conversations/{id}/messages/{messageId}": {}}}"#;
        let labels = RouteLabels::from_spec(spec);
        let pattern = |p: &str| PathPattern(p.into());
        let ok = StatusCode::OK;
        assert_eq!(
            labels.label(Some(&pattern("/api/conversations/:param0")), ok),
            "/api/conversations/{id}"
        );
        assert_eq!(
            labels.label(
                Some(&pattern("/api/conversations/:param0/messages/:param1")),
                StatusCode::NOT_FOUND
            ),
            "/api/conversations/{id}/messages/{messageId}",
            "a documented route keeps its template on a 404"
        );
        assert_eq!(labels.label(Some(&pattern("/api/ws")), ok), "/api/ws");
        assert_eq!(labels.label(Some(&pattern("/x/:name")), ok), "/x/{name}");
        assert_eq!(
            labels.label(Some(&pattern("/api")), StatusCode::NOT_FOUND),
            "unmatched",
            "a prefix is not a route"
        );
        assert_eq!(labels.label(None, ok), "unmatched");
    }
}
