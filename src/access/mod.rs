//! Who may do what: users (salted SHA-256 password hashes and tags, as
//! RabbitMQ keeps them) and their permissions per virtual host (configure,
//! write and read regular expressions, and topic permissions), kept durable
//! in the log as parameter records and checked by the server layer where
//! RabbitMQ checks them.
//!
//! Everything sits behind one read-write lock of its own, apart from the
//! broker's: checks take the read side, and a generation counter lets
//! connections cache their answers until something changes.

mod limits;
pub mod password;

pub use limits::UserLimits;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::store::format::{ParameterKind, Record};
use crate::store::{LogStore, StoreError};

/// The tags RabbitMQ knows (others are kept and shown, but grant nothing).
pub const KNOWN_TAGS: [&str; 5] = ["administrator", "monitoring", "management", "policymaker", "impersonator"];

/// A user as stored (the shape of a user in RabbitMQ's definitions file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    #[serde(default = "default_algorithm")]
    pub hashing_algorithm: String,
    /// Comma-separated in RabbitMQ's files, a list here.
    #[serde(default, deserialize_with = "tags_from_either")]
    pub tags: Vec<String>,
    /// `max-connections` and `max-channels` (RabbitMQ's user limits).
    #[serde(default)]
    pub limits: UserLimits,
}

impl User {
    /// A new user with no limits, its password hashed (salted) here.
    pub fn new(name: &str, pass: &str, tags: Vec<String>) -> User {
        User {
            name: name.to_string(),
            password_hash: password::hash(pass),
            hashing_algorithm: password::SHA256.to_string(),
            tags,
            limits: UserLimits::default(),
        }
    }
}

fn default_algorithm() -> String {
    password::SHA256.to_string()
}

/// RabbitMQ 3.10 writes tags as "a,b"; newer versions as ["a", "b"].
fn tags_from_either<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Tags::deserialize(d)? {
        Tags::Text(s) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect(),
        Tags::List(l) => l,
    })
}

/// A user's permissions in one vhost (regular expressions on resource names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's topic permissions on one exchange of a vhost (regular
/// expressions on routing keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermission {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// What an operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Configure = 0,
    Write = 1,
    Read = 2,
}

/// The kind of resource, as RabbitMQ names it in refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Queue = 0,
    Exchange = 1,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Exchange => "exchange",
        }
    }
}

/// A topic permission with its write and read patterns compiled.
type CompiledTopic = (TopicPermission, Option<Regex>, Option<Regex>);

/// Compiled permission patterns.
#[derive(Debug, Clone)]
struct Compiled {
    stored: Permission,
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
}

/// An empty pattern grants nothing, as in RabbitMQ (`^$` would match the
/// default exchange's empty name).
fn compile(pattern: &str) -> Result<Option<Regex>, String> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Regex::new(pattern).map(Some).map_err(|e| format!("invalid regular expression '{pattern}': {e}"))
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) users: BTreeMap<String, User>,
    /// (user, vhost) -> permissions.
    permissions: BTreeMap<(String, String), Compiled>,
    /// (user, vhost, exchange) -> topic permissions.
    topic: BTreeMap<(String, String, String), CompiledTopic>,
    /// Users that may only log in from loopback (RabbitMQ's `loopback_users`).
    loopback_users: Vec<String>,
}

/// Users and permissions.
pub struct AccessControl {
    pub(super) state: RwLock<State>,
    store: Arc<LogStore>,
    /// Bumped on every change, so cached answers can tell they are stale.
    generation: AtomicU64,
}

/// Why an administrative change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("user '{0}' does not exist")]
    NoUser(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the log refused the change: {0}")]
    Store(#[from] StoreError),
}

fn permission_key(user: &str, vhost: &str) -> String {
    format!("{user}\0{vhost}")
}

impl AccessControl {
    /// No users yet: see [`AccessControl::load`].
    pub fn new(store: Arc<LogStore>) -> AccessControl {
        AccessControl { state: RwLock::new(State::default()), store, generation: AtomicU64::new(0) }
    }

    /// Restores users and permissions from the log's parameters; on a log
    /// that has no user at all (a first start, or a log from before users
    /// were stored), seeds `seed` users (name, password) with full
    /// permissions on "/", as every user had until then.
    pub fn load(
        &self,
        parameters: &BTreeMap<(ParameterKind, String), bytes::Bytes>,
        seed: &[(String, String)],
        loopback_users: Vec<String>,
    ) -> Result<(), AccessError> {
        let access = self;
        {
            let mut st = access.state.write();
            st.loopback_users = loopback_users;
            for ((kind, _), value) in parameters {
                match kind {
                    ParameterKind::User => match serde_json::from_slice::<User>(value) {
                        Ok(u) => {
                            st.users.insert(u.name.clone(), u);
                        }
                        Err(e) => tracing::error!("a stored user cannot be read, skipped: {e}"),
                    },
                    ParameterKind::Permission => match serde_json::from_slice::<Permission>(value) {
                        Ok(p) => match compiled(p) {
                            Ok(c) => {
                                st.permissions.insert((c.stored.user.clone(), c.stored.vhost.clone()), c);
                            }
                            Err(e) => tracing::error!("a stored permission cannot be used, skipped: {e}"),
                        },
                        Err(e) => tracing::error!("a stored permission cannot be read, skipped: {e}"),
                    },
                    ParameterKind::TopicPermission => {
                        if let Ok(t) = serde_json::from_slice::<TopicPermission>(value)
                            && let (Ok(w), Ok(r)) = (compile(&t.write), compile(&t.read))
                        {
                            st.topic.insert((t.user.clone(), t.vhost.clone(), t.exchange.clone()), (t, w, r));
                        }
                    }
                    _ => {}
                }
            }
        }
        if access.state.read().users.is_empty() {
            for (name, pass) in seed {
                let tags = if name == "guest" { vec!["administrator".to_string()] } else { Vec::new() };
                access.add_user(name, pass, tags)?;
                access.set_permissions(name, "/", ".*", ".*", ".*")?;
            }
        }
        access.changed();
        Ok(())
    }

    /// The change counter cached answers are tagged with.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn log(&self, kind: ParameterKind, key: String, value: Option<Vec<u8>>) -> Result<(), AccessError> {
        let record = match value {
            Some(v) => Record::Parameter { kind, key, value: v.into() },
            None => Record::ParameterDelete { kind, key },
        };
        self.store.define(record)?;
        Ok(())
    }

    pub(super) fn put_user(&self, st: &mut State, user: User) -> Result<(), AccessError> {
        let json = serde_json::to_vec(&user).map_err(|e| AccessError::Invalid(e.to_string()))?;
        self.log(ParameterKind::User, user.name.clone(), Some(json))?;
        st.users.insert(user.name.clone(), user);
        self.changed();
        Ok(())
    }

    /// Checks a login; returns the user's name on success.
    pub fn authenticate(&self, name: &str, pass: &str) -> bool {
        let st = self.state.read();
        st.users.get(name).is_some_and(|u| password::verify(&u.password_hash, pass))
    }

    /// Whether the user may only connect from loopback.
    pub fn loopback_only(&self, name: &str) -> bool {
        self.state.read().loopback_users.iter().any(|u| u == name)
    }

    pub fn add_user(&self, name: &str, pass: &str, tags: Vec<String>) -> Result<(), AccessError> {
        self.add_user_record(User::new(name, pass, tags))
    }

    /// Adds a user whose password is already hashed (where the change was
    /// made, so every node of a cluster stores the same hash); refuses one
    /// that exists.
    pub fn add_user_record(&self, user: User) -> Result<(), AccessError> {
        let mut st = self.state.write();
        if st.users.contains_key(&user.name) {
            return Err(AccessError::UserExists(user.name));
        }
        if user.name.is_empty() {
            return Err(AccessError::Invalid("a user name cannot be empty".into()));
        }
        self.put_user(&mut st, user)
    }

    /// Adds or replaces a user as given (a definitions import).
    pub fn import_user(&self, user: User) -> Result<(), AccessError> {
        if user.hashing_algorithm != password::SHA256 {
            return Err(AccessError::Invalid(format!(
                "user '{}': password hashing algorithm '{}' is not supported (only {})",
                user.name,
                user.hashing_algorithm,
                password::SHA256
            )));
        }
        let mut st = self.state.write();
        self.put_user(&mut st, user)
    }

    pub fn delete_user(&self, name: &str) -> Result<(), AccessError> {
        let mut st = self.state.write();
        if st.users.remove(name).is_none() {
            return Err(AccessError::NoUser(name.to_string()));
        }
        self.log(ParameterKind::User, name.to_string(), None)?;
        let gone: Vec<(String, String)> = st.permissions.keys().filter(|(u, _)| u == name).cloned().collect();
        for (user, vhost) in gone {
            st.permissions.remove(&(user.clone(), vhost.clone()));
            self.log(ParameterKind::Permission, permission_key(&user, &vhost), None)?;
        }
        let gone: Vec<(String, String, String)> = st.topic.keys().filter(|(u, _, _)| u == name).cloned().collect();
        for key in gone {
            st.topic.remove(&key);
            self.log(ParameterKind::TopicPermission, format!("{}\0{}\0{}", key.0, key.1, key.2), None)?;
        }
        self.changed();
        Ok(())
    }

    /// Removes every user's permissions and topic permissions in a vhost
    /// (it was deleted).
    pub fn forget_vhost(&self, vhost: &str) -> Result<(), AccessError> {
        let mut st = self.state.write();
        let gone: Vec<(String, String)> = st.permissions.keys().filter(|(_, v)| v == vhost).cloned().collect();
        for (user, vhost) in gone {
            st.permissions.remove(&(user.clone(), vhost.clone()));
            self.log(ParameterKind::Permission, permission_key(&user, &vhost), None)?;
        }
        let gone: Vec<(String, String, String)> = st.topic.keys().filter(|(_, v, _)| v == vhost).cloned().collect();
        for key in gone {
            st.topic.remove(&key);
            self.log(ParameterKind::TopicPermission, format!("{}\0{}\0{}", key.0, key.1, key.2), None)?;
        }
        self.changed();
        Ok(())
    }

    pub fn change_password(&self, name: &str, pass: &str) -> Result<(), AccessError> {
        self.set_password_hash(name, password::hash(pass))
    }

    /// Replaces a user's password hash (made where the change was made).
    pub fn set_password_hash(&self, name: &str, password_hash: String) -> Result<(), AccessError> {
        let mut st = self.state.write();
        let mut user = st.users.get(name).cloned().ok_or_else(|| AccessError::NoUser(name.to_string()))?;
        user.password_hash = password_hash;
        self.put_user(&mut st, user)
    }

    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AccessError> {
        let mut st = self.state.write();
        let mut user = st.users.get(name).cloned().ok_or_else(|| AccessError::NoUser(name.to_string()))?;
        user.tags = tags;
        self.put_user(&mut st, user)
    }

    pub fn users(&self) -> Vec<User> {
        self.state.read().users.values().cloned().collect()
    }

    pub fn user(&self, name: &str) -> Option<User> {
        self.state.read().users.get(name).cloned()
    }

    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AccessError> {
        let mut st = self.state.write();
        if !st.users.contains_key(user) {
            return Err(AccessError::NoUser(user.to_string()));
        }
        let p = Permission {
            user: user.to_string(),
            vhost: vhost.to_string(),
            configure: configure.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        };
        let c = compiled(p).map_err(AccessError::Invalid)?;
        let json = serde_json::to_vec(&c.stored).map_err(|e| AccessError::Invalid(e.to_string()))?;
        self.log(ParameterKind::Permission, permission_key(user, vhost), Some(json))?;
        st.permissions.insert((user.to_string(), vhost.to_string()), c);
        self.changed();
        Ok(())
    }

    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), AccessError> {
        let mut st = self.state.write();
        if !st.users.contains_key(user) {
            return Err(AccessError::NoUser(user.to_string()));
        }
        if st.permissions.remove(&(user.to_string(), vhost.to_string())).is_some() {
            self.log(ParameterKind::Permission, permission_key(user, vhost), None)?;
            self.changed();
        }
        Ok(())
    }

    pub fn permissions(&self) -> Vec<Permission> {
        self.state.read().permissions.values().map(|c| c.stored.clone()).collect()
    }

    pub fn set_topic_permissions(&self, t: TopicPermission) -> Result<(), AccessError> {
        let mut st = self.state.write();
        if !st.users.contains_key(&t.user) {
            return Err(AccessError::NoUser(t.user.clone()));
        }
        let w = compile(&t.write).map_err(AccessError::Invalid)?;
        let r = compile(&t.read).map_err(AccessError::Invalid)?;
        let json = serde_json::to_vec(&t).map_err(|e| AccessError::Invalid(e.to_string()))?;
        self.log(ParameterKind::TopicPermission, format!("{}\0{}\0{}", t.user, t.vhost, t.exchange), Some(json))?;
        st.topic.insert((t.user.clone(), t.vhost.clone(), t.exchange.clone()), (t, w, r));
        self.changed();
        Ok(())
    }

    /// Removes a user's topic permissions on one exchange of a vhost.
    pub fn clear_topic_permissions(&self, user: &str, vhost: &str, exchange: &str) -> Result<(), AccessError> {
        let mut st = self.state.write();
        let key = (user.to_string(), vhost.to_string(), exchange.to_string());
        if st.topic.remove(&key).is_some() {
            self.log(ParameterKind::TopicPermission, format!("{user}\0{vhost}\0{exchange}"), None)?;
            self.changed();
        }
        Ok(())
    }

    /// Whether any topic permission exists (most brokers have none, and
    /// then a publish needs no look at its exchange's type).
    pub fn any_topic_permissions(&self) -> bool {
        !self.state.read().topic.is_empty()
    }

    pub fn topic_permissions(&self) -> Vec<TopicPermission> {
        self.state.read().topic.values().map(|(t, _, _)| t.clone()).collect()
    }

    /// Whether the user may open a connection to the vhost: it has some
    /// permissions there.
    pub fn may_enter(&self, user: &str, vhost: &str) -> bool {
        self.state.read().permissions.contains_key(&(user.to_string(), vhost.to_string()))
    }

    /// Whether `user` may do `access` on the named resource of `vhost`.
    pub fn permitted(&self, user: &str, vhost: &str, access: Access, name: &str) -> bool {
        let st = self.state.read();
        let Some(c) = st.permissions.get(&(user.to_string(), vhost.to_string())) else { return false };
        let pattern = match access {
            Access::Configure => &c.configure,
            Access::Write => &c.write,
            Access::Read => &c.read,
        };
        pattern.as_ref().is_some_and(|re| re.is_match(name))
    }

    /// Topic permission on a routing key: with no topic permission for the
    /// exchange, everything is allowed (as in RabbitMQ). `{username}` and
    /// `{vhost}` in a pattern stand for the user's name and the vhost.
    pub fn topic_permitted(&self, user: &str, vhost: &str, exchange: &str, write: bool, key: &str) -> bool {
        let st = self.state.read();
        let Some((t, w, r)) = st.topic.get(&(user.to_string(), vhost.to_string(), exchange.to_string())) else {
            return true;
        };
        let (pattern, compiled) = if write { (&t.write, w) } else { (&t.read, r) };
        if pattern.contains("{username}") || pattern.contains("{vhost}") {
            let expanded =
                pattern.replace("{username}", &regex::escape(user)).replace("{vhost}", &regex::escape(vhost));
            return Regex::new(&expanded).is_ok_and(|re| re.is_match(key));
        }
        compiled.as_ref().is_some_and(|re| re.is_match(key))
    }
}

fn compiled(p: Permission) -> Result<Compiled, String> {
    Ok(Compiled { configure: compile(&p.configure)?, write: compile(&p.write)?, read: compile(&p.read)?, stored: p })
}

/// RabbitMQ's refusal text for a routing key refused by topic permissions.
pub fn topic_refusal(key: &str, exchange: &str, vhost: &str, user: &str, write: bool) -> String {
    let what = if write { "write" } else { "read" };
    format!("{what} access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'")
}

/// RabbitMQ's refusal text for an operation on a resource.
pub fn refusal(kind: ResourceKind, name: &str, vhost: &str, user: &str, access: Access) -> String {
    let what = match access {
        Access::Configure => "configure",
        Access::Write => "write",
        Access::Read => "read",
    };
    format!("{what} access to {} '{name}' in vhost '{vhost}' refused for user '{user}'", kind.as_str())
}
