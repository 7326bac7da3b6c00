//! Secrets in settings: a URL whose password and query values are never shown.
//!
//! `/status` is unauthenticated and the probe port often listens on every address, so a
//! URL such as `ws://admin:S3cr3t@kms/kurento?token=X` is shown everywhere — `/status`,
//! logs, error messages — as `ws://admin:***@kms/kurento?token=***`. Only the connection
//! itself reads the real text, through [`SecretUrl::expose`]. A secret can also come from a
//! file (`--kms-url-file`), so that it need not sit in a pod spec.

use std::fmt;

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

/// A file holding a secret that may be rewritten while memprobe runs (a Kubernetes Secret
/// mounted as a file is updated in place). Read again on demand: a new value is handed over,
/// and a file that cannot be used (empty or unreadable mid-rewrite, say) is said once and
/// leaves the value in force as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretFile {
    flag: &'static str,
    path: std::path::PathBuf,
    unusable_said: bool,
}

impl SecretFile {
    pub fn new(flag: &'static str, path: std::path::PathBuf) -> Self {
        SecretFile {
            flag,
            path,
            unusable_said: false,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The value the file holds now, parsed, when it differs from `current`.
    pub fn changed<T: PartialEq>(
        &mut self,
        current: Option<&T>,
        parse: impl FnOnce(String) -> Result<T, String>,
    ) -> Option<T> {
        match crate::config::read_secret_file(&self.path).and_then(parse) {
            Ok(value) => {
                self.unusable_said = false;
                (current != Some(&value)).then_some(value)
            }
            Err(problem) => {
                if !std::mem::replace(&mut self.unusable_said, true) {
                    tracing::warn!(
                        "{} {}: {problem}; the value in force is kept",
                        self.flag,
                        self.path.display()
                    );
                }
                None
            }
        }
    }
}

/// The admin token in force: the one given, or the one its file (`--admin-token-file`) holds
/// now. The file is read again before a call is judged, at most once a second, so a rotated
/// Secret takes over — and the old token stops working — with no restart.
pub struct AdminToken(std::sync::Mutex<Held>);

/// The token in force, and the file it may be replaced from.
struct Held {
    token: Token,
    file: Option<SecretFile>,
    /// When the file was last read.
    read_at: Option<tokio::time::Instant>,
}

/// How often the token file may be read, however many calls come.
const TOKEN_FILE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl AdminToken {
    pub fn new(token: Token, file: Option<std::path::PathBuf>) -> Self {
        AdminToken(std::sync::Mutex::new(Held {
            token,
            file: file.map(|path| SecretFile::new("--admin-token-file", path)),
            read_at: Some(tokio::time::Instant::now()),
        }))
    }

    /// Whether an `Authorization` header carries the token in force.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Held {
            token,
            file,
            read_at,
        } = &mut *held;
        if let Some(file) = file
            && read_at.is_none_or(|at| at.elapsed() >= TOKEN_FILE_EVERY)
        {
            *read_at = Some(tokio::time::Instant::now());
            if let Some(new) = file.changed(Some(&*token), |text| Token::new(&text)) {
                tracing::info!(
                    "{} holds a new admin token; the old one no longer works",
                    file.path().display()
                );
                *token = new;
            }
        }
        token.admits(authorization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_that_changes_takes_over_and_the_old_token_stops_working() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let old = "old-token-0123456789";
        let new = "new-token-9876543210";
        std::fs::write(&file, old).unwrap();
        let token = AdminToken::new(Token::new(old).unwrap(), Some(file.clone()));
        let bearer = |t: &str| format!("Bearer {t}");
        assert!(token.admits(Some(bearer(old).as_bytes())));
        std::fs::write(&file, format!("{new}\n")).unwrap();
        // Read again at most once a second: force the next read.
        token.0.lock().unwrap().read_at = None;
        assert!(
            token.admits(Some(bearer(new).as_bytes())),
            "the new one works"
        );
        assert!(
            !token.admits(Some(bearer(old).as_bytes())),
            "the old one does not"
        );
        // A file being rewritten (empty, or too short) keeps the token in force.
        std::fs::write(&file, "").unwrap();
        token.0.lock().unwrap().read_at = None;
        assert!(token.admits(Some(bearer(new).as_bytes())));
        std::fs::write(&file, "short").unwrap();
        token.0.lock().unwrap().read_at = None;
        assert!(token.admits(Some(bearer(new).as_bytes())));
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
