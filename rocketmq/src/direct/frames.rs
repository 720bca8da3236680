//! The messages of a pull response: RocketMQ's stored-message frames, one
//! after another, decoded with the client's codec (`rocketmq-protocol`).

use bytes::Bytes;
use rocketmq_model::common::sys_flag::message_sys_flag::MessageSysFlag;
use rocketmq_protocol::protocol::body::message_codec::decode_message_frame;

use crate::Delivery;

/// The messages of a pull of `topic` from offset `from`, with their queue
/// offsets, and the offset of the first one that could not be read, if one
/// could not. A frame that does not decode ends the list (the rest of the body
/// cannot be framed); a body that does not decompress is left out and the
/// frames after it are read. Both are logged.
pub(super) fn decode(
    topic: &str,
    mut body: Bytes,
    from: i64,
) -> (Vec<Delivery>, Vec<i64>, Option<i64>) {
    let (mut out, mut offsets) = (Vec::new(), Vec::new());
    let (mut unreadable, mut last_framed) = (None, None);
    while !body.is_empty() {
        let frame = match decode_message_frame(&mut body) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "dropping the rest of an unreadable pull response");
                // The offsets of one queue are consecutive.
                unreadable = unreadable.or(Some(last_framed.map_or(from, |o: i64| o + 1)));
                break;
            }
        };
        last_framed = Some(frame.queue_offset);
        let payload = if frame.sys_flag & MessageSysFlag::COMPRESSED_FLAG != 0 {
            match MessageSysFlag::get_compression_type(frame.sys_flag)
                .and_then(|c| c.decompression(&frame.body))
            {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    tracing::warn!(%topic, offset = frame.queue_offset, error = %e,
                        "dropping a message whose body does not decompress");
                    unreadable = unreadable.or(Some(frame.queue_offset));
                    continue;
                }
            }
        } else {
            frame.body.to_vec()
        };
        let prop = |name: &str| frame.properties.get(name).map(ToString::to_string);
        let msg_id = prop("UNIQ_KEY")
            .unwrap_or_else(|| format!("{}@{}", frame.commit_log_offset, frame.queue_offset));
        offsets.push(frame.queue_offset);
        out.push(Delivery {
            topic: frame.topic.to_string(),
            key: prop("KEYS"),
            tag: prop("TAGS"),
            properties: frame
                .properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: payload,
            msg_id,
            reconsume_times: u32::try_from(frame.reconsume_times).unwrap_or(0),
            born_at_ms: frame.born_timestamp,
        });
    }
    (out, offsets, unreadable)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::decode;

    /// Magic code of the stored-message layout, version 1.
    const MAGIC_V1: i32 = -626_843_481;

    /// One stored message of queue offset `offset` (IPv4 hosts, a one-byte
    /// topic length), as a broker answers a pull.
    fn frame(offset: i64, sys_flag: i32, body: &[u8]) -> Vec<u8> {
        let mut f = BytesMut::new();
        f.put_i32(0); // total size, set below
        f.put_i32(MAGIC_V1);
        f.put_u32(0); // body CRC
        f.put_i32(0); // queue id
        f.put_i32(0); // flag
        f.put_i64(offset);
        f.put_i64(1000 + offset); // commit log offset
        f.put_i32(sys_flag);
        f.put_i64(1); // born at
        f.put_slice(&[127, 0, 0, 1]);
        f.put_i32(1);
        f.put_i64(2); // stored at
        f.put_slice(&[127, 0, 0, 1]);
        f.put_i32(2);
        f.put_i32(0); // reconsume times
        f.put_i64(0); // prepared transaction offset
        f.put_i32(i32::try_from(body.len()).unwrap());
        f.put_slice(body);
        f.put_u8(1);
        f.put_slice(b"t");
        let properties = format!("KEYS\u{1}k{offset}\u{2}");
        f.put_i16(i16::try_from(properties.len()).unwrap());
        f.put_slice(properties.as_bytes());
        let len = i32::try_from(f.len()).unwrap();
        f[..4].copy_from_slice(&len.to_be_bytes());
        f.to_vec()
    }

    /// `MessageSysFlag::COMPRESSED_FLAG`.
    const COMPRESSED: i32 = 0x1;

    #[test]
    fn every_frame_is_read_with_its_offset() {
        let body = [frame(5, 0, b"a"), frame(6, 0, b"b")].concat();
        let (out, offsets, unreadable) = decode("t", body.into(), 5);
        assert_eq!(offsets, [5, 6]);
        assert_eq!(out[1].body, b"b");
        assert_eq!(out[1].key.as_deref(), Some("k6"));
        assert_eq!(unreadable, None);
    }

    #[test]
    fn a_body_that_does_not_decompress_is_left_out_and_named() {
        let body = [
            frame(5, 0, b"a"),
            frame(6, COMPRESSED, b"not zlib"),
            frame(7, 0, b"c"),
        ]
        .concat();
        let (out, offsets, unreadable) = decode("t", body.into(), 5);
        assert_eq!(offsets, [5, 7]);
        assert_eq!(out.len(), 2);
        assert_eq!(unreadable, Some(6));
    }

    #[test]
    fn a_frame_that_does_not_decode_ends_the_list_at_its_offset() {
        let mut cut = frame(6, 0, b"b");
        cut.truncate(cut.len() - 3);
        let body = [frame(5, 0, b"a"), cut].concat();
        let (_, offsets, unreadable) = decode("t", body.into(), 5);
        assert_eq!(offsets, [5]);
        assert_eq!(unreadable, Some(6));
        // Nothing framed: the pull's own offset.
        let (out, _, unreadable) = decode("t", vec![0, 0, 0, 9, 1].into(), 40);
        assert!(out.is_empty());
        assert_eq!(unreadable, Some(40));
    }
}
