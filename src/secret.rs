//! Secrets in settings: a URL whose password and query values are never shown.
//!
//! `/status` is unauthenticated and the probe port often listens on every address, so a
//! URL such as `ws://admin:S3cr3t@kms/kurento?token=X` is shown everywhere — `/status`,
//! logs, error messages — as `ws://admin:***@kms/kurento?token=***`. Only the connection
//! itself reads the real text, through [`SecretUrl::expose`]. A secret can also come from a
//! file (`--kms-url-file`), so that it need not sit in a pod spec.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::files::FileError;

/// How long a secret file read at start may take before memprobe gives up on it.
const START_READ_PATIENCE: Duration = Duration::from_secs(5);

/// Reads a small file that holds one secret value (a URL with a password, a token), trimmed:
/// a regular file only, at most 4 KiB of it, and given up after a few seconds (a hung mount
/// makes memprobe exit saying so, rather than hang before it answers anything).
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    crate::files::read_value_within(path, START_READ_PATIENCE).map_err(|e| e.to_string())
}

/// A URL that may carry credentials. `Display` and `Debug` show it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    text: String,
    shown: String,
}

const EXAMPLE: &str = "(try ws://127.0.0.1:8888/kurento, or none)";

impl SecretUrl {
    /// Parses a `ws://` URL; the error is a problem to show after the redacted value.
    pub fn parse_ws(text: &str) -> Result<Self, String> {
        if text.starts_with("wss://") {
            return Err(format!(
                "uses TLS, which memprobe does not speak yet {EXAMPLE}"
            ));
        }
        let url = match url::Url::parse(text) {
            Ok(url) => url,
            Err(url::ParseError::InvalidPort) => {
                return Err(format!("has a port over 65535 {EXAMPLE}"));
            }
            Err(_) => return Err(format!("is not a ws:// URL {EXAMPLE}")),
        };
        if url.scheme() != "ws" || url.host_str().is_none_or(str::is_empty) {
            return Err(format!("is not a ws:// URL {EXAMPLE}"));
        }
        Ok(SecretUrl {
            shown: Self::redact(text),
            text: text.to_string(),
        })
    }

    /// The real URL, for the connection alone.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `text` with its password, a lone user name, query values and fragment replaced by
    /// `***`. Text that is not a URL at all is shown only up to its first `@` or `?`.
    pub fn redact(text: &str) -> String {
        // "admin:pw@kms" parses as a URL of scheme "admin": only one with a host is one.
        let parsed = url::Url::parse(text).ok().filter(url::Url::has_host);
        let Some(mut url) = parsed else {
            let cut = text.find(['?', '#']).unwrap_or(text.len());
            let mut shown = match text[..cut].rfind('@') {
                Some(at) => format!("***{}", &text[at..cut]),
                None => text[..cut].to_string(),
            };
            if cut < text.len() {
                shown.push_str("?***");
            }
            return crate::units::clip(&shown, 200);
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        } else if !url.username().is_empty() {
            // A user name alone is often a token.
            let _ = url.set_username("***");
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, _)| (k.into_owned(), "***".to_string()))
                .collect();
            let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            url.set_query(Some(&query.join("&")));
        }
        if url.fragment().is_some() {
            url.set_fragment(Some("***"));
        }
        crate::units::clip(url.as_str(), 200)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.shown)
    }
}

/// A secret value (Janus's admin secret): never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: &str) -> Self {
        Secret(text.trim().to_string())
    }

    /// The value itself, for the request that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A bearer token for the admin API (`--admin-token`): never shown, compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token of at least 16 characters, without spaces or control characters.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() < 16 {
            return Err("is shorter than 16 characters (try: openssl rand -hex 32)".into());
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("holds spaces or control characters (try: openssl rand -hex 32)".into());
        }
        Ok(Token(text.to_string()))
    }

    /// Whether an `Authorization` header carries this token, as `Bearer TOKEN`. Takes the
    /// same time however much of it matches.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        given.ct_eq(self.0.as_bytes()).into()
    }

    /// The token itself, for a client sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// How long a caller waits for a read of a secret file it started. Beyond it the value in
/// force stays, and the read's outcome is taken up by a later call once it has one.
pub const READ_PATIENCE: std::time::Duration = std::time::Duration::from_millis(200);

/// A file holding a secret that may be rewritten while memprobe runs (a Kubernetes Secret
/// mounted as a file is updated in place). Read again on demand: a new value is handed over,
/// and a file that cannot be used (empty or unreadable mid-rewrite, not a regular file, or on
/// a file system that does not answer) is said once and leaves the value in force as it is.
///
/// Each read runs on a thread of its own ([`crate::files::off_thread`]) and is waited for at
/// most [`READ_PATIENCE`]; one that has not ended is not waited for again, and no other
/// starts until it has: a hung mount holds one thread, never the runtime's.
pub struct SecretFile {
    flag: &'static str,
    path: std::path::PathBuf,
    unusable_said: bool,
    /// The read under way, if any.
    reading: Option<Reading>,
    /// How a read is done: [`crate::files::read_value`], but for tests of a read that hangs.
    read: fn(&std::path::Path) -> Result<String, FileError>,
}

type Reading = tokio::sync::oneshot::Receiver<Result<String, FileError>>;

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({} {})", self.flag, self.path.display())
    }
}

impl SecretFile {
    pub fn new(flag: &'static str, path: std::path::PathBuf) -> Self {
        SecretFile {
            flag,
            path,
            unusable_said: false,
            reading: None,
            read: crate::files::read_value,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The value the file holds now, parsed, when it differs from `current`. Waits at most
    /// [`READ_PATIENCE`]; cancel-safe (a read under way is kept for the next call).
    pub async fn changed<T: PartialEq>(
        &mut self,
        current: Option<&T>,
        parse: impl FnOnce(String) -> Result<T, String>,
    ) -> Option<T> {
        use tokio::sync::oneshot::error::TryRecvError;
        let ended =
            || FileError::Unreadable("the thread reading it ended without an answer".into());
        let outcome = match &mut self.reading {
            // A read that outlived its patience: taken up if it has ended, never waited for.
            Some(reading) => match reading.try_recv() {
                Err(TryRecvError::Empty) => return None,
                Ok(outcome) => outcome,
                Err(TryRecvError::Closed) => Err(ended()),
            },
            None => {
                let (path, read) = (self.path.clone(), self.read);
                match crate::files::off_thread(move || read(&path)) {
                    Err(e) => Err(e),
                    Ok(reading) => {
                        let reading = self.reading.insert(reading);
                        match tokio::time::timeout(READ_PATIENCE, reading).await {
                            Ok(Ok(outcome)) => outcome,
                            Ok(Err(_)) => Err(ended()),
                            Err(_) => {
                                self.unusable(&FileError::Slow(READ_PATIENCE).to_string());
                                return None;
                            }
                        }
                    }
                }
            }
        };
        self.reading = None;
        match outcome.map_err(|e| e.to_string()).and_then(parse) {
            Ok(value) => {
                self.unusable_said = false;
                (current != Some(&value)).then_some(value)
            }
            Err(problem) => {
                self.unusable(&problem);
                None
            }
        }
    }

    /// Says, once until the file is usable again, that the value in force is kept.
    fn unusable(&mut self, problem: &str) {
        if !std::mem::replace(&mut self.unusable_said, true) {
            tracing::warn!(
                "{} {}: {problem}; the value in force is kept",
                self.flag,
                self.path.display()
            );
        }
    }
}

/// The admin token in force: the one given, or the one its file (`--admin-token-file`) holds
/// now. The file is read again before a call is judged, at most once a second, so a rotated
/// Secret takes over — and the old token stops working — with no restart. No call waits for
/// the file longer than [`READ_PATIENCE`], and calls that come while it is being read are
/// judged by the token in force.
pub struct AdminToken {
    token: std::sync::Mutex<Token>,
    file: Option<tokio::sync::Mutex<TokenFile>>,
}

/// The file a token may be replaced from, and when it was last read.
struct TokenFile {
    file: SecretFile,
    read_at: Option<tokio::time::Instant>,
}

/// How often the token file may be read, however many calls come.
const TOKEN_FILE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl AdminToken {
    pub fn new(token: Token, file: Option<std::path::PathBuf>) -> Self {
        AdminToken {
            token: std::sync::Mutex::new(token),
            file: file.map(|path| {
                tokio::sync::Mutex::new(TokenFile {
                    file: SecretFile::new("--admin-token-file", path),
                    read_at: Some(tokio::time::Instant::now()),
                })
            }),
        }
    }

    fn in_force(&self) -> std::sync::MutexGuard<'_, Token> {
        self.token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether an `Authorization` header carries the token in force.
    pub async fn admits(&self, authorization: Option<&[u8]>) -> bool {
        // try_lock: a call never queues behind another's read of the file. The async mutex
        // keeps the read under way with the file if this call is dropped meanwhile.
        if let Some(file) = &self.file
            && let Ok(mut file) = file.try_lock()
            && file
                .read_at
                .is_none_or(|at| at.elapsed() >= TOKEN_FILE_EVERY)
        {
            file.read_at = Some(tokio::time::Instant::now());
            let current = self.in_force().clone();
            let TokenFile { file, .. } = &mut *file;
            if let Some(new) = file.changed(Some(&current), |text| Token::new(&text)).await {
                tracing::info!(
                    "{} holds a new admin token; the old one no longer works",
                    file.path().display()
                );
                *self.in_force() = new;
            }
        }
        self.in_force().admits(authorization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes the next call read the token file, however recent the last read.
    fn read_next_time(token: &AdminToken) {
        token.file.as_ref().unwrap().try_lock().unwrap().read_at = None;
    }

    // Reads run on real threads: no paused clock here, or the patience would run out at once.
    #[tokio::test]
    async fn a_token_file_that_changes_takes_over_and_the_old_token_stops_working() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let old = "old-token-0123456789";
        let new = "new-token-9876543210";
        std::fs::write(&file, old).unwrap();
        let token = AdminToken::new(Token::new(old).unwrap(), Some(file.clone()));
        let bearer = |t: &str| format!("Bearer {t}");
        assert!(token.admits(Some(bearer(old).as_bytes())).await);
        std::fs::write(&file, format!("{new}\n")).unwrap();
        read_next_time(&token);
        assert!(
            token.admits(Some(bearer(new).as_bytes())).await,
            "the new one works"
        );
        assert!(
            !token.admits(Some(bearer(old).as_bytes())).await,
            "the old one does not"
        );
        // A file being rewritten (empty, or too short) keeps the token in force.
        std::fs::write(&file, "").unwrap();
        read_next_time(&token);
        assert!(token.admits(Some(bearer(new).as_bytes())).await);
        std::fs::write(&file, "short").unwrap();
        read_next_time(&token);
        assert!(token.admits(Some(bearer(new).as_bytes())).await);
    }

    #[tokio::test]
    async fn a_token_file_swapped_for_a_fifo_is_refused_and_the_token_in_force_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let old = "old-token-0123456789";
        std::fs::write(&file, old).unwrap();
        let token = AdminToken::new(Token::new(old).unwrap(), Some(file.clone()));
        std::fs::remove_file(&file).unwrap();
        nix::unistd::mkfifo(&file, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for _ in 0..3 {
            read_next_time(&token);
            // No writer ever opens the FIFO: a blocking open would hold this call for good.
            let judged = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                token.admits(Some(format!("Bearer {old}").as_bytes())),
            )
            .await;
            assert_eq!(judged, Ok(true), "the token in force still works");
        }
        let held = token.file.as_ref().unwrap().try_lock().unwrap();
        assert!(held.file.unusable_said, "the FIFO is said");
        assert!(held.file.reading.is_none(), "and no read is left under way");
    }

    static HUNG_READS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// A read as a hung mount does it: std's blocking open of a FIFO, held until a writer.
    fn hung_read(path: &std::path::Path) -> Result<String, FileError> {
        HUNG_READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .map_err(|e| FileError::Unreadable(e.to_string()))
    }

    #[tokio::test]
    async fn a_read_that_hangs_is_waited_for_once_and_its_late_value_taken_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut file = SecretFile::new("--janus-secret-file", path.clone());
        file.read = hung_read;
        let current = "old".to_string();
        let first = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            file.changed(Some(&current), Ok),
        )
        .await;
        assert_eq!(first, Ok(None), "given up after the patience, value kept");
        assert!(file.unusable_said, "a hung read is said");
        for _ in 0..5 {
            assert_eq!(file.changed(Some(&current), Ok).await, None);
        }
        assert_eq!(
            HUNG_READS.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "no second read starts while the first is held"
        );
        // The file system answers at last.
        std::fs::write(&path, "new\n").unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let late = loop {
            if let Some(value) = file.changed(Some(&current), Ok).await {
                break value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the late value never came"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(late, "new");
        assert!(!file.unusable_said, "usable again: a later problem is news");
    }

    #[test]
    fn passwords_and_query_values_are_never_shown() {
        let url = SecretUrl::parse_ws("ws://admin:S3cr3t@host/kurento?token=X&a=b").unwrap();
        assert_eq!(
            url.to_string(),
            "ws://admin:***@host/kurento?token=***&a=***"
        );
        assert_eq!(
            format!("{url:?}"),
            "SecretUrl(ws://admin:***@host/kurento?token=***&a=***)"
        );
        assert_eq!(
            url.expose(),
            "ws://admin:S3cr3t@host/kurento?token=X&a=b",
            "the connection gets the real URL"
        );
    }

    #[test]
    fn a_token_admits_only_itself_as_a_bearer() {
        let token = Token::new("0123456789abcdef0123").unwrap();
        assert!(token.admits(Some(b"Bearer 0123456789abcdef0123")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdef012")));
        assert!(
            !token.admits(Some(b"0123456789abcdef0123")),
            "the scheme is needed"
        );
        assert!(!token.admits(None));
        assert_eq!(format!("{token:?}"), "Token(***)");
        assert!(Token::new("short").is_err());
    }

    #[test]
    fn a_user_name_alone_is_taken_for_a_token() {
        assert_eq!(
            SecretUrl::redact("ws://abcdef123@host:8888/kurento"),
            "ws://***@host:8888/kurento"
        );
    }

    #[test]
    fn a_url_without_secrets_is_shown_as_given() {
        let url = SecretUrl::parse_ws("ws://127.0.0.1:8888/kurento").unwrap();
        assert_eq!(url.to_string(), "ws://127.0.0.1:8888/kurento");
    }

    #[test]
    fn text_that_is_not_a_url_is_cut_before_anything_secret() {
        assert_eq!(SecretUrl::redact("admin:pw@kms"), "***@kms");
        assert_eq!(SecretUrl::redact("not a url?token=X"), "not a url?***");
    }

    #[test]
    fn only_ws_urls_with_a_host_and_a_valid_port() {
        assert!(SecretUrl::parse_ws("http://kms/kurento").is_err());
        assert!(
            SecretUrl::parse_ws("wss://kms/kurento")
                .unwrap_err()
                .contains("TLS")
        );
        assert!(
            SecretUrl::parse_ws("ws://kms:70000/kurento")
                .unwrap_err()
                .starts_with("has a port over 65535")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_password_is_never_shown(
                user in "[a-z]{1,8}", password in "[A-Za-z0-9]{6,16}", host in "[a-z]{1,10}", token in "[A-Za-z0-9]{6,16}"
            ) {
                let text = format!("ws://{user}:{password}@{host}:8888/kurento?token={token}");
                let shown = SecretUrl::redact(&text);
                prop_assert!(!shown.contains(&format!(":{password}@")), "{shown}");
                prop_assert!(!shown.contains(&format!("={token}")), "{shown}");
            }

            #[test]
            fn no_text_makes_redaction_panic(text in "\\PC*") {
                let _ = SecretUrl::redact(&text);
                let _ = SecretUrl::parse_ws(&text);
            }
        }
    }
}
