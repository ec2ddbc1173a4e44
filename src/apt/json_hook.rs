//! apt's JSON hook (`AptCli::Hooks::Install`, `::Upgrade`): JSON-RPC 2.0
//! on the socket named by `APT_HOOK_SOCKET`, one message per line followed
//! by an empty line. dkms-hook answers the hello, reads the one
//! notification (pre-prompt, package-list, statistics, post, fail) and
//! returns at bye. Recorded session: `../shared/data/apt-hook-protocols/`.

use std::cmp::Ordering;
use std::io::{self, BufReader, Read, Write};

use serde::Serialize;
use serde_json::Value;

use super::{read_line_capped, AptAction, AptChange, AptHookError, MAX_STREAM_BYTES};
use crate::dpkg::compare_versions;

/// JSON hook handshake call.
pub const METHOD_HELLO: &str = "org.debian.apt.hooks.hello";
/// JSON hook closing notification.
pub const METHOD_BYE: &str = "org.debian.apt.hooks.bye";
/// Sent before the package list and the y/n prompt.
pub const METHOD_PRE_PROMPT: &str = "org.debian.apt.hooks.install.pre-prompt";
/// Sent after the package list (protocol 0.2).
pub const METHOD_PACKAGE_LIST: &str = "org.debian.apt.hooks.install.package-list";
/// Sent after the "N upgraded, M newly installed" line (protocol 0.2).
pub const METHOD_STATISTICS: &str = "org.debian.apt.hooks.install.statistics";
/// Sent after a successful install.
pub const METHOD_POST: &str = "org.debian.apt.hooks.install.post";
/// Sent after a failed install.
pub const METHOD_FAIL: &str = "org.debian.apt.hooks.install.fail";

/// Notifications we accept; the search ones are accepted only so they are not
/// treated as unknown, they carry nothing of interest.
const KNOWN_NOTIFICATIONS: [&str; 8] = [
    METHOD_PRE_PROMPT,
    METHOD_PACKAGE_LIST,
    METHOD_STATISTICS,
    METHOD_POST,
    METHOD_FAIL,
    "org.debian.apt.hooks.search.pre",
    "org.debian.apt.hooks.search.post",
    "org.debian.apt.hooks.search.fail",
];

/// JSON hook protocol versions we speak, best first.
const SUPPORTED_PROTOCOLS: [&str; 2] = ["0.2", "0.1"];

/// What one JSON hook invocation saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonHookSession {
    /// Negotiated "0.1" / "0.2"; `None` if no hello was seen.
    pub protocol: Option<String>,
    /// Full method name of the hook notification.
    pub method: Option<String>,
    /// `params.command`, e.g. "install" or "upgrade".
    pub command: Option<String>,
    /// Packages from `params.packages` whose mode changes something.
    pub changes: Vec<AptChange>,
    /// `params.search-terms`: the words of apt's command line after the
    /// command (package names, patterns, files).
    pub search_terms: Vec<String>,
    pub saw_bye: bool,
}

impl JsonHookSession {
    /// True when this invocation is the one that should print warnings:
    /// statistics under 0.2, pre-prompt under 0.1 (0.1 hooks do not get
    /// statistics, and under 0.2 it is the last message before the prompt).
    pub fn should_warn(&self) -> bool {
        matches!(
            (self.protocol.as_deref(), self.method.as_deref()),
            (Some("0.2"), Some(METHOD_STATISTICS)) | (Some("0.1"), Some(METHOD_PRE_PROMPT))
        )
    }

    /// True for the first call of an install under 0.2, pre-prompt: the
    /// one that warns (statistics) follows with the same package list.
    pub fn warns_later(&self) -> bool {
        self.protocol.as_deref() == Some("0.2") && self.method.as_deref() == Some(METHOD_PRE_PROMPT)
    }
}

/// Parse one JSON-RPC message. Anything but a JSON object is rejected because
/// JSON-RPC messages are always objects.
pub fn parse_message(line: &str) -> Result<Value, AptHookError> {
    let value: Value = serde_json::from_str(line.trim())
        .map_err(|e| AptHookError::Protocol(format!("invalid json message: {e}")))?;
    if !value.is_object() {
        return Err(AptHookError::Protocol(
            "json message is not an object".to_owned(),
        ));
    }
    Ok(value)
}

/// Serve one JSON hook invocation on `stream` (the `APT_HOOK_SOCKET` fd):
/// answer the hello, record the notification, return after bye or EOF.
///
/// A peer that closes early is not an error; the session then has
/// `saw_bye == false`. Garbage and unknown methods are skipped.
pub fn serve_json_hook<S: Read + Write>(stream: S) -> Result<JsonHookSession, AptHookError> {
    serve_json_hook_limited(stream, MAX_STREAM_BYTES)
}

/// Messages end with an empty line; a single line that is already a
/// complete object is taken at once (so a peer that forgets the blank line
/// cannot stall us, and the hello is answered before its blank line
/// arrives). Replies go back through the reader's inner stream.
fn serve_json_hook_limited<S: Read + Write>(
    stream: S,
    limit: usize,
) -> Result<JsonHookSession, AptHookError> {
    let mut session = JsonHookSession::default();
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    let mut block = String::new();
    let mut total = 0usize;
    loop {
        let more = match read_line_capped(&mut r, &mut line) {
            Ok(more) => more,
            // apt closing while our answer is unread shows up as a reset;
            // that is an early close, not a failure.
            Err(AptHookError::Io(e)) if is_peer_gone(&e) => false,
            Err(AptHookError::TooLarge(_)) => {
                drain(&mut r, limit);
                return Err(AptHookError::TooLarge("the JSON hook session"));
            }
            Err(e) => return Err(e),
        };
        total = total.saturating_add(line.len());
        if total > limit {
            drain(&mut r, limit);
            return Err(AptHookError::TooLarge("the JSON hook session"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        let message = if !more || text.trim().is_empty() {
            // End of a block (or of the stream): parse what was collected.
            end_block(&mut block)
        } else if block.is_empty() {
            match parse_message(text) {
                Ok(v) => vec![v],
                Err(_) => {
                    block.push_str(text);
                    Vec::new()
                }
            }
        } else {
            block.push('\n');
            block.push_str(text);
            if block.len() > limit {
                return Err(AptHookError::Protocol(format!(
                    "json message longer than {limit} bytes"
                )));
            }
            Vec::new()
        };
        for msg in message {
            // Stop reading right after bye: apt may keep the socket open
            // while it waits for us to exit.
            if handle_message(r.get_mut(), &mut session, &msg)? == Flow::Stop {
                return Ok(session);
            }
        }
        if !more {
            return Ok(session);
        }
    }
}

/// The messages of a collected block; when it is no message as a whole,
/// any line that is one by itself (garbage followed directly by a message).
fn end_block(block: &mut String) -> Vec<Value> {
    if block.is_empty() {
        return Vec::new();
    }
    let block = std::mem::take(block);
    match parse_message(&block) {
        Ok(v) => vec![v],
        Err(e) => {
            log::debug!("skipping unparsable json hook data: {e}");
            block
                .lines()
                .filter_map(|l| parse_message(l).ok())
                .collect()
        }
    }
}

/// Read on (as far as `limit` more bytes) without keeping anything, so that
/// apt is not left writing into a closed socket.
fn drain<R: Read>(r: &mut R, limit: usize) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut drained = 0usize;
    while drained < limit {
        match r.read(&mut chunk) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

fn handle_message<W: Write>(
    w: &mut W,
    session: &mut JsonHookSession,
    msg: &Value,
) -> Result<Flow, AptHookError> {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        log::debug!("ignoring json message without a method");
        return Ok(Flow::Continue);
    };
    let id = msg.get("id");
    match method {
        METHOD_HELLO => {
            let id = id.cloned().unwrap_or_else(|| Value::from(0));
            let offered: Vec<&str> = msg
                .pointer("/params/versions")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match SUPPORTED_PROTOCOLS.iter().find(|v| offered.contains(v)) {
                Some(version) => {
                    send(w, &id, Outcome::Result(HelloResult { version }))?;
                    session.protocol = Some((*version).to_owned());
                    Ok(Flow::Continue)
                }
                None => {
                    send::<_, ()>(
                        w,
                        &id,
                        Outcome::Error(RpcError {
                            code: -32000,
                            message: "no supported protocol version offered",
                        }),
                    )?;
                    Err(AptHookError::Protocol(format!(
                        "apt offered no supported hook protocol version: {offered:?}"
                    )))
                }
            }
        }
        METHOD_BYE => {
            session.saw_bye = true;
            Ok(Flow::Stop)
        }
        m if KNOWN_NOTIFICATIONS.contains(&m) => {
            if session.method.is_some() {
                log::debug!("more than one hook notification, keeping the last: {m}");
            }
            let params = msg.get("params");
            session.method = Some(m.to_owned());
            session.command = params
                .and_then(|p| p.get("command"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            session.changes = changes_from_params(params);
            session.search_terms = params
                .and_then(|p| p.get("search-terms"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            // apt documents these may become calls; answering keeps apt
            // from waiting on us forever if that happens.
            if let Some(id) = id {
                send(w, id, Outcome::Result(()))?;
            }
            Ok(Flow::Continue)
        }
        other => {
            log::debug!("ignoring unknown json hook method {other:?}");
            if let Some(id) = id {
                send::<_, ()>(
                    w,
                    id,
                    Outcome::Error(RpcError {
                        code: -32601,
                        message: "method not found",
                    }),
                )?;
            }
            Ok(Flow::Continue)
        }
    }
}

/// A JSON-RPC reply. Serialized in field order (serde keeps it), which is
/// the order apt's documentation shows.
#[derive(Serialize)]
struct Reply<'a, R: Serialize> {
    jsonrpc: &'static str,
    id: &'a Value,
    #[serde(flatten)]
    outcome: Outcome<R>,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome<R: Serialize> {
    Result(R),
    Error(RpcError<'static>),
}

#[derive(Serialize)]
struct RpcError<'a> {
    code: i64,
    message: &'a str,
}

#[derive(Serialize)]
struct HelloResult<'a> {
    version: &'a str,
}

fn send<W: Write, R: Serialize>(
    w: &mut W,
    id: &Value,
    outcome: Outcome<R>,
) -> Result<(), AptHookError> {
    let reply = Reply {
        jsonrpc: "2.0",
        id,
        outcome,
    };
    let mut text = serde_json::to_vec(&reply)
        .map_err(|e| AptHookError::Protocol(format!("cannot encode a reply: {e}")))?;
    text.extend_from_slice(b"\n\n");
    w.write_all(&text)?;
    w.flush()?;
    Ok(())
}

fn changes_from_params(params: Option<&Value>) -> Vec<AptChange> {
    params
        .and_then(|p| p.get("packages"))
        .and_then(Value::as_array)
        .map(|pkgs| pkgs.iter().filter_map(change_from_package).collect())
        .unwrap_or_default()
}

fn change_from_package(pkg: &Value) -> Option<AptChange> {
    let name = pkg
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let Some(name) = name else {
        log::debug!("skipping json package without a name");
        return None;
    };
    let mode = pkg.get("mode").and_then(Value::as_str).unwrap_or("");
    let version_of = |which: &str| {
        pkg.get("versions")
            .and_then(|v| v.get(which))
            .and_then(|v| v.get("version"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let old = version_of("current");
    let install = version_of("install").or_else(|| version_of("candidate"));

    let (action, new) = match mode {
        "deinstall" => (AptAction::Remove, None),
        "purge" => (AptAction::Purge, None),
        "install" | "upgrade" | "downgrade" | "reinstall" => {
            let Some(new) = install else {
                log::debug!("skipping {name}: mode {mode} without a version to install");
                return None;
            };
            let action = match mode {
                "upgrade" => AptAction::Upgrade,
                "downgrade" => AptAction::Downgrade,
                "reinstall" => AptAction::Reinstall,
                _ => classify_install(pkg, old.as_deref(), &new),
            };
            (action, Some(new))
        }
        // "keep" and anything newer change nothing we know about.
        _ => {
            log::debug!("skipping {name}: mode {mode:?}");
            return None;
        }
    };

    Some(AptChange {
        package: name.to_owned(),
        architecture: pkg
            .get("architecture")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .map(str::to_owned),
        old,
        new,
        action,
    })
}

/// Protocol 0.1 says "install" for upgrades, downgrades and reinstalls too;
/// use apt's optional flags, else compare the versions like dpkg does.
fn classify_install(pkg: &Value, old: Option<&str>, new: &str) -> AptAction {
    let Some(old) = old else {
        return AptAction::Install;
    };
    let flag = |key: &str| pkg.get(key).and_then(Value::as_bool).unwrap_or(false);
    if flag("upgrade") {
        return AptAction::Upgrade;
    }
    if flag("downgrade") {
        return AptAction::Downgrade;
    }
    if flag("reinstall") {
        return AptAction::Reinstall;
    }
    match compare_versions(new, old) {
        Ordering::Greater => AptAction::Upgrade,
        Ordering::Less => AptAction::Downgrade,
        Ordering::Equal => AptAction::Reinstall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apt::tests::{change, hello_install};
    use std::os::unix::net::UnixStream;
    use std::thread;
    use std::time::Duration;

    // ----- Part 2 -----

    const HELLO_BOTH: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.hello","id":0,"params":{"versions":["0.1","0.2"]}}"#;
    const HELLO_01: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.hello","id":0,"params":{"versions":["0.1"]}}"#;
    const BYE: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.bye","params":{}}"#;
    const ANSWER_02: &str = "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"version\":\"0.2\"}}\n\n";
    const ANSWER_01: &str = "{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"version\":\"0.1\"}}\n\n";

    fn notification(method: &str, packages: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","method":"{method}","params":{{"command":"install","search-terms":["hello"],"unknown-packages":[],"packages":[{packages}]}}}}"#
        )
    }

    const HELLO_PKG: &str = r#"{"id":15049,"name":"hello","architecture":"amd64","mode":"install","automatic":false,"versions":{"candidate":{"id":21704,"version":"2.10-3","architecture":"amd64","pin":500},"install":{"id":21704,"version":"2.10-3","architecture":"amd64","pin":500}}}"#;

    /// Socket pair with timeouts so a broken test fails instead of hanging;
    /// the hook side is served on a thread.
    fn start() -> (
        UnixStream,
        thread::JoinHandle<Result<JsonHookSession, AptHookError>>,
    ) {
        let (apt, hook) = UnixStream::pair().expect("socketpair");
        for s in [&apt, &hook] {
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.set_write_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
        }
        let handle = thread::spawn(move || serve_json_hook(hook));
        (apt, handle)
    }

    fn send_msg(apt: &mut UnixStream, msg: &str) {
        apt.write_all(msg.as_bytes()).expect("write");
        apt.write_all(b"\n\n").expect("write");
    }

    /// Read one reply (up to and including the blank line).
    fn read_reply(apt: &mut UnixStream) -> String {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\n\n") {
            match apt.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => out.push(byte[0]),
                Err(e) => panic!("reading reply: {e}"),
            }
        }
        String::from_utf8(out).expect("utf8 reply")
    }

    fn finish(
        handle: thread::JoinHandle<Result<JsonHookSession, AptHookError>>,
    ) -> Result<JsonHookSession, AptHookError> {
        handle.join().expect("server thread panicked")
    }

    /// Drive a whole session: hello, the given messages, bye.
    fn session(hello: &str, expected_answer: &str, messages: &[&str]) -> JsonHookSession {
        let (mut apt, handle) = start();
        send_msg(&mut apt, hello);
        assert_eq!(read_reply(&mut apt), expected_answer);
        for m in messages {
            send_msg(&mut apt, m);
        }
        send_msg(&mut apt, BYE);
        let s = finish(handle).expect("session ok");
        assert!(s.saw_bye);
        s
    }

    #[test]
    fn protocol_01_pre_prompt() {
        let msg = notification(METHOD_PRE_PROMPT, HELLO_PKG);
        let s = session(HELLO_01, ANSWER_01, &[&msg]);
        assert_eq!(s.protocol.as_deref(), Some("0.1"));
        assert_eq!(s.method.as_deref(), Some(METHOD_PRE_PROMPT));
        assert_eq!(s.command.as_deref(), Some("install"));
        assert!(s.should_warn());
        assert_eq!(s.changes, vec![hello_install()]);
    }

    #[test]
    fn protocol_02_statistics_with_changes() {
        let packages = r#"
            {"id":1,"name":"linux-kbuild-6.1","architecture":"amd64","mode":"upgrade","automatic":true,
             "versions":{"candidate":{"id":2,"version":"6.1.192-2","architecture":"amd64","pin":500},
                         "install":{"id":2,"version":"6.1.192-2","architecture":"amd64","pin":500},
                         "current":{"id":3,"version":"6.1.176-1","architecture":"amd64","pin":100}}},
            {"id":4,"name":"linux-headers-6.1.0-37-amd64","architecture":"amd64","mode":"deinstall","automatic":true,
             "versions":{"candidate":{"id":5,"version":"6.1.176-1","architecture":"amd64","pin":100},
                         "current":{"id":5,"version":"6.1.176-1","architecture":"amd64","pin":100}}},
            {"id":6,"name":"linux-headers-6.1.0-36-amd64","architecture":"amd64","mode":"purge","automatic":true,
             "versions":{"current":{"id":7,"version":"6.1.158-1","architecture":"amd64","pin":100}}},
            {"id":8,"name":"kept","architecture":"amd64","mode":"keep","automatic":false,
             "versions":{"current":{"id":9,"version":"1","architecture":"amd64","pin":100}}},
            {"id":10,"name":"old","architecture":"amd64","mode":"downgrade","automatic":false,
             "versions":{"install":{"version":"1"},"current":{"version":"2"}}},
            {"id":11,"name":"again","architecture":"amd64","mode":"reinstall","automatic":false,
             "versions":{"install":{"version":"1"},"current":{"version":"1"}}},
            {"name":"noversion","mode":"upgrade"},
            {"mode":"install"},
            42
        "#
        .replace('\n', " ");
        let msg = notification(METHOD_STATISTICS, &packages);
        let s = session(HELLO_BOTH, ANSWER_02, &[&msg]);
        assert_eq!(s.protocol.as_deref(), Some("0.2"));
        assert_eq!(s.method.as_deref(), Some(METHOD_STATISTICS));
        assert!(s.should_warn());
        assert_eq!(
            s.changes,
            vec![
                change(
                    "linux-kbuild-6.1",
                    Some("amd64"),
                    Some("6.1.176-1"),
                    Some("6.1.192-2"),
                    AptAction::Upgrade
                ),
                change(
                    "linux-headers-6.1.0-37-amd64",
                    Some("amd64"),
                    Some("6.1.176-1"),
                    None,
                    AptAction::Remove
                ),
                change(
                    "linux-headers-6.1.0-36-amd64",
                    Some("amd64"),
                    Some("6.1.158-1"),
                    None,
                    AptAction::Purge
                ),
                change(
                    "old",
                    Some("amd64"),
                    Some("2"),
                    Some("1"),
                    AptAction::Downgrade
                ),
                change(
                    "again",
                    Some("amd64"),
                    Some("1"),
                    Some("1"),
                    AptAction::Reinstall
                ),
            ]
        );
    }

    #[test]
    fn protocol_02_pre_prompt_does_not_warn() {
        let msg = notification(METHOD_PRE_PROMPT, HELLO_PKG);
        let s = session(HELLO_BOTH, ANSWER_02, &[&msg]);
        assert_eq!(s.method.as_deref(), Some(METHOD_PRE_PROMPT));
        assert!(!s.should_warn());
        // And 0.1 statistics (apt should not send it) does not warn either.
        let s = JsonHookSession {
            protocol: Some("0.1".into()),
            method: Some(METHOD_STATISTICS.into()),
            ..Default::default()
        };
        assert!(!s.should_warn());
        assert!(!JsonHookSession::default().should_warn());
    }

    #[test]
    fn protocol_01_install_mode_is_classified_by_version() {
        let pkgs = r#"{"name":"k","architecture":"amd64","mode":"install","versions":{"install":{"version":"6.1.192-2"},"current":{"version":"6.1.176-1"}}},
                      {"name":"d","architecture":"amd64","mode":"install","versions":{"install":{"version":"1.0~rc1"},"current":{"version":"1.0"}}},
                      {"name":"r","architecture":"amd64","mode":"install","versions":{"install":{"version":"1"},"current":{"version":"1"}}},
                      {"name":"f","architecture":"amd64","mode":"install","downgrade":true,"versions":{"install":{"version":"3"},"current":{"version":"1"}}}"#
            .replace('\n', " ");
        let msg = notification(METHOD_PRE_PROMPT, &pkgs);
        let s = session(HELLO_01, ANSWER_01, &[&msg]);
        let actions: Vec<_> = s.changes.iter().map(|c| c.action).collect();
        assert_eq!(
            actions,
            vec![
                AptAction::Upgrade,
                AptAction::Downgrade,
                AptAction::Reinstall,
                AptAction::Downgrade
            ]
        );
    }

    #[test]
    fn answer_bytes_are_exact() {
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        let mut buf = vec![0u8; ANSWER_02.len()];
        apt.read_exact(&mut buf).expect("answer");
        assert_eq!(buf, ANSWER_02.as_bytes());
        send_msg(&mut apt, BYE);
        let s = finish(handle).expect("ok");
        assert!(s.saw_bye);
        // Nothing but the answer was written.
        apt.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut rest = Vec::new();
        apt.read_to_end(&mut rest).expect("eof after hook ends");
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[test]
    fn unknown_method_is_ignored() {
        let unknown = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.future.thing","params":{"packages":[]}}"#;
        let call = r#"{"jsonrpc":"2.0","method":"org.example.unknown","id":7,"params":{}}"#;
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        assert_eq!(read_reply(&mut apt), ANSWER_02);
        send_msg(&mut apt, unknown);
        send_msg(&mut apt, call);
        let reply = read_reply(&mut apt);
        let v = parse_message(&reply).expect("json reply");
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], -32601);
        send_msg(&mut apt, BYE);
        let s = finish(handle).expect("ok");
        assert!(s.saw_bye);
        assert_eq!(s.method, None);
        assert!(!s.should_warn());
    }

    #[test]
    fn search_hooks_are_accepted() {
        let msg = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.search.post","params":{"command":"search","search-terms":["x"],"unknown-packages":[],"packages":[]}}"#;
        let s = session(HELLO_BOTH, ANSWER_02, &[msg]);
        assert_eq!(
            s.method.as_deref(),
            Some("org.debian.apt.hooks.search.post")
        );
        assert_eq!(s.command.as_deref(), Some("search"));
        assert!(s.changes.is_empty());
        assert!(!s.should_warn());
    }

    #[test]
    fn garbage_and_non_objects_then_bye() {
        let stats = notification(METHOD_STATISTICS, HELLO_PKG);
        let s = session(
            HELLO_BOTH,
            ANSWER_02,
            &[
                "this is not json",
                "[1,2,3]",
                "42",
                "\"string\"",
                "{\"no\":\"method\"}",
                "{\"method\":17}",
                "{\"truncated\":",
                &stats,
            ],
        );
        assert_eq!(s.method.as_deref(), Some(METHOD_STATISTICS));
        assert_eq!(s.changes.len(), 1);
    }

    #[test]
    fn garbage_line_directly_followed_by_message() {
        // No blank line between the garbage and the bye.
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        assert_eq!(read_reply(&mut apt), ANSWER_02);
        apt.write_all(b"garbage\n").expect("write");
        send_msg(&mut apt, BYE);
        let s = finish(handle).expect("ok");
        assert!(s.saw_bye);
    }

    #[test]
    fn pretty_printed_message_like_transcript() {
        let pretty = "{\n \"jsonrpc\": \"2.0\",\n \"method\": \"org.debian.apt.hooks.install.statistics\",\n \"params\": {\n  \"command\": \"upgrade\",\n  \"packages\": []\n }\n}";
        let s = session(HELLO_BOTH, ANSWER_02, &[pretty]);
        assert_eq!(s.method.as_deref(), Some(METHOD_STATISTICS));
        assert_eq!(s.command.as_deref(), Some("upgrade"));
    }

    #[test]
    fn peer_closes_right_after_hello() {
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        assert_eq!(read_reply(&mut apt), ANSWER_02);
        drop(apt);
        let s = finish(handle).expect("early close is not an error");
        assert_eq!(s.protocol.as_deref(), Some("0.2"));
        assert!(!s.saw_bye);
        assert_eq!(s.method, None);
    }

    #[test]
    fn peer_closes_mid_message() {
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        assert_eq!(read_reply(&mut apt), ANSWER_02);
        let msg = notification(METHOD_STATISTICS, HELLO_PKG);
        apt.write_all(&msg.as_bytes()[..msg.len() / 2])
            .expect("write");
        drop(apt);
        let s = finish(handle).expect("early close is not an error");
        assert!(!s.saw_bye);
        assert_eq!(s.method, None);
        assert!(s.changes.is_empty());
    }

    #[test]
    fn peer_closes_before_reading_answer() {
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        apt.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Whether the answer write lands or not, the hook must not hang or panic.
        let res = finish(handle);
        if let Ok(s) = res {
            assert!(!s.saw_bye);
        }
    }

    #[test]
    fn final_bye_without_separator_at_eof() {
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        assert_eq!(read_reply(&mut apt), ANSWER_02);
        apt.write_all(BYE.as_bytes()).expect("write");
        apt.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let s = finish(handle).expect("ok");
        assert!(s.saw_bye);
    }

    #[test]
    fn does_not_wait_after_bye() {
        // apt keeps the socket open until the hook exits: the hook must
        // return on bye without waiting for EOF (the 5 s read timeout would
        // turn a wait into an error here).
        let (mut apt, handle) = start();
        send_msg(&mut apt, HELLO_BOTH);
        assert_eq!(read_reply(&mut apt), ANSWER_02);
        send_msg(&mut apt, &notification(METHOD_POST, HELLO_PKG));
        send_msg(&mut apt, BYE);
        let s = finish(handle).expect("ok");
        assert!(s.saw_bye);
        assert_eq!(s.method.as_deref(), Some(METHOD_POST));
        drop(apt);
    }

    #[test]
    fn no_supported_version_answers_error() {
        let (mut apt, handle) = start();
        send_msg(
            &mut apt,
            r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.hello","id":0,"params":{"versions":["0.3"]}}"#,
        );
        let reply = read_reply(&mut apt);
        assert!(
            reply.starts_with("{\"jsonrpc\":\"2.0\",\"id\":0,\"error\":{\"code\":-32000,"),
            "{reply}"
        );
        assert!(reply.ends_with("}}\n\n"));
        assert!(parse_message(&reply).is_ok());
        assert!(matches!(finish(handle), Err(AptHookError::Protocol(_))));
    }

    /// In-memory stream: serves `input` in `step`-byte reads, then EOF.
    struct Scripted {
        input: Vec<u8>,
        pos: usize,
        step: usize,
        written: Vec<u8>,
        fail_writes: bool,
    }

    impl Scripted {
        fn new(input: &str, step: usize) -> Self {
            Scripted {
                input: input.as_bytes().to_vec(),
                pos: 0,
                step,
                written: Vec::new(),
                fail_writes: false,
            }
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let rest = &self.input[self.pos..];
            let n = rest.len().min(self.step).min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail_writes {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn message_split_across_reads() {
        let input = format!(
            "{HELLO_BOTH}\r\n\r\n{}\n\n{BYE}\n\n",
            notification(METHOD_STATISTICS, HELLO_PKG)
        );
        for step in [1, 2, 7, 4096] {
            let mut stream = Scripted::new(&input, step);
            let s = serve_json_hook(&mut stream).expect("ok");
            assert!(s.saw_bye, "step {step}");
            assert!(s.should_warn(), "step {step}");
            assert_eq!(s.changes.len(), 1);
            assert_eq!(stream.written, ANSWER_02.as_bytes());
        }
    }

    #[test]
    fn write_error_on_answer_is_returned() {
        let mut stream = Scripted::new(&format!("{HELLO_BOTH}\n\n{BYE}\n\n"), 4096);
        stream.fail_writes = true;
        assert!(matches!(
            serve_json_hook(&mut stream),
            Err(AptHookError::Io(_))
        ));
    }

    #[test]
    fn empty_input_is_ok() {
        let mut stream = Scripted::new("", 10);
        let s = serve_json_hook(&mut stream).expect("ok");
        assert_eq!(s, JsonHookSession::default());
    }

    #[test]
    fn oversized_message_is_rejected() {
        // Endless data without a newline must hit a cap and stop reading.
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(b'x');
                Ok(buf.len())
            }
        }
        impl Write for Endless {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            serve_json_hook(Endless),
            Err(AptHookError::Protocol(_) | AptHookError::TooLarge(_))
        ));

        // Same with a small cap, including a multi-line message.
        let big = format!("{{\n\"a\": \"{}\"\n}}\n\n", "y".repeat(100));
        let mut stream = Scripted::new(&big, 16);
        assert!(matches!(
            serve_json_hook_limited(&mut stream, 64),
            Err(AptHookError::TooLarge(_))
        ));
        let mut stream = Scripted::new(&big, 16);
        assert!(serve_json_hook_limited(&mut stream, 4096).is_ok());
    }

    #[test]
    fn parse_message_rejects_non_objects() {
        assert!(parse_message(BYE).is_ok());
        assert!(parse_message("  {\"a\":1}\r\n").is_ok());
        for bad in ["", "[]", "1", "null", "{", "\u{0}"] {
            assert!(
                matches!(parse_message(bad), Err(AptHookError::Protocol(_))),
                "{bad:?}"
            );
        }
    }
}
