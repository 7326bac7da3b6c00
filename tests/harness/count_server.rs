//! A small HTTP server that says a session count, as any server would for `--sessions-url`:
//! a real listener on loopback answering `GET` with the body the test sets, one connection
//! per request. `hang` makes it accept requests and never answer them, as a server whose
//! loop is stuck does; `trickle` makes it answer a byte a second; `answer` lets it answer
//! again.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Shared {
    body: Mutex<String>,
    hung: AtomicBool,
    trickling: AtomicBool,
    stopped: AtomicBool,
    /// Connections held unanswered while hung, closed when it stops.
    held: Mutex<Vec<TcpStream>>,
    /// The `Host` header of the last request.
    host: Mutex<Option<String>>,
}

pub struct CountServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl CountServer {
    /// Listens on a free loopback port, answering `body`.
    pub fn start(body: &str) -> Self {
        Self::start_on(0, body)
    }

    /// Listens on this loopback port (0: any free one), answering `body`.
    pub fn start_on(port: u16, body: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the count server");
        let addr = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared {
            body: Mutex::new(body.to_string()),
            hung: AtomicBool::new(false),
            trickling: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            host: Mutex::new(None),
        });
        let serving = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&serving);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        CountServer { addr, shared }
    }

    /// `http://127.0.0.1:PORT` followed by `rest` (a path, and a fragment).
    pub fn url(&self, rest: &str) -> String {
        format!("http://{}{rest}", self.addr)
    }

    pub fn say(&self, body: &str) {
        *self.shared.body.lock().unwrap() = body.to_string();
    }

    /// The `Host` header the last request carried.
    pub fn host(&self) -> Option<String> {
        self.shared.host.lock().unwrap().clone()
    }

    pub fn hang(&self) {
        self.shared.hung.store(true, Ordering::SeqCst);
    }

    /// Answers a byte a second, as a server behind a starved link does.
    pub fn trickle(&self) {
        self.shared.trickling.store(true, Ordering::SeqCst);
    }

    pub fn answer(&self) {
        self.shared.hung.store(false, Ordering::SeqCst);
        self.shared.trickling.store(false, Ordering::SeqCst);
        self.shared.held.lock().unwrap().clear();
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    // The request head, up to its blank line.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("host")
        {
            *shared.host.lock().unwrap() = Some(value.trim().to_string());
        }
        line.clear();
    }
    if shared.hung.load(Ordering::SeqCst) {
        shared.held.lock().unwrap().push(stream);
        return;
    }
    let body = shared.body.lock().unwrap().clone();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    if shared.trickling.load(Ordering::SeqCst) {
        for byte in answer.as_bytes() {
            if shared.stopped.load(Ordering::SeqCst) || stream.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        return;
    }
    let _ = stream.write_all(answer.as_bytes());
}

impl Drop for CountServer {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.held.lock().unwrap().clear();
        // Wakes the accept loop so that it sees the stop and closes the listener.
        let _ = TcpStream::connect(self.addr);
    }
}
