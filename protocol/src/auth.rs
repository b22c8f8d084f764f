//! End-to-end authentication of messages (the third layer of "who may say what").
//!
//! Brokers authenticate clients and, where they can, enforce topic ACLs; neither is trusted
//! alone. Each agent therefore signs what it publishes with a key derived from its own
//! secret, and the coordinator verifies that the signer matches the agent in the topic. The
//! coordinator signs commands with the same per-agent key, so an agent can tell its
//! coordinator's commands from anything else on the broker.
//!
//! Wire form: the message JSON with one more field appended, `"sig":"<hex>"`, where the
//! signature is HMAC-SHA256(key, topic ‖ "\n" ‖ json-without-sig). Appending keeps the payload
//! valid JSON (the field is ignored by decoders), readable in `mosquitto_sub`, and needs no
//! canonical JSON: the signed bytes are exactly the bytes before the appended field.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The suffix marker; a signature is always the last field.
const SIG_FIELD: &[u8] = b",\"sig\":\"";
const SIG_HEX_LEN: usize = 64;

/// A per-agent signing key (32 bytes), derived from the agent's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

impl SigningKey {
    /// Derives the signing key from an agent secret (its API token). The derivation is
    /// domain-separated, so the key differs from any stored hash of the token.
    pub fn derive(secret: &str) -> Self {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"munifab/v1/message-signing");
        Self(mac.finalize().into_bytes().into())
    }

    /// The raw key bytes, for storage by the coordinator.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A key from stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, topic: &str, json: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(topic.as_bytes());
        mac.update(b"\n");
        mac.update(json);
        mac
    }

    /// Signs a JSON object payload for `topic`, returning the signed payload.
    pub fn sign(&self, topic: &str, json: &[u8]) -> Vec<u8> {
        let tag = hex::encode(self.mac(topic, json).finalize().into_bytes());
        let body = json.strip_suffix(b"}").unwrap_or(json);
        let mut out = Vec::with_capacity(json.len() + SIG_FIELD.len() + SIG_HEX_LEN + 2);
        out.extend_from_slice(body);
        out.extend_from_slice(SIG_FIELD);
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }

    /// Verifies a signed payload received on `topic`.
    pub fn verify(&self, topic: &str, payload: &[u8]) -> Result<(), AuthError> {
        let (json, tag) = split_signed(payload)?;
        let tag = hex::decode(tag).map_err(|_| AuthError::Malformed)?;
        self.mac(topic, &json)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)
    }
}

/// Why a payload's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The payload carries no `sig` field at its end.
    #[error("message is not signed")]
    Unsigned,
    /// The `sig` field is not 64 hex digits closing the object.
    #[error("message signature is malformed")]
    Malformed,
    /// The signature does not match this topic and key.
    #[error("message signature does not match the sender's key")]
    BadSignature,
}

/// Splits a signed payload into the signed JSON (as it was before signing) and the hex tag.
fn split_signed(payload: &[u8]) -> Result<(Vec<u8>, &[u8]), AuthError> {
    let tail_len = SIG_FIELD.len() + SIG_HEX_LEN + 2;
    if payload.len() < tail_len + 1 {
        return Err(AuthError::Unsigned);
    }
    let (head, tail) = payload.split_at(payload.len() - tail_len);
    if !tail.starts_with(SIG_FIELD) {
        return Err(AuthError::Unsigned);
    }
    if !tail.ends_with(b"\"}") {
        return Err(AuthError::Malformed);
    }
    let tag = &tail[SIG_FIELD.len()..SIG_FIELD.len() + SIG_HEX_LEN];
    let mut json = head.to_vec();
    json.push(b'}');
    Ok((json, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "munifab/v1/agents/lab-a/events";
    const JSON: &[u8] = br#"{"v":1,"type":"accepted"}"#;

    #[test]
    fn a_signed_payload_verifies_and_stays_valid_json() {
        let key = SigningKey::derive("secret-a");
        let signed = key.sign(TOPIC, JSON);
        key.verify(TOPIC, &signed).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&signed).unwrap();
        assert_eq!(value["type"], "accepted");
        assert_eq!(value["sig"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn another_agents_key_or_topic_does_not_verify() {
        let signed = SigningKey::derive("secret-a").sign(TOPIC, JSON);
        assert_eq!(
            SigningKey::derive("secret-b").verify(TOPIC, &signed),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            SigningKey::derive("secret-a").verify("munifab/v1/agents/lab-b/events", &signed),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampering_with_any_byte_breaks_the_signature() {
        let key = SigningKey::derive("secret-a");
        let signed = key.sign(TOPIC, JSON);
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 0x01;
            assert!(key.verify(TOPIC, &bad).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn unsigned_and_truncated_payloads_are_refused() {
        let key = SigningKey::derive("secret-a");
        assert_eq!(key.verify(TOPIC, JSON), Err(AuthError::Unsigned));
        assert_eq!(key.verify(TOPIC, b""), Err(AuthError::Unsigned));
        let signed = key.sign(TOPIC, JSON);
        assert!(key.verify(TOPIC, &signed[..signed.len() - 1]).is_err());
    }
}
