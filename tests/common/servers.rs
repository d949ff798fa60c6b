//! Private PostgreSQL and S3 (moto) servers for the tests that stop them, so that other tests
//! keep the shared ones.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;
use super::services::{free_port, random_hex};

/// A private PostgreSQL cluster for tests that stop the database (so other tests are not hit).
pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl PrivatePg {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL binaries under /usr/lib/postgresql (scripts/services up installs them)",
            )
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = PathBuf::from(format!("/tmp/ff-pg-{}", random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let st = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "{args:?} failed");
        };
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.join("data");
        run(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let pg = Self {
            dir,
            port: free_port(),
            bin,
        };
        pg.start_again();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = self.dir.join("data");
        Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-w",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        assert!(
            self.pg_ctl(&["-l", log.to_str().unwrap(), "-o", &opts, "start"]),
            "private postgres start"
        );
    }

    pub fn stop(&self) {
        assert!(
            self.pg_ctl(&["-m", "fast", "stop"]),
            "private postgres stop"
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private moto S3 server (for tests that stop the object store).
pub struct PrivateS3 {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateS3 {
    pub fn moto_bin() -> PathBuf {
        let tools = std::env::var("FLEETFLOW_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                    .join(".cache/fleetflow-tools")
            });
        let bin = tools.join("moto-venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing; `scripts/services up` installs it",
            bin.display()
        );
        bin
    }

    pub async fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
        };
        s.start_again().await;
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts moto (empty: it keeps data in memory) and creates the bucket.
    pub async fn start_again(&mut self) {
        let child = Command::new(Self::moto_bin())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        self.child = Some(child);
        let url = format!("{}/fleetflow", self.endpoint());
        eventually(
            Duration::from_secs(30),
            "moto to create the bucket",
            || async {
                reqwest::Client::new()
                    .put(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            },
        )
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
