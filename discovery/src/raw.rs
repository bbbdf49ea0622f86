//! The raw JSON results of discovery requests, captured on the wire.
//!
//! rmcp parses every response into its typed model, which drops fields it does not know. The
//! transports in this crate record the untouched `result` object of the requests discovery
//! cares about, keyed by method and cursor (one discovery session asks for each page once),
//! so [`crate::discover`] can return exactly what the server sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

/// Requests whose results are captured.
const CAPTURED: &[&str] = &[
    "initialize",
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
];

/// Identifies one captured request: its method and pagination cursor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RawKey {
    method: String,
    cursor: Option<String>,
}

impl RawKey {
    /// The key for an outgoing JSON-RPC message, if it is a request whose result we keep.
    pub(crate) fn for_request(message: &Value) -> Option<Self> {
        message.get("id")?;
        let method = message.get("method")?.as_str()?;
        if !CAPTURED.contains(&method) {
            return None;
        }
        let cursor = message
            .get("params")
            .and_then(|p| p.get("cursor"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(Self {
            method: method.to_owned(),
            cursor,
        })
    }
}

/// Shared store of captured results (cheap to clone). A disabled store records nothing (the
/// watcher's long-lived sessions have no use for it).
#[derive(Debug, Clone, Default)]
pub(crate) struct RawStore {
    inner: Option<Arc<Mutex<HashMap<RawKey, Value>>>>,
}

impl RawStore {
    /// An enabled, empty store.
    pub(crate) fn new() -> Self {
        Self {
            inner: Some(Arc::default()),
        }
    }

    /// A store that records nothing.
    pub(crate) fn disabled() -> Self {
        Self { inner: None }
    }

    /// Whether anything is recorded at all.
    pub(crate) fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn lock(map: &Mutex<HashMap<RawKey, Value>>) -> MutexGuard<'_, HashMap<RawKey, Value>> {
        map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a JSON-RPC message received in answer to the request identified by `key`:
    /// keeps its `result` if it is a successful response.
    pub(crate) fn record_response(&self, key: &RawKey, message: &Value) {
        let Some(map) = &self.inner else { return };
        if message.get("id").is_none() {
            return; // a notification or server request sharing the stream
        }
        if let Some(result) = message.get("result") {
            Self::lock(map).insert(key.clone(), result.clone());
        }
    }

    /// Records a result directly (unit tests).
    #[cfg(test)]
    pub(crate) fn record(&self, method: &str, cursor: Option<&str>, result: Value) {
        let Some(map) = &self.inner else { return };
        let key = RawKey {
            method: method.to_owned(),
            cursor: cursor.map(str::to_owned),
        };
        Self::lock(map).insert(key, result);
    }

    /// Removes and returns the captured result for `method` at `cursor`.
    pub(crate) fn take(&self, method: &str, cursor: Option<&str>) -> Option<Value> {
        let map = self.inner.as_ref()?;
        let key = RawKey {
            method: method.to_owned(),
            cursor: cursor.map(str::to_owned),
        };
        Self::lock(map).remove(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_only_captured_requests() {
        let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list",
                          "params": {"cursor": "abc"}});
        let key = RawKey::for_request(&list).unwrap();
        assert_eq!(key.method, "tools/list");
        assert_eq!(key.cursor.as_deref(), Some("abc"));
        let call = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {}});
        assert!(RawKey::for_request(&call).is_none());
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert!(RawKey::for_request(&note).is_none());
    }

    #[test]
    fn records_results_not_errors_or_notifications() {
        let store = RawStore::new();
        let key = RawKey::for_request(&json!({"id": 1, "method": "prompts/list"})).unwrap();
        store.record_response(&key, &json!({"method": "notifications/progress"}));
        store.record_response(&key, &json!({"id": 1, "error": {"code": -1}}));
        assert!(store.take("prompts/list", None).is_none());
        store.record_response(&key, &json!({"id": 1, "result": {"prompts": []}}));
        assert_eq!(
            store.take("prompts/list", None),
            Some(json!({"prompts": []}))
        );
        assert!(store.take("prompts/list", None).is_none(), "take removes");
    }

    #[test]
    fn disabled_store_records_nothing() {
        let store = RawStore::disabled();
        store.record("tools/list", None, json!({}));
        assert!(store.take("tools/list", None).is_none());
        assert!(!store.is_enabled());
    }
}
