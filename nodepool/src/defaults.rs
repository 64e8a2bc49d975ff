//! The one set of defaults. Each config's `Default` is the truth; what more than one component
//! shares is a constant here, and help text and docs read defaults back with [`default_text`]
//! instead of writing them again.

use serde::Serialize;
use std::time::Duration;

/// Entries (mirror) and blobs (agent) unused this long are removed (`cacheTTL`).
pub const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long upstream's (or the mirror's) "this requester may read this" is trusted
/// (`authCacheTTL`).
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(60);
/// Time allowed to connect to an upstream, the mirror, the scheduler or a peer
/// (`connectTimeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that takes no data for this long is cut (`sendTimeout`, mirror and agent).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// The least `sendBuffers` (mirror and agent): one blob body's share.
pub const MIN_SEND_BUFFERS: u64 = 3 << 20;
/// How long a verified cache file is trusted before it is hashed again (`verifyInterval`).
pub const VERIFY_INTERVAL: Duration = Duration::from_secs(3600);

/// The default of `key` (dotted for nested keys: `cache.capacity`) in config `T`, written as
/// in a config file (`24h`, `4GiB`, `512M`); `None` for a key `T` does not have or one without
/// a single value (a list). An empty string is returned as it is.
pub fn default_text<T: Default + Serialize>(key: &str) -> Option<String> {
    let mut value = serde_yaml::to_value(T::default()).ok()?;
    for part in key.split('.') {
        value = value.get(part)?.clone();
    }
    match value {
        serde_yaml::Value::String(s) => Some(s),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A command-line flag's help: what it does, its config key, and the key's default in config
/// `T` (left out when empty), so help cannot disagree with the defaults.
pub fn flag_help<T: Default + Serialize>(what: &str, key: &str) -> String {
    match default_text::<T>(key).filter(|d| !d.is_empty()) {
        Some(default) => format!("{what} [config: {key}; default {default}]"),
        None => format!("{what} [config: {key}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentConfig, MirrorConfig, SchedulerConfig, WebhookConfig};

    #[test]
    fn defaults_read_back_as_a_config_file_writes_them() {
        assert_eq!(
            default_text::<MirrorConfig>("cacheTTL").as_deref(),
            Some("24h")
        );
        assert_eq!(
            default_text::<AgentConfig>("cache.capacity").as_deref(),
            Some("4GiB")
        );
        assert_eq!(
            default_text::<AgentConfig>("ratelimit").as_deref(),
            Some("512M")
        );
        assert_eq!(
            default_text::<AgentConfig>("downloadPattern").as_deref(),
            Some("p2p")
        );
        assert_eq!(
            default_text::<WebhookConfig>("port").as_deref(),
            Some("65001")
        );
        assert_eq!(
            default_text::<MirrorConfig>("allowAnyRegistry").as_deref(),
            Some("false")
        );
        assert_eq!(default_text::<AgentConfig>("secret").as_deref(), Some(""));
        assert_eq!(default_text::<MirrorConfig>("upstreams"), None);
        assert_eq!(default_text::<MirrorConfig>("noSuchKey"), None);
    }

    #[test]
    fn flag_help_names_the_key_and_its_default() {
        assert_eq!(
            flag_help::<AgentConfig>("Piece size", "blocksize"),
            "Piece size [config: blocksize; default auto]"
        );
        assert_eq!(
            flag_help::<AgentConfig>("The pool mirror's URL", "mirror"),
            "The pool mirror's URL [config: mirror]"
        );
    }

    /// Rows `| `key` | ... | `default` | ... |` of a Markdown table after `heading`.
    fn documented_defaults(doc: &str, heading: &str) -> Vec<(String, String)> {
        let Some(start) = doc.find(heading) else {
            return Vec::new();
        };
        doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let default = cells.get(cells.len().checked_sub(3)?)?;
                let default = default.strip_prefix('`')?.strip_suffix('`')?;
                Some((key.to_string(), default.to_string()))
            })
            .collect()
    }

    fn check<T: Default + Serialize>(doc: &str, heading: &str) -> usize {
        let rows = documented_defaults(doc, heading);
        for (key, documented) in &rows {
            assert_eq!(
                default_text::<T>(key).as_deref(),
                Some(documented.as_str()),
                "{heading}: the documented default of `{key}` is not the config's"
            );
        }
        rows.len()
    }

    #[test]
    fn the_documented_defaults_are_the_configs() {
        let doc = include_str!("../../docs/configuration.md");
        assert!(check::<MirrorConfig>(doc, "## Mirror") >= 8);
        assert!(check::<MirrorConfig>(doc, "### ACR EE instances by id") >= 2);
        assert!(check::<AgentConfig>(doc, "## Agent") >= 15);
        assert!(check::<WebhookConfig>(doc, "## Admission webhook") >= 3);
        let doc = include_str!("../../docs/scheduler.md");
        assert!(check::<SchedulerConfig>(doc, "## Configuration") >= 4);
    }
}
