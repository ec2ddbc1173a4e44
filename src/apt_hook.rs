//! What apt tells a hook it is about to change, read from either channel:
//!
//! * the `DPkg::Pre-Install-Pkgs` info stream (hook protocol `VERSION 2` and
//!   `VERSION 3`), fed to the hook on stdin or `APT_HOOK_INFO_FD`, and
//! * the JSON-RPC hook socket used by `AptCli::Hooks::Install`/`Upgrade`
//!   (protocol `0.1` and `0.2`), named by `APT_HOOK_SOCKET`.
//!
//! Both are reduced to a list of [`AptChange`] so the caller can decide
//! whether kernels, headers or DKMS-relevant packages are being touched.
//! Library code: nothing here prints. Problems come back as
//! [`AptHookError`]; skipped input is reported through `log::debug!`.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, BufRead, Read, Write};

use serde::Serialize;
use serde_json::Value;

/// Cap on one line of the info stream or one JSON message, so a runaway or
/// hostile peer cannot make the hook eat all memory.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Cap on everything one protocol session may send. apt's real streams are
/// far smaller (a 5,000-package dist-upgrade: ~1 MB of info stream, a few MB
/// of JSON); parsed, input costs ~20× its size in memory, so this keeps a
/// hook run within a few hundred MB whatever the peer sends.
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;

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

/// What apt is going to do to one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AptAction {
    Install,
    Upgrade,
    Downgrade,
    Reinstall,
    Remove,
    Purge,
    /// Configured only, nothing unpacked (`dpkg --unpack` earlier, then
    /// `apt-get -f install`): no build tree changes.
    Configure,
}

/// One package change announced by apt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptChange {
    pub package: String,
    /// `None` when the protocol does not say (info stream version 2).
    pub architecture: Option<String>,
    /// Installed version, `None` if not installed.
    pub old: Option<String>,
    /// Version to be installed, `None` on removal.
    pub new: Option<String>,
    pub action: AptAction,
}

/// Why reading a hook protocol failed.
#[derive(Debug)]
pub enum AptHookError {
    Io(io::Error),
    Protocol(String),
    /// The peer sent more than [`MAX_STREAM_BYTES`]: nothing of it is used.
    TooLarge(&'static str),
}

impl fmt::Display for AptHookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AptHookError::Io(e) => write!(f, "i/o error: {e}"),
            AptHookError::Protocol(msg) => write!(f, "protocol error: {msg}"),
            AptHookError::TooLarge(what) => write!(
                f,
                "{what} larger than {MAX_STREAM_BYTES} bytes; ignored (no warnings for this run)"
            ),
        }
    }
}

impl std::error::Error for AptHookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AptHookError::Io(e) => Some(e),
            AptHookError::Protocol(_) | AptHookError::TooLarge(_) => None,
        }
    }
}

impl From<io::Error> for AptHookError {
    fn from(e: io::Error) -> Self {
        AptHookError::Io(e)
    }
}

// ---------------------------------------------------------------------------
// Part 1: DPkg::Pre-Install-Pkgs info stream
// ---------------------------------------------------------------------------

/// Parsed `DPkg::Pre-Install-Pkgs` info stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreInstallPkgs {
    /// 2 or 3, from the `VERSION` line.
    pub version: u32,
    /// apt's whole configuration, keys and values %-decoded, in stream order.
    pub config: Vec<(String, String)>,
    /// One entry per (package, architecture), in order of first appearance.
    pub changes: Vec<AptChange>,
}

impl PreInstallPkgs {
    /// Last value given for `key`. apt's configuration tree is
    /// case-insensitive (`DPkg::` and `Dpkg::` are the same), so is this.
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a `VERSION 2` or `VERSION 3` info stream.
///
/// Unparsable package lines are skipped (logged at debug level) rather than
/// failing the whole stream; a stream that ends early yields what was read.
pub fn parse_pre_install_reader<R: BufRead>(mut r: R) -> Result<PreInstallPkgs, AptHookError> {
    let mut buf = Vec::new();
    if !read_line_capped(&mut r, &mut buf)? {
        return Err(AptHookError::Protocol(
            "empty info stream, expected a VERSION line".to_owned(),
        ));
    }
    let first = line_text(&buf);
    let version = parse_version_line(&first).ok_or_else(|| {
        AptHookError::Protocol(format!(
            "info stream does not start with VERSION 2 or VERSION 3: {:?}",
            truncate_for_log(&first)
        ))
    })?;

    let mut out = PreInstallPkgs {
        version,
        config: Vec::new(),
        changes: Vec::new(),
    };

    // Configuration dump, terminated by an empty line.
    loop {
        if !read_line_capped(&mut r, &mut buf)? {
            log::debug!("info stream ended inside the configuration section");
            return Ok(out);
        }
        let line = line_text(&buf);
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            // apt %-encodes '=' inside keys, so the first '=' is the separator.
            Some((k, v)) => out.config.push((percent_decode(k), percent_decode(v))),
            None => log::debug!(
                "skipping config line without '=': {:?}",
                truncate_for_log(&line)
            ),
        }
    }

    let mut merger = ChangeMerger::default();
    let mut total = 0usize;
    while read_line_capped(&mut r, &mut buf)? {
        total = total.saturating_add(buf.len());
        if total > MAX_STREAM_BYTES {
            return Err(AptHookError::TooLarge("the info stream"));
        }
        let line = line_text(&buf);
        if line.trim().is_empty() {
            continue;
        }
        match parse_package_line(&line, version) {
            Some(change) => merger.push(change),
            None => log::debug!(
                "skipping unparsable package line: {:?}",
                truncate_for_log(&line)
            ),
        }
    }
    out.changes = merger.changes;
    Ok(out)
}

/// Read one line (with its `\n`, if any) into `buf`. Returns false at end of
/// stream with nothing read.
fn read_line_capped<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> Result<bool, AptHookError> {
    buf.clear();
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(pos) => (available.get(..=pos).unwrap_or(available), true),
            None => (available, false),
        };
        if buf.len().saturating_add(chunk.len()) > MAX_MESSAGE_BYTES {
            return Err(AptHookError::Protocol(format!(
                "info stream line longer than {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        buf.extend_from_slice(chunk);
        let used = chunk.len();
        r.consume(used);
        if done {
            return Ok(true);
        }
    }
}

/// Line bytes as text without the line terminator; apt may hand us non-UTF-8
/// bytes in config values, which must not abort parsing.
fn line_text(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf)
        .trim_end_matches(['\n', '\r'])
        .to_owned()
}

fn parse_version_line(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    if words.next()? != "VERSION" {
        return None;
    }
    let version: u32 = words.next()?.parse().ok()?;
    if words.next().is_some() || !(2..=3).contains(&version) {
        return None;
    }
    Some(version)
}

/// Undo apt's `QuoteString`: `%XX` becomes the byte 0xXX; anything that is
/// not a complete hex escape is kept literally.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|&c| hex_value(c));
            let lo = bytes.get(i + 2).and_then(|&c| hex_value(c));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Split into `n` whitespace-separated fields, the last one taking the rest
/// of the line (a local .deb path could contain spaces).
fn split_fields(line: &str, n: usize) -> Option<Vec<&str>> {
    let mut fields = Vec::with_capacity(n);
    let mut rest = line.trim();
    while fields.len() + 1 < n {
        let (field, tail) = rest.split_once(char::is_whitespace)?;
        fields.push(field);
        rest = tail.trim_start();
    }
    if rest.is_empty() {
        return None;
    }
    fields.push(rest);
    Some(fields)
}

/// What a package line asks dpkg to do; only removal changes the meaning of
/// the version columns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LineOp {
    Unpack,
    Configure,
    Remove,
}

fn parse_package_line(line: &str, version: u32) -> Option<AptChange> {
    // v3: PKG OLDVER OLDARCH OLDMA CMP NEWVER NEWARCH NEWMA ACTION
    // v2: PKG OLDVER CMP NEWVER ACTION
    let (name_tok, old_ver, old_arch, cmp, new_ver, new_arch, action) = if version >= 3 {
        match split_fields(line, 9)?.as_slice() {
            [n, ov, oa, _oma, c, nv, na, _nma, a] => (*n, *ov, *oa, *c, *nv, *na, *a),
            _ => return None,
        }
    } else {
        match split_fields(line, 5)?.as_slice() {
            [n, ov, c, nv, a] => (*n, *ov, "-", *c, *nv, "-", *a),
            _ => return None,
        }
    };

    if !matches!(cmp, "<" | ">" | "=") {
        return None;
    }
    let op = match action {
        "**REMOVE**" => LineOp::Remove,
        "**CONFIGURE**" => LineOp::Configure,
        // apt writes **ERROR** for an unpack whose file name is not absolute.
        a if a.starts_with('/') || a == "**ERROR**" => LineOp::Unpack,
        _ => return None,
    };

    // apt writes the bare name, but accept an arch-qualified one too.
    let (package, token_arch) = match name_tok.split_once(':') {
        Some((n, a)) if !a.is_empty() => (n, Some(a)),
        Some((n, _)) => (n, None),
        None => (name_tok, None),
    };
    if package.is_empty() {
        return None;
    }

    let old = dash_to_none(old_ver);
    let new = dash_to_none(new_ver);
    let column_arch = if new.is_some() && new_arch != "-" {
        Some(new_arch)
    } else if old_arch != "-" {
        Some(old_arch)
    } else {
        None
    };
    let architecture = column_arch.or(token_arch).map(str::to_owned);

    let (action, new) = if op == LineOp::Remove {
        // Purge is announced as **REMOVE** too; the stream cannot tell them apart.
        (AptAction::Remove, None)
    } else if op == LineOp::Configure {
        (AptAction::Configure, Some(new?))
    } else {
        let new = new?;
        let action = match (&old, cmp) {
            (None, _) => AptAction::Install,
            (Some(_), "<") => AptAction::Upgrade,
            (Some(_), ">") => AptAction::Downgrade,
            _ => AptAction::Reinstall,
        };
        (action, Some(new))
    };

    Some(AptChange {
        package: package.to_owned(),
        architecture,
        old,
        new,
        action,
    })
}

fn dash_to_none(s: &str) -> Option<String> {
    (s != "-").then(|| s.to_owned())
}

/// Collapses the unpack + configure lines of one package into one change.
#[derive(Default)]
struct ChangeMerger {
    changes: Vec<AptChange>,
    index: HashMap<(String, Option<String>), usize>,
}

impl ChangeMerger {
    fn push(&mut self, change: AptChange) {
        let key = (change.package.clone(), change.architecture.clone());
        match self.index.get(&key).and_then(|&i| self.changes.get_mut(i)) {
            Some(slot) => {
                // If a package is both removed and installed in one run, the
                // install is what ends up on disk, so it wins.
                // The configure line that follows an unpack says nothing new.
                let is_removal = |c: &AptChange| c.action == AptAction::Remove;
                let configure_only = change.action == AptAction::Configure;
                if !configure_only && (!is_removal(&change) || is_removal(slot)) {
                    *slot = change;
                }
            }
            None => {
                self.index.insert(key, self.changes.len());
                self.changes.push(change);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Part 2: JSON hook socket protocol
// ---------------------------------------------------------------------------

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
    serve_json_hook_limited(stream, MAX_MESSAGE_BYTES)
}

fn serve_json_hook_limited<S: Read + Write>(
    mut stream: S,
    limit: usize,
) -> Result<JsonHookSession, AptHookError> {
    let mut session = JsonHookSession::default();
    let mut framer = Framer::new(limit);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // apt closing while our answer is unread shows up as a reset;
            // that is an early close, not a failure.
            Err(e) if is_peer_gone(&e) => 0,
            Err(e) => return Err(e.into()),
        };
        total = total.saturating_add(n);
        if total > MAX_STREAM_BYTES {
            // Read on to the end (as far as as much again) without keeping
            // anything, so that apt is not left writing into a closed socket.
            let mut drained = 0usize;
            while drained < MAX_STREAM_BYTES {
                match stream.read(&mut chunk) {
                    Ok(n) if n > 0 => drained += n,
                    _ => break,
                }
            }
            return Err(AptHookError::TooLarge("the JSON hook session"));
        }
        if n == 0 {
            // The last message may lack its blank-line terminator.
            framer.finish()?;
            while let Some(msg) = framer.next_message()? {
                if handle_message(&mut stream, &mut session, &msg)? == Flow::Stop {
                    break;
                }
            }
            return Ok(session);
        }
        let Some(data) = chunk.get(..n) else {
            return Err(AptHookError::Protocol(
                "reader returned more bytes than requested".to_owned(),
            ));
        };
        framer.feed(data);
        while let Some(msg) = framer.next_message()? {
            // Stop reading right after bye: apt may keep the socket open
            // while it waits for us to exit.
            if handle_message(&mut stream, &mut session, &msg)? == Flow::Stop {
                return Ok(session);
            }
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
                    send(w, &hello_result(&id, version))?;
                    session.protocol = Some((*version).to_owned());
                    Ok(Flow::Continue)
                }
                None => {
                    send(
                        w,
                        &error_response(&id, -32000, "no supported protocol version offered"),
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
            // apt documents these may become calls; answering keeps apt
            // from waiting on us forever if that happens.
            if let Some(id) = id {
                send(w, &null_result(id))?;
            }
            Ok(Flow::Continue)
        }
        other => {
            log::debug!("ignoring unknown json hook method {other:?}");
            if let Some(id) = id {
                send(w, &error_response(id, -32601, "method not found"))?;
            }
            Ok(Flow::Continue)
        }
    }
}

fn send<W: Write>(w: &mut W, text: &str) -> Result<(), AptHookError> {
    w.write_all(text.as_bytes())?;
    w.flush()?;
    Ok(())
}

fn id_json(id: &Value) -> String {
    serde_json::to_string(id).unwrap_or_else(|_| "0".to_owned())
}

/// Built by hand because serde_json's map sorts keys; apt's docs show this
/// exact field order.
fn hello_result(id: &Value, version: &str) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":{{\"version\":{}}}}}\n\n",
        id_json(id),
        Value::from(version)
    )
}

fn null_result(id: &Value) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":null}}\n\n",
        id_json(id)
    )
}

fn error_response(id: &Value, code: i64, message: &str) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{},\"message\":{}}}}}\n\n",
        id_json(id),
        code,
        Value::from(message)
    )
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
    match compare_debian_versions(new, old) {
        Ordering::Greater => AptAction::Upgrade,
        Ordering::Less => AptAction::Downgrade,
        Ordering::Equal => AptAction::Reinstall,
    }
}

/// Splits the byte stream into messages. Messages end with an empty line;
/// a single line that is already a complete object is taken at once so a
/// peer that forgets the blank line cannot stall us.
struct Framer {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    start: usize,
    /// Bytes before this offset are known to hold no newline.
    scanned: usize,
    /// Lines of a multi-line message collected so far.
    block: String,
    ready: VecDeque<Value>,
    limit: usize,
    at_eof: bool,
}

impl Framer {
    fn new(limit: usize) -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            block: String::new(),
            ready: VecDeque::new(),
            limit,
            at_eof: false,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        // Drop consumed bytes so the buffer only holds the partial line.
        if self.start > 0 {
            self.buf.drain(..self.start.min(self.buf.len()));
            self.scanned = self.scanned.saturating_sub(self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// No more input: whatever is buffered is the final line and message.
    fn finish(&mut self) -> Result<(), AptHookError> {
        self.at_eof = true;
        let rest = self.buf.get(self.start..).unwrap_or_default().to_vec();
        self.start = self.buf.len();
        self.scanned = self.start;
        if !rest.is_empty() {
            self.take_line(&rest)?;
        }
        self.end_block();
        Ok(())
    }

    fn next_message(&mut self) -> Result<Option<Value>, AptHookError> {
        loop {
            if let Some(v) = self.ready.pop_front() {
                return Ok(Some(v));
            }
            if self.at_eof {
                return Ok(None);
            }
            let from = self.scanned.max(self.start);
            let tail = self.buf.get(from..).unwrap_or_default();
            let Some(pos) = tail.iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                let pending = self.buf.len().saturating_sub(self.start);
                self.check_size(pending)?;
                return Ok(None);
            };
            let end = from + pos;
            let line = self.buf.get(self.start..end).unwrap_or_default().to_vec();
            self.start = end + 1;
            self.scanned = self.start;
            self.take_line(&line)?;
        }
    }

    fn check_size(&self, pending: usize) -> Result<(), AptHookError> {
        if self.block.len().saturating_add(pending) > self.limit {
            return Err(AptHookError::Protocol(format!(
                "json message longer than {} bytes",
                self.limit
            )));
        }
        Ok(())
    }

    fn take_line(&mut self, raw: &[u8]) -> Result<(), AptHookError> {
        self.check_size(raw.len())?;
        let text = String::from_utf8_lossy(raw);
        let line = text.trim_end_matches('\r');
        if line.trim().is_empty() {
            self.end_block();
        } else if self.block.is_empty() {
            match parse_message(line) {
                Ok(v) => self.ready.push_back(v),
                Err(_) => self.block.push_str(line),
            }
        } else {
            self.block.push('\n');
            self.block.push_str(line);
        }
        Ok(())
    }

    /// Blank line seen: parse the collected block. If that fails, salvage
    /// any line that is a message by itself (garbage followed directly by a
    /// real message).
    fn end_block(&mut self) {
        if self.block.is_empty() {
            return;
        }
        let block = std::mem::take(&mut self.block);
        match parse_message(&block) {
            Ok(v) => self.ready.push_back(v),
            Err(e) => {
                log::debug!("skipping unparsable json hook data: {e}");
                self.ready
                    .extend(block.lines().filter_map(|l| parse_message(l).ok()));
            }
        }
    }
}

/// Compare two Debian versions with `debversion`; unparsable ones compare
/// as strings, consistently and without panicking.
fn compare_debian_versions(a: &str, b: &str) -> Ordering {
    match (
        a.trim().parse::<debversion::Version>(),
        b.trim().parse::<debversion::Version>(),
    ) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// Keep debug logs of hostile input short.
fn truncate_for_log(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};
    use std::os::unix::net::UnixStream;
    use std::thread;
    use std::time::Duration;

    const V3_SAMPLE: &str = include_str!("../tests/data/pre-install-pkgs-v3.txt");

    fn parse(text: &str) -> PreInstallPkgs {
        parse_pre_install_reader(Cursor::new(text.as_bytes().to_vec())).expect("parse ok")
    }

    fn change(
        package: &str,
        arch: Option<&str>,
        old: Option<&str>,
        new: Option<&str>,
        action: AptAction,
    ) -> AptChange {
        AptChange {
            package: package.to_owned(),
            architecture: arch.map(str::to_owned),
            old: old.map(str::to_owned),
            new: new.map(str::to_owned),
            action,
        }
    }

    const HEADER_V3: &str = "VERSION 3\nAPT::Architecture=amd64\n\n";

    // ----- Part 1 -----

    #[test]
    fn v3_recorded_sample() {
        let p = parse(V3_SAMPLE);
        assert_eq!(p.version, 3);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "less",
                    Some("amd64"),
                    Some("590-2.1~deb12u2"),
                    None,
                    AptAction::Remove
                ),
                change(
                    "distro-info-data",
                    Some("all"),
                    Some("0.58+deb12u6"),
                    Some("0.58+deb12u7"),
                    AptAction::Upgrade
                ),
                change(
                    "hello",
                    Some("amd64"),
                    None,
                    Some("2.10-3"),
                    AptAction::Install
                ),
            ]
        );
        let cmdline = p.config_value("CommandLine::AsString").expect("cmdline");
        assert!(cmdline.contains("apt-get -c"), "{cmdline}");
        assert!(cmdline.ends_with("install hello distro-info-data less-"));
        assert_eq!(p.config_value("APT::Architecture"), Some("amd64"));
        // apt's config tree is case-insensitive.
        assert_eq!(p.config_value("apt::architecture"), Some("amd64"));
        // Last value wins for list keys.
        assert_eq!(
            p.config_value("DPkg::Pre-Install-Pkgs::"),
            Some("/usr/local/lib/hooktest/v3.sh v3")
        );
        assert_eq!(p.config_value("No::Such::Key"), None);
    }

    #[test]
    fn v3_sample_through_bufreader_with_tiny_buffer() {
        let r = BufReader::with_capacity(3, V3_SAMPLE.as_bytes());
        let p = parse_pre_install_reader(r).expect("parse ok");
        assert_eq!(p.changes.len(), 3);
    }

    #[test]
    fn percent_encoded_config_values() {
        let text = "VERSION 3\n\
                    A=one%20two\n\
                    B=bad%zzescape\n\
                    C=short%4\n\
                    D=%\n\
                    E=%2541%41%4a%4A\n\
                    Key%3dWith%3dEquals=v=w\n\
                    NoEquals\n\
                    \n";
        let p = parse(text);
        assert_eq!(p.config_value("A"), Some("one two"));
        assert_eq!(p.config_value("B"), Some("bad%zzescape"));
        assert_eq!(p.config_value("C"), Some("short%4"));
        assert_eq!(p.config_value("D"), Some("%"));
        assert_eq!(p.config_value("E"), Some("%41AJJ"));
        assert_eq!(p.config_value("Key=With=Equals"), Some("v=w"));
        assert_eq!(p.config.len(), 6);
        assert!(p.changes.is_empty());
    }

    #[test]
    fn percent_decode_invalid_utf8_is_lossy() {
        assert_eq!(percent_decode("a%ffb"), "a\u{fffd}b");
        assert_eq!(percent_decode("%%41"), "%A");
        assert_eq!(percent_decode(""), "");
    }

    #[test]
    fn removal_downgrade_reinstall() {
        let text = format!(
            "{HEADER_V3}\
             linux-headers-6.1.0-1-amd64 6.1.176-1 amd64 none > - - none **REMOVE**\n\
             foo 2.0-1 amd64 none > 1.0-1 amd64 none /var/cache/apt/archives/foo_1.0-1_amd64.deb\n\
             bar 3.0 amd64 none = 3.0 amd64 none /var/cache/apt/archives/bar_3.0_amd64.deb\n\
             foo 2.0-1 amd64 none > 1.0-1 amd64 none **CONFIGURE**\n\
             bar 3.0 amd64 none = 3.0 amd64 none **CONFIGURE**\n"
        );
        let p = parse(&text);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "linux-headers-6.1.0-1-amd64",
                    Some("amd64"),
                    Some("6.1.176-1"),
                    None,
                    AptAction::Remove
                ),
                change(
                    "foo",
                    Some("amd64"),
                    Some("2.0-1"),
                    Some("1.0-1"),
                    AptAction::Downgrade
                ),
                change(
                    "bar",
                    Some("amd64"),
                    Some("3.0"),
                    Some("3.0"),
                    AptAction::Reinstall
                ),
            ]
        );
    }

    #[test]
    fn remove_then_install_keeps_install() {
        let text = format!(
            "{HEADER_V3}\
             foo 1.0 amd64 none > - - none **REMOVE**\n\
             foo 1.0 amd64 none < 2.0 amd64 none /tmp/foo_2.0_amd64.deb\n\
             foo 1.0 amd64 none < 2.0 amd64 none **CONFIGURE**\n"
        );
        let p = parse(&text);
        assert_eq!(
            p.changes,
            vec![change(
                "foo",
                Some("amd64"),
                Some("1.0"),
                Some("2.0"),
                AptAction::Upgrade
            )]
        );
    }

    #[test]
    fn multi_arch_lines() {
        // apt writes the bare name and puts the architecture in the columns;
        // an arch-qualified name is accepted as well.
        let text = format!(
            "{HEADER_V3}\
             libc6 2.36-9 amd64 same < 2.36-9+deb12u1 amd64 same /var/cache/apt/archives/libc6_2.36-9+deb12u1_amd64.deb\n\
             libc6 2.36-9 i386 same < 2.36-9+deb12u1 i386 same /var/cache/apt/archives/libc6_2.36-9+deb12u1_i386.deb\n\
             libc6 2.36-9 amd64 same < 2.36-9+deb12u1 amd64 same **CONFIGURE**\n\
             libc6 2.36-9 i386 same < 2.36-9+deb12u1 i386 same **CONFIGURE**\n\
             zlib1g:i386 - - none < 1:1.2.13 i386 same /var/cache/apt/archives/zlib1g_1%3a1.2.13_i386.deb\n\
             libfoo:armhf 1.0 - none > - - none **REMOVE**\n"
        );
        let p = parse(&text);
        let new = Some("2.36-9+deb12u1");
        assert_eq!(
            p.changes,
            vec![
                change(
                    "libc6",
                    Some("amd64"),
                    Some("2.36-9"),
                    new,
                    AptAction::Upgrade
                ),
                change(
                    "libc6",
                    Some("i386"),
                    Some("2.36-9"),
                    new,
                    AptAction::Upgrade
                ),
                change(
                    "zlib1g",
                    Some("i386"),
                    None,
                    Some("1:1.2.13"),
                    AptAction::Install
                ),
                change(
                    "libfoo",
                    Some("armhf"),
                    Some("1.0"),
                    None,
                    AptAction::Remove
                ),
            ]
        );
    }

    #[test]
    fn v2_lines_from_recorded_sample() {
        let text = "VERSION 2\n\
                    APT::Architecture=amd64\n\
                    \n\
                    less 590-2.1~deb12u2 > - **REMOVE**\n\
                    distro-info-data 0.58+deb12u6 < 0.58+deb12u7 /var/cache/apt/archives/distro-info-data_0.58+deb12u7_all.deb\n\
                    hello - < 2.10-3 /var/cache/apt/archives/hello_2.10-3_amd64.deb\n\
                    distro-info-data 0.58+deb12u6 < 0.58+deb12u7 **CONFIGURE**\n\
                    hello - < 2.10-3 **CONFIGURE**\n\
                    old 2 > 1 **CONFIGURE**\n\
                    same 1 = 1 **CONFIGURE**\n";
        let p = parse(text);
        assert_eq!(p.version, 2);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "less",
                    None,
                    Some("590-2.1~deb12u2"),
                    None,
                    AptAction::Remove
                ),
                change(
                    "distro-info-data",
                    None,
                    Some("0.58+deb12u6"),
                    Some("0.58+deb12u7"),
                    AptAction::Upgrade
                ),
                change("hello", None, None, Some("2.10-3"), AptAction::Install),
                change("old", None, Some("2"), Some("1"), AptAction::Configure),
                change("same", None, Some("1"), Some("1"), AptAction::Configure),
            ]
        );
    }

    #[test]
    fn crlf_and_no_trailing_newline() {
        let text = "VERSION 3\r\nA=b%20c\r\n\r\n\
                    hello - - none < 2.10-3 amd64 none /var/cache/apt/archives/hello_2.10-3_amd64.deb\r\n\
                    hello - - none < 2.10-3 amd64 none **CONFIGURE**";
        let p = parse(text);
        assert_eq!(p.config_value("A"), Some("b c"));
        assert_eq!(
            p.changes,
            vec![change(
                "hello",
                Some("amd64"),
                None,
                Some("2.10-3"),
                AptAction::Install
            )]
        );
    }

    #[test]
    fn truncated_streams() {
        // Cut mid package line: the partial line is dropped.
        let cut = V3_SAMPLE
            .find("hello - - none < 2.10-3 amd64")
            .map(|i| &V3_SAMPLE[..i + "hello - - none < 2.10".len()])
            .expect("sample has hello line");
        let p = parse(cut);
        assert_eq!(p.changes.len(), 2);
        assert!(p.changes.iter().all(|c| c.package != "hello"));

        // Cut inside the config section: no changes, config so far kept.
        let p = parse("VERSION 3\nA=1\nB=");
        assert_eq!(p.config_value("B"), Some(""));
        assert!(p.changes.is_empty());

        // Only the VERSION line.
        let p = parse("VERSION 3");
        assert!(p.config.is_empty() && p.changes.is_empty());
    }

    #[test]
    fn garbage_package_lines_are_skipped() {
        let text = format!(
            "{HEADER_V3}\
             \n\
             garbage\n\
             foo 1 amd64 none ? 2 amd64 none **CONFIGURE**\n\
             foo 1 amd64 none < 2 amd64 none **WHAT**\n\
             foo 1 amd64 none < - - none **CONFIGURE**\n\
             :amd64 - - none < 2 amd64 none **CONFIGURE**\n\
             \u{1F600} - - none < 1 amd64 none **CONFIGURE**\n\
             ok - - none < 1 amd64 none /path with space/ok_1_amd64.deb\n"
        );
        let p = parse(&text);
        assert_eq!(
            p.changes,
            vec![
                change(
                    "\u{1F600}",
                    Some("amd64"),
                    None,
                    Some("1"),
                    AptAction::Configure
                ),
                change("ok", Some("amd64"), None, Some("1"), AptAction::Install),
            ]
        );
    }

    #[test]
    fn non_version_input_is_error() {
        for bad in [
            "",
            "\n",
            "hello\n",
            "VERSION\n",
            "VERSION 1\n",
            "VERSION 4\n",
            "VERSION 3 extra\n",
            "/var/cache/apt/archives/hello_2.10-3_amd64.deb\n",
        ] {
            match parse_pre_install_reader(Cursor::new(bad.as_bytes().to_vec())) {
                Err(AptHookError::Protocol(msg)) => assert!(!msg.is_empty()),
                other => panic!("{bad:?}: expected protocol error, got {other:?}"),
            }
        }
        let bin: &[u8] = &[0xff, 0xfe, 0x00, b'\n'];
        assert!(parse_pre_install_reader(bin).is_err());
    }

    #[test]
    fn read_error_is_io_error() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let r = BufReader::new(Failing);
        assert!(matches!(
            parse_pre_install_reader(r),
            Err(AptHookError::Io(_))
        ));
    }

    #[test]
    fn changes_serialize_lowercase() {
        let c = change("a", None, None, Some("1"), AptAction::Reinstall);
        let json = serde_json::to_string(&c).expect("serialize");
        assert!(json.contains("\"action\":\"reinstall\""), "{json}");
    }

    #[test]
    fn error_display_is_one_lowercase_line() {
        let e = AptHookError::Protocol("bad thing".to_owned());
        assert_eq!(e.to_string(), "protocol error: bad thing");
        let e: AptHookError = io::Error::other("x").into();
        assert!(e.to_string().starts_with("i/o error: "));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn debian_version_compare() {
        use Ordering::*;
        for (a, b, want) in [
            ("6.1.192-2", "6.1.176-1", Greater),
            ("1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1:0.9", "2.0", Greater),
            ("2.10-3", "2.10-10", Less),
            ("1.0a", "1.0", Greater),
            ("1.01", "1.1", Equal),
            ("0.58+deb12u7", "0.58+deb12u6", Greater),
            ("", "", Equal),
            ("~~", "~", Less),
            ("99999999999999999999999:1", "1:1", Greater),
            ("a:b-c", "a:b-c", Equal),
        ] {
            assert_eq!(compare_debian_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_debian_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

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
        assert_eq!(
            s.changes,
            vec![change(
                "hello",
                Some("amd64"),
                None,
                Some("2.10-3"),
                AptAction::Install
            )]
        );
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
            Err(AptHookError::Protocol(_))
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
