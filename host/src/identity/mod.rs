//! Identity: users (people and service accounts), password login with argon2id, session and API
//! tokens stored only as hashes, and the lockout that stops password guessing.

pub mod http;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::audit::{self, Event, Origin};
use crate::db::{Database, Row, Tx, UniqueConstraint};
use crate::error::{Error, FieldError, Result};
use crate::on_conn;

/// Failed password attempts after which an account locks.
pub const FAILED_LOGINS_BEFORE_LOCKOUT: i64 = 5;

/// How long a locked account stays locked (an admin can unlock it sooner by resetting the
/// password).
pub const LOCKOUT_DURATION: chrono::Duration = chrono::Duration::minutes(15);

/// Login attempts one client address may make per window, whatever the usernames; slows down
/// guessing across many accounts.
pub const LOGIN_ATTEMPTS_PER_ADDRESS: u32 = 20;
pub const LOGIN_ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

/// How long a session token from a password login is valid.
pub const SESSION_DURATION: chrono::Duration = chrono::Duration::hours(12);

/// A verified token is trusted for this long without asking the database again; revocation and
/// disabling reach other processes within it (this process forgets at once).
const AUTHENTICATION_CACHE_TTL: Duration = Duration::from_secs(5);

/// Tokens remembered by the authentication cache; past this it starts over.
const AUTHENTICATION_CACHE_ENTRIES_MAX: usize = 10_000;

pub const PASSWORD_CHARS_MIN: usize = 10;
pub const PASSWORD_CHARS_MAX: usize = 256;
pub const USERNAME_CHARS_MAX: usize = 64;
pub const DISPLAY_NAME_CHARS_MAX: usize = 200;
pub const TOKEN_NAME_CHARS_MAX: usize = 100;

/// Bytes of randomness in a token: 256 bits, so a hash without salt or stretching is safe.
const TOKEN_RANDOM_BYTES: usize = 32;

const USERNAME_UNIQUE: UniqueConstraint = UniqueConstraint {
    postgres_name: "users_username_unique",
    sqlite_columns: "users.username",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserKind {
    /// Logs in with a password or uses API tokens.
    Person,
    /// A service account: API tokens only (integrations, plugins).
    Service,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Disabled,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub email: Option<String>,
    pub kind: UserKind,
    pub status: UserStatus,
    /// The user's manager: "the team" of ownership rules is a manager's direct reports.
    pub manager: Option<i64>,
    /// Set while the account is locked after failed logins.
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A new user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Lowercase letters, digits, `.`, `-`, `_`, `@`.
    #[schema(example = "maria.lopez")]
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// `person` (default) or `service`.
    pub kind: Option<UserKind>,
    /// At least 10 characters; a person without one can only use API tokens until it is set.
    pub password: Option<String>,
    pub manager: Option<i64>,
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChanges {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub manager: Option<i64>,
}

/// A new password: an admin's reset, or a user's own change (which needs the current one).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: Option<String>,
    pub new_password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Session,
    Api,
}

/// A token as listed: never the secret itself, which is shown once when created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: i64,
    pub kind: TokenKind,
    pub name: String,
    /// The first characters of the token, to recognize it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[schema(example = "nightly import")]
    pub name: String,
    /// Days until the token expires; it never expires when absent.
    pub expires_in_days: Option<u32>,
}

/// A freshly created token. `token` is shown this once and never again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenView,
}

/// The result of a password login.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserView,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    pub username: String,
    pub token_id: i64,
    pub token_kind: TokenKind,
}

/// The users and tokens capability, with the in-memory state that protects it: the
/// authentication cache and the per-address login limiter.
#[derive(Debug)]
pub struct Identity {
    db: Database,
    verified: Mutex<HashMap<String, (Principal, Instant)>>,
    login_attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// SHA-256 of a token, as stored.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `keel_` and 64 hex digits.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0_u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(format!("keel_{}", hex::encode(bytes)))
}

fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?
        .to_string())
}

fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the username does not exist, so that the answer takes as
/// long as for a real account and does not reveal which usernames exist.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("keel decoy password").unwrap_or_default())
}

pub fn check_password_rules(password: &str) -> std::result::Result<(), String> {
    let length = password.chars().count();
    if length < PASSWORD_CHARS_MIN {
        return Err(format!(
            "a password has at least {PASSWORD_CHARS_MIN} characters"
        ));
    }
    if length > PASSWORD_CHARS_MAX {
        return Err(format!(
            "a password has at most {PASSWORD_CHARS_MAX} characters"
        ));
    }
    Ok(())
}

pub fn check_username(username: &str) -> std::result::Result<(), String> {
    if username.is_empty() || username.len() > USERNAME_CHARS_MAX {
        return Err(format!(
            "a username has 1 to {USERNAME_CHARS_MAX} characters"
        ));
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | '@'))
    {
        return Err(format!(
            "{username:?} is not a username: use lowercase letters, digits, '.', '-', '_' and '@'"
        ));
    }
    Ok(())
}

const SELECT_USER: &str = "SELECT id, username, display_name, email, kind, status, manager_id, locked_until, \
     created_at, password_hash, failed_logins FROM users";

struct StoredUser {
    view: UserView,
    password_hash: Option<String>,
    failed_logins: i64,
}

fn user_from_row(row: &impl Row) -> anyhow::Result<StoredUser> {
    let kind = match row.text("kind")?.as_str() {
        "service" => UserKind::Service,
        _ => UserKind::Person,
    };
    let status = match row.text("status")?.as_str() {
        "disabled" => UserStatus::Disabled,
        _ => UserStatus::Active,
    };
    Ok(StoredUser {
        view: UserView {
            id: row.int("id")?,
            username: row.text("username")?,
            display_name: row.text("display_name")?,
            email: row.opt_text("email")?,
            kind,
            status,
            manager: row.opt_int("manager_id")?,
            locked_until: row.opt_timestamp("locked_until")?,
            created_at: row.timestamp("created_at")?,
        },
        password_hash: row.opt_text("password_hash")?,
        failed_logins: row.int("failed_logins")?,
    })
}

async fn find_user(
    tx: &mut Tx,
    clause: &str,
    id: Option<i64>,
    username: Option<&str>,
) -> Result<Option<StoredUser>> {
    let sql = format!("{SELECT_USER} WHERE {clause}");
    Ok(on_conn!(tx, conn => {
        let query = sqlx::query(&sql);
        let query = match (id, username) {
            (Some(id), _) => query.bind(id),
            (None, Some(name)) => query.bind(name.to_owned()),
            (None, None) => query,
        };
        match query.fetch_optional(&mut *conn).await? {
            Some(row) => Some(user_from_row(&row)?),
            None => None,
        }
    }))
}

async fn user_by_id(tx: &mut Tx, id: i64) -> Result<StoredUser> {
    find_user(tx, "id = $1", Some(id), None)
        .await?
        .ok_or_else(|| Error::NotFound(format!("there is no user {id}")))
}

fn token_from_row(row: &impl Row) -> anyhow::Result<TokenView> {
    Ok(TokenView {
        id: row.int("id")?,
        kind: if row.text("kind")? == "session" {
            TokenKind::Session
        } else {
            TokenKind::Api
        },
        name: row.text("name")?,
        prefix: row.text("prefix")?,
        created_at: row.timestamp("created_at")?,
        expires_at: row.opt_timestamp("expires_at")?,
        last_used_at: row.opt_timestamp("last_used_at")?,
        revoked_at: row.opt_timestamp("revoked_at")?,
    })
}

/// Stores a new token for the user and returns it, once, with its listing.
async fn insert_token(
    tx: &mut Tx,
    user_id: i64,
    kind: TokenKind,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<CreatedToken> {
    let token = new_token()?;
    let prefix: String = token.chars().take(13).collect();
    let created_at = crate::ledger::posting::now_micros();
    let id = on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO auth_tokens (user_id, kind, name, token_hash, prefix, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(user_id)
        .bind(if kind == TokenKind::Session { "session" } else { "api" })
        .bind(name)
        .bind(token_hash(&token))
        .bind(&prefix)
        .bind(created_at)
        .bind(expires_at)
        .fetch_one(&mut *conn)
        .await?
        .int("id")?
    });
    Ok(CreatedToken {
        token,
        info: TokenView {
            id,
            kind,
            name: name.to_owned(),
            prefix,
            created_at,
            expires_at,
            last_used_at: None,
            revoked_at: None,
        },
    })
}

impl Identity {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            verified: Mutex::default(),
            login_attempts: Mutex::default(),
        }
    }

    /// The caller behind a bearer token, or 401 saying what is wrong with it.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal> {
        let hash = token_hash(bearer);
        if let Some((principal, at)) = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash)
            && at.elapsed() < AUTHENTICATION_CACHE_TTL
        {
            return Ok(principal.clone());
        }
        let mut tx = self.db.begin_read().await?;
        let row = on_conn!(&mut tx, conn => {
            match sqlx::query(
                "SELECT t.id, t.user_id, t.kind, t.expires_at, t.revoked_at, u.username, u.status \
                 FROM auth_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
            )
            .bind(&hash)
            .fetch_optional(&mut *conn)
            .await?
            {
                Some(row) => Some((
                    row.int("id")?,
                    row.int("user_id")?,
                    row.text("kind")?,
                    row.opt_timestamp("expires_at")?,
                    row.opt_timestamp("revoked_at")?,
                    row.text("username")?,
                    row.text("status")?,
                )),
                None => None,
            }
        });
        tx.commit().await?;
        let Some((token_id, user_id, kind, expires_at, revoked_at, username, status)) = row else {
            return Err(Error::Unauthenticated(
                "the bearer token is not valid".into(),
            ));
        };
        if revoked_at.is_some() {
            return Err(Error::Unauthenticated(
                "the bearer token was revoked".into(),
            ));
        }
        if expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(Error::Unauthenticated(
                "the bearer token has expired; log in again".into(),
            ));
        }
        if status != "active" {
            return Err(Error::Unauthenticated(format!(
                "user {username} is disabled"
            )));
        }
        let principal = Principal {
            user_id,
            username,
            token_id,
            token_kind: if kind == "session" {
                TokenKind::Session
            } else {
                TokenKind::Api
            },
        };
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= AUTHENTICATION_CACHE_ENTRIES_MAX {
            verified.clear();
        }
        verified.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    /// Forgets every verified token, after a revocation or a disabled user.
    fn forget_verified(&self) {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Counts a login attempt from `address`; refuses past the limit for the window.
    fn count_login_attempt(&self, address: Option<IpAddr>) -> Result<()> {
        let Some(address) = address else {
            return Ok(());
        };
        let mut attempts = self
            .login_attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        attempts.retain(|_, (started, _)| started.elapsed() < LOGIN_ATTEMPT_WINDOW);
        let (_, count) = attempts.entry(address).or_insert((Instant::now(), 0));
        *count += 1;
        if *count > LOGIN_ATTEMPTS_PER_ADDRESS {
            return Err(Error::TooManyRequests(format!(
                "too many login attempts from {address}; wait a minute and try again"
            )));
        }
        Ok(())
    }

    /// Password login: a session token, or 401 for a wrong username or password (the same
    /// answer for both), 429 for a locked account or too many attempts. Failures are audited.
    pub async fn login(
        &self,
        credentials: &Credentials,
        address: Option<IpAddr>,
        origin: &Origin,
    ) -> Result<Session> {
        self.count_login_attempt(address)?;
        let mut tx = self.db.begin_write().await?;
        let user = find_user(&mut tx, "username = $1", None, Some(&credentials.username)).await?;
        let now = Utc::now();
        let failure = |reason: &str| {
            Event::new(
                None,
                "security:login-failed",
                "user",
                &credentials.username,
                json!({ "reason": reason, "address": address.map(|a| a.to_string()) }),
            )
        };
        let Some(user) = user else {
            tx.commit().await?;
            let _ = verify_blocking(credentials.password.clone(), decoy_hash().to_owned()).await;
            audit::record_security_event(&self.db, origin, failure("unknown username")).await;
            return Err(Error::Unauthenticated("wrong username or password".into()));
        };
        if let Some(until) = user.view.locked_until.filter(|until| *until > now) {
            tx.commit().await?;
            audit::record_security_event(&self.db, origin, failure("account locked")).await;
            return Err(Error::TooManyRequests(format!(
                "the account {} is locked after {FAILED_LOGINS_BEFORE_LOCKOUT} failed logins until {}; \
                 wait, or ask an administrator to reset the password",
                user.view.username,
                until.format("%Y-%m-%d %H:%M UTC")
            )));
        }
        let password_matches = match &user.password_hash {
            Some(hash) => verify_blocking(credentials.password.clone(), hash.clone()).await,
            None => {
                let _ =
                    verify_blocking(credentials.password.clone(), decoy_hash().to_owned()).await;
                false
            }
        };
        if !password_matches
            || user.view.status != UserStatus::Active
            || user.view.kind != UserKind::Person
        {
            let failed = user.failed_logins + 1;
            let locked_until =
                (failed >= FAILED_LOGINS_BEFORE_LOCKOUT).then(|| now + LOCKOUT_DURATION);
            on_conn!(&mut tx, conn => {
                sqlx::query("UPDATE users SET failed_logins = $1, locked_until = $2 WHERE id = $3")
                    .bind(if locked_until.is_some() { 0 } else { failed })
                    .bind(locked_until)
                    .bind(user.view.id)
                    .execute(&mut *conn)
                    .await?;
            });
            let reason = match (password_matches, user.view.status) {
                (_, UserStatus::Disabled) => "user disabled",
                (false, _) => "wrong password",
                (true, _) => "service accounts cannot log in with a password",
            };
            let event = Event::new(
                None,
                "security:login-failed",
                "user",
                user.view.id,
                json!({
                    "reason": reason,
                    "address": address.map(|a| a.to_string()),
                    "locked": locked_until.is_some(),
                }),
            );
            audit::append(&mut tx, origin, &[event]).await?;
            tx.commit().await?;
            return Err(Error::Unauthenticated("wrong username or password".into()));
        }
        on_conn!(&mut tx, conn => {
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
                .bind(user.view.id)
                .execute(&mut *conn)
                .await?;
        });
        let expires_at = crate::ledger::posting::now_micros() + SESSION_DURATION;
        let created = insert_token(
            &mut tx,
            user.view.id,
            TokenKind::Session,
            "login",
            Some(expires_at),
        )
        .await?;
        let origin = Origin {
            actor: audit::Actor {
                user_id: Some(user.view.id),
                plugin: None,
            },
            ..origin.clone()
        };
        audit::append(
            &mut tx,
            &origin,
            &[Event::new(
                None,
                "users:login",
                "user",
                user.view.id,
                json!({ "token": created.info.prefix, "address": address.map(|a| a.to_string()) }),
            )],
        )
        .await?;
        tx.commit().await?;
        Ok(Session {
            token: created.token,
            expires_at,
            user: user.view,
        })
    }

    pub async fn user(&self, id: i64) -> Result<UserView> {
        let mut tx = self.db.begin_read().await?;
        let user = user_by_id(&mut tx, id).await?.view;
        tx.commit().await?;
        Ok(user)
    }

    pub async fn user_by_username(&self, username: &str) -> Result<Option<UserView>> {
        let mut tx = self.db.begin_read().await?;
        let user = find_user(&mut tx, "username = $1", None, Some(username))
            .await?
            .map(|u| u.view);
        tx.commit().await?;
        Ok(user)
    }

    pub async fn users(&self) -> Result<Vec<UserView>> {
        let mut tx = self.db.begin_read().await?;
        let users = on_conn!(&mut tx, conn => {
            sqlx::query(&format!("{SELECT_USER} ORDER BY id"))
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| user_from_row(row).map(|u| u.view))
                .collect::<anyhow::Result<Vec<_>>>()?
        });
        tx.commit().await?;
        Ok(users)
    }

    /// How many users exist; zero on a fresh install.
    pub async fn count_users(&self) -> Result<i64> {
        let mut tx = self.db.begin_read().await?;
        let count = on_conn!(&mut tx, conn => {
            sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(&mut *conn).await?.int("n")?
        });
        tx.commit().await?;
        Ok(count)
    }

    /// Creates a user in `tx` and audits it.
    pub async fn create_user(
        &self,
        tx: &mut Tx,
        new: &NewUser,
        origin: &Origin,
    ) -> Result<UserView> {
        let mut errors = Vec::new();
        if let Err(message) = check_username(&new.username) {
            errors.push(FieldError::new("username", message));
        }
        let display_name = new
            .display_name
            .clone()
            .unwrap_or_else(|| new.username.clone());
        if display_name.trim().is_empty() || display_name.chars().count() > DISPLAY_NAME_CHARS_MAX {
            errors.push(FieldError::new(
                "display_name",
                format!("has 1 to {DISPLAY_NAME_CHARS_MAX} characters"),
            ));
        }
        let kind = new.kind.unwrap_or(UserKind::Person);
        if let Some(password) = &new.password {
            if kind == UserKind::Service {
                errors.push(FieldError::new(
                    "password",
                    "a service account has no password; it uses API tokens",
                ));
            } else if let Err(message) = check_password_rules(password) {
                errors.push(FieldError::new("password", message));
            }
        }
        if let Some(email) = &new.email
            && (!email.contains('@') || email.len() > 320)
        {
            errors.push(FieldError::new(
                "email",
                format!("{email:?} is not an email address"),
            ));
        }
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        if let Some(manager) = new.manager {
            user_by_id(tx, manager)
                .await
                .map_err(|_| Error::invalid("manager", format!("there is no user {manager}")))?;
        }
        let password_hash = match &new.password {
            Some(password) => Some(hash_blocking(password.clone()).await?),
            None => None,
        };
        let now = crate::ledger::posting::now_micros();
        let inserted = on_conn!(tx, conn => {
            sqlx::query(
                "INSERT INTO users (username, display_name, email, kind, password_hash, manager_id, created_at, \
                 password_changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(&new.username)
            .bind(display_name.trim())
            .bind(new.email.as_deref())
            .bind(if kind == UserKind::Service { "service" } else { "person" })
            .bind(password_hash.as_deref())
            .bind(new.manager)
            .bind(now)
            .bind(password_hash.as_ref().map(|_| now))
            .fetch_one(&mut *conn)
            .await
            .map(|row| row.int("id"))
        });
        let id = match inserted.map_err(anyhow::Error::from) {
            Ok(id) => id?,
            Err(error) if USERNAME_UNIQUE.is_violated_by(&error) => {
                return Err(Error::Conflict(format!(
                    "the username {} is taken",
                    new.username
                )));
            }
            Err(error) => return Err(error.into()),
        };
        let user = user_by_id(tx, id).await?.view;
        audit::append(
            tx,
            origin,
            &[Event::new(
                None,
                "users:create",
                "user",
                id,
                json!({ "after": user }),
            )],
        )
        .await?;
        Ok(user)
    }

    pub async fn update_user(
        &self,
        tx: &mut Tx,
        id: i64,
        changes: &UserChanges,
        origin: &Origin,
    ) -> Result<UserView> {
        let before = user_by_id(tx, id).await?.view;
        if let Some(name) = &changes.display_name
            && (name.trim().is_empty() || name.chars().count() > DISPLAY_NAME_CHARS_MAX)
        {
            return Err(Error::invalid(
                "display_name",
                format!("has 1 to {DISPLAY_NAME_CHARS_MAX} characters"),
            ));
        }
        if let Some(manager) = changes.manager {
            if manager == id {
                return Err(Error::invalid(
                    "manager",
                    "a user cannot be their own manager",
                ));
            }
            user_by_id(tx, manager)
                .await
                .map_err(|_| Error::invalid("manager", format!("there is no user {manager}")))?;
        }
        on_conn!(tx, conn => {
            sqlx::query("UPDATE users SET display_name = $1, email = $2, manager_id = $3 WHERE id = $4")
                .bind(changes.display_name.as_deref().map(str::trim).unwrap_or(&before.display_name))
                .bind(changes.email.as_deref().or(before.email.as_deref()))
                .bind(changes.manager.or(before.manager))
                .bind(id)
                .execute(&mut *conn)
                .await?;
        });
        let after = user_by_id(tx, id).await?.view;
        audit::append(
            tx,
            origin,
            &[Event::new(
                None,
                "users:update",
                "user",
                id,
                json!({ "before": before, "after": after }),
            )],
        )
        .await?;
        Ok(after)
    }

    /// Disables or re-enables a user; a disabled user's tokens stop working at once.
    pub async fn set_status(
        &self,
        tx: &mut Tx,
        id: i64,
        status: UserStatus,
        origin: &Origin,
    ) -> Result<UserView> {
        let before = user_by_id(tx, id).await?.view;
        if before.status == status {
            return Err(Error::Conflict(format!(
                "user {} is already {}",
                before.username,
                match status {
                    UserStatus::Active => "active",
                    UserStatus::Disabled => "disabled",
                }
            )));
        }
        on_conn!(tx, conn => {
            sqlx::query("UPDATE users SET status = $1 WHERE id = $2")
                .bind(match status { UserStatus::Active => "active", UserStatus::Disabled => "disabled" })
                .bind(id)
                .execute(&mut *conn)
                .await?;
        });
        self.forget_verified();
        let after = user_by_id(tx, id).await?.view;
        let action = if status == UserStatus::Disabled {
            "users:disable"
        } else {
            "users:enable"
        };
        audit::append(
            tx,
            origin,
            &[Event::new(
                None,
                action,
                "user",
                id,
                json!({ "before": before.status, "after": after.status }),
            )],
        )
        .await?;
        Ok(after)
    }

    /// Sets a new password. A user changing their own needs the current one; an administrator
    /// resetting someone else's does not, and the reset also lifts a lockout.
    pub async fn set_password(
        &self,
        tx: &mut Tx,
        id: i64,
        change: &PasswordChange,
        own: bool,
        origin: &Origin,
    ) -> Result<()> {
        let user = user_by_id(tx, id).await?;
        if user.view.kind == UserKind::Service {
            return Err(Error::invalid(
                "new_password",
                "a service account has no password; it uses API tokens",
            ));
        }
        check_password_rules(&change.new_password)
            .map_err(|message| Error::invalid("new_password", message))?;
        if own {
            let current = change.current_password.clone().unwrap_or_default();
            let matches = match &user.password_hash {
                Some(hash) => verify_blocking(current, hash.clone()).await,
                None => true,
            };
            if !matches {
                return Err(Error::invalid(
                    "current_password",
                    "is not the current password",
                ));
            }
        }
        let hash = hash_blocking(change.new_password.clone()).await?;
        on_conn!(tx, conn => {
            sqlx::query(
                "UPDATE users SET password_hash = $1, password_changed_at = $2, failed_logins = 0, locked_until = NULL \
                 WHERE id = $3",
            )
            .bind(hash)
            .bind(crate::ledger::posting::now_micros())
            .bind(id)
            .execute(&mut *conn)
            .await?;
        });
        let action = if own {
            "users:change-password"
        } else {
            "users:reset-password"
        };
        audit::append(
            tx,
            origin,
            &[Event::new(
                None,
                action,
                "user",
                id,
                json!({ "password": "changed" }),
            )],
        )
        .await?;
        Ok(())
    }

    pub async fn create_api_token(
        &self,
        tx: &mut Tx,
        user_id: i64,
        new: &NewToken,
        origin: &Origin,
    ) -> Result<CreatedToken> {
        if new.name.trim().is_empty() || new.name.chars().count() > TOKEN_NAME_CHARS_MAX {
            return Err(Error::invalid(
                "name",
                format!("has 1 to {TOKEN_NAME_CHARS_MAX} characters"),
            ));
        }
        let user = user_by_id(tx, user_id).await?;
        if user.view.status != UserStatus::Active {
            return Err(Error::Conflict(format!(
                "user {} is disabled",
                user.view.username
            )));
        }
        let expires_at = new
            .expires_in_days
            .map(|days| Utc::now() + chrono::Duration::days(i64::from(days)));
        let created =
            insert_token(tx, user_id, TokenKind::Api, new.name.trim(), expires_at).await?;
        audit::append(
            tx,
            origin,
            &[Event::new(
                None,
                "users:create-token",
                "user",
                user_id,
                json!({ "token": created.info }),
            )],
        )
        .await?;
        Ok(created)
    }

    pub async fn tokens(&self, user_id: i64) -> Result<Vec<TokenView>> {
        let mut tx = self.db.begin_read().await?;
        user_by_id(&mut tx, user_id).await?;
        let tokens = on_conn!(&mut tx, conn => {
            sqlx::query(
                "SELECT id, kind, name, prefix, created_at, expires_at, last_used_at, revoked_at FROM auth_tokens \
                 WHERE user_id = $1 ORDER BY id",
            )
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(token_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?
        });
        tx.commit().await?;
        Ok(tokens)
    }

    pub async fn revoke_token(
        &self,
        tx: &mut Tx,
        user_id: i64,
        token_id: i64,
        origin: &Origin,
    ) -> Result<TokenView> {
        let token = on_conn!(tx, conn => {
            match sqlx::query(
                "SELECT id, kind, name, prefix, created_at, expires_at, last_used_at, revoked_at FROM auth_tokens \
                 WHERE id = $1 AND user_id = $2",
            )
            .bind(token_id)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?
            {
                Some(row) => Some(token_from_row(&row)?),
                None => None,
            }
        })
        .ok_or_else(|| Error::NotFound(format!("user {user_id} has no token {token_id}")))?;
        if token.revoked_at.is_some() {
            return Err(Error::Conflict(format!(
                "token {token_id} is already revoked"
            )));
        }
        let revoked_at = crate::ledger::posting::now_micros();
        on_conn!(tx, conn => {
            sqlx::query("UPDATE auth_tokens SET revoked_at = $1 WHERE id = $2")
                .bind(revoked_at)
                .bind(token_id)
                .execute(&mut *conn)
                .await?;
        });
        self.forget_verified();
        audit::append(
            tx,
            origin,
            &[Event::new(
                None,
                "users:revoke-token",
                "user",
                user_id,
                json!({ "token": token.prefix, "id": token_id }),
            )],
        )
        .await?;
        Ok(TokenView {
            revoked_at: Some(revoked_at),
            ..token
        })
    }

    pub fn db(&self) -> &Database {
        &self.db
    }
}

/// Argon2 takes tens of milliseconds of CPU on purpose: keep it off the async workers.
async fn hash_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(Error::Unexpected)
}

async fn verify_blocking(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_against_their_argon2id_hash_only() {
        let hash = hash_password("correct horse battery").expect("hashing");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_stored_as_hashes() {
        let (a, b) = (new_token().expect("a token"), new_token().expect("a token"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 2 * TOKEN_RANDOM_BYTES);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), a);
    }

    #[test]
    fn usernames_and_passwords_follow_the_rules() {
        assert!(check_username("maria.lopez").is_ok());
        assert!(check_username("Maria").is_err());
        assert!(check_username("").is_err());
        assert!(check_username("with space").is_err());
        assert!(check_password_rules("short").is_err());
        assert!(check_password_rules("long enough pass").is_ok());
    }
}
