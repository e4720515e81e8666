//! A handler that panics answers the contract's 500 body, logged with its request id, instead
//! of dropping the connection; and the server keeps serving. No route of the product panics
//! on purpose, so the test puts two routes of its own inside the product's HTTP layers.

use std::sync::{Arc, Mutex};

use chat_server::config::Config;
use chat_server::store::Store;
use chat_server::{api, startup};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{get, handler, EndpointExt, Route, Server};
use reqwest::StatusCode;

use crate::helpers::*;

#[handler]
fn boom() -> &'static str {
    panic!("deliberate panic in a test handler")
}

#[handler]
fn fine() -> &'static str {
    "fine"
}

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// One thread: the server, the client and the log subscriber below all live on it.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_handler_answers_500_with_the_error_body_and_the_server_lives_on() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let data_dir = std::env::temp_dir().join(format!(
        "chat-server-panic-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&data_dir).unwrap();
    let database_url = format!("sqlite://{}?mode=rwc", data_dir.join("chat.db").display());
    let vars = test_env(&database_url, &data_dir, &[]);
    let config = Config::from_lookup(|key: &str| vars.get(key).cloned()).unwrap();
    let store = Store::connect(&config.database_url).await.unwrap();
    store.migrate().await.unwrap();
    startup::install_tls_provider();
    let state = startup::build_state(&config, store, None).await.unwrap();
    let routes = Route::new()
        .at("/boom", get(boom))
        .at("/fine", get(fine))
        .data(state.clone());
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(api::with_http_layers(routes, state)));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    for _ in 0..2 {
        let resp = client
            .get(url("/boom"))
            .send()
            .await
            .expect("an answer, not a dropped connection");
        let request_id = resp
            .headers()
            .get("x-request-id")
            .expect("a request id on the 500")
            .to_str()
            .unwrap()
            .to_string();
        let body = expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR").await;
        assert_eq!(body["message"], "internal server error", "{body}");
        assert!(
            !body.to_string().contains("deliberate"),
            "the panic leaked: {body}"
        );

        let logged = logs.text();
        let line = logged
            .lines()
            .find(|l| l.contains(&request_id) && l.contains("panicked"))
            .unwrap_or_else(|| panic!("no panic logged with request id {request_id}:\n{logged}"));
        assert!(
            line.contains("deliberate panic in a test handler"),
            "{line}"
        );
        assert!(line.contains("ERROR"), "{line}");
    }

    // The server lives on.
    let resp = client.get(url("/fine")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "fine");
    let _ = std::fs::remove_dir_all(&data_dir);
}
