//! Device credentials for the hosted broker: random usernames and passwords from a CSPRNG,
//! argon2id hashes in `mqtt_credentials`, and the broker-side client and role that enforce
//! each credential's topics.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;

use super::dynsec::{Dynsec, DynsecError};

/// Length of generated passwords (alphanumeric: about 190 bits).
pub const PASSWORD_LEN: usize = 32;

/// A new username: the managed prefix and 16 random hex digits.
pub fn new_username(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A new password from the thread's CSPRNG.
pub fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN)
}

/// Why a password could not be hashed (the salt could not be encoded or argon2 refused its
/// parameters; neither happens with the defaults used here). The cause is kept as a field and
/// in the message, not as `source()`: `password_hash::Error` implements `std::error::Error`
/// only with argon2's `std` feature, which this crate does not enable.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// argon2 refused.
    #[error("cannot hash the password: {0}")]
    Argon2(argon2::password_hash::Error),
    /// The blocking task did not finish (the runtime is shutting down).
    #[error("the password hashing task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The argon2id PHC string of `password`, with a random salt.
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(HashError::Argon2)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError::Argon2)
}

/// [`hash`] on tokio's blocking pool: argon2 spends tens of milliseconds of CPU by design,
/// which must not hold an async worker that carries ingest.
pub async fn hash_blocking(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || hash(&password)).await?
}

/// Whether `password` matches an argon2id PHC string.
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The AEAD context of a credential's sealed password.
pub fn seal_context(username: &str) -> String {
    format!("mqtt-credential:{username}")
}

/// The ACL types a credential gets on each of its topic filters.
pub const ACL_TYPES: [&str; 4] = [
    "publishClientSend",
    "publishClientReceive",
    "subscribePattern",
    "unsubscribePattern",
];

/// Creates the broker client `username` only if it does not exist (the reconcile loop's
/// repair: a client that exists meanwhile, created or re-keyed by the API, is left alone).
/// Returns whether it created it.
pub async fn create_missing(
    d: &Dynsec,
    username: &str,
    password: &str,
    topics: &[String],
) -> Result<bool, DynsecError> {
    ensure_role(d, username, topics).await?;
    match d
        .call(
            json!({"command": "createClient", "username": username, "password": password,
                      "textdescription": "managed by fleetflow",
                      "roles": [{"rolename": username}]}),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(DynsecError::Refused { error, .. }) if error.contains("already") => Ok(false),
        Err(e) => Err(e),
    }
}

async fn ensure_role(d: &Dynsec, username: &str, topics: &[String]) -> Result<(), DynsecError> {
    d.call_idempotent(json!({"command": "createRole", "rolename": username}))
        .await?;
    for topic in topics {
        for acl in ACL_TYPES {
            d.call_idempotent(json!({"command": "addRoleACL", "rolename": username,
                                      "acltype": acl, "topic": topic, "allow": true}))
                .await?;
        }
    }
    Ok(())
}

/// Creates (or repairs) the broker client `username` with `password` and a role of the same
/// name that allows publish and subscribe on `topics` only.
pub async fn provision(
    d: &Dynsec,
    username: &str,
    password: &str,
    topics: &[String],
) -> Result<(), DynsecError> {
    ensure_role(d, username, topics).await?;
    match d
        .call(
            json!({"command": "createClient", "username": username, "password": password,
                      "textdescription": "managed by fleetflow",
                      "roles": [{"rolename": username}]}),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(DynsecError::Refused { error, .. }) if error.contains("already") => {
            d.call(
                json!({"command": "setClientPassword", "username": username, "password": password}),
            )
            .await?;
            if !has_role(d, username, username).await? {
                d.call(
                    json!({"command": "addClientRole", "username": username, "rolename": username}),
                )
                .await?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether broker client `username` has role `role`.
async fn has_role(d: &Dynsec, username: &str, role: &str) -> Result<bool, DynsecError> {
    let data = d
        .call(json!({"command": "getClient", "username": username}))
        .await?;
    Ok(data["client"]["roles"]
        .as_array()
        .is_some_and(|roles| roles.iter().any(|r| r["rolename"] == role)))
}

/// A new password for an existing broker client. When the client is missing, nothing is done
/// here: the reconcile loop re-creates it from the (already updated) row.
pub async fn set_password(d: &Dynsec, username: &str, password: &str) -> Result<(), DynsecError> {
    match d
        .call(json!({"command": "setClientPassword", "username": username, "password": password}))
        .await
    {
        Err(DynsecError::Refused { error, .. }) if error.contains("not found") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Deletes the broker client (which disconnects it) and its role.
pub async fn deprovision(d: &Dynsec, username: &str) -> Result<(), DynsecError> {
    d.call_idempotent(json!({"command": "deleteClient", "username": username}))
        .await?;
    d.call_idempotent(json!({"command": "deleteRole", "rolename": username}))
        .await?;
    Ok(())
}

/// Gives the admin user (the engine's own connection to the hosted broker) the right to
/// publish anywhere, for ACK/NACKs, commands and the publish API. Adding a role to a client
/// makes Mosquitto disconnect it, the admin connection included, so the role is added only when
/// missing, and the outcome is checked after reconnecting.
pub async fn ensure_engine_role(d: &Dynsec, role: &str, admin: &str) -> Result<(), DynsecError> {
    if has_role(d, admin, role).await? {
        return Ok(());
    }
    d.call_idempotent(json!({"command": "createRole", "rolename": role}))
        .await?;
    d.call_idempotent(json!({"command": "addRoleACL", "rolename": role,
                              "acltype": "publishClientSend", "topic": "#", "allow": true}))
        .await?;
    // The answer is lost with the connection.
    d.send(json!({"command": "addClientRole", "username": admin, "rolename": role}))
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    if has_role(d, admin, role).await? {
        tracing::info!(role = %role, "hosted broker: the admin user may now publish (engine role added)");
        Ok(())
    } else {
        Err(DynsecError::Refused {
            command: "addClientRole".into(),
            error: format!("{admin} did not get role {role}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_hashed_with_argon2id() {
        let a = new_password();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, new_password());
        let h = hash(&a).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains(&a));
        assert!(verify(&a, &h));
        assert!(!verify("wrong", &h));
    }

    #[test]
    fn usernames_carry_the_managed_prefix() {
        let u = new_username("ff_");
        assert!(u.starts_with("ff_") && u.len() == 19, "{u}");
    }
}
