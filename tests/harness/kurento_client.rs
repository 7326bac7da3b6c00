//! The official Java kurento-client (`org.kurento:kurento-client` 7.3.0), driven by the small
//! program in `tests/kurento-client/` (`memprobe.kurento.Driver`): one command a line on its
//! stdin, one JSON line an answer on its stdout, the client's exceptions as they are. `.ci/run`
//! builds it with Maven into `target/kurento-client/`; without that build (or without `java`)
//! a test skips, and fails in strict mode.
//!
//! Each answer is waited for with a generous deadline: a JVM starts slowly on a loaded machine,
//! and the client itself gives up on a request after 10 s (its `requestTimeout`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{skip, strict, tool};

/// The driver's jar, as `.ci/run` builds it (its dependencies in `lib/` beside it).
pub const JAR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/kurento-client/memprobe-kurento-client.jar"
);

/// How long one answer may take: a JVM's start, a reconnect, the client's own timeouts.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// An exception the client raised, as the application sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    /// The exception's class, e.g. `org.kurento.client.internal.server.KurentoServerException`.
    pub class: String,
    /// `getMessage()`, verbatim.
    pub message: String,
    /// `getCode()` of a `KurentoServerException`: the JSON-RPC error's code.
    pub code: Option<i64>,
    /// `getErrorType()` (null for every server error in 7.3.0: the client keeps `data` as a
    /// string and never reads its `type`).
    pub error_type: Option<String>,
    /// The whole answer: `serverMessage` (the error's `message` alone), `data` (as text), and
    /// the `cause` chain.
    pub raw: Value,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// Finds `java` and the built jar, or says why not (a skip, or a failure in strict mode).
pub fn find() -> Option<(PathBuf, PathBuf)> {
    let java = tool("java")?;
    let jar = PathBuf::from(JAR);
    if !jar.is_file() {
        assert!(
            !strict(),
            "{JAR} is required in strict mode: .ci/run builds it \
             (mvn -B -q -f tests/kurento-client/pom.xml package)"
        );
        skip(
            "the kurento-client driver is not built: mvn -B -q -f tests/kurento-client/pom.xml \
             package (.ci/run does it; MEMPROBE_STRICT=1 makes this fail)",
        );
        return None;
    }
    Some((java, jar))
}

/// Runs the application-server example of docs/kurento.md (`example.PlacePipeline`) with these
/// arguments to its end: its output, or `None` (with a printed reason) without Java or the
/// build.
pub fn run_example(args: &[String]) -> Option<std::process::Output> {
    let (java, jar) = find()?;
    let child = Command::new(java)
        .arg("-cp")
        .arg(jar)
        .arg("example.PlacePipeline")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the application-server example");
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(ANSWER_DEADLINE) {
        Ok(output) => Some(output.expect("the example's output")),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the example did not end within {ANSWER_DEADLINE:?} (pid {pid}, killed)")
        }
    }
}

/// One running driver: one JVM, at most one `KurentoClient` in it.
pub struct KurentoClient {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<Value>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl KurentoClient {
    /// A driver, or `None` (with a printed reason) when Java or the build is missing.
    pub fn start() -> Option<Self> {
        let (java, jar) = find()?;
        let mut child = Command::new(java)
            .arg("-jar")
            .arg(jar)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the kurento-client driver");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let (tx, answers) = channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"unparsed": line}));
                if value.get("event").is_some() {
                    sink.lock().unwrap().push(value);
                } else if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Some(KurentoClient {
            child,
            stdin,
            answers,
            events,
            stderr: log,
        })
    }

    /// One command and its answer: the answer's fields, or the client's exception.
    pub fn call(&mut self, command: &str) -> Result<Value, ClientError> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("the driver took no {command:?} ({e}); {}", self.log()));
        let answer = match self.answers.recv_timeout(ANSWER_DEADLINE) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no answer to {command:?} within {ANSWER_DEADLINE:?}; {}",
                self.log()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the driver exited at {command:?}; {}", self.log())
            }
        };
        if answer["ok"] == true {
            return Ok(answer);
        }
        let error = &answer["error"];
        assert!(
            error.is_object(),
            "the driver answered {command:?} with {answer}"
        );
        let text = |key: &str| error[key].as_str().map(str::to_owned);
        Err(ClientError {
            class: text("class").unwrap_or_default(),
            message: text("message").unwrap_or_default(),
            code: error["code"].as_i64(),
            error_type: text("type"),
            raw: error.clone(),
        })
    }

    fn id(&mut self, command: &str) -> Result<String, ClientError> {
        let answer = self.call(command)?;
        Ok(answer["id"].as_str().unwrap_or_default().to_string())
    }

    /// `KurentoClient.create(url)`: connects (the client sends nothing until the first call).
    pub fn connect(&mut self, url: &str) -> Result<(), ClientError> {
        self.call(&format!("connect {url}")).map(drop)
    }

    /// `createMediaPipeline()`: the new pipeline's id.
    pub fn pipeline(&mut self) -> Result<String, ClientError> {
        self.id("pipeline")
    }

    /// `new WebRtcEndpoint.Builder(pipeline).build()`: the endpoint's id.
    pub fn endpoint(&mut self, pipeline: &str) -> Result<String, ClientError> {
        self.id(&format!("endpoint {pipeline}"))
    }

    /// A pipeline and a WebRtcEndpoint in it, created in one `Transaction`: their ids.
    pub fn transaction(&mut self) -> Result<(String, String), ClientError> {
        let answer = self.call("transaction")?;
        let text = |key: &str| answer[key].as_str().unwrap_or_default().to_string();
        Ok((text("id"), text("endpoint")))
    }

    /// `getName()` on an object made here.
    pub fn name(&mut self, id: &str) -> Result<String, ClientError> {
        let answer = self.call(&format!("name {id}"))?;
        Ok(answer["value"].as_str().unwrap_or_default().to_string())
    }

    /// `setName(name)` on an object made here (`name` without spaces).
    pub fn set_name(&mut self, id: &str, name: &str) -> Result<(), ClientError> {
        self.call(&format!("set-name {id} {name}")).map(drop)
    }

    /// `getChildren()`: the children's ids.
    pub fn children(&mut self, id: &str) -> Result<Vec<String>, ClientError> {
        let answer = self.call(&format!("children {id}"))?;
        Ok(answer["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// `addErrorListener(..)`: the subscription's id.
    pub fn subscribe(&mut self, id: &str) -> Result<String, ClientError> {
        let answer = self.call(&format!("subscribe {id}"))?;
        Ok(answer["value"].as_str().unwrap_or_default().to_string())
    }

    /// `getById(id, MediaPipeline.class)`: a pipeline this client did not make.
    pub fn by_id(&mut self, id: &str) -> Result<String, ClientError> {
        self.id(&format!("by-id {id}"))
    }

    /// `release()` on an object made here.
    pub fn release(&mut self, id: &str) -> Result<(), ClientError> {
        self.call(&format!("release {id}")).map(drop)
    }

    /// `destroy()`: closes the session and the WebSocket.
    pub fn destroy(&mut self) -> Result<(), ClientError> {
        self.call("destroy").map(drop)
    }

    /// The connection events seen so far (`connected`, `reconnected`, `disconnected`, ...).
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits for the `n`th (from 1) connection event of this kind.
    pub fn wait_event(&self, kind: &str, n: usize) -> Value {
        let end = Instant::now() + ANSWER_DEADLINE;
        loop {
            let found: Vec<Value> = self
                .events()
                .into_iter()
                .filter(|e| e["event"] == kind)
                .collect();
            if let Some(event) = found.get(n - 1) {
                return event.clone();
            }
            assert!(
                Instant::now() < end,
                "no {kind} event #{n} within {ANSWER_DEADLINE:?}; events {:?}; {}",
                self.events(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the client logged on stderr, for a failure's message.
    pub fn log(&self) -> String {
        format!(
            "the client's stderr:\n{}",
            self.stderr.lock().unwrap().join("\n")
        )
    }
}

impl Drop for KurentoClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
