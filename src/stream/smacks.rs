//! XEP-0198 Stream Management, v1.6.1: the counters and the queue of unacknowledged stanzas
//! for one stream. c2s drives it; resumption hands a new connection's socket to the task that
//! still holds this state. Sequence numbers wrap at 2^32 (XEP-0198 §4).

use crate::session::Delivery;
use crate::xml::{Element, ns};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

pub struct Sm {
    /// The resumption id, when the client asked for resumption.
    pub id: Option<String>,
    /// Stanzas received from the client and fully processed: our `h`.
    pub handled: u32,
    /// How many stanzas the stream had processed when this was enabled: `h` counts from
    /// there (XEP-0198 §4).
    pub base: u32,
    /// The client's last `h`: stanzas of ours it has acknowledged.
    acked: u32,
    /// Stanzas sent and not yet acknowledged, oldest first, and their bytes.
    pub unacked: VecDeque<Rc<Delivery>>,
    pub unacked_bytes: u32,
    /// Stanzas sent since our last `<r/>`.
    since_request: usize,
    pub request_outstanding: bool,
    /// When the oldest stanza not covered by a request was sent.
    pub unrequested_since: Option<Instant>,
}

impl Sm {
    pub fn new(resumable: bool, id: String) -> Sm {
        Sm {
            id: resumable.then_some(id),
            handled: 0,
            base: 0,
            acked: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            since_request: 0,
            request_outstanding: false,
            unrequested_since: None,
        }
    }

    pub fn sent(&mut self, d: Rc<Delivery>) {
        self.unacked_bytes = self.unacked_bytes.saturating_add(weight32(&d));
        self.unacked.push_back(d);
        self.since_request += 1;
        self.unrequested_since.get_or_insert_with(Instant::now);
    }

    /// Processes the client's `h`; an `h` beyond what was sent is a protocol error.
    pub fn ack(&mut self, h: u32) -> Result<(), String> {
        let n = h.wrapping_sub(self.acked) as usize;
        if n > self.unacked.len() {
            return Err(format!(
                "acknowledged {n} stanzas but only {} were sent since the last acknowledgement",
                self.unacked.len()
            ));
        }
        for d in self.unacked.drain(..n) {
            self.unacked_bytes = self.unacked_bytes.saturating_sub(weight32(&d));
            d.delivered();
        }
        self.acked = h;
        self.request_outstanding = false;
        Ok(())
    }

    /// Takes the unacknowledged stanzas (to send again, or to give up).
    pub fn take_unacked(&mut self) -> VecDeque<Rc<Delivery>> {
        self.unacked_bytes = 0;
        std::mem::take(&mut self.unacked)
    }

    /// Whether to piggyback an `<r/>` now: enough stanzas since the last one.
    pub fn should_request(&self, every: usize) -> bool {
        !self.request_outstanding && self.since_request >= every
    }

    pub fn requested(&mut self) {
        self.request_outstanding = true;
        self.since_request = 0;
        self.unrequested_since = None;
    }
}

/// A delivery's size as counted here: 32 bits hold any queue (`limits.queue_bytes`).
fn weight32(d: &Delivery) -> u32 {
    u32::try_from(d.size).unwrap_or(u32::MAX)
}

pub fn h_of(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

pub fn a(h: u32) -> Element {
    Element::new("a", ns::SM).with_attr("h", h.to_string())
}

pub fn r() -> Element {
    Element::new("r", ns::SM)
}

pub fn failed(condition: &str, h: Option<u32>) -> Element {
    let mut f = Element::new("failed", ns::SM).with_child(Element::new(condition, ns::STANZAS));
    if let Some(h) = h {
        f.set_attr("h", h.to_string());
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(i: u32) -> Rc<Delivery> {
        Delivery::new(Element::new("message", ns::CLIENT).with_attr("id", i.to_string()))
    }

    #[test]
    fn acks_drop_the_acknowledged_prefix() {
        let mut sm = Sm::new(true, "x".into());
        for i in 0..5 {
            sm.sent(stanza(i));
        }
        assert!(sm.should_request(5));
        sm.requested();
        assert!(!sm.should_request(1));
        sm.ack(3).unwrap();
        assert_eq!(sm.unacked.len(), 2);
        assert_eq!(sm.unacked[0].el.attr("id"), Some("3"));
        // An h beyond what was sent is refused and changes nothing.
        assert!(sm.ack(9).is_err());
        assert_eq!(sm.unacked.len(), 2);
        sm.ack(5).unwrap();
        assert!(sm.unacked.is_empty());
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut sm = Sm::new(false, "x".into());
        sm.acked = u32::MAX - 1;
        for i in 0..4 {
            sm.sent(stanza(i));
        }
        // Two before the wrap and one after it.
        sm.ack(1).unwrap();
        assert_eq!(sm.unacked.len(), 1);
        assert_eq!(sm.unacked[0].el.attr("id"), Some("3"));
        sm.handled = u32::MAX;
        sm.handled = sm.handled.wrapping_add(1);
        assert_eq!(sm.handled, 0);
    }
}
