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
    conf: std::path::PathBuf,
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
        let child = launch(&conf, port);
        Self {
            port,
            child,
            conf,
            _dir: dir,
        }
    }

    /// A broker that keeps sessions and queued messages on disk (`persistence`), saving every
    /// `autosave_interval` seconds, or after that many changes with `on_changes`. Its queues are
    /// as large as `scripts/services` makes them.
    pub fn persistent(autosave_interval: u32, on_changes: bool) -> Self {
        Self::spawn(
            &format!(
                "allow_anonymous true\npersistence true\npersistence_location {{dir}}/\nautosave_interval {autosave_interval}\nautosave_on_changes {on_changes}\nmax_queued_messages 1000000\nmax_queued_bytes 0\n"
            ),
            |_| {},
        )
        .writable()
    }

    /// Lets Mosquitto (which drops root for the `mosquitto` user) write its folder.
    fn writable(self) -> Self {
        let _ = Command::new("chmod")
            .args(["a+rwx"])
            .arg(self.dir())
            .status();
        self
    }

    /// Stops the broker, gracefully (SIGTERM: it saves its persistence file) or with SIGKILL,
    /// and starts it again on the same port with the same settings.
    pub fn restart(&mut self, graceful: bool) {
        let signal = if graceful { "-TERM" } else { "-KILL" };
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.child = launch(&self.conf, self.port);
    }

    /// The broker's folder (its config, its persistence file, the files `prepare` wrote).
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

/// Starts Mosquitto on `conf` and waits until `port` accepts connections.
fn launch(conf: &std::path::Path, port: u16) -> Child {
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
