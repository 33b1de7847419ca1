//! A room and its state: configuration, affiliations (long-lived, by bare JID), occupants
//! (one per nickname, each with one or more sessions of the same user: XEP-0045 §7.2.9's
//! multi-session nicknames), subject and the discussion history sent on joining; and the rules
//! that relate them (XEP-0045 §5: default roles, who may see real JIDs, who may change whom).

use crate::jid::Jid;
use crate::xml::{Element, ns};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// XEP-0045 §5.2, in rank order: an outcast is below everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// XEP-0045 §5.1, in rank order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// Who may send private messages inside the room (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowPm {
    #[default]
    Anyone,
    Participants,
    Moderators,
    None,
}

impl AllowPm {
    pub fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<AllowPm> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::None,
            _ => return None,
        })
    }

    pub fn allows(self, role: Role) -> bool {
        match self {
            AllowPm::Anyone => role >= Role::Visitor,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::None => false,
        }
    }
}

/// A room's configuration (`muc#roomconfig`), as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// The password to enter, if the room has one.
    pub password: Option<String>,
    /// Every occupant sees real JIDs (non-anonymous); otherwise moderators only.
    pub whois_anyone: bool,
    /// Messages of history sent to a new occupant, at most.
    pub history_length: usize,
    /// Participants may change the subject, not only moderators.
    pub change_subject: bool,
    /// Members may invite others into a members-only room (who then become members).
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
    pub max_users: usize,
    /// Messages are kept in the room's archive (XEP-0313).
    pub archiving: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            whois_anyone: false,
            history_length: 20,
            change_subject: false,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
            max_users: 100,
            archiving: true,
        }
    }
}

/// One affiliation entry: by bare JID, or by domain (which covers everyone at it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affiliated {
    pub affiliation: Affiliation,
    /// The nickname reserved for this user (XEP-0045 §9.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
}

/// One client session in the room as part of an occupant.
#[derive(Clone, Debug)]
pub struct Joined {
    pub jid: Jid,
    /// The session's last presence to the room, cleaned of what only the room may say: what
    /// is reflected to the others, with the room's `<x/>` added each time.
    pub presence: Element,
}

/// An occupant: one nickname, and the sessions of one user that use it, newest last (the
/// newest one's presence is what the others see).
#[derive(Clone, Debug)]
pub struct Occupant {
    pub nick: String,
    pub bare: Jid,
    pub role: Role,
    pub sessions: Vec<Joined>,
    /// Flood control: messages the occupant may still send now, refilled with time.
    pub tokens: f64,
    pub refilled_ms: u64,
    /// A voice request went to the moderators and has not been answered.
    pub voice_requested: bool,
}

impl Occupant {
    /// The session whose presence the others see.
    pub fn current(&self) -> &Joined {
        self.sessions.last().expect("an occupant has a session")
    }
}

/// A message of the discussion history, as reflected (without `to`).
#[derive(Clone, Debug)]
pub struct Past {
    /// The sender's occupant JID.
    pub from: Jid,
    pub stamp_ms: u64,
    pub msg: Element,
    /// Its size as sent, for `maxchars` and the room's byte budget.
    pub bytes: usize,
}

/// The subject, who set it (a nickname, or the room) and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Subject {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

pub struct Room {
    /// The room's localpart.
    pub name: String,
    pub jid: Jid,
    pub config: RoomConfig,
    /// By bare JID or domain JID.
    pub affiliations: BTreeMap<Jid, Affiliated>,
    /// By folded nickname (see [`fold`]).
    pub occupants: BTreeMap<String, Occupant>,
    /// Each joined session's full JID, to its occupant's folded nickname.
    pub sessions: HashMap<Jid, String>,
    pub subject: Subject,
    pub history: VecDeque<Past>,
    pub history_bytes: usize,
    /// Created and waiting for its first configuration: only its creator is in (§10.1.1).
    pub locked: bool,
    /// Mediated invitations sent, invitee's bare JID to inviter's, so that a decline goes
    /// only to whoever invited (and the room relays nothing else); the oldest go first.
    pub invited: VecDeque<(Jid, Jid)>,
}

/// Nicknames compare without case: "Mum" and "mum" are the same person to a reader.
pub fn fold(nick: &str) -> String {
    nick.to_lowercase()
}

impl Room {
    pub fn new(name: &str, jid: Jid, config: RoomConfig) -> Room {
        Room {
            name: name.to_owned(),
            jid,
            config,
            affiliations: BTreeMap::new(),
            occupants: BTreeMap::new(),
            sessions: HashMap::new(),
            subject: Subject::default(),
            history: VecDeque::new(),
            history_bytes: 0,
            locked: false,
            invited: VecDeque::new(),
        }
    }

    /// The affiliation of the user with bare JID `bare`: its own entry, else its domain's
    /// (XEP-0045 §9.2's matching order), else none.
    pub fn affiliation(&self, bare: &Jid) -> Affiliation {
        self.affiliations
            .get(bare)
            .or_else(|| {
                Jid::parse(bare.domain())
                    .ok()
                    .and_then(|d| self.affiliations.get(&d))
            })
            .map_or(Affiliation::None, |a| a.affiliation)
    }

    /// The role an occupant with `aff` gets on entering (XEP-0045 §5.1.2).
    pub fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    /// The occupant a session is, if it is in.
    pub fn occupant_of(&self, session: &Jid) -> Option<&Occupant> {
        self.sessions
            .get(session)
            .and_then(|k| self.occupants.get(k))
    }

    pub fn occupant(&self, nick: &str) -> Option<&Occupant> {
        self.occupants.get(&fold(nick))
    }

    /// Whoever may see the real JIDs of occupants: everyone in a non-anonymous room,
    /// moderators otherwise.
    pub fn sees_jids(&self, role: Role) -> bool {
        self.config.whois_anyone || role == Role::Moderator
    }

    /// The user holding `nick` as a reserved nickname, if another than `bare` does.
    pub fn reserved_by_other(&self, nick: &str, bare: &Jid) -> bool {
        let folded = fold(nick);
        self.affiliations.iter().any(|(j, a)| {
            j != bare
                && a.affiliation >= Affiliation::Member
                && a.nick.as_deref().is_some_and(|n| fold(n) == folded)
        })
    }

    /// The `<x xmlns='muc#user'><item/>...</x>` describing occupant `o` with `role` to a
    /// viewer, with status codes (in increasing order, as the XEP shows them).
    pub fn user_x(
        &self,
        o: &Occupant,
        role: Role,
        viewer_sees_jids: bool,
        codes: &[u16],
    ) -> Element {
        let mut item = Element::new("item", ns::MUC_USER)
            .with_attr("affiliation", self.affiliation(&o.bare).as_str())
            .with_attr("role", role.as_str());
        if viewer_sees_jids {
            item.set_attr("jid", o.current().jid.to_string());
        }
        let mut x = Element::new("x", ns::MUC_USER).with_child(item);
        let mut codes = codes.to_vec();
        codes.sort_unstable();
        codes.dedup();
        for c in codes {
            x.push(Element::new("status", ns::MUC_USER).with_attr("code", c.to_string()));
        }
        x
    }

    /// The occupant JID of `nick`.
    pub fn occupant_jid(&self, nick: &str) -> Jid {
        // A nickname in the room was a valid resourcepart when it was taken.
        self.jid
            .with_resource(nick)
            .unwrap_or_else(|_| self.jid.clone())
    }

    /// Every joined session, with the role of its occupant.
    pub fn all_sessions(&self) -> Vec<(Jid, Role)> {
        self.occupants
            .values()
            .flat_map(|o| o.sessions.iter().map(move |s| (s.jid.clone(), o.role)))
            .collect()
    }

    /// Adds `msg` to the history, dropping the oldest beyond `max` messages or `max_bytes`.
    pub fn remember(&mut self, past: Past, max: usize, max_bytes: usize) {
        self.history_bytes += past.bytes;
        self.history.push_back(past);
        while self.history.len() > max || self.history_bytes > max_bytes {
            match self.history.pop_front() {
                Some(p) => self.history_bytes -= p.bytes,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room::new(
            "r",
            Jid::parse("r@muc.localhost").unwrap(),
            RoomConfig::default(),
        )
    }

    fn j(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    #[test]
    fn affiliations_match_the_user_then_its_domain() {
        let mut r = room();
        let member = Affiliated {
            affiliation: Affiliation::Member,
            nick: Some("Ann".into()),
        };
        r.affiliations.insert(j("ann@localhost"), member);
        r.affiliations.insert(
            j("spam.example"),
            Affiliated {
                affiliation: Affiliation::Outcast,
                nick: None,
            },
        );
        assert_eq!(r.affiliation(&j("ann@localhost")), Affiliation::Member);
        assert_eq!(r.affiliation(&j("bob@localhost")), Affiliation::None);
        assert_eq!(r.affiliation(&j("x@spam.example")), Affiliation::Outcast);
        assert!(r.reserved_by_other("ann", &j("bob@localhost")));
        assert!(!r.reserved_by_other("ANN", &j("ann@localhost")));
        assert!(
            Affiliation::Outcast < Affiliation::None && Affiliation::Admin < Affiliation::Owner
        );
    }

    #[test]
    fn default_roles_follow_the_room() {
        let mut r = room();
        assert_eq!(r.default_role(Affiliation::None), Role::Participant);
        r.config.moderated = true;
        assert_eq!(r.default_role(Affiliation::None), Role::Visitor);
        assert_eq!(r.default_role(Affiliation::Member), Role::Participant);
        assert_eq!(r.default_role(Affiliation::Admin), Role::Moderator);
        assert!(!AllowPm::Participants.allows(Role::Visitor));
        assert!(AllowPm::Anyone.allows(Role::Visitor));
        assert!(!AllowPm::None.allows(Role::Moderator));
    }

    #[test]
    fn history_keeps_within_count_and_bytes() {
        let mut r = room();
        let past = |i: u64| Past {
            from: j("r@muc.localhost/n"),
            stamp_ms: i,
            msg: Element::new("message", ns::CLIENT),
            bytes: 100,
        };
        for i in 0..10 {
            r.remember(past(i), 5, 1000);
        }
        assert_eq!(r.history.len(), 5);
        assert_eq!(r.history.front().unwrap().stamp_ms, 5);
        for i in 10..20 {
            r.remember(past(i), 50, 350);
        }
        assert_eq!((r.history.len(), r.history_bytes), (3, 300));
    }
}
