//! A tonic codec for messages known only by their descriptors, so one client
//! can call any RPC the descriptor set describes.
//!
//! ```
//! use gateway::codec::DynamicCodec;
//!
//! let pool = proto::descriptor_pool().unwrap();
//! let method = pool
//!     .get_service_by_name("commerce.identity.v1.CustomerIdentityService")
//!     .and_then(|s| s.methods().find(|m| m.name() == "GetCustomer"))
//!     .unwrap();
//! // Encodes any DynamicMessage; decodes the method's output type.
//! let codec = DynamicCodec::new(method.output());
//! # let _ = codec;
//! ```

use bytes::Buf;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes [`DynamicMessage`]s and decodes messages of one type.
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    decodes: MessageDescriptor,
}

impl DynamicCodec {
    /// A codec that decodes messages described by `decodes`.
    pub fn new(decodes: MessageDescriptor) -> Self {
        Self { decodes }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder { decodes: self.decodes.clone() }
    }
}

/// Writes a [`DynamicMessage`] in the protobuf wire format.
#[derive(Clone, Copy, Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst).map_err(|e| Status::internal(format!("cannot encode {}: {e}", item.descriptor().full_name())))
    }
}

/// Reads a message of one type from the protobuf wire format.
#[derive(Clone, Debug)]
pub struct DynamicDecoder {
    decodes: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.decodes.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode {}: {e}", self.decodes.full_name())))
    }
}
