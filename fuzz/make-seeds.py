#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/: small real inputs of each kind, in
each target's input format (see the header of each target). Run from anywhere; it replaces
the files it writes and leaves others alone."""
import base64, hashlib, os

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")

STANZAS = [
    "<presence/>",
    "<presence><show>away</show><status>out</status><priority>5</priority></presence>",
    "<presence to='bob@localhost' type='subscribe'/>",
    "<presence to='alice@localhost' type='subscribed'/>",
    "<presence to='carol@localhost' type='unsubscribe'/>",
    "<presence to='someone@elsewhere.example'/>",
    "<presence type='unavailable'/>",
    "<message id='m1' to='bob@localhost' type='chat'><body>hi &amp; bye</body></message>",
    "<message id='m2' to='carol@localhost' type='chat'><body>kept offline</body></message>",
    "<message id='m3' to='alice@localhost/laptop'><body>hi</body>"
    "<private xmlns='urn:xmpp:carbons:2'/></message>",
    "<message to='bob@localhost' type='headline'><subject>s</subject></message>",
    "<message to='localhost' type='groupchat'><body>x</body></message>",
    "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
    "<iq type='get' id='g2'><query xmlns='jabber:iq:roster' ver='1'/></iq>",
    "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' "
    "name='Bob'><group>Family</group></item></query></iq>",
    "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' "
    "subscription='remove'/></query></iq>",
    "<iq type='get' id='l'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    "<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/>"
    "<item jid='spam.example'/></block></iq>",
    "<iq type='set' id='u1'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/>"
    "</unblock></iq>",
    "<iq type='set' id='u2'><unblock xmlns='urn:xmpp:blocking'/></iq>",
    "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    "<iq type='get' id='d2' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<iq type='get' id='t' to='localhost'><time xmlns='urn:xmpp:time'/></iq>",
    "<iq type='get' id='v' to='localhost'><query xmlns='jabber:iq:version'/></iq>",
    "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    "<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='f27'/></iq>",
    "<iq type='set' id='q2'><query xmlns='urn:xmpp:mam:2' queryid='f28'>"
    "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
    "<value>urn:xmpp:mam:2</value></field><field var='with'><value>bob@localhost</value></field>"
    "<field var='start'><value>2010-06-07T00:00:00Z</value></field>"
    "<field var='end'><value>2030-07-07T13:23:54.123+02:00</value></field>"
    "<field var='after-id'><value>10</value></field><field var='before-id'><value>20</value></field>"
    "<field var='ids'><value>11</value><value>12</value></field></x>"
    "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>5</after></set></query></iq>",
    "<iq type='set' id='q3'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>"
    "<max>2</max><before/></set></query></iq>",
    "<iq type='get' id='pr'><prefs xmlns='urn:xmpp:mam:2'/></iq>",
    "<iq type='set' id='pr2'><prefs xmlns='urn:xmpp:mam:2' default='roster'><always>"
    "<jid>bob@localhost</jid></always><never><jid>carol@localhost</jid></never></prefs></iq>",
    "<iq type='get' id='f'><query xmlns='urn:xmpp:mam:2'/></iq>",
    "<iq type='result' id='x'/>",
    "<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
    "<message xmlns:a='urn:x' to='bob@localhost'><a:b a:c='d'/><body xml:lang='de'>Hallo</body></message>",
]

def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# xml_reader: cut count, piece lengths, stream.
stream = CLIENT_HEADER + "".join(STANZAS[:14]) + "</stream:stream>"
write("xml_reader", "whole", b"\x00" + stream.encode())
write("xml_reader", "cut", bytes([5, 1, 30, 7, 200, 3]) + stream.encode())
write("xml_reader", "bytewise", bytes([15] + [1] * 15) + (CLIENT_HEADER + STANZAS[7]).encode())
write("xml_reader", "bom", b"\x02\x02\x02\xef\xbb\xbf" + (CLIENT_HEADER + STANZAS[1]).encode())
write("xml_reader", "sasl", b"\x01\x40" + (
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "version='1.0' to='localhost' xml:lang='en'>"
    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
    "biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdM</auth>"
    "<enable xmlns='urn:xmpp:sm:3' resume='true'/><r xmlns='urn:xmpp:sm:3'/>"
    "<stream:features/></stream:stream>").encode())
write("xml_reader", "prefixes", b"\x00" + (
    "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'>"
    "<c:message xmlns:c='jabber:client' to='bob@localhost'><c:body>&#x41;&lt;&#65;</c:body>"
    "<x xmlns='urn:x'><![CDATA[<not a tag>]]></x></c:message>").encode())
write("xml_reader", "tls-hello", b"\x00\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
write("xml_reader", "http", b"\x00GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

# jid
for i, j in enumerate([
    "alice@localhost", "Alice@LocalHost./Phone", "juliet@example.com/foo@bar",
    "localhost", "[::1]", "server.example/res/with/slashes", "\u00e9l\u00e8ve@\u00e9cole.example/t\u00e9l\u00e9phone",
    "\u0391\u03b8\u03ae\u03bd\u03b1@xn--mller-kva.example/r", "user@b\u00fccher.example",
    "a@b@c", "@localhost", "alice@", "alice@localhost/", "\uff21@\uff42.example",
]):
    write("jid", f"jid{i}", j)

# sasl: mechanism byte (PLAIN 0, SCRAM-SHA-1 1, -256 2, SHA-1-PLUS 3, -256-PLUS 4; +8 = the
# transport has channel binding), then messages separated by 0xFF.
SEP = b"\xff"
def sasl(name, mech, *msgs):
    write("sasl", name, bytes([mech]) + SEP.join(m.encode() if isinstance(m, str) else m for m in msgs))
sasl("plain-ok", 0, "\0user\0pencil")
sasl("plain-authzid", 0, "user@localhost\0user\0pencil")
sasl("plain-wrong", 0, "\0user\0wrong")
# RFC 5802 §5 and RFC 7677 §3 exchanges.
sasl("rfc5802", 1, "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
     "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
sasl("rfc7677", 2, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
     "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
     "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
sasl("sha1-computed-proof", 1, "n,,n=user,r=abc", "c=biws,r=abc3rfcNHYJY1ZVvWVs7j,p=*")
cb = base64.b64encode(b"p=tls-exporter,," + bytes([7] * 32)).decode()
sasl("sha256-plus", 4 + 8, "p=tls-exporter,,n=user,r=abc",
     f"c={cb},r=abc%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=*")
sasl("sha1-plus", 3 + 8, "p=tls-exporter,a=user@localhost,n=user,r=n0nce",
     f"c={base64.b64encode(b'p=tls-exporter,a=user@localhost,' + bytes([7] * 32)).decode()},"
     "r=n0nce3rfcNHYJY1ZVvWVs7j,p=*")
sasl("downgrade", 1 + 8, "y,,n=user,r=abc")
sasl("unknown-user", 2, "n,,n=nobody,r=abc", "c=biws,r=abc%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA")
sasl("saslname", 1, "n,a=us=2Cer,n=us=3Der,r=abc")
sasl("after-done", 2, "n,,n=user,r=x", "c=biws,r=nope,p=AA==", "c=biws")

# datetime: XEP-0082 text, and 8 bytes read as milliseconds.
for i, d in enumerate([
    "1969-07-21T02:56:15Z", "1970-01-01T00:00:00Z", "2002-09-10T23:08:25.001Z",
    "2010-06-07T00:00:00.123456-07:00", "2016-12-31T23:59:60+00:00", "2000-02-29T12:00:00Z",
    "9999-12-31T23:59:59.999Z", "2030-07-07T13:23:54+14:00",
]):
    write("datetime", f"dt{i}", d)

# payloads and router: stanzas after a jabber:client header, which the target adds; the
# router's first byte says who sends the first four stanzas.
for i, s in enumerate(STANZAS):
    write("payloads", f"s{i:02}", s)
write("router", "session", b"\x00" + "".join(STANZAS[:4]).encode())
write("router", "roster", b"\x00" + "".join(STANZAS[12:16] + STANZAS[2:4]).encode())
write("router", "blocking", b"\x00" + "".join([STANZAS[0]] + STANZAS[16:20] + [STANZAS[7]]).encode())
write("router", "messages", bytes([0b100100]) + "".join([STANZAS[0], STANZAS[0], STANZAS[0]] + STANZAS[7:12]).encode())
write("router", "mam", b"\x00" + "".join(STANZAS[7:9] + STANZAS[26:31]).encode())
write("router", "server", bytes([0b101010]) + "".join(STANZAS[20:26] + STANZAS[31:]).encode())
