//! Raw gRPC calls: request bytes sent as they are, so tests can send what no generated
//! client would (garbage, mutated or fuzzed messages).

use std::str::FromStr;

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Passes encoded bytes through unchanged, both ways.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut bytes = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// Calls `/service/method` with `bytes` as the request and a bearer `token`.
pub async fn unary(
    channel: &Channel,
    path: &str,
    token: &str,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut request = tonic::Request::new(bytes);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("bad token metadata"))?,
    );
    let path = http::uri::PathAndQuery::from_str(path)
        .map_err(|error| tonic::Status::internal(error.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    grpc.unary(request, path, Raw)
        .await
        .map(tonic::Response::into_inner)
}
