//! SQLite serves one server process: two processes on one file would each believe they own
//! every running answer (and each would end the other's at start-up). The first process
//! holds an exclusive lock on a file beside the database for its whole life; a second one
//! is refused with a clear message. The operating system drops the lock when the process
//! ends, however it ends, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::store::sqlite_file;

/// Held for the life of the server; dropping it releases the lock.
#[derive(Debug)]
pub struct SqliteLock {
    _file: File,
    path: PathBuf,
}

impl SqliteLock {
    /// Locks `<database file>.lock`. `None` for an in-memory database (nothing to share).
    pub fn acquire(database_url: &str) -> anyhow::Result<Option<Self>> {
        let Some(database) = sqlite_file(database_url) else {
            return Ok(None);
        };
        let mut path = database.clone().into_os_string();
        path.push(".lock");
        let path = PathBuf::from(path);
        // Before the database exists: on a fresh checkout its folder does not either.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the database folder {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file, path })),
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "another chat-server process is already serving the SQLite database {}: \
                 SQLite supports one server process; stop the other one, or use PostgreSQL \
                 (DATABASE_URL=postgres://...) to run several instances",
                database.display()
            ),
            Err(TryLockError::Error(err)) => {
                Err(err).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_of_the_same_file_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("lock-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("chat.db").display());
        let first = SqliteLock::acquire(&url)
            .unwrap()
            .expect("a file database is locked");
        let refused = SqliteLock::acquire(&url).unwrap_err().to_string();
        assert!(refused.contains("another chat-server process"), "{refused}");
        assert!(refused.contains("PostgreSQL"), "{refused}");
        drop(first);
        SqliteLock::acquire(&url)
            .unwrap()
            .expect("free again once released");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_database_folder_is_created_when_it_does_not_exist_yet() {
        let dir = std::env::temp_dir().join(format!("lock-{}", uuid::Uuid::new_v4().simple()));
        let url = format!("sqlite://{}?mode=rwc", dir.join("data/chat.db").display());
        let lock = SqliteLock::acquire(&url).unwrap().expect("locked");
        assert!(lock.path().ends_with("data/chat.db.lock"));
        assert!(lock.path().exists());
        drop(lock);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn memory_and_postgres_urls_need_no_lock() {
        assert!(SqliteLock::acquire("sqlite::memory:").unwrap().is_none());
        assert!(sqlite_file("postgres://u@h/db").is_none());
        assert_eq!(
            sqlite_file("sqlite://data/chat.db?mode=rwc"),
            Some(PathBuf::from("data/chat.db"))
        );
    }
}
