//! Errors for operators: each one's Display is a sentence that says what happened and what to do.

use std::fmt;
use std::path::Path;

#[derive(Debug)]
pub enum Error {
    /// The configuration or the command line is wrong; the process exits with code 2.
    Config(String),
    /// A file or socket could not be used.
    Io(String),
    Tls(String),
    Storage(String),
    /// Another process holds the store.
    InUse(String),
}

impl Error {
    /// An I/O failure on `path`, with advice matched to the kind of failure.
    pub fn io(action: &str, path: &Path, e: &std::io::Error) -> Error {
        let advice = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "; run hearth as the user that owns it or fix its mode"
            }
            std::io::ErrorKind::NotFound => "; check the path in the config file",
            _ => "",
        };
        Error::Io(format!("cannot {action} {}: {e}{advice}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m)
            | Error::Io(m)
            | Error::Tls(m)
            | Error::Storage(m)
            | Error::InUse(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Error {
        Error::Storage(format!(
            "the data store failed: {e}; check the disk and the data directory"
        ))
    }
}

macro_rules! redb_into_error {
    ($($t:ty),*) => { $(impl From<$t> for Error {
        fn from(e: $t) -> Error { Error::from(redb::Error::from(e)) }
    })* };
}
redb_into_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
