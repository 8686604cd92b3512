//! Cancel keys: the client sees pgveil's own key, mapped here to the
//! server's. A CancelRequest arrives on a new connection carrying the key the
//! client was shown; only a matching key reaches the server, so a client can
//! cancel its own query and nobody else's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A key pair as carried in BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Process id field.
    pub process_id: i32,
    /// Secret key field.
    pub secret_key: i32,
}

/// Live sessions' keys: pgveil's key to the server's key.
#[derive(Default, Clone)]
pub struct CancelRegistry {
    inner: Arc<Mutex<HashMap<Key, Key>>>,
}

impl CancelRegistry {
    /// Issues a fresh random key for a session whose server key is `server`.
    /// The key is removed when the returned guard drops.
    pub fn register(&self, server: Key) -> CancelGuard {
        let mut map = self.lock();
        let key = loop {
            let candidate = Key {
                process_id: rand::random::<i32>() & i32::MAX,
                secret_key: rand::random(),
            };
            if candidate.process_id != 0 && !map.contains_key(&candidate) {
                break candidate;
            }
        };
        map.insert(key, server);
        CancelGuard {
            registry: self.clone(),
            key,
        }
    }

    /// The server key for a key a client presents, if it is live.
    pub fn lookup(&self, key: Key) -> Option<Key> {
        self.lock().get(&key).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Key>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes its key from the registry when dropped.
pub struct CancelGuard {
    registry: CancelRegistry,
    key: Key,
}

impl CancelGuard {
    /// The key to show the client.
    pub fn key(&self) -> Key {
        self.key
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_until_dropped() {
        let registry = CancelRegistry::default();
        let server = Key {
            process_id: 42,
            secret_key: 7,
        };
        let guard = registry.register(server);
        assert_eq!(registry.lookup(guard.key()), Some(server));
        assert_eq!(registry.lookup(server), None);
        let key = guard.key();
        drop(guard);
        assert_eq!(registry.lookup(key), None);
    }
}
