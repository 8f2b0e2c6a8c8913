//! The WebAuthn JSON shapes of the OpenAPI document (the browser's credentials and the options
//! handed to it), shared by the passkey, second-factor and step-up routes.
use serde::Serialize;

/// A `PublicKeyCredential` that `navigator.credentials.get` returned, as JSON (its
/// `toJSON()`), binary values base64url without padding.
// For the OpenAPI document only: webauthn-rs reads the real thing (`PublicKeyCredential`).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PasskeyAssertion {
    /// The credential id, as `rawId`.
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    id: String,
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    raw_id: String,
    #[serde(rename = "type")]
    kind: CredentialType,
    response: AssertionResponse,
    /// The client's extension outputs; `{}` when none.
    #[schema(value_type = Object, required = false)]
    client_extension_results: Option<serde_json::Value>,
}

/// `AuthenticatorAssertionResponse`, binary values base64url.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AssertionResponse {
    #[serde(rename = "authenticatorData")]
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    authenticator_data: String,
    #[serde(rename = "clientDataJSON")]
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    client_data_json: String,
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    signature: String,
    /// The account's user handle; a discoverable credential (passwordless sign-in) gives it.
    #[serde(rename = "userHandle")]
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    user_handle: Option<String>,
}

/// A `PublicKeyCredential` that `navigator.credentials.create` returned, as JSON (its
/// `toJSON()`), binary values base64url without padding.
// For the OpenAPI document only: webauthn-rs reads the real thing (`RegisterPublicKeyCredential`).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PasskeyAttestation {
    /// The new credential's id, as `rawId`.
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    id: String,
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    raw_id: String,
    #[serde(rename = "type")]
    kind: CredentialType,
    response: AttestationResponse,
    /// The client's extension outputs; `{}` when none.
    #[schema(value_type = Object, required = false)]
    client_extension_results: Option<serde_json::Value>,
}

/// `AuthenticatorAttestationResponse`, binary values base64url.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AttestationResponse {
    #[serde(rename = "attestationObject")]
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    attestation_object: String,
    #[serde(rename = "clientDataJSON")]
    #[schema(pattern = "^[A-Za-z0-9_-]+$")]
    client_data_json: String,
    /// `getTransports()`: how the client reaches the authenticator (`internal`, `hybrid`,
    /// `usb`, `nfc`, `ble`).
    transports: Option<Vec<String>>,
}

/// Always `public-key`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub enum CredentialType {
    #[serde(rename = "public-key")]
    PublicKey,
}

/// The options for `navigator.credentials.create`, as webauthn-rs writes them:
/// `{"publicKey": {"rp", "user", "challenge", "pubKeyCredParams", "timeout",
/// "excludeCredentials", "authenticatorSelection", "attestation", "extensions"}}`, binary
/// values base64url. A browser client decodes `challenge`, `user.id` and each
/// `excludeCredentials[].id` to ArrayBuffers.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct CreationOptions(pub(crate) serde_json::Value);

/// The options for `navigator.credentials.get`: `{"publicKey": {"challenge", "timeout", "rpId",
/// "allowCredentials", "userVerification"}, "mediation"?}`, binary values base64url.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct RequestOptions(pub(crate) serde_json::Value);
