//! Code generated from `proto/hookrelay/v1`, the codec its services and clients use, and the encoded descriptor set
//! for gRPC server reflection.

#[allow(clippy::all, missing_docs)]
/// Messages and services of the `hookrelay.v1` package.
pub mod v1 {
    tonic::include_proto!("hookrelay.v1");
}

/// The encoded `FileDescriptorSet` of every hookrelay proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hookrelay_descriptor.bin"));

/// hookrelay's descriptors with only the services named in `served` (full names, `hookrelay.v1.EmitService`), so a
/// process's reflection lists what answers on its port. Messages all stay, since served files may use them.
pub fn descriptors_serving(served: &[&str]) -> Result<prost_types::FileDescriptorSet, prost::DecodeError> {
    use prost::Message as _;
    let mut set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)?;
    for file in &mut set.file {
        let package = file.package().to_owned();
        file.service.retain(|service| served.contains(&format!("{package}.{}", service.name()).as_str()));
    }
    Ok(set)
}

/// The protobuf codec of every hookrelay service: tonic_prost's, except that a message that does not decode (a string
/// field that is not UTF-8, a truncated field) answers INVALID_ARGUMENT naming what is wrong. tonic_prost answers
/// INTERNAL, which tells the caller the server failed when it was the request.
pub mod codec {
    use std::marker::PhantomData;

    use prost::Message;
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder};
    use tonic_prost::ProstEncoder;

    /// [`tonic_prost::ProstCodec`] with [`ProstDecoder`] as its decoder.
    #[derive(Debug, Clone)]
    pub struct ProstCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for ProstCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for ProstCodec<T, U>
    where
        T: Message + Send + 'static,
        U: Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::default()
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder(PhantomData)
        }
    }

    /// Decodes `U`; a decode error is INVALID_ARGUMENT.
    #[derive(Debug, Clone)]
    pub struct ProstDecoder<U>(PhantomData<U>);

    impl<U: Message + Default> Decoder for ProstDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            // prost names the message and field, e.g. "failed to decode Protobuf message: EmitRequest.owner: invalid
            // string value: data is not UTF-8 encoded".
            U::decode(buf).map(Some).map_err(|error| Status::invalid_argument(error.to_string()))
        }
    }
}

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
