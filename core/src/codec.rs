//! The value codec: postcard (serde), chosen because it is compact (varints, no field
//! names), has a documented, stable wire format, is maintained, and costs nothing for the
//! empty values that dominate scheduler benchmarks (a `()` encodes to zero bytes, no
//! allocation). Arguments and results are bytes in this format, so a task spec is the same
//! whether it runs here or on another node.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Encodes a value.
///
/// # Errors
/// A value serde cannot encode (for example a map with non-string keys is fine, but a
/// `Serialize` impl that itself fails).
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| Error::Codec(format!("encode {}: {e}", std::any::type_name::<T>())))
}

/// Decodes a value, requiring every byte to be used.
///
/// # Errors
/// Bytes that are not a `T` in this format.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    match postcard::take_from_bytes::<T>(b) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(Error::Codec(format!("decode {}: {} trailing bytes", std::any::type_name::<T>(), rest.len()))),
        Err(e) => Err(Error::Codec(format!("decode {}: {e}", std::any::type_name::<T>()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_wrong_types() {
        assert!(encode(&()).unwrap().is_empty());
        let b = encode(&(1u64, "x".to_string(), vec![1.5f64])).unwrap();
        assert_eq!(decode::<(u64, String, Vec<f64>)>(&b).unwrap(), (1, "x".into(), vec![1.5]));
        assert!(decode::<u64>(&[]).is_err());
        assert!(matches!(decode::<u8>(&[1, 2]), Err(Error::Codec(m)) if m.contains("trailing")));
    }
}
