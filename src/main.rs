//! The `chat-server` command: serve (default), `migrate`, `rebuild-projections`, `openapi`.

use std::process::ExitCode;

use anyhow::Context;

use chat_server::config::Config;
use chat_server::startup::{build_state, Application};
use chat_server::store::{self, Store};
use chat_server::{api, telemetry};

const USAGE: &str =
    "usage: chat-server [serve | migrate | rebuild-projections | create-admin EMAIL | openapi]

  serve                 run the HTTP and WebSocket server (the default)
  migrate               apply database migrations and exit
  rebuild-projections   replay every conversation's event log into fresh projections
  create-admin EMAIL    make EMAIL an active admin with the password in ADMIN_PASSWORD,
                        creating the account if needed (how production gets its first admin)
  openapi               print the OpenAPI document to stdout

Configuration comes from the environment and a .env file; see README.md.";

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    chat_server::allocator::release_large_blocks();
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: &str) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    telemetry::init(config.log_format);
    match command {
        "serve" => Application::build(config).await?.run_until_stopped().await,
        "migrate" => {
            Store::connect(&config.database_url)
                .await?
                .migrate()
                .await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        "rebuild-projections" => {
            let store = Store::connect(&config.database_url).await?;
            store.migrate().await?;
            let report = store::rebuild_projections(store.connection()).await?;
            tracing::info!(
                conversations = report.conversations,
                events = report.events,
                "projections rebuilt"
            );
            Ok(())
        }
        "create-admin" => {
            let email = std::env::args()
                .nth(2)
                .context("usage: chat-server create-admin EMAIL (password in ADMIN_PASSWORD)")?;
            let password = std::env::var("ADMIN_PASSWORD")
                .context("set ADMIN_PASSWORD to the new admin's password")?;
            let store = Store::connect(&config.database_url).await?;
            store.migrate().await?;
            let state = build_state(&config, store, None).await?;
            let user = state
                .auth
                .create_admin(&email, password)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{} is an admin (user id {})", user.email, user.id);
            Ok(())
        }
        "openapi" => {
            // The spec does not depend on the database: an in-memory SQLite stands in.
            let store = Store::connect("sqlite::memory:").await?;
            println!(
                "{}",
                api::spec_json(build_state(&config, store, None).await?)
            );
            Ok(())
        }
        other => anyhow::bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
