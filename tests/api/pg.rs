//! A throwaway PostgreSQL 15 cluster shared by every test of this process, started lazily once.
//!
//! With `TEST_DATABASE_URL` set, that server is used instead. Each test gets its own database
//! (`t_<uuid>`), so tests stay independent and can run in parallel. The cluster is stopped and
//! its directory removed by a detached watchdog once the test process has exited, so a panic or
//! a Ctrl-C does not leave a postmaster behind.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where the shared server listens: a URL to a maintenance database, and the URL prefix a
/// test database name is appended to.
#[derive(Debug)]
struct PgServer {
    /// e.g. `postgres://postgres@127.0.0.1:5432/postgres`
    admin_url: String,
    /// e.g. `postgres://postgres@127.0.0.1:5432/` (a database name and query follow)
    base_url: String,
    /// the query string of the original URL (with its `?`), kept on every test database URL
    query: String,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// Creates a fresh, empty database for one test and returns its URL.
///
/// `Err(reason)` means PostgreSQL is not available here; the caller decides whether that
/// is a skip or a failure (see [`unavailable`]).
pub async fn create_test_database() -> Result<String, String> {
    // Starting the cluster blocks (initdb, pg_ctl -w); do it off the async worker.
    let server = tokio::task::spawn_blocking(|| SERVER.get_or_init(start_server).as_ref())
        .await
        .map_err(|e| format!("cluster start-up panicked: {e}"))?
        .map_err(|e| e.clone())?;

    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut options = ConnectOptions::new(server.admin_url.as_str());
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let admin = Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", server.admin_url))?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .map_err(|e| format!("CREATE DATABASE {name} failed: {e}"))?;
    let _ = admin.close().await;
    Ok(format!("{}{}{}", server.base_url, name, server.query))
}

/// What to do when PostgreSQL cannot be used: under CI that is a failure, elsewhere a
/// visible skip. Returns normally only in the skip case.
pub fn unavailable(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL is required when CI is set, but is unavailable: {reason}");
    }
    eprintln!("skipping postgres test: {reason}");
}

fn start_server() -> Result<PgServer, String> {
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        return server_from_url(&url);
    }
    start_cluster()
}

/// Splits `postgres://user@host:port/db?query` into the parts a test database URL is built from.
fn server_from_url(url: &str) -> Result<PgServer, String> {
    let (without_query, query) = match url.find('?') {
        Some(i) => (&url[..i], url[i..].to_string()),
        None => (url, String::new()),
    };
    let scheme_end = without_query
        .find("://")
        .ok_or_else(|| format!("TEST_DATABASE_URL is not a URL: {url}"))?
        + 3;
    let base_url = match without_query[scheme_end..].find('/') {
        Some(i) => without_query[..scheme_end + i + 1].to_string(),
        None => format!("{without_query}/"),
    };
    Ok(PgServer {
        admin_url: url.to_string(),
        base_url,
        query,
    })
}

fn start_cluster() -> Result<PgServer, String> {
    let bin = Path::new(PG_BIN);
    if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
        return Err(format!("no PostgreSQL 15 binaries in {PG_BIN}"));
    }
    let root = is_root();

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot pick a free port: {e}"))?
        .port();
    let dir =
        std::env::temp_dir().join(format!("chat-server-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if root {
        run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
    }
    let data = dir.join("data");
    let log = dir.join("log");

    // From here on the directory (and maybe a running postmaster) must be cleaned up even if
    // the start fails, so the watchdog is armed first.
    spawn_watchdog(&dir, &data, root);

    run(pg_command(root, "initdb")
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"]))?;
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off",
        dir.display()
    );
    let started = pg_command(root, "pg_ctl")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60", "start", "-o", &options])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
    if !started.success() {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "pg_ctl start failed ({started}); server log:\n{log_text}"
        ));
    }

    let base_url = format!("postgres://postgres@127.0.0.1:{port}/");
    Ok(PgServer {
        admin_url: format!("{base_url}postgres"),
        base_url,
        query: String::new(),
    })
}

/// A PostgreSQL tool, run as the `postgres` user when we are root (initdb refuses root).
fn pg_command(root: bool, tool: &str) -> Command {
    let path: PathBuf = Path::new(PG_BIN).join(tool);
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Stops the cluster and removes its directory once this test process is gone. It runs in its
/// own process group, detached from our stdio, so neither Ctrl-C nor a reader waiting for the
/// end of our output is held up by it.
fn spawn_watchdog(dir: &Path, data: &Path, root: bool) {
    let pg_ctl = Path::new(PG_BIN).join("pg_ctl");
    let as_postgres = if root { "runuser -u postgres -- " } else { "" };
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; \
         {as_postgres}'{pg_ctl}' -D '{data}' stop -m immediate >/dev/null 2>&1; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display(),
    );
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!(
            "warning: cannot start the PostgreSQL watchdog, {} may be left behind: {e}",
            dir.display()
        );
    }
}
