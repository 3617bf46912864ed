//! `imagefs agent` and `imagefs vm`, the binaries, over a directory store
//! (no guest; the guests are in `tests/tests/agent_qemu.rs`):
//!
//! - the API socket is mode 0600 and its owner's;
//! - starting, listing, showing and stopping a VM, through `imagefs vm`
//!   and the state file;
//! - bad input gets a clear 4xx: malformed JSON, unknown fields, a bad id,
//!   an unknown image, a repeated id, an unknown VM, a wrong method;
//! - a VM whose VMM never connects is reaped after the timeout;
//! - after kill -9 the agent re-creates every VM's socket from its state
//!   file; a corrupt state file means an empty start, said so.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imagefs::transport::api::client::{ApiClient, ClientError};
use manifest::agent::{AgentState, VmPhase, VmSpec};
use tempfile::TempDir;
use tests::imagegen::{Entry, Image, Layer};
use tests::process::Running;

mod common;
use common::{pattern, store_of};

fn store() -> TempDir {
    store_of(Image::new(vec![Layer::new(vec![
        Entry::file("etc/hostname", "agent\n"),
        Entry::file("data/blob", pattern(300_000)),
    ])]))
}

struct Paths {
    api: PathBuf,
    run: PathBuf,
    state: PathBuf,
}

fn paths(dir: &Path) -> Paths {
    Paths {
        api: dir.join("api/agent.sock"),
        run: dir.join("vms"),
        state: dir.join("state/agent.json"),
    }
}

fn start_agent(dir: &Path, extra: &[&str]) -> (Running, String) {
    let p = paths(dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagefs"));
    cmd.arg("agent")
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--keys")
        .arg(dir.join("keys"))
        .arg("--api")
        .arg(&p.api)
        .arg("--run-dir")
        .arg(&p.run)
        .arg("--state")
        .arg(&p.state)
        .args(extra);
    Running::spawn_until(cmd, "imagefs agent: listening on", "imagefs agent").unwrap()
}

fn vm_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imagefs"))
        .arg("vm")
        .arg("--api")
        .arg(paths(dir).api)
        .args(args)
        .output()
        .unwrap()
}

fn spec(id: &str, image: &str) -> VmSpec {
    VmSpec {
        id: id.into(),
        image: image.into(),
        writable: false,
        dedicated: None,
        queues: None,
        domain: None,
    }
}

fn api_status(client: &ApiClient, method: &str, target: &str, body: Option<&str>) -> (u16, String) {
    let r = client
        .request(method, target, body.map(str::as_bytes))
        .unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[test]
fn the_api_starts_lists_shows_and_stops_vms_and_refuses_bad_input() {
    let tmp = store();
    let dir = tmp.path();
    let (agent, _) = start_agent(dir, &[]);
    let p = paths(dir);
    let client = ApiClient::new(&p.api);

    let meta = fs::metadata(&p.api).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "API socket mode");
    assert_eq!(meta.uid(), rustix_uid(), "API socket owner");

    // Start through the CLI: it prints id, digest and socket.
    let out = vm_cli(dir, &["start", "a", "t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{line}");
    assert_eq!(words[0], "a");
    assert!(words[1].starts_with("sha256:"), "{line}");
    let socket = PathBuf::from(words[2]);
    assert_eq!(socket, p.run.join("a.sock"));
    // The socket accepts a frontend as soon as the answer is back.
    std::os::unix::net::UnixStream::connect(&socket).expect("the VM's socket listens");

    let b = client.start_vm(&spec("b", words[1])).unwrap();
    assert_eq!(b.digest, words[1], "a digest pins to itself");
    let listed: Vec<String> = client.list().unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(listed, ["a", "b"]);
    let state = AgentState::decode(&fs::read(&p.state).unwrap()).unwrap();
    let ids: Vec<&str> = state.vms.iter().map(|v| v.spec.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "the state file holds both");
    assert_eq!(state.vms[0].digest, words[1], "the tag was pinned");

    let ded = dir.join("ded-d1");
    client
        .start_vm(&VmSpec {
            dedicated: Some(ded.clone()),
            ..spec("d1", "t")
        })
        .unwrap();
    let same_dir = format!(
        r#"{{"id":"d2","image":"t","dedicated":"{}"}}"#,
        ded.display()
    );
    let (status, text) = api_status(&client, "POST", "/v1/vms", Some(&same_dir));
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("VM `d1` already uses the dedicated directory"),
        "{text}"
    );
    client.stop_vm("d1").unwrap();

    // Bad input: a clear 4xx each, naming the problem.
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "POST",
            "/v1/vms",
            Some("{\"id\": \"c\", "),
            400,
            "bad VM spec",
        ),
        ("POST", "/v1/vms", Some("[1,2]"), 400, "bad VM spec"),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"id":"c","image":"t","writeable":true}"#),
            400,
            "writeable",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"id":"../x","image":"t"}"#),
            400,
            "VM id",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"id":"c","image":"no-such-tag"}"#),
            404,
            "no-such-tag",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"id":"c","image":"t","writable":true}"#),
            400,
            "dedicated",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"id":"a","image":"t"}"#),
            409,
            "already exists",
        ),
        ("GET", "/v1/vms/zzz", None, 404, "no VM `zzz`"),
        ("DELETE", "/v1/vms/zzz", None, 404, "no VM `zzz`"),
        ("GET", "/v2/nothing", None, 404, "no such route"),
    ];
    for &(method, target, body, want, says) in cases {
        let (status, text) = api_status(&client, method, target, body);
        assert_eq!(status, want, "{method} {target} {body:?}: {text}");
        assert!(text.contains(says), "{method} {target} {body:?}: {text}");
    }
    let (status, _) = api_status(&client, "PUT", "/v1/vms", Some("{}"));
    assert_eq!(status, 405, "PUT /v1/vms");
    match client.start_vm(&spec("a", "t")) {
        Err(ClientError::Api {
            status: 409,
            message,
        }) => {
            assert!(message.contains("already exists"), "{message}")
        }
        other => panic!("a repeated id: {other:?}"),
    }

    assert_eq!(
        client.show("b").unwrap().phase,
        VmPhase::Waiting,
        "no frontend yet"
    );
    // `a` had one (the probe above), which went away.
    assert_eq!(client.show("a").unwrap().phase, VmPhase::Disconnected);
    let metrics = client.metrics().unwrap();
    assert!(metrics.contains("imagefs_agent_vms 2"), "{metrics}");
    assert!(
        metrics.contains("imagefs_agent_plain_cache_total{event=\"hit\"}"),
        "the shared plaintext cache (on by default):\n{metrics}"
    );
    assert!(
        metrics.contains("imagefs_vm_read_seconds_count{vm=\"a\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imagefs_tier_"),
        "the tiers' own families:\n{metrics}"
    );

    let host = client.tiers().unwrap();
    let names: Vec<&str> = host.tiers.tiers.iter().map(|t| t.tier.as_str()).collect();
    assert_eq!(names, ["origin"], "no shared or AZ tier configured");
    assert!(host.shared.is_none());
    let out = vm_cli(dir, &["tiers"]);
    let cli: manifest::agent::HostTiers = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        cli.tiers.tiers.len(),
        host.tiers.tiers.len(),
        "imagefs vm tiers"
    );

    let out = vm_cli(dir, &["ls"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().count() == 3 && text.contains("waiting"),
        "{text}"
    );
    let out = vm_cli(dir, &["stop", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!socket.exists(), "the stopped VM's socket is removed");
    let out = vm_cli(dir, &["stop", "a"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && err.contains("404") && err.contains("no VM `a`"),
        "{err}"
    );
    let listed: Vec<String> = client.list().unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(listed, ["b"]);

    // A second agent on the same API socket is refused.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagefs"));
    cmd.args(["agent", "--store"]).arg(dir.join("store"));
    cmd.arg("--keys")
        .arg(dir.join("keys"))
        .arg("--api")
        .arg(&p.api);
    cmd.arg("--run-dir")
        .arg(dir.join("vms2"))
        .arg("--state")
        .arg(dir.join("s2.json"));
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already answers"),
        "{err}"
    );

    let said = agent.stop("-TERM").unwrap();
    assert!(said.contains("the VM table stays"), "{said}");
}

fn rustix_uid() -> u32 {
    // The test's own uid, from a file it just made.
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::metadata(f.path()).unwrap().uid()
}

/// Polls `done` every 50 ms for up to `limit` (a bound on a hang, not a
/// timing assertion).
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_vm_whose_vmm_never_connects_is_reaped() {
    let tmp = store();
    let dir = tmp.path();
    let (agent, _) = start_agent(dir, &["--connect-timeout", "1s"]);
    let client = ApiClient::new(paths(dir).api);
    let vm = client.start_vm(&spec("lonely", "t")).unwrap();
    assert!(vm.socket.exists());
    assert!(
        eventually(Duration::from_secs(60), || client
            .list()
            .unwrap()
            .is_empty()),
        "the VM was not reaped"
    );
    assert!(!vm.socket.exists(), "its socket is gone");
    let state = AgentState::decode(&fs::read(paths(dir).state).unwrap()).unwrap();
    assert!(state.vms.is_empty(), "and it left the state file");
    let said = agent.stop("-TERM").unwrap();
    assert!(
        said.contains("reaped VM lonely: no frontend connected within 1s"),
        "{said}"
    );
}

#[test]
fn kill_9_then_restart_re_creates_every_vm_and_a_corrupt_state_starts_empty() {
    let tmp = store();
    let dir = tmp.path();
    let p = paths(dir);
    let ded = dir.join("ded-w");
    let (agent, _) = start_agent(dir, &[]);
    let client = ApiClient::new(&p.api);
    client.start_vm(&spec("r1", "t")).unwrap();
    let w = client
        .start_vm(&VmSpec {
            writable: true,
            dedicated: Some(ded.clone()),
            ..spec("w1", "t")
        })
        .unwrap();
    assert!(
        w.writable && ded.is_dir(),
        "the dedicated directory is made"
    );
    let err = agent.stop("-KILL").unwrap_err();
    assert!(err.contains("signal: 9"), "{err}");

    let (agent, line) = start_agent(dir, &[]);
    assert!(line.contains("2 VM(s) restored (r1, w1)"), "{line}");
    let vms = client.list().unwrap();
    assert_eq!(vms.len(), 2);
    for vm in &vms {
        std::os::unix::net::UnixStream::connect(&vm.socket)
            .unwrap_or_else(|e| panic!("{}'s socket after the restart: {e}", vm.id));
    }
    agent.stop("-TERM").unwrap();

    fs::write(
        &p.state,
        b"{\"format\": \"imagefs-agent-state\", \"vms\": [",
    )
    .unwrap();
    let (agent, line) = start_agent(dir, &[]);
    assert!(line.contains("0 VM(s) restored"), "{line}");
    assert!(client.list().unwrap().is_empty());
    let mut aside = p.state.clone().into_os_string();
    aside.push(".corrupt");
    assert!(Path::new(&aside).exists(), "the corrupt file is kept aside");
    let said = agent.stop("-TERM").unwrap();
    assert!(
        said.contains("is unusable") && said.contains("starting with no VMs"),
        "{said}"
    );
}
