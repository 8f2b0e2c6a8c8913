//! Standard Webhooks signatures: `v1,<base64 of HMAC-SHA256(key, "id.timestamp.body")>`, keyed
//! with the bytes of the `whsec_<base64>` secret.
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// Signs webhooks with WEBHOOK_SECRET; `Debug` never shows the key.
#[derive(Clone, Debug)]
pub struct Signer(Secret);

impl Signer {
    /// `key`: the decoded bytes of `whsec_<base64>`.
    pub fn new(key: Secret) -> Self {
        Self(key)
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check_webhook_secret;

    /// The vector the Standard Webhooks reference libraries test their `sign` with: a receiver
    /// using any of them accepts what sessiond sends.
    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let key = check_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signer = Signer::new(key);
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(!format!("{signer:?}").contains("MfKQ"));
    }
}
