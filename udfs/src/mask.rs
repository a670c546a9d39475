//! Column masks the governance layer puts where a masked column is scanned.
//! They are not registered by name: a client cannot call them with values
//! of its own (a keyed hash it could call would let it guess hashed values).

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::map_text;

/// `mask: hash`: HMAC-SHA256 of the text value under the server's masking
/// key, as 32 hex characters. The same value gives the same hash in every
/// table and session, so masked columns still join and group.
#[derive(PartialEq, Eq, Hash)]
pub struct KeyedHash {
    key: Vec<u8>,
    signature: Signature,
}

impl std::fmt::Debug for KeyedHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHash(<key>)")
    }
}

impl KeyedHash {
    pub fn new(key: Vec<u8>) -> Self {
        KeyedHash {
            key,
            signature: Signature::string(1, Volatility::Immutable),
        }
    }

    /// The key it hashes with (what the function carries to a cluster).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn hash(&self, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl ScalarUDFImpl for KeyedHash {
    fn name(&self) -> &str {
        "wb_mask_hash"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return exec_err!("wb_mask_hash takes one argument");
        };
        let array = value.to_array(args.number_rows)?;
        let out: StringArray = map_text(self.name(), array.as_ref(), |v| v.map(|v| self.hash(v)))?;
        Ok(ColumnarValue::Array(std::sync::Arc::new(out)))
    }
}

/// `mask: partial(n)`: the last `n` characters, every other one as `*`
/// (all of them when the value has `n` characters or fewer).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Partial {
    shown: usize,
    signature: Signature,
}

impl Partial {
    pub fn new(shown: usize) -> Self {
        Partial {
            shown,
            signature: Signature::string(1, Volatility::Immutable),
        }
    }

    /// How many trailing characters it shows.
    pub fn shown(&self) -> usize {
        self.shown
    }

    pub fn mask(&self, value: &str) -> String {
        let count = value.chars().count();
        if count <= self.shown {
            return "*".repeat(count);
        }
        let hidden = count - self.shown;
        "*".repeat(hidden) + &value.chars().skip(hidden).collect::<String>()
    }
}

impl ScalarUDFImpl for Partial {
    fn name(&self) -> &str {
        "wb_mask_partial"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return exec_err!("wb_mask_partial takes one argument");
        };
        let array = value.to_array(args.number_rows)?;
        let out: StringArray = map_text(self.name(), array.as_ref(), |v| v.map(|v| self.mask(v)))?;
        debug_assert_eq!(out.len(), array.len());
        Ok(ColumnarValue::Array(std::sync::Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_shows_only_the_tail() {
        let p = Partial::new(4);
        assert_eq!(p.mask("12.345.678-9"), "********78-9");
        assert_eq!(p.mask("abc"), "***");
        assert_eq!(p.mask("ñandú-1234"), "******1234");
    }

    #[test]
    fn keyed_hash_is_stable_and_keyed() {
        let a = KeyedHash::new(b"0123456789abcdef".to_vec());
        let b = KeyedHash::new(b"fedcba9876543210".to_vec());
        assert_eq!(a.hash("76.123.456-7"), a.hash("76.123.456-7"));
        assert_ne!(a.hash("76.123.456-7"), b.hash("76.123.456-7"));
        assert_eq!(a.hash("x").len(), 32);
    }
}
