//! A small Server-Sent Events reader over a reqwest response, for tests
//! and benches (one test uses a real EventSource client instead).

use std::time::Duration;

use serde_json::Value;

/// One SSE frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A message: `id:`, `event:`, `data:` (parsed as JSON).
    Message {
        /// The `id:` field.
        id: Option<String>,
        /// The `event:` field (`message` when absent).
        event: String,
        /// The `data:` field, as JSON.
        data: Value,
    },
    /// A `retry:` frame.
    Retry(u64),
    /// A comment (`:heartbeat`).
    Comment(String),
}

/// An open event stream.
pub struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    ended: bool,
}

/// Connects to `GET {url}/v1/events{query}` with `token`, resuming after
/// `last_id` if given; panics unless the answer is a 200 event stream.
pub async fn connect(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
    last_id: Option<u64>,
) -> EventStream {
    let response = request(http, url, token, query, last_id).await;
    let status = response.status();
    assert_eq!(status, 200, "GET /v1/events{query}");
    let ct = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(ct, "text/event-stream");
    EventStream {
        response,
        buffer: Vec::new(),
        ended: false,
    }
}

/// The response of `GET {url}/v1/events{query}`, whatever its status.
pub async fn request(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
    last_id: Option<u64>,
) -> reqwest::Response {
    let mut req = http
        .get(format!("{url}/v1/events{query}"))
        .bearer_auth(token);
    if let Some(id) = last_id {
        req = req.header("last-event-id", id.to_string());
    }
    req.send().await.unwrap()
}

impl EventStream {
    /// The next frame; none when the stream ended. Panics after `wait`
    /// without one.
    pub async fn frame_within(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.frame())
            .await
            .unwrap_or_else(|_| panic!("no SSE frame within {wait:?}"))
    }

    /// The next frame; none when the stream ended.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return Some(parse(&String::from_utf8(raw).unwrap()));
            }
            if self.ended {
                assert!(self.buffer.is_empty(), "a partial frame at the end");
                return None;
            }
            match self.response.chunk().await.unwrap() {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => self.ended = true,
            }
        }
    }

    /// The next message (skipping comments and `retry:`) as `(id, event,
    /// data)`; none when the stream ended. Panics after 20 s without one.
    pub async fn message(&mut self) -> Option<(Option<u64>, String, Value)> {
        loop {
            match self.frame_within(Duration::from_secs(20)).await? {
                Frame::Message { id, event, data } => {
                    return Some((id.map(|i| i.parse().unwrap()), event, data));
                }
                Frame::Retry(_) | Frame::Comment(_) => {}
            }
        }
    }

    /// The next event (a message with an id), checking that `id` is
    /// `data.seq` and `event` is `data.kind`; panics on a `stream_error` message
    /// or the end of the stream.
    pub async fn event(&mut self) -> Value {
        let (id, event, data) = self.message().await.expect("the stream goes on");
        assert_ne!(event, "stream_error", "the stream failed: {data}");
        assert_eq!(
            id,
            data["seq"].as_u64(),
            "id is the sequence number: {data}"
        );
        assert_eq!(data["kind"], event, "event is the kind: {data}");
        data
    }

    /// Events until one of `kind` for `session` (included).
    pub async fn until(&mut self, kind: &str, session: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let e = self.event().await;
            let done = e["kind"] == kind && e["session"] == session;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

fn parse(raw: &str) -> Frame {
    let (mut id, mut event, mut data, mut retry) = (None, None, Vec::new(), None);
    for line in raw.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            return Frame::Comment(comment.trim().to_owned());
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            "retry" => retry = Some(value.parse().unwrap()),
            other => panic!("unknown SSE field {other:?} in {raw:?}"),
        }
    }
    if data.is_empty()
        && let Some(ms) = retry
    {
        return Frame::Retry(ms);
    }
    Frame::Message {
        id,
        event: event.unwrap_or_else(|| "message".into()),
        data: serde_json::from_str(&data.join("\n")).unwrap(),
    }
}
