//! Named admin tokens. Each token has a name (`[admin] token` is `admin`, `restart_token` is
//! `restart`, and `tokens_file` lists more as `name token` lines), so that the audit trail says
//! who asked (`service_restart_requests.requested_by`). A presented token is hashed and compared
//! as a fixed-size SHA-256 digest in constant time against every configured one, so neither its
//! content nor its length leaks through timing, and the loop does not stop at the first match.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who made an admin request: the name of the token that matched (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

/// One configured token: its name and its digest (the token itself is not kept).
struct NamedToken {
    name: Arc<str>,
    digest: [u8; 32],
}

/// The admin and restart-only tokens.
#[derive(Default)]
pub struct AdminTokens {
    admin: Vec<NamedToken>,
    restart: Vec<NamedToken>,
}

impl std::fmt::Debug for AdminTokens {
    /// Names only; digests are not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |l: &[NamedToken]| l.iter().map(|t| t.name.to_string()).collect::<Vec<_>>();
        f.debug_struct("AdminTokens")
            .field("admin", &names(&self.admin))
            .field("restart", &names(&self.restart))
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn named(list: Vec<(String, String)>) -> Vec<NamedToken> {
    list.into_iter()
        .map(|(name, token)| NamedToken {
            name: Arc::from(name),
            digest: digest(&token),
        })
        .collect()
}

/// The name of the token in `list` that `presented` is, checking every one.
fn find(list: &[NamedToken], presented: &str) -> Option<Caller> {
    if presented.is_empty() {
        return None;
    }
    let d = digest(presented);
    let mut found = None;
    for t in list {
        if same(&t.digest, &d) {
            found = Some(Caller(t.name.clone()));
        }
    }
    found
}

#[cfg(test)]
thread_local! {
    /// The sizes compared, in order (tests only): the timing path of a lookup.
    static COMPARED: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Two digests compared in constant time: always 32 bytes, whatever was presented.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    #[cfg(test)]
    COMPARED.with(|c| c.borrow_mut().push(a.len() + b.len()));
    bool::from(a.ct_eq(b))
}

impl AdminTokens {
    /// Tokens from `(name, token)` pairs: admin tokens (full access) and restart-only ones.
    pub fn new(admin: Vec<(String, String)>, restart: Vec<(String, String)>) -> Self {
        Self {
            admin: named(admin),
            restart: named(restart),
        }
    }

    /// Whether any admin token is configured (else the API is disabled).
    pub fn has_admin(&self) -> bool {
        !self.admin.is_empty()
    }

    /// Whether any restart-only token is configured.
    pub fn has_restart(&self) -> bool {
        !self.restart.is_empty()
    }

    /// The caller, when `presented` is an admin token.
    pub fn admin(&self, presented: &str) -> Option<Caller> {
        find(&self.admin, presented)
    }

    /// The caller, when `presented` is a restart-only token.
    pub fn restart(&self, presented: &str) -> Option<Caller> {
        find(&self.restart, presented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AdminTokens {
        AdminTokens::new(
            vec![
                ("admin".into(), "s3cret-token-0123456789".into()),
                ("ops-alice".into(), "alice-token-0123456789".into()),
            ],
            vec![("restart".into(), "restart-token-0123456789".into())],
        )
    }

    #[test]
    fn each_token_is_known_by_its_name_and_only_in_its_role() {
        let t = tokens();
        assert_eq!(
            t.admin("alice-token-0123456789"),
            Some(Caller(Arc::from("ops-alice")))
        );
        assert_eq!(
            t.admin("s3cret-token-0123456789"),
            Some(Caller(Arc::from("admin")))
        );
        assert_eq!(t.admin("restart-token-0123456789"), None);
        assert_eq!(
            t.restart("restart-token-0123456789"),
            Some(Caller(Arc::from("restart")))
        );
    }

    #[test]
    fn near_misses_prefixes_and_empty_tokens_match_nothing() {
        let t = tokens();
        for wrong in [
            "s3cret-token-012345678",
            "s3cret-token-01234567899",
            "S3cret-token-0123456789",
            "",
        ] {
            assert_eq!(t.admin(wrong), None, "{wrong:?}");
        }
        assert!(!AdminTokens::default().has_admin());
        assert_eq!(AdminTokens::default().admin(""), None);
    }

    #[test]
    fn short_and_long_wrong_tokens_take_the_same_comparison_path() {
        let t = tokens();
        let path = |presented: &str| {
            COMPARED.with(|c| c.borrow_mut().clear());
            let found = t.admin(presented);
            (found, COMPARED.with(|c| c.borrow().clone()))
        };
        let long = "x".repeat(10_000);
        let (_, short_path) = path("x");
        for wrong in ["s3cret", "s3cret-token-012345678", long.as_str()] {
            let (found, p) = path(wrong);
            assert_eq!(found, None);
            assert_eq!(p, short_path, "{} bytes presented", wrong.len());
        }
        // Every token is compared, 32 bytes against 32, and the right one takes the same path.
        assert_eq!(short_path, vec![64, 64]);
        let (found, p) = path("s3cret-token-0123456789");
        assert!(found.is_some());
        assert_eq!(p, short_path);
    }

    #[test]
    fn debug_shows_names_not_secrets() {
        let s = format!("{:?}", tokens());
        assert!(s.contains("ops-alice") && !s.contains("alice-token"), "{s}");
    }
}
