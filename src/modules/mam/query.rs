//! XEP-0313 §4 archive queries: the XEP-0004 form (with, start, end, and the #extended
//! before-id, after-id and ids), XEP-0059 paging (max, after, before; `index` is refused), and
//! the mapping of all of it onto one id range of the user's archive.

use crate::jid::Jid;
use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns};

/// A parsed query. Ids are already numbers; whether they exist is checked when it runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub queryid: Option<String>,
    pub with: Option<Jid>,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub after_id: Option<u64>,
    pub before_id: Option<u64>,
    pub ids: Option<Vec<u64>>,
    pub max: usize,
    /// RSM `after`.
    pub after: Option<u64>,
    /// RSM `before`: `Some(None)` is the empty `<before/>`, the last page.
    pub before: Option<Option<u64>>,
}

impl Query {
    /// The inclusive id range the query covers. Ids are archive times in microseconds, so
    /// `start` and `end` (millisecond precision) become id bounds; the others are exclusive.
    pub fn id_range(&self) -> (u64, u64) {
        let mut lo = 0u64;
        let mut hi = u64::MAX;
        if let Some(s) = self.start_ms {
            lo = lo.max(s.saturating_mul(1000));
        }
        if let Some(e) = self.end_ms {
            hi = hi.min(e.saturating_mul(1000).saturating_add(999));
        }
        for after in [self.after_id, self.after].into_iter().flatten() {
            lo = lo.max(after.saturating_add(1));
        }
        for before in [self.before_id, self.before.flatten()]
            .into_iter()
            .flatten()
        {
            match before.checked_sub(1) {
                Some(b) => hi = hi.min(b),
                // Nothing lies below id 0: an empty range, which bounds never widen again.
                None => (lo, hi) = (1, 0),
            }
        }
        (lo, hi)
    }

    /// Every id the query names, which must exist in the archive.
    pub fn named_ids(&self) -> impl Iterator<Item = u64> + '_ {
        [
            self.after_id,
            self.before_id,
            self.after,
            self.before.flatten(),
        ]
        .into_iter()
        .flatten()
        .chain(self.ids.iter().flatten().copied())
    }
}

/// An archive id from the wire; anything that is not one of ours names no message.
pub fn parse_id(s: &str) -> Result<u64, StanzaError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StanzaError::with_text(
            Condition::ItemNotFound,
            "no such archive id",
        ));
    }
    s.parse()
        .map_err(|_| StanzaError::with_text(Condition::ItemNotFound, "no such archive id"))
}

fn values(field: &Element) -> Vec<String> {
    field
        .elements()
        .filter(|v| v.is("value", ns::DATA_FORMS))
        .map(|v| v.text().trim().to_owned())
        .collect()
}

/// The one value of a single-valued field; none or an empty one means the field is unset.
fn single(field: &Element, var: &str) -> Result<Option<String>, StanzaError> {
    let mut v = values(field);
    match v.len() {
        0 => Ok(None),
        1 if v[0].is_empty() => Ok(None),
        1 => Ok(v.pop()),
        _ => Err(StanzaError::bad_request(&format!("{var} takes one value"))),
    }
}

/// Parses `<query xmlns='urn:xmpp:mam:2'>`. `max_page` caps RSM `max` and the length of the
/// `ids` field; `default_page` is used without `max`.
pub fn parse(q: &Element, default_page: usize, max_page: usize) -> Result<Query, StanzaError> {
    let mut query = Query {
        queryid: q.attr("queryid").map(str::to_owned),
        max: default_page,
        ..Query::default()
    };
    if query.queryid.as_ref().is_some_and(|id| id.len() > 256) {
        return Err(StanzaError::bad_request("queryid is too long"));
    }
    if q.attr("node").is_some() {
        return Err(StanzaError::new(Condition::ItemNotFound));
    }
    let mut forms = q.elements().filter(|e| e.is("x", ns::DATA_FORMS));
    let form = forms.next();
    if forms.next().is_some() {
        return Err(StanzaError::bad_request("one data form at most"));
    }
    for field in form.into_iter().flat_map(|f| f.elements()) {
        if !field.is("field", ns::DATA_FORMS) {
            continue;
        }
        let var = field.attr("var").unwrap_or_default();
        match var {
            "FORM_TYPE" => {
                if single(field, var)?.as_deref() != Some(ns::MAM) {
                    return Err(StanzaError::bad_request("FORM_TYPE must be urn:xmpp:mam:2"));
                }
            }
            "with" => {
                query.with = single(field, var)?
                    .map(|w| Jid::parse(&w))
                    .transpose()
                    .map_err(|_| StanzaError::bad_request("with is not a JID"))?;
            }
            "start" | "end" => {
                let ms = single(field, var)?
                    .map(|t| {
                        parse_datetime(&t).ok_or_else(|| {
                            StanzaError::bad_request(&format!("{var} is not an XEP-0082 DateTime"))
                        })
                    })
                    .transpose()?;
                match var {
                    "start" => query.start_ms = ms,
                    _ => query.end_ms = ms,
                }
            }
            "after-id" => query.after_id = single(field, var)?.map(|v| parse_id(&v)).transpose()?,
            "before-id" => {
                query.before_id = single(field, var)?.map(|v| parse_id(&v)).transpose()?;
            }
            "ids" => {
                let v = values(field);
                if v.len() > max_page {
                    return Err(StanzaError::with_text(
                        Condition::PolicyViolation,
                        "too many ids in one query",
                    ));
                }
                query.ids = Some(v.iter().map(|s| parse_id(s)).collect::<Result<_, _>>()?);
            }
            other => {
                return Err(StanzaError::bad_request(&format!(
                    "the field {other:?} is not supported"
                )));
            }
        }
    }
    if let Some(set) = q.child("set", ns::RSM) {
        if set.has_child("index", ns::RSM) {
            return Err(StanzaError::new(Condition::FeatureNotImplemented));
        }
        if let Some(m) = set.child("max", ns::RSM) {
            let m: usize = m
                .text()
                .trim()
                .parse()
                .map_err(|_| StanzaError::bad_request("max is not a number"))?;
            query.max = m;
        }
        if let Some(a) = set.child("after", ns::RSM) {
            query.after = Some(parse_id(&a.text())?);
        }
        if let Some(b) = set.child("before", ns::RSM) {
            let t = b.text();
            query.before = Some(match t.trim() {
                "" => None,
                id => Some(parse_id(id)?),
            });
        }
    }
    query.max = query.max.min(max_page);
    Ok(query)
}

/// The form a client gets when it asks which fields it may use (XEP-0313 §4.1.5).
pub fn form() -> Element {
    let field = |var: &str, kind: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr("var", var)
            .with_attr("type", kind)
    };
    let form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(ns::MAM)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("ids", "text-multi"));
    Element::new("query", ns::MAM).with_child(form)
}

/// An XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`) as milliseconds since the epoch;
/// None if malformed or before 1970.
pub fn parse_datetime(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = b.get(from..to)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = first3.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest.as_bytes() {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |d: &u8| d.is_ascii_digit().then(|| i64::from(d - b'0'));
            let h = digit(h1)? * 10 + digit(h2)?;
            let m = digit(m1)? * 10 + digit(m2)?;
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let valid = (1..=12).contains(&month)
        && day >= 1
        && day <= month_days[(month - 1) as usize]
        && hour < 24
        && min < 60
        && sec <= 60;
    if !valid {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reader::parse_one;

    fn q(inner: &str) -> Result<Query, StanzaError> {
        let el = parse_one(&format!(
            "<query xmlns='urn:xmpp:mam:2' queryid='f1'>{inner}</query>"
        ))
        .unwrap();
        parse(&el, 50, 250)
    }

    fn form(fields: &str) -> String {
        format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>urn:xmpp:mam:2</value></field>{fields}</x>"
        )
    }

    fn field(var: &str, vals: &[&str]) -> String {
        let v: String = vals.iter().map(|v| format!("<value>{v}</value>")).collect();
        format!("<field var='{var}'>{v}</field>")
    }

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_datetime("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_datetime("2000-03-01T00:00:00Z"),
            Some(951_868_800_000)
        );
        assert_eq!(
            parse_datetime("2010-06-07T02:00:00.123456+02:00"),
            Some(1_275_868_800_123)
        );
        assert_eq!(
            parse_datetime("2010-06-07T00:00:00-01:30"),
            Some(1_275_874_200_000)
        );
        for bad in [
            "",
            "2010-06-07",
            "2010-06-07T00:00:00",
            "2010-13-07T00:00:00Z",
            "2010-02-30T00:00:00Z",
            "2010-06-07T24:00:00Z",
            "2010-06-07T00:00:00.Z",
            "1969-12-31T23:59:59Z",
            "+010-06-07T00:00:00Z",
            "2010-06-07T00:00:00+2:00",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_every_field() {
        let got = q(&(form(&format!(
            "{}{}{}{}{}{}",
            field("with", &["Juliet@Capulet.lit"]),
            field("start", &["1970-01-01T00:00:01Z"]),
            field("end", &["1970-01-01T00:00:02Z"]),
            field("after-id", &["10"]),
            field("before-id", &["20"]),
            field("ids", &["11", "12"]),
        )) + "<set xmlns='http://jabber.org/protocol/rsm'><max>1000</max><after>5</after>\
              <before/></set>"))
        .unwrap();
        assert_eq!(got.queryid.as_deref(), Some("f1"));
        assert_eq!(got.with, Some(Jid::parse("juliet@capulet.lit").unwrap()));
        assert_eq!((got.start_ms, got.end_ms), (Some(1000), Some(2000)));
        assert_eq!((got.after_id, got.before_id), (Some(10), Some(20)));
        assert_eq!(got.ids, Some(vec![11, 12]));
        assert_eq!(got.max, 250, "capped");
        assert_eq!((got.after, got.before), (Some(5), Some(None)));
        assert_eq!(got.id_range(), (1_000_000, 19));
        assert_eq!(got.named_ids().collect::<Vec<_>>(), vec![10, 20, 5, 11, 12]);
        let plain = q("").unwrap();
        assert_eq!(plain.max, 50);
        assert_eq!(plain.id_range(), (0, u64::MAX));
        let before0 = q("<set xmlns='http://jabber.org/protocol/rsm'><before>0</before></set>");
        let (lo, hi) = before0.unwrap().id_range();
        assert!(lo > hi, "before the first id is nothing");
    }

    #[test]
    fn rejects_bad_forms() {
        let cond = |inner: &str| q(inner).unwrap_err().condition;
        let bad = Condition::BadRequest;
        let wrong_type = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>\
                          <value>urn:xmpp:mam:1</value></field></x>";
        assert_eq!(cond(wrong_type), bad);
        assert_eq!(cond(&form(&field("with", &["a@b@c"]))), bad);
        assert_eq!(cond(&form(&field("with", &["a@x", "b@x"]))), bad);
        assert_eq!(cond(&form(&field("start", &["yesterday"]))), bad);
        assert_eq!(cond(&form(&field("colour", &["red"]))), bad);
        assert_eq!(cond(&(form("") + &form(""))), bad);
        assert_eq!(
            cond(&form(&field("after-id", &["abc"]))),
            Condition::ItemNotFound
        );
        assert_eq!(
            cond(&form(&field("ids", &["1"; 251]))),
            Condition::PolicyViolation
        );
        let rsm =
            |inner: &str| format!("<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>");
        assert_eq!(cond(&rsm("<max>-1</max>")), bad);
        assert_eq!(cond(&rsm("<max>lots</max>")), bad);
        assert_eq!(cond(&rsm("<after>x</after>")), Condition::ItemNotFound);
        assert_eq!(cond(&rsm("<after></after>")), Condition::ItemNotFound);
        assert_eq!(
            cond(&rsm("<index>3</index>")),
            Condition::FeatureNotImplemented
        );
    }
}
