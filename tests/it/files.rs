//! The data directory holds the SCRAM keys and the TLS key: it is 0700 and every file in it
//! 0600 whatever the umask, whether the server or `hearth user` made it, and looser modes
//! found at start are tightened with a warning instead of refusing to start.

use crate::harness::{TIMEOUT, TestServer, assert_server_ok};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

/// The permission bits of `path` (not following a symbolic link).
#[track_caller]
fn bits(path: &Path) -> u32 {
    let meta = std::fs::symlink_metadata(path);
    meta.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The permission bits in octal, as `ls` and `chmod` write them.
#[track_caller]
fn mode(path: &Path) -> String {
    format!("{:o}", bits(path))
}

#[track_caller]
fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Asserts the data directory is 0700 and each of `files` in it 0600.
#[track_caller]
fn assert_private(dir: &Path, files: &[&str]) {
    assert_eq!(mode(dir), "700", "{}", dir.display());
    for f in files {
        assert_eq!(mode(&dir.join(f)), "600", "{f}");
    }
    // Nothing else in there is open to others either.
    for entry in std::fs::read_dir(dir).expect("read the data directory") {
        let path = entry.expect("a directory entry").path();
        assert!(
            mode(&path).ends_with("00"),
            "{}: {}",
            path.display(),
            mode(&path)
        );
    }
}

/// Waits until the server has logged that it serves: every line it wrote to standard error
/// while starting has been read by then.
#[track_caller]
fn wait_until_serving(server: &TestServer, starts: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while server.log().matches("serving localhost").count() < starts {
        assert!(
            Instant::now() < deadline,
            "no `serving` line:\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn the_server_makes_everything_private_whatever_the_umask() {
    for umask in [0o022, 0o000] {
        let server = TestServer::start_with_umask("", Some(umask));
        let dir = server.data_dir();
        assert_private(&dir, &["hearth.redb", "cert.pem", "key.pem", "admin.sock"]);
        // Accounts added through the running server land in the same private store.
        server.add_users(&["alice"]);
        assert_server_ok(&server, "alice");
        assert_private(&dir, &["hearth.redb", "cert.pem", "key.pem", "admin.sock"]);
    }
}

#[test]
fn the_user_command_makes_a_private_store_when_no_server_runs() {
    let mut server = TestServer::start_with_umask("", Some(0o022));
    server.stop();
    let dir = server.data_dir();
    std::fs::remove_dir_all(&dir).expect("remove the data directory");
    server.add_users(&["alice"]);
    assert_private(&dir, &["hearth.redb"]);
    server.restart();
    assert_private(&dir, &["hearth.redb", "cert.pem", "key.pem", "admin.sock"]);
    assert_server_ok(&server, "alice");
}

#[test]
fn loose_modes_are_tightened_at_start_with_one_warning() {
    let mut server = TestServer::start_with_umask("", Some(0o022));
    server.add_users(&["alice"]);
    server.stop();
    let dir = server.data_dir();
    chmod(&dir, 0o755);
    for f in ["hearth.redb", "cert.pem", "key.pem"] {
        chmod(&dir.join(f), 0o644);
    }
    // A file someone put there, and a stricter one that is left as it is.
    std::fs::write(dir.join("notes.txt"), "backup made on Sunday").expect("write a file");
    chmod(&dir.join("notes.txt"), 0o666);
    std::fs::write(dir.join("strict"), "").expect("write a file");
    chmod(&dir.join("strict"), 0o400);

    server.restart();
    wait_until_serving(&server, 2);
    assert_private(&dir, &["hearth.redb", "cert.pem", "key.pem", "notes.txt"]);
    assert_eq!(mode(&dir.join("strict")), "400");
    let log = server.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("tightened")).collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    for what in [
        "755 to 700",
        "hearth.redb from 644 to 600",
        "key.pem from 644 to 600",
    ] {
        assert!(warnings[0].contains(what), "{what}: {}", warnings[0]);
    }
    assert!(
        warnings[0].contains("notes.txt from 666 to 600"),
        "{}",
        warnings[0]
    );
    assert_server_ok(&server, "alice");

    // Once tight, a restart has nothing to say.
    server.restart();
    wait_until_serving(&server, 3);
    assert_eq!(server.log().matches("tightened").count(), 1);
}
