//! Every JSON body the tests read through the helpers (`expect_json` and the `expect_error*`
//! built on it) is checked against the committed OpenAPI spec, for its operation and status:
//! a field can no longer drift from its declaration (a `null` where the spec says `string`, a
//! field the spec does not declare) without a test failing. `openapi.rs` checks that the
//! committed spec is the one the server serves.
//!
//! The spec is OpenAPI 3.0; its schemas become JSON Schema 2020-12 for the validator (boon)
//! once per test binary: `nullable: true` admits `null`, `#/components/schemas/X` refers to
//! `#/$defs/X` of one root document, and an object admits no property it does not declare.
//! Formats the validator knows (`uuid`, `date-time`) are asserted, others (`int64`) ignored.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::LazyLock;

use boon::{Compiler, SchemaIndex, Schemas, UrlLoader, ValidationError};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

/// The committed spec, which `openapi.rs` proves equal to the served one.
pub const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
/// Where the converted schemas live for the validator; nothing is fetched from it.
const ROOT: &str = "https://chat-server.invalid/openapi.json";

/// The method a test sent, kept on its response (by `TestApp::send`) so that the body can be
/// matched with its operation: reqwest's `Response` keeps the URL but not the method.
#[derive(Debug, Clone)]
pub struct SentAs(pub Method);

/// The committed spec, loaded and compiled once per test binary.
pub static SPEC: LazyLock<Spec> = LazyLock::new(|| {
    let text = std::fs::read_to_string(SPEC_PATH)
        .unwrap_or_else(|e| panic!("cannot read {SPEC_PATH}: {e}"));
    let spec: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{SPEC_PATH} is not JSON: {e}"));
    Spec::from_openapi(&spec)
});

/// Panics unless `body`, the JSON answer of `method url` with `status`, matches the spec.
/// `method` is `None` for a response that was not sent through `TestApp::send`.
pub fn assert_matches_spec(
    method: Option<&Method>,
    url: &reqwest::Url,
    status: StatusCode,
    body: &Value,
) {
    let path = url.path();
    if !Spec::covers(path) {
        return;
    }
    let Some(method) = method else {
        panic!(
            "{url}: the request was not sent through `TestApp` (get, post, patch, delete, \
             send_raw or send), so its answer cannot be checked against the spec"
        );
    };
    if let Err(failure) = SPEC.check(method, path, status.as_u16(), body) {
        panic!("{failure}");
    }
}

/// One operation of the spec: its path template and the schema of each response's JSON body.
struct Operation {
    method: Method,
    template: String,
    /// The template's segments; `None` for a `{parameter}`.
    segments: Vec<Option<String>>,
    id: String,
    /// Status (`"200"`, `"default"`) → the schema of its JSON body (`None`: no body).
    responses: BTreeMap<String, Option<SchemaIndex>>,
}

impl Operation {
    fn matches(&self, path: &[&str]) -> bool {
        self.segments.len() == path.len()
            && self.segments.iter().zip(path).all(|(t, p)| match t {
                Some(literal) => literal == p,
                None => !p.is_empty(),
            })
    }

    fn literal_segments(&self) -> usize {
        self.segments.iter().filter(|s| s.is_some()).count()
    }
}

pub struct Spec {
    schemas: Schemas,
    operations: Vec<Operation>,
    error_body: SchemaIndex,
}

impl Spec {
    /// Whether a path is answered by the spec's operations: everything under `/api/` but the
    /// spec itself. The rest (`/metrics`, `/docs`, the playground) is not in the spec.
    pub fn covers(path: &str) -> bool {
        path.starts_with("/api/") && path != "/api/openapi.json"
    }

    /// Converts and compiles every response schema of an OpenAPI 3.0 document.
    pub fn from_openapi(spec: &Value) -> Self {
        let mut defs: Map<String, Value> = spec["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, schema)| (name.clone(), to_json_schema(schema)))
            .collect();
        // Response bodies go beside the components; no Rust type name contains `-`.
        let mut operations = Vec::new();
        let mut bodies = Vec::new();
        for (template, item) in spec["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                    continue;
                };
                if op.get("responses").is_none() {
                    continue; // `parameters` and the like
                }
                let mut responses = BTreeMap::new();
                for (status, response) in op["responses"].as_object().into_iter().flatten() {
                    let schema = response["content"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .find(|(media, _)| media.starts_with("application/json"))
                        .map(|(_, content)| {
                            let name = format!("response-{}", bodies.len());
                            defs.insert(name.clone(), to_json_schema(&content["schema"]));
                            bodies.push(name);
                            bodies.len() - 1
                        });
                    responses.insert(status.clone(), schema);
                }
                operations.push((
                    method,
                    template.clone(),
                    op["operationId"].as_str().unwrap_or("?").to_string(),
                    responses,
                ));
            }
        }

        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": defs,
        });
        let mut compiler = Compiler::new();
        compiler.use_loader(Box::new(NoLoading));
        compiler.enable_format_assertions();
        compiler
            .add_resource(ROOT, root)
            .expect("add the converted spec");
        let mut schemas = Schemas::new();
        let mut compile = |name: &str| {
            compiler
                .compile(&format!("{ROOT}#/$defs/{name}"), &mut schemas)
                .unwrap_or_else(|e| panic!("the spec's schema {name} does not compile: {e:#}"))
        };
        let compiled: Vec<SchemaIndex> = bodies.iter().map(|name| compile(name)).collect();
        let error_body = compile("ErrorBody");
        let operations = operations
            .into_iter()
            .map(|(method, template, id, responses)| Operation {
                segments: template
                    .split('/')
                    .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_string()))
                    .collect(),
                method,
                template,
                id,
                responses: responses
                    .into_iter()
                    .map(|(status, body)| (status, body.map(|i| compiled[i])))
                    .collect(),
            })
            .collect();
        Self {
            schemas,
            operations,
            error_body,
        }
    }

    /// The operation that answers `method path`: the matching template with the most literal
    /// segments, as a router would pick it.
    fn operation(&self, method: &Method, path: &str) -> Option<&Operation> {
        let path: Vec<&str> = path.split('/').collect();
        self.operations
            .iter()
            .filter(|op| op.method == *method && op.matches(&path))
            .max_by_key(|op| op.literal_segments())
    }

    /// Checks `body`, the JSON answer of `method path` with `status`. The error names the
    /// operation, the status, the JSON pointer of each mismatch, and the body.
    ///
    /// What is checked against what:
    /// - a status the operation declares (or its `default`): that response's schema;
    /// - an error status (4xx, 5xx) the operation does not declare, or on a path or method no
    ///   operation has (404 for an unknown route, 405, a 413 or 429 from the middleware, a 503
    ///   while draining): the error body every error has (`ErrorBody`, the contract's
    ///   `{message, code}`);
    /// - a success status the spec does not declare, or a body where the spec declares none:
    ///   refused, since that is the spec falling behind the code.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), String> {
        let operation = self.operation(method, path);
        let what = match operation {
            Some(op) => format!("{method} {} ({}) answered {status}", op.template, op.id),
            None => format!("{method} {path} (no operation in the spec) answered {status}"),
        };
        let declared = operation.and_then(|op| {
            op.responses
                .get(&status.to_string())
                .or_else(|| op.responses.get("default"))
        });
        let schema = match declared {
            Some(Some(schema)) => *schema,
            Some(None) => {
                return Err(format!(
                    "{what}: the spec declares no body for it, yet it has one\nbody: {body}"
                ))
            }
            None if status >= 400 => self.error_body,
            None => {
                return Err(format!(
                    "{what}: the spec does not declare this status\nbody: {body}"
                ))
            }
        };
        self.schemas.validate(body, schema).map_err(|error| {
            let mut mismatches = Vec::new();
            leaves(&error, &mut mismatches);
            format!(
                "{what}: the body does not match the spec (openapi/openapi.json)\n{}\nbody: {body}",
                mismatches.join("\n")
            )
        })
    }
}

/// One line per innermost mismatch: `at "/user/displayName": want string, but got null`.
fn leaves(error: &ValidationError, out: &mut Vec<String>) {
    if error.causes.is_empty() {
        out.push(format!(
            "  at {:?}: {}",
            error.instance_location.to_string(),
            error.kind
        ));
    }
    for cause in &error.causes {
        leaves(cause, out);
    }
}

/// OpenAPI 3.0 schema object → JSON Schema 2020-12. `nullable: true` becomes `anyOf` with
/// `null`, component references point into `$defs`, and an object with declared properties
/// and no `additionalProperties` admits no others (`unevaluatedProperties`, which sees through
/// `allOf`). Annotations (`description`, `title`, `example`) stay as they are.
fn to_json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let value = match key.as_str() {
            "nullable" => continue,
            "$ref" => json!(value.as_str().unwrap_or_default().replacen(
                "#/components/schemas/",
                "#/$defs/",
                1
            )),
            "properties" => Value::Object(
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, schema)| (name.clone(), to_json_schema(schema)))
                    .collect(),
            ),
            "items" | "additionalProperties" | "not" => to_json_schema(value),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(to_json_schema)
                    .collect(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    if out.contains_key("properties") && !out.contains_key("additionalProperties") {
        out.insert("unevaluatedProperties".into(), false.into());
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        json!({ "anyOf": [out, { "type": "null" }] })
    } else {
        Value::Object(out)
    }
}

/// The converted spec refers only to itself: any other reference is a mistake, not a file
/// or a URL to fetch.
struct NoLoading;

impl UrlLoader for NoLoading {
    fn load(&self, url: &str) -> Result<Value, Box<dyn Error>> {
        Err(format!("the spec refers outside itself, to {url}").into())
    }
}
