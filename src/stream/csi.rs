//! XEP-0352 Client State Indication, v1.0.0: while a client says it is inactive, stanzas that
//! need not wake it are held and coalesced, and everything held goes out, in order, with the
//! next urgent stanza, on `<active/>`, or when the held queue is full.
//!
//! Urgent: any iq; a message with a body (also inside a carbon copy or archive result), or
//! with any payload other than chat states, receipts and markers; subscription requests and
//! answers; errors. Not urgent: availability presence (only the latest per sender is kept)
//! and messages carrying only chat states (XEP-0085), delivery receipts (XEP-0184) or chat
//! markers (XEP-0333).

use crate::session::Delivery;
use crate::xml::{Element, ns};
use std::collections::VecDeque;
use std::rc::Rc;

pub fn urgent(el: &Element) -> bool {
    match el.name.as_str() {
        "presence" => !matches!(el.attr("type"), None | Some("unavailable")),
        "message" => el.attr("type") == Some("error") || el.elements().any(wakes),
        _ => true,
    }
}

/// A message payload that should wake the client.
fn wakes(child: &Element) -> bool {
    if child.name == "body" && child.ns == ns::CLIENT {
        return true;
    }
    if [
        ns::CHATSTATES,
        ns::RECEIPTS,
        ns::CHAT_MARKERS,
        ns::HINTS,
        ns::SID,
    ]
    .contains(&child.ns.as_str())
    {
        return false;
    }
    true
}

/// Stanzas held for a client, with their bytes: while it is inactive, while its connection is
/// away, or while it has as many unacknowledged as it may (see c2s).
#[derive(Default)]
pub struct Held {
    pub queue: VecDeque<Rc<Delivery>>,
    pub bytes: usize,
}

impl Held {
    /// Holds a stanza; availability presence replaces the one held for the same sender.
    pub fn hold(&mut self, d: Rc<Delivery>) {
        if d.el.name == "presence" {
            let from = d.el.attr("from");
            let mut freed = 0;
            self.queue.retain(|h| {
                let same = h.el.name == "presence" && h.el.attr("from") == from;
                if same {
                    freed += h.size;
                }
                !same
            });
            self.bytes -= freed;
        }
        self.bytes += d.size;
        self.queue.push_back(d);
    }

    /// Adds a stanza behind those held, coalescing nothing.
    pub fn push(&mut self, d: Rc<Delivery>) {
        self.bytes += d.size;
        self.queue.push_back(d);
    }

    /// The oldest stanza held.
    pub fn pop(&mut self) -> Option<Rc<Delivery>> {
        let d = self.queue.pop_front()?;
        self.bytes -= d.size;
        Some(d)
    }

    pub fn take(&mut self) -> VecDeque<Rc<Delivery>> {
        self.bytes = 0;
        std::mem::take(&mut self.queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(child: Element) -> Element {
        Element::new("message", ns::CLIENT).with_child(child)
    }

    #[test]
    fn what_wakes_a_client() {
        let body = Element::new("body", ns::CLIENT).with_text("hi");
        assert!(urgent(&msg(body)));
        assert!(!urgent(&msg(Element::new("composing", ns::CHATSTATES))));
        assert!(!urgent(&msg(Element::new("received", ns::RECEIPTS))));
        assert!(urgent(&msg(Element::new("x", "urn:example"))));
        assert!(urgent(&Element::new("iq", ns::CLIENT)));
        assert!(!urgent(&Element::new("presence", ns::CLIENT)));
        assert!(!urgent(
            &Element::new("presence", ns::CLIENT).with_attr("type", "unavailable")
        ));
        assert!(urgent(
            &Element::new("presence", ns::CLIENT).with_attr("type", "subscribe")
        ));
        let mut err = msg(Element::new("composing", ns::CHATSTATES));
        err.set_attr("type", "error");
        assert!(urgent(&err));
    }

    #[test]
    fn presence_is_coalesced_per_sender() {
        let p = |from: &str, show: &str| {
            Element::new("presence", ns::CLIENT)
                .with_attr("from", from)
                .with_child(Element::new("show", ns::CLIENT).with_text(show))
        };
        let mut h = Held::default();
        h.hold(Delivery::new(p("a@x/1", "away")));
        h.hold(Delivery::new(msg(Element::new(
            "composing",
            ns::CHATSTATES,
        ))));
        h.hold(Delivery::new(p("b@x/1", "dnd")));
        h.hold(Delivery::new(p("a@x/1", "xa")));
        let sum: usize = h.queue.iter().map(|d| d.size).sum();
        assert_eq!(h.bytes, sum);
        let q = h.take();
        assert_eq!((q.len(), h.bytes), (3, 0));
        assert_eq!(q[0].el.name, "message");
        assert_eq!(q[2].el.attr("from"), Some("a@x/1"));
        assert_eq!(q[2].el.child("show", ns::CLIENT).unwrap().text(), "xa");
    }
}
