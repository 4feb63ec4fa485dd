//! Each event's JSON (output/json.rs) POSTed to a URL, with retries (sinks/http.rs).

use bytes::Bytes;

use super::{Event, Sink, SinkError, http::Poster};
use crate::config::HttpConfig;

#[derive(Debug)]
pub struct WebhookSink {
    poster: Poster,
}

impl WebhookSink {
    pub fn new(c: &HttpConfig) -> Result<Self, SinkError> {
        Ok(Self {
            poster: Poster::new(c, None)?,
        })
    }
}

impl Sink for WebhookSink {
    async fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let body = serde_json::to_vec(ev.json()).map_err(|source| SinkError::Encode {
            what: "the event",
            source,
        })?;
        self.poster.post_json(Bytes::from(body)).await
    }
}
