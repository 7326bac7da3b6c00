//! A real Janus (Debian's `janus`), on free loopback ports with its own config folder, killed
//! on drop; and its client API, to make sessions.

#![allow(clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{DEADLINE, free_port};

pub const SECRET: &str = "janusoverlord";

pub struct Janus {
    child: Child,
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub client_port: u16,
    pub admin_port: u16,
    agent: ureq::Agent,
}

impl Janus {
    /// Starts Janus with only the HTTP transports and the echotest plugin.
    pub fn start(bin: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path();
        for entry in std::fs::read_dir("/etc/janus").unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), conf.join(entry.file_name())).unwrap();
        }
        let (client_port, admin_port) = (free_port(), free_port());
        let edit = |file: &str, pairs: &[(&str, String)]| {
            let path = conf.join(file);
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (from, to) in pairs {
                assert!(text.contains(from), "{file} has no {from}");
                text = text.replace(from, to);
            }
            std::fs::write(path, text).unwrap();
        };
        edit(
            "janus.jcfg",
            &[
                (
                    "#disable = \"libjanus_voicemail.so,libjanus_recordplay.so\"",
                    "disable = \"libjanus_voicemail.so,libjanus_recordplay.so,libjanus_audiobridge.so,libjanus_duktape.so,libjanus_lua.so,libjanus_nosip.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_videoroom.so\"".into(),
                ),
                (
                    "#disable = \"libjanus_rabbitmq.so\"",
                    "disable = \"libjanus_rabbitmq.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_websockets.so\"".into(),
                ),
            ],
        );
        edit(
            "janus.transport.http.jcfg",
            &[
                ("admin_http = false", "admin_http = true".into()),
                ("port = 8088", format!("port = {client_port}")),
                ("admin_port = 7088", format!("admin_port = {admin_port}")),
            ],
        );
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let child = Self::spawn(bin, conf);
        let janus = Janus {
            child,
            bin: bin.to_path_buf(),
            dir,
            client_port,
            admin_port,
            agent,
        };
        janus.wait_answering();
        janus
    }

    fn spawn(bin: &Path, conf: &Path) -> Child {
        Command::new(bin)
            .arg("-F")
            .arg(conf)
            .arg("-C")
            .arg(conf.join("janus.jcfg"))
            .arg("-o")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start janus")
    }

    fn wait_answering(&self) {
        let start = Instant::now();
        while self
            .admin(json!({"janus": "info", "transaction": "up"}))
            .is_none()
        {
            assert!(
                start.elapsed() < DEADLINE,
                "janus never answered its admin API"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}/admin", self.admin_port)
    }

    /// Kills Janus and starts it again on the same ports: a new incarnation.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.bin, self.dir.path());
        self.wait_answering();
    }

    fn post(&self, url: &str, body: Value) -> Option<Value> {
        let mut response = self.agent.post(url).send(body.to_string()).ok()?;
        serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
    }

    /// One admin request (with the secret); the answer.
    pub fn admin(&self, mut body: Value) -> Option<Value> {
        body["admin_secret"] = Value::from(SECRET);
        self.post(&self.admin_url(), body)
    }

    /// `create` on the client API: the session id, or the error code (472 when draining).
    pub fn create(&self) -> Result<u64, i64> {
        let url = format!("http://127.0.0.1:{}/janus", self.client_port);
        let answer = self
            .post(&url, json!({"janus": "create", "transaction": "c"}))
            .expect("janus answers create");
        match answer["data"]["id"].as_u64() {
            Some(id) => Ok(id),
            None => Err(answer["error"]["code"].as_i64().unwrap_or(0)),
        }
    }

    /// `keepalive` on a session: whether it was acknowledged.
    pub fn keepalive(&self, session: u64) -> bool {
        let url = format!("http://127.0.0.1:{}/janus/{session}", self.client_port);
        self.post(&url, json!({"janus": "keepalive", "transaction": "k"}))
            .is_some_and(|a| a["janus"] == "ack")
    }

    pub fn destroy(&self, session: u64) {
        let url = format!("http://127.0.0.1:{}/janus/{session}", self.client_port);
        self.post(&url, json!({"janus": "destroy", "transaction": "d"}));
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
