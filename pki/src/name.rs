//! Host-name validation: the only names the CA ever puts in a certificate.
//!
//! A name is a lower-case DNS-style name: labels of `[a-z0-9-]` separated by
//! single dots. No upper case (names are compared byte for byte, so `Web1`
//! and `web1` must not both exist), no `*`, no empty labels, no leading or
//! trailing dot or hyphen, at most 253 bytes and 63 bytes per label.

use thiserror::Error;

/// Longest accepted host name, in bytes (DNS limit).
pub const MAX_NAME_LEN: usize = 253;
/// Longest accepted label, in bytes (DNS limit).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a host name was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("host name is empty")]
    Empty,
    #[error("host name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("host name is not valid UTF-8")]
    NotUtf8,
    #[error("host name contains upper-case letter {0:?}; names are lower case")]
    UpperCase(char),
    #[error("host name contains a wildcard '*'; wildcards are never certified")]
    Wildcard,
    #[error("host name contains {0:?}; only a-z, 0-9, '-' and '.' are allowed")]
    InvalidChar(char),
    #[error("host name has an empty label (leading, trailing or doubled '.')")]
    EmptyLabel,
    #[error("host name label {0:?} is longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong(String),
    #[error("host name label {0:?} starts or ends with '-'")]
    LabelHyphen(String),
}

/// Checks that `name` is an acceptable host name (see the module docs).
pub fn validate_host_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' | '.' => {}
            '*' => return Err(NameError::Wildcard),
            c if c.is_uppercase() => return Err(NameError::UpperCase(c)),
            c => return Err(NameError::InvalidChar(c)),
        }
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong(label.to_string()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::LabelHyphen(label.to_string()));
        }
    }
    Ok(())
}

/// Like [`validate_host_name`] for raw bytes (e.g. from the network); returns
/// the name as `&str` when it is valid.
pub fn validate_host_name_bytes(name: &[u8]) -> Result<&str, NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    let s = std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)?;
    validate_host_name(s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "web1",
            "web-01.example.com",
            "a",
            "0.1.2",
            "db.prod.example.org",
        ] {
            assert_eq!(validate_host_name(n), Ok(()), "{n}");
        }
        let longest_label = "a".repeat(63);
        assert_eq!(validate_host_name(&longest_label), Ok(()));
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert_eq!(validate_host_name(&long), Err(NameError::TooLong(255)));
        assert_eq!(validate_host_name(&long[..253]), Ok(()));
    }

    #[test]
    fn refuses_bad_names_with_specific_errors() {
        assert_eq!(validate_host_name(""), Err(NameError::Empty));
        assert_eq!(validate_host_name("Web1"), Err(NameError::UpperCase('W')));
        assert_eq!(
            validate_host_name("*.example.com"),
            Err(NameError::Wildcard)
        );
        assert_eq!(
            validate_host_name("web_1"),
            Err(NameError::InvalidChar('_'))
        );
        assert_eq!(
            validate_host_name("web 1"),
            Err(NameError::InvalidChar(' '))
        );
        assert_eq!(validate_host_name("wéb"), Err(NameError::InvalidChar('é')));
        assert_eq!(validate_host_name("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(validate_host_name(".a"), Err(NameError::EmptyLabel));
        assert_eq!(validate_host_name("a."), Err(NameError::EmptyLabel));
        assert_eq!(
            validate_host_name("-a"),
            Err(NameError::LabelHyphen("-a".into()))
        );
        assert_eq!(
            validate_host_name("a-.b"),
            Err(NameError::LabelHyphen("a-".into()))
        );
        assert!(matches!(
            validate_host_name(&"a".repeat(64)),
            Err(NameError::LabelTooLong(_))
        ));
        assert_eq!(validate_host_name("a/b"), Err(NameError::InvalidChar('/')));
        assert_eq!(
            validate_host_name("a\0b"),
            Err(NameError::InvalidChar('\0'))
        );
        assert_eq!(
            validate_host_name_bytes(&[0xff, 0x61]),
            Err(NameError::NotUtf8)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_host_name_bytes(&bytes);
        }

        #[test]
        fn accepted_names_only_use_the_allowed_alphabet(s in "\\PC{0,80}") {
            if validate_host_name(&s).is_ok() {
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
                prop_assert!(!s.split('.').any(str::is_empty));
            }
        }

        #[test]
        fn generated_valid_names_are_accepted(labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..5)) {
            let name = labels.join(".");
            prop_assert_eq!(validate_host_name(&name), Ok(()));
        }
    }
}
