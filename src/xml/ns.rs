//! Every XML namespace hearth speaks, one per line, with the document that defines it.

/// RFC 6120 §4.8.1: the stream wrapper.
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// RFC 6120 §4.8.3: the default content namespace of client streams.
pub const CLIENT: &str = "jabber:client";
/// RFC 6120 §4.8.3: the default content namespace of server-to-server streams.
pub const SERVER: &str = "jabber:server";
/// XEP-0220 Server Dialback: its elements...
pub const DIALBACK: &str = "jabber:server:dialback";
/// ...and its stream feature.
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// RFC 7395: the `<open/>` and `<close/>` of a stream over WebSocket.
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// XML 1.0 Namespaces §3: the prefix `xml` is bound to this by definition.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// XML Namespaces §3: the namespace of `xmlns` declarations themselves, which nothing may use.
pub const XMLNS: &str = "http://www.w3.org/2000/xmlns/";
/// RFC 6120 §5: STARTTLS negotiation.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 6120 §6: SASL negotiation.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// RFC 6120 §7: resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 §3 (kept by draft-cridland-xmpp-session-01): the legacy session establishment iq.
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// RFC 6120 §4.9.3: stream error conditions.
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// RFC 6120 §8.3.3: stanza error conditions.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// RFC 6121 §2: the roster.
pub const ROSTER: &str = "jabber:iq:roster";
/// RFC 6121 §2.6: roster versioning stream feature.
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
/// RFC 6121 §3.4: subscription pre-approval stream feature.
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
/// XEP-0030 Service Discovery: information.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 Service Discovery: items.
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0199 XMPP Ping.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0092 Software Version.
pub const VERSION: &str = "jabber:iq:version";
/// XEP-0202 Entity Time.
pub const TIME: &str = "urn:xmpp:time";
/// XEP-0203 Delayed Delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0160 Best Practices for Handling Offline Messages (the disco feature of XEP-0013's namespace).
pub const OFFLINE: &str = "msgoffline";
/// XEP-0085 Chat State Notifications.
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0334 Message Processing Hints.
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0198 Stream Management.
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0352 Client State Indication.
pub const CSI: &str = "urn:xmpp:csi:0";
/// XEP-0388 Extensible SASL Profile, v1.0.
pub const SASL2: &str = "urn:xmpp:sasl:2";
/// XEP-0386 Bind 2, v1.0.
pub const BIND2: &str = "urn:xmpp:bind:0";
/// XEP-0484 Fast Authentication Streamlining Tokens, v0.1.
pub const FAST: &str = "urn:xmpp:fast:0";
/// XEP-0440 SASL Channel-Binding Type Capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0280 Message Carbons, v1.0.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0297 Stanza Forwarding, v1.0.
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0313 Message Archive Management, v1.0 (the namespace of its 0.6+ revisions).
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0313 §7.1: the before-id/after-id/ids fields and the metadata query are supported.
pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359 Unique and Stable Stanza IDs, v0.7.
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0059 Result Set Management, v1.0.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0004 Data Forms, v2.13.
pub const DATA_FORMS: &str = "jabber:x:data";
/// XEP-0045 Multi-User Chat, v1.35: the `<x/>` a client puts in the presence that joins a room.
pub const MUC: &str = "http://jabber.org/protocol/muc";
/// XEP-0045: the `<x/>` a room adds to what it relays, private messages too.
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0045 §8, §9: moderators' and admins' requests (roles, affiliations).
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// XEP-0045 §10: owners' requests (configuration, destruction).
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0045 §15.5.3: the FORM_TYPE of room configuration forms.
pub const MUC_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
/// XEP-0045 §15.5.4: the FORM_TYPE of a room's extended disco#info.
pub const MUC_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
/// XEP-0045 §15.5.2: the FORM_TYPE of voice requests and their approval.
pub const MUC_REQUEST: &str = "http://jabber.org/protocol/muc#request";
/// XEP-0045 §7.4: a room reflects a message with the id its sender gave it.
pub const MUC_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
/// XEP-0410 MUC Self-Ping: the room answers an occupant's ping to its own nickname.
pub const MUC_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";

/// XEP-0184 Message Delivery Receipts.
pub const RECEIPTS: &str = "urn:xmpp:receipts";
/// XEP-0333 Displayed Markers (formerly Chat Markers).
pub const CHAT_MARKERS: &str = "urn:xmpp:chat-markers:0";
/// XEP-0384 OMEMO Encryption, the 0.3 namespace that deployed clients use.
pub const OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
/// XEP-0191 Blocking Command.
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// XEP-0191 §3.3: the application-specific error for a stanza to a blocked entity.
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
/// XEP-0060 Publish-Subscribe, v1.26: requests.
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0060 §7.1.2.1: event notifications.
pub const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// XEP-0060 §8: the node owner's requests.
pub const PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// XEP-0060 §7 and §8: application-specific error conditions.
pub const PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
/// XEP-0060 §16.4: the FORM_TYPE of node configuration forms.
pub const PUBSUB_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
/// XEP-0060 §16.5 (XEP-0223): the FORM_TYPE of publish options.
pub const PUBSUB_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// XEP-0054 vcard-temp.
pub const VCARD: &str = "vcard-temp";
/// XEP-0153 vCard-Based Avatars: the photo hash in presence.
pub const VCARD_UPDATE: &str = "vcard-temp:x:update";
/// XEP-0084 User Avatar: the image node and its payload.
pub const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
/// XEP-0084 User Avatar: the node describing the current image.
pub const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
/// XEP-0398: the server shows PEP avatars to vCard clients.
pub const PEP_VCARD_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";
/// XEP-0049 Private XML Storage.
pub const PRIVATE: &str = "jabber:iq:private";
/// XEP-0048 Bookmarks, as kept in private storage or in the PEP node of the same name.
pub const BOOKMARKS_LEGACY: &str = "storage:bookmarks";
/// XEP-0402 PEP Native Bookmarks: the node and its payload.
pub const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
/// XEP-0402 §5.3: the server unifies private storage bookmarks with XEP-0402 ones...
pub const BOOKMARKS_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";
/// ...and XEP-0048 bookmarks in PEP with them.
pub const BOOKMARKS_COMPAT_PEP: &str = "urn:xmpp:bookmarks:1#compat-pep";
/// XEP-0411 Bookmarks Conversion.
pub const BOOKMARKS_CONVERSION: &str = "urn:xmpp:bookmarks-conversion:0";
/// XEP-0077 In-Band Registration.
pub const REGISTER: &str = "jabber:iq:register";
/// XEP-0215 External Service Discovery.
pub const EXTDISCO: &str = "urn:xmpp:extdisco:2";
/// XEP-0357 Push Notifications, v0.4.
pub const PUSH: &str = "urn:xmpp:push:0";
/// XEP-0357 §7: the FORM_TYPE of a notification's summary.
pub const PUSH_SUMMARY: &str = "urn:xmpp:push:summary";
/// XEP-0384 OMEMO Encryption, v0.8 and later.
pub const OMEMO: &str = "urn:xmpp:omemo:2";
/// XEP-0353 Jingle Message Initiation: a call being proposed.
pub const JINGLE_MESSAGE: &str = "urn:xmpp:jingle-message:0";
