//! `openapi/asyncapi.yaml` documents the WebSocket protocol: every frame type the code knows
//! must appear in it, and it must document no frame the code does not have.

use chat_server::realtime::frames::{ClientFrame, ServerFrame};

#[test]
fn asyncapi_documents_exactly_the_frames_in_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/asyncapi.yaml");
    let doc = std::fs::read_to_string(path).expect("read openapi/asyncapi.yaml");
    assert!(
        doc.starts_with("asyncapi: 3."),
        "not an AsyncAPI 3 document"
    );

    let known: Vec<&str> = ClientFrame::TYPES
        .iter()
        .chain(ServerFrame::TYPES)
        .copied()
        .collect();
    for name in &known {
        assert!(
            doc.contains(&format!("type: {{ const: {name} }}")),
            "frame type `{name}` is not documented in openapi/asyncapi.yaml"
        );
    }
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|line| line.trim().strip_prefix("type: { const: "))
        .filter_map(|rest| rest.strip_suffix(" }"))
        .collect();
    for name in &documented {
        assert!(
            known.contains(name),
            "openapi/asyncapi.yaml documents `{name}`, which the server does not have"
        );
    }
    assert_eq!(
        documented.len(),
        known.len(),
        "a frame type is documented twice"
    );
}
