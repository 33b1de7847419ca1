//! JIDs (RFC 7622) from arbitrary text. Besides not panicking: a JID that parses is in
//! normal form, so its text parses again to the same JID, and so do its bare JID and the JID
//! with its resourcepart given again through `with_resource`.

#![no_main]

use hearth::jid::Jid;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(jid) = Jid::parse(s) else {
        return;
    };
    let text = jid.to_string();
    assert_eq!(
        Jid::parse(&text).as_ref(),
        Ok(&jid),
        "{s:?} parses to {jid:?}, written {text:?}"
    );
    let bare = jid.bare();
    assert_eq!(Jid::parse(&bare.to_string()).as_ref(), Ok(&bare));
    if let Some((_, resource)) = text.split_once('/') {
        assert_eq!(bare.with_resource(resource).as_ref(), Ok(&jid));
    }
});
