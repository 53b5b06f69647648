//! The fields a decoder reads from a record's JSON value, found either by
//! parsing the whole value ([`Fields::Tree`], any JSON pointer) or by one
//! pass over a top-level object that materialises only the wanted fields
//! and skips the rest ([`Fields::TopLevel`], single-segment pointers, the
//! common case: no `Value` tree, strings borrowed from the payload).

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;

/// A field's value; JSON `null` counts as missing, as does a missing field.
#[derive(Debug, Clone, Copy)]
pub(super) enum FieldValue<'a> {
    Str(&'a str),
    /// Any other JSON value (never a string or null).
    Other(&'a Json),
}

/// The top-level field names a set of JSON pointers read, when each of them
/// is a single segment (`/user`, not `/user/id` nor ``); in pointer order,
/// without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TopLevelNames {
    pointers: Vec<String>,
    pub(super) names: Vec<String>,
}

impl TopLevelNames {
    pub(super) fn of<'p>(pointers: impl IntoIterator<Item = &'p str>) -> Option<TopLevelNames> {
        let mut wanted = TopLevelNames { pointers: Vec::new(), names: Vec::new() };
        for pointer in pointers {
            let segment = pointer.strip_prefix('/')?;
            if segment.contains('/') {
                return None;
            }
            if !wanted.pointers.iter().any(|p| p == pointer) {
                wanted.pointers.push(pointer.to_string());
                // RFC 6901 unescaping, as `serde_json::Value::pointer` does it.
                wanted.names.push(segment.replace("~1", "/").replace("~0", "~"));
            }
        }
        Some(wanted)
    }

    /// The wanted fields of `payload`; `Ok(None)` when it is valid JSON but
    /// not an object (the caller then reads it as a tree, where a pointer
    /// may index an array). A flat object with plain values takes the
    /// hand-written pass of `scan`; anything else `serde_json`'s.
    pub(super) fn read<'a>(&self, payload: &'a str) -> Result<Option<Values<'a>>, serde_json::Error> {
        match super::scan::read(&self.names, payload) {
            Some(values) => Ok(Some(values)),
            None => self.read_with_serde(payload),
        }
    }

    /// [`Self::read`] by `serde_json` alone.
    pub(super) fn read_with_serde<'a>(&self, payload: &'a str) -> Result<Option<Values<'a>>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(payload);
        let fields = de.deserialize_any(ObjectVisitor { names: &self.names })?;
        de.end()?;
        Ok(fields)
    }
}

/// The wanted fields of a record, by slot: a handful, inline.
pub(super) type Values<'a> = smallvec::SmallVec<[Option<Field<'a>>; 4]>;

/// A wanted field as read from the payload.
#[derive(Debug, PartialEq)]
pub(super) enum Field<'a> {
    Str(Cow<'a, str>),
    Other(Json),
}

pub(super) enum Fields<'a> {
    Tree(Json),
    TopLevel(Values<'a>),
}

impl TopLevelNames {
    /// Where [`Self::read`] puts the field of `pointer` (one of those it
    /// was made of).
    pub(super) fn slot(&self, pointer: &str) -> Option<usize> {
        self.pointers.iter().position(|p| p == pointer)
    }
}

impl<'a> Fields<'a> {
    /// The string at a top-level `slot` when the payload holds it as is
    /// (no escapes): borrowed from the payload, not from the fields.
    pub(super) fn payload_str(&self, slot: Option<usize>) -> Option<&'a str> {
        match self {
            Fields::TopLevel(values) => match values[slot?].as_ref()? {
                Field::Str(Cow::Borrowed(text)) => Some(text),
                _ => None,
            },
            Fields::Tree(_) => None,
        }
    }

    /// The field of `pointer`, whose slot (from [`TopLevelNames::slot`],
    /// resolved once per decoder) a top-level read finds it at.
    pub(super) fn get(&self, pointer: &str, slot: Option<usize>) -> Option<FieldValue<'_>> {
        match self {
            Fields::Tree(value) => match value.pointer(pointer)? {
                Json::Null => None,
                Json::String(s) => Some(FieldValue::Str(s)),
                other => Some(FieldValue::Other(other)),
            },
            Fields::TopLevel(values) => match values[slot?].as_ref()? {
                Field::Str(s) => Some(FieldValue::Str(s)),
                Field::Other(v) => Some(FieldValue::Other(v)),
            },
        }
    }
}

/// The top-level value: an object yields its wanted fields, anything else `None`.
struct ObjectVisitor<'n> {
    names: &'n [String],
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Option<Values<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: Values<'de> = Values::new();
        values.resize_with(self.names.len(), || None);
        while let Some(slot) = map.next_key_seed(NameSeed { names: self.names })? {
            match slot {
                // A later duplicate wins, as in `serde_json::Value`.
                Some(slot) => values[slot] = map.next_value_seed(FieldSeed)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(values))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A key of the top-level object: its slot among the wanted names, if wanted.
struct NameSeed<'n> {
    names: &'n [String],
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<usize>, E> {
        Ok(self.names.iter().position(|n| n == name))
    }
}

/// A wanted field's value: strings borrowed where the payload allows,
/// `null` as missing, anything else as a `serde_json::Value`.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Option<Field<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Option<Field<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Field::Str(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Field::Str(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Field::Str(Cow::Owned(v))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Field::Other(Json::Bool(v))))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Field::Other(Json::from(v))))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Field::Other(Json::from(v))))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Field::Other(Json::from(v))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(Some(Field::Other(Json::deserialize(MapAccessDeserializer::new(map))?)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Ok(Some(Field::Other(Json::deserialize(SeqAccessDeserializer::new(seq))?)))
    }
}
