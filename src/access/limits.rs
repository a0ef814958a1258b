//! User limits, as RabbitMQ's: `max-connections` and `max-channels` per
//! user (across all of the user's connections), kept in the user's record.
//! A negative value (or none) means no limit; 0 allows none. Setting
//! limits merges into the user's, clearing removes one or all, as
//! `rabbitmqctl set_user_limits` / `clear_user_limits` do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AccessControl, AccessError};

const KNOWN: [&str; 2] = ["max-connections", "max-channels"];

/// A user's limits by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserLimits(pub BTreeMap<String, i64>);

impl UserLimits {
    /// Parses a `set_user_limits` definition: a JSON object of these
    /// integer keys (RabbitMQ's validation texts).
    pub fn parse(definition: &Map<String, Value>) -> Result<UserLimits, String> {
        let mut limits = BTreeMap::new();
        for (key, value) in definition {
            let n = value.as_i64().ok_or_else(|| format!("Validation failed\n\n{key} should be a number"))?;
            if !KNOWN.contains(&key.as_str()) {
                return Err(format!("Validation failed\n\nUnrecognised terms [{{<<\"{key}\">>,{n}}}]"));
            }
            limits.insert(key.clone(), n);
        }
        Ok(UserLimits(limits))
    }

    fn limit(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied().filter(|l| *l >= 0)
    }

    /// The connection limit, if any (a negative one is none).
    pub fn max_connections(&self) -> Option<i64> {
        self.limit("max-connections")
    }

    /// The channel limit, if any (a negative one is none).
    pub fn max_channels(&self) -> Option<i64> {
        self.limit("max-channels")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl AccessControl {
    /// A user's limits (none for an unknown user).
    pub fn user_limits(&self, user: &str) -> UserLimits {
        self.state.read().users.get(user).map(|u| u.limits.clone()).unwrap_or_default()
    }

    /// Merges `limits` into the user's.
    pub fn set_user_limits(&self, user: &str, limits: UserLimits) -> Result<(), AccessError> {
        let mut st = self.state.write();
        let mut record = st.users.get(user).cloned().ok_or_else(|| AccessError::NoUser(user.to_string()))?;
        record.limits.0.extend(limits.0);
        self.put_user(&mut st, record)
    }

    /// Removes one limit of a user, or all with "all".
    pub fn clear_user_limits(&self, user: &str, name: &str) -> Result<(), AccessError> {
        let mut st = self.state.write();
        let mut record = st.users.get(user).cloned().ok_or_else(|| AccessError::NoUser(user.to_string()))?;
        if name == "all" {
            record.limits.0.clear();
        } else if KNOWN.contains(&name) {
            record.limits.0.remove(name);
        } else {
            return Err(AccessError::Invalid(format!(
                "unknown user limit '{name}' (max-connections, max-channels or all)"
            )));
        }
        self.put_user(&mut st, record)
    }
}
