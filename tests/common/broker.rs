//! Mosquitto processes of a test's own (password files, TLS and websocket listeners), each on
//! free ports and stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

/// A Mosquitto of a test's own, on free ports, stopped when dropped.
pub struct Broker {
    /// The plain MQTT listener on 127.0.0.1.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// A second broker that takes anonymous clients.
    pub fn anonymous() -> Self {
        Self::spawn("allow_anonymous true\n", |_| {})
    }

    /// A broker that requires `user`/`pass` (a `password_file`).
    pub fn start(user: &str, pass: &str) -> Self {
        Self::spawn("allow_anonymous false\npassword_file passwd\n", |dir| {
            let st = Command::new("mosquitto_passwd")
                .args(["-c", "-b"])
                .arg(dir.join("passwd"))
                .args([user, pass])
                .status()
                .expect("mosquitto_passwd");
            assert!(st.success());
        })
    }

    /// Starts Mosquitto with a plain listener on a free port and `settings`, in which `{dir}`
    /// stands for the broker's own folder (where `prepare` may write files).
    pub fn spawn(settings: &str, prepare: impl FnOnce(&std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let settings = settings
            .replace(
                "password_file passwd",
                &format!("password_file {}", dir.path().join("passwd").display()),
            )
            .replace("{dir}", &dir.path().display().to_string());
        // Mosquitto drops privileges to `mosquitto` when started as root: let it read the files.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(dir.path())
            .status();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\n{settings}")).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    /// The broker's folder (its config and the files `prepare` wrote).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Waits until `port` (another listener of this broker) accepts connections.
    pub fn wait_port(&self, port: u16) {
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the broker's listener on port {port} did not open");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
