//! The `flotilla` binary's command line: every subcommand explains itself
//! and a bad invocation fails with a usage error. (Also makes `cargo test
//! --workspace` build the binary that the multi-process tests in `tests/`
//! run.)

use std::process::Command;

fn flotilla(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .expect("run flotilla");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_subcommand_has_help() {
    for (sub, flag) in [
        ("node", "--members"),
        ("local", "--resp-port-base"),
        ("status", "--node"),
        ("bench", "--nodes"),
    ] {
        let (code, out, err) = flotilla(&[sub, "--help"]);
        assert_eq!(code, 0, "flotilla {sub} --help: {err}");
        assert!(
            out.contains(flag),
            "flotilla {sub} --help mentions {flag}: {out}"
        );
    }
    let (code, out, _) = flotilla(&["node", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("FLOTILLA_NODE_ID"),
        "env variables are documented: {out}"
    );
}

#[test]
fn unknown_flags_and_unreachable_status_fail_cleanly() {
    let (code, _, err) = flotilla(&["node", "--no-such-flag"]);
    assert_eq!(code, 2, "usage error: {err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, err) = flotilla(&["status", "--node", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 1, "status of nothing: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains("6381"),
        "points at `flotilla local`'s ports: {err}"
    );
}
