//! Object names. A key here is the name the store gives an object, exactly
//! as a listing returns it; [`object_path`] turns it back into the
//! `object_store` path of that same object. Other tools write into the same
//! lakes, so a store can hold objects that `object_store` cannot name at all
//! (an empty or `.` segment, a control character, a name that is not UTF-8):
//! listings set those aside, by name and with the reason, instead of failing
//! on them ([`SetAside`]).

use compactor_model::SetAside;
use object_store::path::{Error as PathError, Path};

/// The `object_store` path of the object named `key`.
///
/// `Path::from` would percent-encode characters such as `%`, `#`, `"`,
/// `*`, `[` or any non-ASCII letter, and so name *another* object than the
/// one listed (a file `über.parquet` would read back as `%C3%BCber.parquet`,
/// missing). A key the store listed always parses; only a key that no
/// listing can return falls back to the encoded form.
pub fn object_path(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| Path::from(key))
}

/// An object whose key `object_store` refuses to name.
pub(crate) fn unnamable(error: &PathError) -> SetAside {
    let (key, reason) = match error {
        PathError::EmptySegment { path } => (path.clone(), "its key has an empty segment (`//` or a trailing `/`)".to_owned()),
        // (Not the error's own words: they quote the segment verbatim, and
        // a name may hold terminal escapes.)
        PathError::BadSegment { path, .. } => {
            (path.clone(), "its key has a segment object stores cannot name (`.`, `..` or a control character)".to_owned())
        }
        PathError::NonUnicode { path, .. } => (path.clone(), "its name is not UTF-8 (shown percent-encoded)".to_owned()),
        other => (format!("{other:?}"), "its key cannot be named".to_owned()),
    };
    // A local store names a path relative to its root with a leading `/`.
    SetAside { key: key.trim_start_matches('/').to_owned(), reason }
}

/// The reason a key the store spells exactly (`listed`) cannot be read
/// through `object_store`, if any: it normalises a leading or trailing
/// `/` away, so such a key would name another object.
pub(crate) fn raw_key_problem(listed: &str) -> Option<SetAside> {
    match Path::parse(listed) {
        Ok(path) if path.as_ref() == listed => None,
        Ok(_) => Some(SetAside { key: listed.to_owned(), reason: "its key starts or ends with `/`".to_owned() }),
        Err(e) => Some(SetAside { key: listed.to_owned(), ..unnamable(&e) }),
    }
}

/// Whether `key` is hidden (a segment starting with `.`, other than `.`
/// and `..`): hidden objects are neither compacted nor reported.
pub(crate) fn is_hidden(key: &str) -> bool {
    key.split('/').any(|segment| segment.starts_with('.') && segment != "." && segment != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_key_names_the_same_object() {
        for key in ["db/m/über.parquet", "db/m/hash#1.parquet", "db/m/x%20y.parquet", "ca*f[e]/m/a\"b?.parquet", "db/m/a b+c=1.parquet"] {
            assert_eq!(object_path(key).as_ref(), key);
        }
    }

    #[test]
    fn keys_object_store_cannot_name_are_set_aside_with_a_reason() {
        let reason = |key: &str| raw_key_problem(key).map(|s| s.reason);
        assert_eq!(reason("db/m/2026/01/01/00/a.parquet"), None);
        assert!(reason("db/m//a.parquet").unwrap().contains("empty segment"));
        assert!(reason("db/m/./a.parquet").unwrap().contains("cannot name"));
        assert!(reason("db/m/a.parquet/").unwrap().contains("ends with"));
        assert!(reason("db/m/a\u{1}.parquet").unwrap().contains("cannot name"));
    }
}
