//! Parsing tests: every frame, every refusal code.

use super::*;

const LIMITS: ParseLimits = ParseLimits {
    max_content_bytes: 16,
};

fn me() -> UserId {
    UserId::parse("alice").unwrap()
}

fn p(text: &str) -> Result<ClientFrame, FrameError> {
    parse(text, &me(), LIMITS)
}

fn code(text: &str) -> ErrorCode {
    p(text).unwrap_err().code
}

#[test]
fn parses_v1_send() {
    let f = p(r#"{"type":"send","client_msg_id":"c1","to":"bob","content":"hi"}"#).unwrap();
    assert_eq!(
        f,
        ClientFrame::Send(Send {
            target: Target::User(UserId::parse("bob").unwrap()),
            client_msg_id: Some("c1".into()),
            content: "hi".into(),
            format: MsgFormat::Text,
            chat_id: None,
        })
    );
    let g = p(r#"{"type":"send","group":"g1","content":"hi","format":"image"}"#).unwrap();
    assert!(matches!(
        g,
        ClientFrame::Send(Send {
            target: Target::Group(_),
            format: MsgFormat::Image,
            ..
        })
    ));
}

#[test]
fn a_client_cannot_send_a_system_notice() {
    assert_eq!(
        code(r#"{"type":"send","to":"bob","content":"hi","format":"system"}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"send","to":"system","content":"hi"}"#),
        ErrorCode::InvalidField
    );
}

#[test]
fn parses_recall() {
    assert_eq!(
        p(r#"{"type":"recall","conversation":"dm:alice:bob","msg_id":"42"}"#).unwrap(),
        ClientFrame::Recall {
            conversation: ConversationId::parse("dm:alice:bob").unwrap(),
            msg_id: MsgId(42),
        }
    );
    assert_eq!(
        code(r#"{"type":"recall","msg_id":"42"}"#),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(r#"{"type":"recall","conversation":"dm:alice:bob","msg_id":"x"}"#),
        ErrorCode::InvalidField
    );
}

#[test]
fn seed_frames_map_to_v1_and_ignore_sender_id() {
    let f = p(r#"{"type":"CHAT_MESSAGE","senderId":"mallory","receiverId":"bob","chatId":"chat123","content":"Hello","timestamp":1640995200000}"#).unwrap();
    let ClientFrame::Send(s) = f else {
        panic!("not a send")
    };
    assert_eq!(s.target, Target::User(UserId::parse("bob").unwrap()));
    assert_eq!(s.chat_id.as_deref(), Some("chat123"));
    assert_eq!(
        p(r#"{"type":"HEARTBEAT","content":"ping"}"#).unwrap(),
        ClientFrame::Ping
    );
    let r =
        p(r#"{"type":"READ_RECEIPT","chatId":"c","messageId":"42","receiverId":"bob"}"#).unwrap();
    assert_eq!(
        r,
        ClientFrame::Read {
            conversation: ConversationId::parse("dm:alice:bob").unwrap(),
            seq: None,
            msg_id: Some(MsgId(42)),
        }
    );
    let t =
        p(r#"{"type":"TYPING","receiverId":"bob","chatId":"c","content":"stop_typing"}"#).unwrap();
    assert!(matches!(
        t,
        ClientFrame::Typing {
            state: TypingState::Stop,
            ..
        }
    ));
    assert_eq!(
        code(r#"{"type":"TYPING","receiverId":"bob","content":"dancing"}"#),
        ErrorCode::InvalidField
    );
}

#[test]
fn bad_input_gets_stable_codes() {
    assert_eq!(code("not json"), ErrorCode::BadJson);
    assert_eq!(code("[1,2]"), ErrorCode::BadJson);
    assert_eq!(code("{}"), ErrorCode::MissingField);
    assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    assert_eq!(code(r#"{"type":7}"#), ErrorCode::BadJson);
    assert_eq!(
        code(r#"{"type":"send","to":"bob"}"#),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(r#"{"type":"send","content":"x"}"#),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(r#"{"type":"send","to":"bob","group":"g","content":"x"}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"send","to":"b b","content":"x"}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"send","to":"bob","content":""}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"send","to":"alice","content":"x"}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"send","to":"bob","content":"this is longer than sixteen"}"#),
        ErrorCode::ContentTooLarge
    );
    assert_eq!(
        code(r#"{"type":"send","to":"bob","content":"x","extra":1}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"send","to":"bob","content":"x","format":"video"}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(code(r#"{"type":"ack"}"#), ErrorCode::MissingField);
    assert_eq!(
        code(r#"{"type":"ack","msg_ids":["x"]}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"read","conversation":"dm:alice:bob"}"#),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(r#"{"type":"history","conversation":"nope"}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"history","conversation":"dm:alice:bob","limit":0}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"type":"resume","conversations":{"x":1}}"#),
        ErrorCode::InvalidField
    );
}

#[test]
fn errors_carry_the_client_msg_id() {
    let e = p(r#"{"type":"send","client_msg_id":"c9","to":"bob","content":""}"#).unwrap_err();
    assert_eq!(e.client_msg_id.as_deref(), Some("c9"));
    let e = p(r#"{"type":"send","client_msg_id":"c8"}"#).unwrap_err();
    assert_eq!(e.client_msg_id.as_deref(), Some("c8"));
}

/// Mutated frames (random bytes flipped, cut, duplicated) never panic the
/// parser: they parse or get an error code.
#[test]
fn mutated_frames_never_panic() {
    use rand::{Rng, SeedableRng};
    let seeds = [
        r#"{"type":"send","client_msg_id":"c1","to":"bob","content":"hi"}"#,
        r#"{"type":"CHAT_MESSAGE","receiverId":"bob","chatId":"c","content":"x","timestamp":1}"#,
        r#"{"type":"READ_RECEIPT","chatId":"c","messageId":"42","receiverId":"bob"}"#,
        r#"{"type":"history","conversation":"dm:alice:bob","before":5,"limit":10}"#,
        r#"{"type":"resume","conversations":{"dm:alice:bob":3,"group:g":1}}"#,
        r#"{"type":"ack","msg_ids":["1","2",3]}"#,
        r#"{"type":"presence_subscribe","users":["a","b"]}"#,
        r#"{"type":"typing","conversation":"group:g","state":"start"}"#,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut errors = 0;
    for i in 0..50_000 {
        let mut b = seeds[i % seeds.len()].as_bytes().to_vec();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[at] = rng.random(),
                1 => b.truncate(at.max(1)),
                _ => {
                    let byte = b[at];
                    b.insert(at, byte);
                }
            }
        }
        let text = String::from_utf8_lossy(&b);
        if parse(&text, &me(), LIMITS).is_err() {
            errors += 1;
        }
    }
    // Most mutations break the frame; the point is that none panicked.
    assert!(errors > 10_000, "{errors}");
}

#[test]
fn reasons_have_no_line_numbers() {
    let e = p(r#"{"type":"send","to":"bob"}"#).unwrap_err();
    assert_eq!(e.reason, "missing field `content`");
}
