//! The two wire protocols the loadgen speaks: Switchboard's and, for the
//! side-by-side comparison, Centrifugo's JSON protocol. One workload, two
//! dialects: each frame the scenarios read is turned into the few
//! [`Event`]s they count.

use std::borrow::Cow;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A client's WebSocket connection.
pub type Ws = WebSocketStream<TcpStream>;

/// The fields of a server frame the loadgen looks at; the rest is ignored.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub msg_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub content: Option<Cow<'a, str>>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
}

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// Why a connection attempt failed, as a short bounded label.
#[derive(Debug)]
pub struct ConnectError {
    pub kind: String,
    pub detail: String,
}

impl ConnectError {
    pub fn new(kind: impl Into<String>, detail: impl ToString) -> Self {
        Self {
            kind: kind.into(),
            detail: detail.to_string(),
        }
    }
}

/// Which server the loadgen talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// switchboard-node: `?userId=` sign-in (dev auth), `send` / `message`.
    Switchboard,
    /// Centrifugo v6: `connect`, a subscription to the user's own channel
    /// (named after the user), and client-side `publish` to the
    /// recipient's channel.
    Centrifugo,
}

/// What a server frame means to a scenario.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A message for this user. `seq` orders a conversation where the
    /// server gives an order (Switchboard's seq); `None` elsewhere.
    Message {
        msg_id: Option<Cow<'a, str>>,
        seq: Option<u64>,
        content: Cow<'a, str>,
    },
    /// The server accepted a send (`sent`; Centrifugo's publish reply).
    Sent,
    /// The recipient acked (Switchboard only).
    Delivered,
    /// A refusal, with its code.
    Error(String),
    /// The server asks for a pong (Centrifugo's `{}`, exactly), to be
    /// answered with [`Proto::pong`].
    Ping,
    /// Anything else (welcome, presence, ...).
    Other,
    /// Not a frame of this protocol.
    Unparsable,
}

/// Centrifugo's commands get ids above this: 1 and 2 are connect and subscribe.
const FIRST_PUBLISH_ID: u64 = 10;

impl Proto {
    /// Path of the WebSocket endpoint.
    pub fn ws_path(self) -> &'static str {
        match self {
            Self::Switchboard => "/ws",
            Self::Centrifugo => "/connection/websocket",
        }
    }

    /// The URL for `user` under `base` (`ws://ADDR/path`).
    pub fn ws_url(self, base: &str, user: &str) -> String {
        match self {
            Self::Switchboard => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}userId={user}")
            }
            Self::Centrifugo => base.to_owned(),
        }
    }

    /// After the upgrade: Switchboard's `welcome`; Centrifugo's connect and
    /// subscribe replies.
    pub async fn handshake(self, ws: &mut Ws, user: &str) -> Result<(), ConnectError> {
        match self {
            Self::Switchboard => {
                let t = next_text(ws).await?;
                if Frame::parse(&t).is_some_and(|f| f.kind == "welcome") {
                    Ok(())
                } else {
                    Err(ConnectError::new("no welcome", t))
                }
            }
            Self::Centrifugo => {
                let cmds = [
                    (1, r#"{"id":1,"connect":{}}"#.to_owned()),
                    (
                        2,
                        format!(r#"{{"id":2,"subscribe":{{"channel":"{user}"}}}}"#),
                    ),
                ];
                for (id, cmd) in cmds {
                    ws.send(Message::text(cmd))
                        .await
                        .map_err(|e| ConnectError::new("write", e))?;
                    'reply: loop {
                        let t = next_text(ws).await?;
                        for line in t.split('\n').filter(|l| !l.is_empty()) {
                            let r: Reply<'_> = serde_json::from_str(line)
                                .map_err(|_| ConnectError::new("unparsable reply", line))?;
                            if r.id == Some(id) {
                                if let Some(e) = r.error {
                                    return Err(ConnectError::new(
                                        format!("centrifugo error {}", e.code),
                                        e.message,
                                    ));
                                }
                                break 'reply;
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The frame that sends message number `k` (1, 2, ...) to `to`.
    pub fn send_frame(self, k: u64, to: &str, content: &str) -> String {
        match self {
            Self::Switchboard => format!(
                r#"{{"type":"send","client_msg_id":"c{k}","to":"{to}","content":"{content}"}}"#
            ),
            Self::Centrifugo => format!(
                r#"{{"id":{},"publish":{{"channel":"{to}","data":{{"c":"{content}"}}}}}}"#,
                FIRST_PUBLISH_ID + k
            ),
        }
    }

    /// The frame acking `ids`; `None` where the protocol has no acks.
    pub fn ack_frame(self, ids: &[String]) -> Option<String> {
        match self {
            Self::Switchboard => {
                let ids = ids
                    .iter()
                    .map(|id| format!("\"{id}\""))
                    .collect::<Vec<_>>()
                    .join(",");
                Some(format!(r#"{{"type":"ack","msg_ids":[{ids}]}}"#))
            }
            Self::Centrifugo => None,
        }
    }

    /// The answer to [`Event::Ping`] (Centrifugo's `{}`); Switchboard asks for none.
    pub fn pong(self) -> Option<&'static str> {
        match self {
            Self::Switchboard => None,
            Self::Centrifugo => Some("{}"),
        }
    }

    /// Calls `f` with every event of one text frame (Centrifugo may put
    /// several replies into one frame, one per line).
    pub fn events<'a>(self, text: &'a str, mut f: impl FnMut(Event<'a>)) {
        match self {
            Self::Switchboard => f(match Frame::parse(text) {
                None => Event::Unparsable,
                Some(fr) => match fr.kind.as_ref() {
                    "message" => Event::Message {
                        msg_id: fr.msg_id,
                        seq: fr.seq,
                        content: fr.content.unwrap_or_default(),
                    },
                    "sent" => Event::Sent,
                    "delivered" => Event::Delivered,
                    "error" => Event::Error(fr.code.as_deref().unwrap_or("unknown").to_owned()),
                    _ => Event::Other,
                },
            }),
            Self::Centrifugo => {
                for line in text.split('\n').filter(|l| !l.is_empty()) {
                    f(centrifugo_event(line));
                }
            }
        }
    }
}

fn centrifugo_event(line: &str) -> Event<'_> {
    // Only `{}` itself is a ping: answering anything else with `{}` would be an
    // unsolicited pong, which Centrifugo answers by closing the connection.
    if line.trim() == "{}" {
        return Event::Ping;
    }
    let Ok(r) = serde_json::from_str::<Reply<'_>>(line) else {
        return Event::Unparsable;
    };
    if let Some(e) = r.error {
        return Event::Error(format!("centrifugo_{}", e.code));
    }
    if let Some(p) = r.push {
        return match p.publication {
            Some(p) => Event::Message {
                msg_id: None,
                seq: None,
                content: p.data.c,
            },
            None => Event::Other,
        };
    }
    match r.id {
        Some(id) if id > FIRST_PUBLISH_ID => Event::Sent,
        _ => Event::Other,
    }
}

/// The fields of a Centrifugo reply the loadgen reads.
#[derive(Debug, Default, Deserialize)]
struct Reply<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    error: Option<ReplyError>,
    #[serde(borrow, default)]
    push: Option<Push<'a>>,
}

#[derive(Debug, Deserialize)]
struct ReplyError {
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct Push<'a> {
    #[serde(rename = "pub", borrow, default)]
    publication: Option<Publication<'a>>,
}

#[derive(Debug, Deserialize)]
struct Publication<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Debug, Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    c: Cow<'a, str>,
}

async fn next_text(ws: &mut Ws) -> Result<String, ConnectError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return Err(ConnectError::new("unexpected frame", other)),
            Some(Err(e)) => return Err(ConnectError::new("read", e)),
            None => return Err(ConnectError::new("closed", "closed during the handshake")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: Proto, text: &str) -> Vec<Event<'_>> {
        let mut v = Vec::new();
        p.events(text, |e| v.push(e));
        v
    }

    #[test]
    fn reads_centrifugo_replies_pushes_and_pings() {
        let frame = "{\"id\":11,\"publish\":{}}\n{\"push\":{\"channel\":\"r1\",\"pub\":{\"data\":{\"c\":\"5 6 xx\"},\"offset\":3}}}\n{}";
        assert_eq!(
            all(Proto::Centrifugo, frame),
            vec![
                Event::Sent,
                Event::Message {
                    msg_id: None,
                    seq: None,
                    content: "5 6 xx".into()
                },
                Event::Ping
            ]
        );
        assert_eq!(
            all(
                Proto::Centrifugo,
                r#"{"id":12,"error":{"code":103,"message":"permission denied"}}"#
            ),
            vec![Event::Error("centrifugo_103".into())]
        );
        assert_eq!(all(Proto::Centrifugo, "not json"), vec![Event::Unparsable]);
        let send = Proto::Centrifugo.send_frame(1, "r1", "1 2 x");
        let v: serde_json::Value = serde_json::from_str(&send).unwrap();
        assert_eq!(v["id"], 11);
        assert_eq!(v["publish"]["channel"], "r1");
        assert_eq!(v["publish"]["data"]["c"], "1 2 x");
    }

    #[test]
    fn reads_switchboard_frames() {
        assert_eq!(
            all(
                Proto::Switchboard,
                r#"{"type":"message","msg_id":"9","seq":4,"content":"1 2 x"}"#
            ),
            vec![Event::Message {
                msg_id: Some("9".into()),
                seq: Some(4),
                content: "1 2 x".into()
            }]
        );
        assert_eq!(
            all(
                Proto::Switchboard,
                r#"{"type":"error","code":"rate_limited"}"#
            ),
            vec![Event::Error("rate_limited".into())]
        );
        assert_eq!(
            Proto::Switchboard.ack_frame(&["1".into(), "2".into()]),
            Some(r#"{"type":"ack","msg_ids":["1","2"]}"#.to_owned())
        );
        assert_eq!(Proto::Centrifugo.ack_frame(&["1".into()]), None);
    }
}
