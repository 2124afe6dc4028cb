//! Code generated from `proto/hookrelay/v1`, and the encoded descriptor set for gRPC server reflection.

#[allow(clippy::all, missing_docs)]
/// Messages and services of the `hookrelay.v1` package.
pub mod v1 {
    tonic::include_proto!("hookrelay.v1");
}

/// The encoded `FileDescriptorSet` of every hookrelay proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hookrelay_descriptor.bin"));

/// Secret-bearing messages print `[redacted]` where the secrets are, so logging one never leaks a key.
mod redacted_debug {
    use std::fmt;

    use super::v1::{AgentEndpoint, CreateEndpointResponse, RotateEndpointSecretResponse};

    const REDACTED: &str = "[redacted]";

    impl fmt::Debug for AgentEndpoint {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AgentEndpoint")
                .field("endpoint", &self.endpoint)
                .field("secrets", &format_args!("{} × {REDACTED}", self.secrets.len()))
                .finish()
        }
    }

    impl fmt::Debug for CreateEndpointResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreateEndpointResponse")
                .field("endpoint", &self.endpoint)
                .field("secret", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for RotateEndpointSecretResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RotateEndpointSecretResponse")
                .field("endpoint", &self.endpoint)
                .field("secret", &REDACTED)
                .field("previous_secret_expires_at", &self.previous_secret_expires_at)
                .finish()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn secrets_never_show_in_debug_output() {
            let secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==".to_owned();
            let agent = AgentEndpoint { endpoint: None, secrets: vec![secret.clone()] };
            let created = CreateEndpointResponse { endpoint: None, secret: secret.clone() };
            let rotated = RotateEndpointSecretResponse { secret: secret.clone(), ..Default::default() };
            for text in [format!("{agent:?}"), format!("{created:?}"), format!("{rotated:?}")] {
                assert!(!text.contains(&secret[6..]), "{text}");
                assert!(text.contains(REDACTED), "{text}");
            }
        }
    }
}
