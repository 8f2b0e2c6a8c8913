//! A software passkey, the relying party the tests configure, and the registration and
//! step-up calls made with it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use url::Url;
use webauthn_authenticator_rs::{softpasskey::SoftPasskey, WebauthnAuthenticator};
use webauthn_rs_proto::{AllowCredentials, CreationChallengeResponse, RequestChallengeResponse};

use crate::support::*;

pub(crate) const RP_ID: &str = "example.com";
pub(crate) const ORIGIN: &str = "https://app.example.com";

/// A software passkey, and what a resident key would remember: its credential id and the user
/// handle (the account id) it was made for.
pub(crate) struct Passkey {
    pub(crate) soft: SoftPasskey,
    pub(crate) credential_id: Option<Vec<u8>>,
    pub(crate) user_handle: Option<Vec<u8>>,
}

impl Passkey {
    pub(crate) fn new() -> Self {
        Self {
            // `true`: it reports user verification (a PIN or biometrics), as passkeys do.
            soft: SoftPasskey::new(true),
            credential_id: None,
            user_handle: None,
        }
    }

    /// navigator.credentials.create with the options of /mfa/webauthn/register/start, from
    /// `origin`: the credential JSON for /mfa/webauthn/register/finish.
    pub(crate) fn create(&mut self, options: &Value, origin: &str) -> Value {
        let selection = &options["publicKey"]["authenticatorSelection"];
        assert_eq!(selection["residentKey"], "required", "{options}");
        assert_eq!(selection["userVerification"], "required", "{options}");
        let mut ccr: CreationChallengeResponse =
            serde_json::from_value(options.clone()).expect("creation options");
        // The software passkey cannot keep a resident key: this test keeps its id and user
        // handle instead (see `get`), as a discoverable credential would.
        if let Some(s) = ccr.public_key.authenticator_selection.as_mut() {
            s.require_resident_key = false;
        }
        self.user_handle = Some(ccr.public_key.user.id.clone());
        let answer = self
            .soft
            .do_registration(Url::parse(origin).expect("origin"), ccr)
            .expect("the authenticator registers");
        self.credential_id = Some(answer.raw_id.clone());
        serde_json::to_value(&answer).expect("credential JSON")
    }

    /// navigator.credentials.get with request options, from `origin`. With an empty
    /// allowCredentials (a discoverable sign-in) the passkey offers itself and returns its user
    /// handle, as a resident key does.
    pub(crate) fn get(&mut self, options: &Value, origin: &str) -> Value {
        let mut rcr: RequestChallengeResponse =
            serde_json::from_value(options.clone()).expect("request options");
        let discoverable = rcr.public_key.allow_credentials.is_empty();
        if discoverable {
            rcr.public_key.allow_credentials = vec![AllowCredentials {
                type_: "public-key".into(),
                id: self.credential_id.clone().expect("registered"),
                transports: None,
            }];
        }
        let mut assertion = self
            .soft
            .do_authentication(Url::parse(origin).expect("origin"), rcr)
            .expect("the authenticator signs");
        if discoverable {
            assertion.response.user_handle = self.user_handle.clone();
        }
        serde_json::to_value(&assertion).expect("assertion JSON")
    }
}

/// Registers a passkey named `name` for the account of `token`, from ORIGIN: the 201 body.
pub(crate) async fn register(app: &TestApp, token: &str, key: &mut Passkey, name: &str) -> Value {
    let r = app
        .request(
            Method::POST,
            "/mfa/webauthn/register/start",
            token,
            Some(&json!({ "name": name })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body["publicKey"]["rp"]["id"], RP_ID, "{}", r.body);
    assert_eq!(r.body["publicKey"]["rp"]["name"], "sessiond tests");
    let answer = key.create(&r.body, ORIGIN);
    let r = app
        .request(
            Method::POST,
            "/mfa/webauthn/register/finish",
            token,
            Some(&answer),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body
}

/// POST /reauthenticate/passkey/start: the request options over the account's passkeys.
pub(crate) async fn step_up_start(app: &TestApp, token: &str) -> Value {
    let r = app
        .request(Method::POST, "/reauthenticate/passkey/start", token, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body["publicKey"]["userVerification"], "required");
    r.body
}
