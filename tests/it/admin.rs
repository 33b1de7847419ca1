//! Account administration from the command line (`hearth user add|passwd|remove|list`), both
//! through the admin socket of a running server and on the store of a stopped one, and the
//! exit status 2 with a one-sentence message for bad input. Removing an account or changing
//! its password ends its sessions, and logins that authenticated but have not bound yet.

use crate::harness::{Client, Event, PASSWORD, TestServer, assert_sasl_failure, ns};

const ALICE: &str = "alice@localhost";

/// The JIDs `hearth user list` prints.
#[track_caller]
fn list(server: &TestServer) -> Vec<String> {
    let out = server.cli(&["user", "list"], "");
    assert!(
        out.status.success(),
        "`user list` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Asserts that alice cannot log in with `password` (SCRAM-SHA-256 over STARTTLS).
#[track_caller]
fn refused(server: &TestServer, password: &str) {
    let mut c = Client::connect_starttls(server);
    assert_sasl_failure(
        c.try_auth_scram("alice", password, "SCRAM-SHA-256"),
        "not-authorized",
    );
}

#[test]
fn add_while_running_then_list_and_log_in() {
    let server = TestServer::start();
    server.add_user(ALICE, "first password");
    assert_eq!(list(&server), [ALICE]);
    Client::login(&server, "alice", "first password", "home").sync();
}

#[test]
fn passwd_while_running() {
    let server = TestServer::start();
    server.add_user(ALICE, "first password");
    server.user_cmd("passwd", ALICE, "second password");
    refused(&server, "first password");
    Client::login(&server, "alice", "second password", "home").sync();
    // Both SCRAM hashes got the new password.
    let mut c = Client::connect_tls(&server);
    c.auth_scram("alice", "second password", "SCRAM-SHA-1");
}

#[test]
fn remove_while_running() {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    let _session = Client::user(&server, "alice", "home");
    let out = server.cli(&["user", "remove", ALICE], "");
    assert!(
        out.status.success(),
        "`user remove` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(list(&server), ["bob@localhost"]);
    refused(&server, crate::harness::PASSWORD);
    crate::harness::assert_server_ok(&server, "bob");
}

/// A login that authenticated but has not bound yet is ended with `not-authorized` without
/// waiting for its next request; a bind sent after that gets nothing but the closed stream.
#[track_caller]
fn ended_before_binding(c: &mut Client) {
    c.expect_stream_error("not-authorized");
    let _ = c.try_send_raw(
        format!(
            "<iq type='set' id='b'><bind xmlns='{}'><resource>late</resource></bind></iq>",
            ns::BIND
        )
        .as_bytes(),
    );
    match c.next_event() {
        Event::Eof | Event::Close => {}
        other => panic!("a bind after the stream error got {other:?}"),
    }
}

#[test]
fn remove_ends_sessions_and_logins_that_have_not_bound() {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    let mut session = Client::user(&server, "alice", "home");
    let mut authenticated = Client::connect_starttls(&server);
    authenticated.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
    let mut bob = Client::user(&server, "bob", "home");
    let out = server.cli(&["user", "remove", ALICE], "");
    assert!(
        out.status.success(),
        "`user remove` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ended_before_binding(&mut authenticated);
    session.expect_stream_error("not-authorized");
    bob.sync();
}

#[test]
fn passwd_ends_every_session_of_the_account() {
    let server = TestServer::start();
    server.add_user(ALICE, "first password");
    server.add_users(&["bob"]);
    let mut phone = Client::login(&server, "alice", "first password", "phone");
    let mut laptop = Client::login(&server, "alice", "first password", "laptop");
    let mut authenticated = Client::connect_starttls(&server);
    authenticated.auth_plain("alice", "first password");
    let mut bob = Client::user(&server, "bob", "home");
    server.user_cmd("passwd", ALICE, "second password");
    phone.expect_stream_error("not-authorized");
    laptop.expect_stream_error("not-authorized");
    ended_before_binding(&mut authenticated);
    bob.sync();
    refused(&server, "first password");
    Client::login(&server, "alice", "second password", "phone").sync();
}

#[test]
fn bad_jid_exits_2_with_one_sentence() {
    let server = TestServer::start();
    for jid in ["a@@localhost", "@localhost", "alice@", ""] {
        for args in [
            vec!["user", "add", jid, "--password-stdin"],
            vec!["user", "passwd", jid, "--password-stdin"],
            vec!["user", "remove", jid],
        ] {
            let out = server.cli(&args, "a password\n");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "`{}`: {stderr}", args.join(" "));
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(
                lines.len(),
                1,
                "`{}`: one sentence on stderr, got {stderr:?}",
                args.join(" ")
            );
        }
    }
    assert!(list(&server).is_empty());
}

#[test]
fn user_commands_work_while_stopped() {
    let mut server = TestServer::start();
    // The exit status after SIGTERM is basics.rs's business.
    server.stop();
    server.add_users(&["alice", "bob"]);
    let out = server.cli(&["user", "remove", "bob@localhost"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(list(&server), [ALICE]);
    server.restart();
    crate::harness::assert_server_ok(&server, "alice");
    let mut c = Client::connect_starttls(&server);
    assert_sasl_failure(
        c.try_auth_scram("bob", crate::harness::PASSWORD, "SCRAM-SHA-256"),
        "not-authorized",
    );
}

#[test]
fn check_reports_the_certificate_and_listeners() {
    let server = TestServer::start();
    let out = server.cli(&["check"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed: {text}");
    assert!(
        text.contains("would listen c2s 127.0.0.1:0 (STARTTLS)"),
        "{text}"
    );
    assert!(
        text.contains("would listen c2s_tls 127.0.0.1:0 (direct TLS)"),
        "{text}"
    );
    assert!(text.contains("config ok"), "{text}");
}

#[test]
fn config_errors_are_one_sentence_and_exit_2() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\ndomian = 'x'\n").expect("write the config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .expect("run hearth");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("domian"), "names the unknown key: {err}");
}

/// A duration too large for the clock's arithmetic once made the server panic at the first
/// connection; it is a config error now, for `check` and for the server alike.
#[test]
fn huge_durations_are_config_errors() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("huge.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {:?}\n[keepalive]\nping_after_secs = 18446744073709551615\n",
            dir.path().join("data")
        ),
    )
    .expect("write the config");
    for args in [&["check"][..], &[]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run hearth");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("keepalive.ping_after_secs = 18446744073709551615 is out of range"),
            "names the option and the value: {err}"
        );
        assert!(
            err.contains("between 1 and 86400"),
            "gives the range: {err}"
        );
    }
    assert!(!dir.path().join("data").exists(), "nothing was created");
}
