//! Arbor's gRPC protocol: the `Kv`, `Cluster` and internal `RaftTransport`
//! services, generated from `proto/arbor.proto` by tonic/prost.
//!
//! This crate has no dependency on the server (no RocksDB, no Raft), so
//! external clients can depend on it alone.

#![allow(clippy::all, missing_docs)]

/// Generated types and services of package `arbor.v1`.
pub mod v1 {
    tonic::include_proto!("arbor.v1");
}

pub use v1::*;

pub mod codec {
    //! tonic's prost codec, except that a message that does not decode is
    //! `INVALID_ARGUMENT` ("malformed protobuf message: ...", the sender's
    //! fault) instead of tonic's `INTERNAL`.

    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
    use tonic::{Code, Status};
    use tonic_prost::ProstCodec;

    pub struct ArborCodec<T, U>(ProstCodec<T, U>);

    impl<T, U> Default for ArborCodec<T, U> {
        fn default() -> Self {
            Self(ProstCodec::default())
        }
    }

    impl<T, U> Codec for ArborCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
        type Decoder = CheckedDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

        fn encoder(&mut self) -> Self::Encoder {
            self.0.encoder()
        }

        fn decoder(&mut self) -> Self::Decoder {
            CheckedDecoder(self.0.decoder())
        }
    }

    /// Maps decode failures to `INVALID_ARGUMENT`.
    pub struct CheckedDecoder<D>(D);

    impl<D: Decoder<Error = Status>> Decoder for CheckedDecoder<D> {
        type Item = D::Item;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
            self.0.decode(src).map_err(|s| match s.code() {
                Code::Internal => Status::invalid_argument(format!("malformed protobuf message: {}", s.message())),
                _ => s,
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
