//! Property tests of every parser of network input here: repository names, tags and digests,
//! the path split, `Range`, `?ns=` and other query parameters, `Accept` lines and the request
//! preflight. Whatever the bytes, each answers or refuses; none panics, and what is accepted
//! is what the grammar allows.

use crate::body::{parse_range, span, RangeSpec};
use crate::reference::{split_path, validate_name, Digest, Reference};
use crate::request::{joined_accept, preflight, query_param};
use proptest::prelude::*;

proptest! {
    #[test]
    fn names_are_accepted_only_by_the_grammar(name in "\\PC{0,300}") {
        if validate_name(&name).is_ok() {
            prop_assert!(!name.is_empty() && name.len() <= 255);
            prop_assert!(!name.contains("..") && !name.starts_with('/') && !name.ends_with('/'));
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-' | b'/')));
        }
    }

    #[test]
    fn grammatical_names_are_accepted(parts in proptest::collection::vec("[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", 1..5)) {
        let name = parts.join("/");
        prop_assume!(name.len() <= 255);
        prop_assert!(validate_name(&name).is_ok(), "{}", name);
    }

    #[test]
    fn digests_round_trip_and_nothing_else_parses(text in "\\PC{0,100}", hex in "[0-9a-f]{64}") {
        let good = format!("sha256:{hex}");
        let d = Digest::parse(&good).expect("a sha256 digest");
        prop_assert_eq!(d.to_string(), good);
        if let Ok(d) = Digest::parse(&text) {
            prop_assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn references_and_paths_never_panic(text in "\\PC{0,300}") {
        let _ = Reference::parse(&text);
        if let Ok((name, kind, reference)) = split_path(&text) {
            prop_assert!(matches!(kind, "manifests" | "blobs" | "pieces"));
            prop_assert_eq!(format!("{name}/{kind}/{reference}"), text);
        }
    }

    #[test]
    fn ranges_resolve_inside_the_blob(text in "\\PC{0,120}", start in 0u64..1 << 40, len in 0u64..1 << 40, size in 0u64..1 << 40) {
        for header in [text.clone(), format!("bytes={start}-{}", start.saturating_add(len)), format!("bytes=-{len}"), format!("bytes={start}-")] {
            if let Ok(Some(range)) = parse_range(Some(&header)) {
                if let Ok(s) = span(Some(range), size, &header) {
                    prop_assert!(s.start <= s.end && s.end < size, "{header} in {size}: {s:?}");
                }
            }
        }
        prop_assert_eq!(parse_range(None).ok(), Some(None::<RangeSpec>));
    }

    #[test]
    fn queries_and_headers_never_panic(
        query in "\\PC{0,200}",
        method in "[A-Z]{0,8}",
        headers in proptest::collection::vec(("[a-z-]{1,20}", proptest::collection::vec(any::<u8>(), 0..200)), 0..20),
    ) {
        let _ = query_param(&query, "ns");
        let _ = query_param(&query, "pieceSize");
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        let _ = preflight(&method, &query, pairs.iter().copied());
        if let Some(joined) = joined_accept(pairs.iter().map(|(_, v)| *v)) {
            prop_assert!(joined.len() <= 4096);
            prop_assert!(joined.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)));
        }
    }
}
