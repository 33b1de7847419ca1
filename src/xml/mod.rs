//! A small owned XML tree for stanzas, plus the incremental reader and the writer.
//!
//! Names are local names; every element carries its resolved namespace, so code compares
//! `(name, ns)` pairs and never prefixes. Attributes keep their qualified names (`xml:lang`).

mod chars;
pub mod ns;
pub mod reader;
pub mod writer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(name: &str, ns: &str) -> Element {
        Element {
            name: name.to_owned(),
            ns: ns.to_owned(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name.to_owned(), value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) {
        self.attrs.retain(|(k, _)| k != name);
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// The element without its children: its name, namespace and attributes.
    pub fn shallow(&self) -> Element {
        Element {
            name: self.name.clone(),
            ns: self.ns.clone(),
            attrs: self.attrs.clone(),
            children: Vec::new(),
        }
    }

    /// Child elements, skipping text.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.child(name, ns).is_some()
    }

    /// The concatenated text directly inside this element.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialises this element as it would appear inside a `jabber:client` stream.
    pub fn to_xml(&self) -> String {
        let mut out = Vec::new();
        writer::write_element(self, ns::CLIENT, &mut out);
        // The writer only ever emits UTF-8 from `&str` inputs.
        String::from_utf8(out).expect("writer output is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_and_children() {
        let mut e = Element::new("message", ns::CLIENT)
            .with_attr("to", "b@localhost")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        assert_eq!(e.attr("to"), Some("b@localhost"));
        e.set_attr("to", "c@localhost");
        assert_eq!(e.attr("to"), Some("c@localhost"));
        assert_eq!(e.attrs.len(), 1);
        assert_eq!(e.child("body", ns::CLIENT).unwrap().text(), "hi");
    }
}
