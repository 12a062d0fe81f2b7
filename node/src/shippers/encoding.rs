//! Request bodies as shippers send them: `Content-Encoding: gzip` (Filebeat, Logstash, Vector,
//! the OpenTelemetry exporters with compression on) or `deflate`, read under the same byte bound
//! as an uncompressed body, so a small compressed body cannot expand past it (a "zip bomb").

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};

use crate::error::ApiError;

/// The encodings a body may arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let text = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "content encoding {:?} is not accepted; send gzip, deflate or none",
                value.to_str().unwrap_or("(not text)")
            ),
        )),
    }
}

/// The request's `Content-Type` as sent (empty when missing or not text) and its media type,
/// lowercase, without parameters (`application/vnd.elasticsearch+x-ndjson; compatible-with=9`
/// gives `application/vnd.elasticsearch+x-ndjson`).
pub fn content_type(headers: &HeaderMap) -> (&str, String) {
    let text = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (text, mime)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

/// Reads a request body of at most `limit` bytes, both as sent and once decoded.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let encoding = encoding(headers)?;
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))?;
    match encoding {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip => decode(flate2::read::MultiGzDecoder::new(&raw[..]), limit, "gzip"),
        // HTTP's "deflate" is zlib-wrapped (RFC 9110 §8.4.1.2).
        Encoding::Deflate => decode(flate2::read::ZlibDecoder::new(&raw[..]), limit, "deflate"),
    }
}

fn decode(reader: impl Read, limit: usize, name: &str) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    // One byte past the bound tells "exactly at the bound" from "over it".
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_encoding",
                format!("the body is not valid {name}: {e}"),
            )
        })?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("writing to a Vec");
        e.finish().expect("finishing a Vec")
    }

    fn headers(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            encoding.parse().expect("a header value"),
        );
        h
    }

    async fn read(encoding: &str, body: Vec<u8>, limit: usize) -> Result<Bytes, ApiError> {
        read_body(&headers(encoding), Body::from(body), limit).await
    }

    #[tokio::test]
    async fn gzip_bodies_are_decoded_and_bounded_after_decoding() {
        let text = b"{\"message\":\"hello\"}\n".repeat(100);
        let body = gzip(&text);
        assert!(body.len() < text.len() / 4);
        let decoded = read("gzip", body.clone(), text.len())
            .await
            .expect("decoded");
        assert_eq!(&decoded[..], &text[..]);
        // Small on the wire, too large once decoded: refused, not expanded.
        let e = read("gzip", body, text.len() - 1)
            .await
            .expect_err("over the bound");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn deflate_identity_and_unknown_encodings() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(b"abc").expect("writing to a Vec");
        let body = z.finish().expect("finishing a Vec");
        assert_eq!(
            &read("deflate", body, 100).await.expect("decoded")[..],
            b"abc"
        );
        assert_eq!(
            &read("identity", b"abc".to_vec(), 10).await.expect("as is")[..],
            b"abc"
        );
        let e = read("br", b"abc".to_vec(), 10)
            .await
            .expect_err("brotli is not read");
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = read("gzip", b"not gzip".to_vec(), 100)
            .await
            .expect_err("not gzip");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_encoding")
        );
    }
}
