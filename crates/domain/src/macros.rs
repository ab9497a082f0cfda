//! A macro for the small closed vocabularies (reasons, kinds, roles, carriers) of the domain.
//!
//! Each vocabulary needs the same things: a stable text code for storage and messages, a
//! forgiving `parse` for input, serde as that code, and a list of all values for error
//! messages. Writing them by hand ten times invites one of them to drift.

/// True when `input` names `code`, ignoring ASCII case and treating `-` and space as `_`,
/// so "sf-express", "SF_EXPRESS" and "Sf Express" all name the same carrier.
pub(crate) fn code_matches(input: &str, code: &str) -> bool {
    fn normalise(b: u8) -> u8 {
        match b {
            b'-' | b' ' => b'_',
            other => other.to_ascii_uppercase(),
        }
    }
    input.len() == code.len()
        && input
            .bytes()
            .zip(code.bytes())
            .all(|(a, b)| normalise(a) == normalise(b))
}

/// A closed vocabulary: a fieldless enum with a stable text code per value. The wire layer
/// (`returns_proto::convert`) maps every vocabulary to its protobuf enum through this trait,
/// so there is one mapping rule (the protobuf value name is the enum's prefix plus the code).
pub trait Vocabulary: Sized + Copy + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];

    /// The stable text code, used in storage, messages and on the wire.
    fn code(&self) -> &'static str;

    /// Parses a code, ignoring case and accepting `-` or space for `_`.
    fn parse(text: &str) -> Result<Self, crate::error::DomainError>;
}

/// Defines a fieldless enum with `ALL`, `code()`, `as_str()`, `parse()`, `Display`, `FromStr`
/// and serde as the code. `field` names the request field in validation errors; aliases are
/// extra spellings `parse` accepts.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $field:literal {
            $(
                $(#[$vmeta:meta])*
                $variant:ident => $code:literal $(| $alias:literal)*
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable text code, used in storage, messages and serde.
            pub fn code(&self) -> &'static str {
                match self {
                    $( $name::$variant => $code ),+
                }
            }

            /// Same as [`Self::code`].
            pub fn as_str(&self) -> &'static str {
                self.code()
            }

            /// Parses a code, ignoring case and accepting `-` or space for `_`.
            pub fn parse(text: &str) -> Result<Self, $crate::error::DomainError> {
                $(
                    if $crate::macros::code_matches(text, $code)
                        $( || $crate::macros::code_matches(text, $alias) )*
                    {
                        return Ok($name::$variant);
                    }
                )+
                let expected: Vec<&str> = Self::ALL.iter().map(|v| v.code()).collect();
                Err($crate::error::DomainError::validation(
                    $field,
                    format!(
                        "unknown value {:?}; expected one of {}",
                        text.chars().take(64).collect::<String>(),
                        expected.join(", ")
                    ),
                ))
            }
        }

        impl $crate::Vocabulary for $name {
            const ALL: &'static [$name] = $name::ALL;

            fn code(&self) -> &'static str {
                $name::code(self)
            }

            fn parse(text: &str) -> Result<Self, $crate::error::DomainError> {
                $name::parse(text)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.code())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::error::DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        // Lets a stored code be read straight into the vocabulary, e.g. a typed database
        // row's `#[sqlx(try_from = "String")]` column.
        impl ::std::convert::TryFrom<String> for $name {
            type Error = $crate::error::DomainError;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                Self::parse(&text)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.code())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as ::serde::Deserialize>::deserialize(deserializer)?;
                Self::parse(&text).map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

pub(crate) use code_enum;

#[cfg(test)]
mod tests {
    use super::code_matches;

    #[test]
    fn codes_match_across_case_hyphens_and_spaces_but_not_other_text() {
        assert!(code_matches("sf-express", "SF_EXPRESS"));
        assert!(code_matches("Sf Express", "SF_EXPRESS"));
        assert!(!code_matches("SFEXPRESS", "SF_EXPRESS"));
        assert!(!code_matches("SF_EXPRESS ", "SF_EXPRESS"));
    }
}
