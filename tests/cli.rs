//! The `weft` binary end to end: serve, push, tail, pull, and shutdown on SIGTERM.

#![allow(clippy::disallowed_methods)] // Tests keep real time.

use std::process::Command;
use std::time::{Duration, Instant};

mod s3;
mod serve;

use serve::{Serve, WEFT};

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn push_tail_pull_round_trip() {
    let serve = Serve::start();
    let first = stdout(&serve.weft(&[
        "push", "--room", "cli", "--path", "notes/a", "--data", "hello",
    ]));
    let first = first.trim();
    assert_eq!(first.len(), 64, "push prints a 64-hex id: {first:?}");
    assert!(first.chars().all(|c| c.is_ascii_hexdigit()));

    let bin = std::env::temp_dir().join(format!("weft-cli-bin-{}", std::process::id()));
    std::fs::write(&bin, [0xff, 0x00, 0xfe]).unwrap();
    let second = stdout(&serve.weft(&[
        "push",
        "--room",
        "cli",
        "--path",
        "blobs/b",
        "--file",
        bin.to_str().unwrap(),
    ]));
    let second = second.trim();

    let tail = stdout(&serve.weft(&["tail", "--room", "cli", "--json", "--once"]));
    let lines: Vec<serde_json::Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], first);
    assert_eq!(lines[0]["path"], "notes/a");
    assert_eq!(lines[0]["payload"], "hello");
    assert_eq!(lines[0]["parents"], serde_json::json!([]));
    assert_eq!(lines[1]["id"], second);
    // The second push was built on the room's head at the time: the first node.
    assert_eq!(lines[1]["parents"], serde_json::json!([first]));
    assert_eq!(lines[1]["payload_b64"], "/wD+");
    assert!(lines[1].get("payload").is_none());

    let out = std::env::temp_dir().join(format!("weft-cli-pull-{}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let pulled = serve.weft(&["pull", "--room", "cli", "--out", out.to_str().unwrap()]);
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let replica = weft::replica::Replica::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    let ids: Vec<String> = replica.ids().map(|id| id.to_hex()).collect();
    assert_eq!(ids, vec![first.to_owned(), second.to_owned()]);
    std::fs::remove_file(out).unwrap();
    std::fs::remove_file(bin).unwrap();
}

/// `weft tail --subscribe` (repeatable, with `--json --once`) prints only matching nodes;
/// a bad pattern is refused with its reason.
#[test]
fn tail_with_subscriptions_prints_only_matching_nodes() {
    let serve = Serve::start();
    for (path, data) in [
        ("docs/readme", "1"),
        ("notes/today", "2"),
        ("docs/api/v1", "3"),
        ("misc/x", "4"),
        ("notes/tomorrow", "5"),
    ] {
        let pushed = serve.weft(&["push", "--room", "subs", "--path", path, "--data", data]);
        assert!(pushed.status.success());
    }
    let tail = stdout(&serve.weft(&[
        "tail",
        "--room",
        "subs",
        "--subscribe",
        "docs/**",
        "--subscribe",
        "*/tomorrow",
        "--json",
        "--once",
    ]));
    let paths: Vec<String> = tail
        .lines()
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).unwrap();
            line["path"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(paths, ["docs/readme", "docs/api/v1", "notes/tomorrow"]);
    let bad = serve.weft(&["tail", "--room", "subs", "--subscribe", "docs**", "--once"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("docs**") && stderr.contains("whole segment"),
        "{stderr}"
    );
}

/// A room written through a relay is checked, exported, imported into another store (twice:
/// the second time adds nothing) and served from there with the same nodes in the same order;
/// a damaged export is refused.
#[test]
fn store_check_export_and_import() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let (a, b) = (
        first.path().to_str().unwrap(),
        second.path().to_str().unwrap(),
    );
    let serve = Serve::start_at(first.path());
    for data in ["one", "two", "three"] {
        stdout(&serve.weft(&["push", "--room", "moved", "--path", "p", "--data", data]));
    }
    let before = stdout(&serve.weft(&["tail", "--room", "moved", "--once"]));
    drop(serve);

    let check = stdout(&weft(&["store", "check", "--store", a]));
    assert!(check.contains("layout version 1"), "{check}");
    let file = first.path().join("moved.weft");
    let file = file.to_str().unwrap();
    let exported = stdout(&weft(&[
        "export", "--store", a, "--room", "moved", "--out", file,
    ]));
    assert!(exported.contains("exported 3 nodes"), "{exported}");
    let imported = stdout(&weft(&[
        "import", "--store", b, "--room", "moved", "--in", file,
    ]));
    assert!(imported.contains("imported 3 new nodes"), "{imported}");
    let again = stdout(&weft(&[
        "import", "--store", b, "--room", "moved", "--in", file,
    ]));
    assert!(again.contains("imported 0 new nodes"), "{again}");

    let serve = Serve::start_at(second.path());
    let after = stdout(&serve.weft(&["tail", "--room", "moved", "--once"]));
    assert_eq!(after, before);
    drop(serve);

    let mut damaged = std::fs::read(file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(file, damaged).unwrap();
    let refused = weft(&["import", "--store", b, "--room", "moved", "--in", file]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("checksum"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // A store written by a newer layout fails its check.
    std::fs::write(first.path().join("weft-layout.json"), r#"{"layout":2}"#).unwrap();
    let newer = weft(&["store", "check", "--store", a]);
    assert!(!newer.status.success());
    assert!(String::from_utf8_lossy(&newer.stderr).contains("layout version 2"));
}

/// `weft store check` reaches a real S3-compatible server from an `s3://` URL and the
/// standard environment variables.
#[test]
fn store_check_reaches_s3() {
    let server = s3::Server::start();
    let output = Command::new(WEFT)
        .args(["store", "check", "--store"])
        .arg(format!("s3://{}/relay-a", s3::BUCKET))
        .envs(server.env())
        .output()
        .unwrap();
    let out = stdout(&output);
    assert!(out.contains("layout version 1"), "{out}");
    // Wrong credentials: a failed check, not a hang.
    let output = Command::new(WEFT)
        .args(["store", "check", "--store"])
        .arg(format!("s3://{}/relay-a", s3::BUCKET))
        .envs(server.env())
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
}

/// The binary without a relay.
fn weft(args: &[&str]) -> std::process::Output {
    Command::new(WEFT).args(args).output().unwrap()
}

/// A port on loopback where nothing listens (the relay that was there has stopped).
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// Setup mistakes end a one-shot command at once, saying what was tried and what is wrong,
/// instead of waiting out its timeout: a relay that is not running, an `http://` URL, a URL
/// without a scheme, `wss://` without TLS, a URL with a wrong path.
#[test]
fn setup_mistakes_fail_at_once_naming_what_was_tried() {
    let serve = Serve::start();
    let port = serve.url.trim_start_matches("ws://").to_owned();
    let refused = closed_port();
    let cases = [
        (
            refused.clone(),
            format!(
                "cannot connect to {refused}/v1/rooms/r: connection refused (is `weft serve` running there?)"
            ),
        ),
        (
            format!("http://{port}"),
            format!(
                "relay URL \"http://{port}\" is an HTTP URL; the relay speaks WebSocket: write ws://{port}"
            ),
        ),
        (
            port.clone(),
            format!("relay URL \"{port}\" has no scheme: write ws://{port}"),
        ),
        (
            format!("wss://{port}"),
            format!(
                "cannot connect to wss://{port}/v1/rooms/r: wss:// needs TLS, which this build of weft does not include; use a ws:// URL"
            ),
        ),
        (
            format!("ws://{port}/weft"),
            format!(
                "ws://{port}/weft/v1/rooms/r answered HTTP 404 Not Found: there is no relay route there"
            ),
        ),
    ];
    for command in [
        &["push", "--path", "p", "--data", "x"][..],
        &["pull", "--out", "never.replica"],
        &["tail", "--once"],
    ] {
        for (server, says) in &cases {
            let started = Instant::now();
            let output = Command::new(WEFT)
                .args(command)
                .args(["--room", "r", "--server", server, "--timeout", "60"])
                .output()
                .unwrap();
            assert!(!output.status.success(), "{command:?} {server}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(says.as_str()),
                "{command:?} {server}: {stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{command:?} {server}: {stderr}");
            assert!(output.stdout.is_empty());
            // Far from the 60 s timeout it used to wait out; the bound is generous.
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{command:?} {server}"
            );
        }
    }
    assert!(!std::path::Path::new("never.replica").exists());
}

/// `tail` without `--once` keeps retrying an unreachable relay until its timeout, saying the
/// reason once rather than on every attempt.
#[test]
fn tail_keeps_retrying_and_says_the_reason_once() {
    let refused = closed_port();
    let output = Command::new(WEFT)
        .args([
            "tail",
            "--room",
            "r",
            "--server",
            &refused,
            "--timeout",
            "2s",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        occurrences(&stderr, "relay not reachable; retrying"),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "weft: relay at {refused}/v1/rooms/r not reachable or not syncing in time (last: connection refused)"
        )),
        "{stderr}"
    );
}

/// `--server` takes the room URL the relay prints, with or without a `--room` that agrees.
#[test]
fn server_takes_a_room_url() {
    let serve = Serve::start();
    let room_url = format!("{}/v1/rooms/notes", serve.url);
    let id = stdout(
        &Command::new(WEFT)
            .args(["push", "--server", &room_url, "--path", "a", "--data", "x"])
            .output()
            .unwrap(),
    );
    let tailed = stdout(
        &Command::new(WEFT)
            .args(["tail", "--server", &room_url, "--room", "notes", "--once"])
            .output()
            .unwrap(),
    );
    assert_eq!(tailed, format!("{} a x\n", id.trim()));
    let disagree = Command::new(WEFT)
        .args(["tail", "--server", &room_url, "--room", "other", "--once"])
        .output()
        .unwrap();
    assert!(!disagree.status.success());
    let stderr = String::from_utf8_lossy(&disagree.stderr);
    assert!(
        stderr.contains(&format!(
            "--server {room_url} names room notes, but --room says other"
        )),
        "{stderr}"
    );
    let neither = weft(&["tail", "--once"]);
    assert!(!neither.status.success());
    assert!(String::from_utf8_lossy(&neither.stderr).contains("which room? give --room ROOM"));
}

#[test]
fn bad_arguments_are_refused() {
    let output = Command::new(WEFT)
        .args(["push", "--room", "no/slash", "--path", "p", "--data", "x"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let output = Command::new(WEFT)
        .args(["serve", "--store", "bogus://bucket"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad store location"));
    for command in ["serve", "push", "tail", "pull"] {
        let help = Command::new(WEFT)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success());
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("WEFT_"),
            "{command} --help shows env vars"
        );
    }
}

#[cfg(unix)]
#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut serve = Serve::start();
    let pid = serve.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sizes and durations take units in flags and environment variables, bare numbers keep their
/// old meaning, `--listen` takes a port or a host name, and `--help` shows defaults the way
/// the flags take them.
#[test]
fn flags_take_units() {
    let data = tempfile::tempdir().unwrap();
    // 280 KiB is over the default payload limit (256 KiB), so the push below is accepted
    // only because `--max-payload 300KiB` was understood.
    let serve = Serve::start_with(
        data.path(),
        &[
            "--listen",
            "localhost:0",
            "--max-frame",
            "1MiB",
            "--max-payload",
            "300KiB",
        ],
        &[
            ("WEFT_MAX_LAG", "2s"),
            ("WEFT_ROOM_IDLE_SECS", "90"),
            ("WEFT_QUEUE_LIMIT", "4 MiB"),
        ],
    );
    let file = data.path().join("280k");
    std::fs::write(&file, vec![7u8; 280 << 10]).unwrap();
    let pushed = serve.weft(&[
        "push",
        "--room",
        "u",
        "--path",
        "big",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(stdout(&pushed).trim().len(), 64);
    drop(serve);

    // A bare port listens on loopback; a bare --max-payload is bytes (the stored node is only
    // loaded again under a limit that admits it); --timeout takes units.
    let serve = Serve::start_with(
        data.path(),
        &["--listen", "0", "--max-payload", "307200"],
        &[],
    );
    assert!(serve.url.starts_with("ws://127.0.0.1:"), "{}", serve.url);
    let tailed = Command::new(WEFT)
        .args([
            "tail",
            "--room",
            "u",
            "--once",
            "--timeout",
            "1m",
            "--server",
            &serve.url,
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&tailed).lines().count(), 1);
    drop(serve);

    for (flag, value, says) in [
        ("--max-frame", "lots", "\"lots\" is not a size"),
        ("--max-frame", "8GiB", "too large"),
        ("--max-lag", "soon", "\"soon\" is not a duration"),
        (
            "--listen",
            "ws://127.0.0.1:7788",
            "--listen takes an address, e.g. 127.0.0.1:7788",
        ),
        ("--listen", "localhost", "write PORT, IP:PORT or HOST:PORT"),
    ] {
        let refused = weft(&["serve", "--store", "memory://", flag, value]);
        assert!(!refused.status.success(), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }

    let help = stdout(&weft(&["serve", "--help"]));
    for default in [
        "[default: 1MiB]",
        "[default: 256KiB]",
        "[default: 5s]",
        "[default: 64MiB]",
    ] {
        assert!(help.contains(default), "serve --help shows {default}");
    }
    assert!(stdout(&weft(&["push", "--help"])).contains("[default: 30s]"));
}

/// How often `needle` occurs in `haystack`.
fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// A bad `--path` says which rule it breaks, once; a bad pattern says its reason once; a
/// store location that is a file says so.
#[test]
fn errors_say_what_is_wrong_once() {
    let serve = Serve::start();
    for (path, reason) in [
        (
            "/notes/a",
            "it starts with `/`; paths are written without one, like `a/b`",
        ),
        ("notes//a", "it has an empty segment (`//`)"),
        ("notes/", "it ends with `/`"),
        ("a/../b", "it has a `.` or `..` segment"),
        (&"s/".repeat(40)[..79], "it has more than 32 segments"),
    ] {
        let refused = serve.weft(&["push", "--room", "e", "--path", path, "--data", "x"]);
        assert!(!refused.status.success(), "{path}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(&format!("bad path {path:?}: {reason}")),
            "{path}: {stderr}"
        );
        assert_eq!(occurrences(&stderr, reason), 1, "{path}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{path}: {stderr}");
    }
    let bad = serve.weft(&["tail", "--room", "e", "--subscribe", "docs**", "--once"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(
        occurrences(&stderr, "`**` must be a whole segment"),
        1,
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, "not a store").unwrap();
    let refused = weft(&["serve", "--listen", "0", "--store", file.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("afile: not a directory"), "{stderr}");
}

/// A bad `--path` is refused before connecting: no relay is needed to say so.
#[test]
fn bad_path_is_refused_without_a_relay() {
    let refused = weft(&[
        "push",
        "--server",
        "ws://127.0.0.1:9",
        "--room",
        "e",
        "--path",
        "/a",
        "--data",
        "x",
        "--timeout",
        "60",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("bad path \"/a\": it starts with `/`"),
        "{stderr}"
    );
}

/// A payload over the relay's limit fails at once with its size and the limit, instead of
/// being resent until the timeout.
#[test]
fn push_over_the_payload_limit_fails_at_once_with_the_limit() {
    let serve = Serve::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("5mb");
    std::fs::write(&file, vec![0u8; 5 << 20]).unwrap();
    let started = Instant::now();
    let output = Command::new(WEFT)
        .args(["push", "--room", "big", "--path", "f", "--file"])
        .arg(&file)
        .args(["--server", &serve.url, "--timeout", "60"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("payload is 5.0 MiB; this relay accepts at most 256 KiB per node"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    // It did not wait out its timeout (the old behaviour); the bound is generous.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// `push` without a payload shows the choice between `--data` and `--file`.
#[test]
fn push_without_a_payload_shows_the_choice() {
    let output = weft(&["push", "--room", "r", "--path", "p"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("<--data <DATA>|--file <FILE>>"), "{stderr}");
}

/// `pull` says how many nodes were new and how many the replica holds; `pull` has no
/// `--replica` (its replica is `--out`); `tail --replica` prints only what is new since the
/// replica, and `--from-start` the whole room.
#[test]
fn pull_counts_and_tail_replica_prints_what_is_new() {
    let serve = Serve::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.replica");
    let out = out.to_str().unwrap();
    let pull = |expected: &str| {
        let pulled = serve.weft(&["pull", "--room", "c", "--out", out]);
        assert!(pulled.status.success());
        let stderr = String::from_utf8_lossy(&pulled.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    };
    stdout(&serve.weft(&["push", "--room", "c", "--path", "a", "--data", "1"]));
    pull(&format!("pulled 1 new node; {out} now holds 1 node"));
    pull(&format!("pulled 0 new nodes; {out} now holds 1 node"));
    stdout(&serve.weft(&["push", "--room", "c", "--path", "b", "--data", "2"]));
    stdout(&serve.weft(&["push", "--room", "c", "--path", "c", "--data", "3"]));
    pull(&format!("pulled 2 new nodes; {out} now holds 3 nodes"));
    let refused = serve.weft(&["pull", "--room", "c", "--out", out, "--replica", out]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unexpected argument '--replica'"));

    let tail_file = dir.path().join("t.replica");
    let tail_file = tail_file.to_str().unwrap();
    let tail = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["tail", "--room", "c", "--once", "--replica", tail_file];
        args.extend_from_slice(extra);
        stdout(&serve.weft(&args))
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(tail(&[]), ["1", "2", "3"]);
    assert!(tail(&[]).is_empty(), "nothing is new since the replica");
    stdout(&serve.weft(&["push", "--room", "c", "--path", "d", "--data", "4"]));
    assert_eq!(tail(&[]), ["4"]);
    assert_eq!(tail(&["--from-start"]), ["1", "2", "3", "4"]);
}

/// `import` refuses a local store that a running relay serves (instead of making the relay
/// close the room's sessions with 4006), and works once the relay is stopped; an export
/// imported under another room name is refused as such.
#[test]
fn import_refuses_a_store_a_relay_serves() {
    let source = tempfile::tempdir().unwrap();
    let served = tempfile::tempdir().unwrap();
    let (a, b) = (
        source.path().to_str().unwrap(),
        served.path().to_str().unwrap(),
    );
    let serve = Serve::start_at(source.path());
    stdout(&serve.weft(&["push", "--room", "moved", "--path", "p", "--data", "1"]));
    drop(serve);
    let file = source.path().join("moved.weft");
    let file = file.to_str().unwrap();
    stdout(&weft(&[
        "export", "--store", a, "--room", "moved", "--out", file,
    ]));

    let serve = Serve::start_at(served.path());
    stdout(&serve.weft(&["push", "--room", "moved", "--path", "q", "--data", "2"]));
    let refused = weft(&["import", "--store", b, "--room", "moved", "--in", file]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "a relay is serving {b} (it holds {b}/weft-serve.lock); stop it first, then import"
        )),
        "{stderr}"
    );
    // The relay's room was left alone.
    let tailed = stdout(&serve.weft(&["tail", "--room", "moved", "--once"]));
    assert_eq!(tailed.lines().count(), 1, "{tailed}");
    // A second relay on the same directory is refused too.
    let second = weft(&["serve", "--listen", "0", "--store", b]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains(&format!("another relay is serving {b}"))
    );
    drop(serve);

    let imported = stdout(&weft(&[
        "import", "--store", b, "--room", "moved", "--in", file,
    ]));
    assert!(imported.contains("imported 1 new node into"), "{imported}");
    let other = weft(&["import", "--store", b, "--room", "other", "--in", file]);
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains(&format!(
            "{file} is an export of room moved, not of room other; import it with --room moved"
        )),
        "{stderr}"
    );
}
