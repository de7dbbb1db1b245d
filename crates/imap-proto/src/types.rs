//! The IMAP command AST shared by the parser (`parse.rs`) and the session crate (`imap`).
//!
//! Everything here is plain data: no I/O, no store types. Strings that came off the
//! wire as astring/quoted/literal are kept as raw bytes where the RFC allows 8-bit
//! data (mailbox names are decoded to UTF-8 by the parser: modified UTF-7 for
//! IMAP4rev1 clients, raw UTF-8 once UTF8=ACCEPT or IMAP4rev2 is enabled).

/// A client command: the tag and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub kind: CommandKind,
}

/// A set of message numbers or UIDs as written by the client, e.g. `1:3,7,9:*`.
/// `u32::MAX` stands for `*` and is resolved by the session against the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet {
    pub ranges: Vec<SeqRange>,
}

/// An inclusive range; `start` may be greater than `end` (RFC 3501: `4:2` = `2:4`).
/// A single number has `start == end`. `*` is `STAR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub start: u32,
    pub end: u32,
}

/// The value standing for `*` inside a [`SeqRange`].
pub const STAR: u32 = u32::MAX;

/// A sequence set or `$` (SEARCHRES, RFC 5182), the saved search result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqOrSaved {
    Set(SequenceSet),
    Saved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    /// `\Recent` may appear in SEARCH/FETCH responses but clients cannot set it.
    Recent,
    /// A keyword (atom), e.g. `$Forwarded` or `NonJunk`. Stored case-preserving,
    /// compared case-insensitively.
    Keyword(String),
    /// Any other `\Word` the client sent; servers ignore it or reject it per RFC.
    Extension(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// `BODY[<section>]` contents. `part` is the dotted part number (empty = whole message).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: Option<SectionText>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    Header,
    /// Field names as sent (case-insensitive match), e.g. `HEADER.FIELDS (From To)`.
    HeaderFields(Vec<String>),
    HeaderFieldsNot(Vec<String>),
    Text,
    /// Only valid with a non-empty part number.
    Mime,
}

/// `<origin.count>` partial fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    pub origin: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAttr {
    Envelope,
    Flags,
    InternalDate,
    Rfc822,
    Rfc822Header,
    Rfc822Size,
    Rfc822Text,
    Body,
    BodyStructure,
    Uid,
    /// `BODY[...]` (peek = false) or `BODY.PEEK[...]` (peek = true).
    BodySection {
        section: Section,
        partial: Option<Partial>,
        peek: bool,
    },
    /// RFC 3516 `BINARY[...]` / `BINARY.PEEK[...]`; part only, no text spec.
    Binary {
        part: Vec<u32>,
        partial: Option<Partial>,
        peek: bool,
    },
    /// RFC 3516 `BINARY.SIZE[...]`.
    BinarySize {
        part: Vec<u32>,
    },
    /// RFC 7162 `MODSEQ`.
    ModSeq,
    /// RFC 8970 `PREVIEW` / `PREVIEW (LAZY)`.
    Preview {
        lazy: bool,
    },
    /// RFC 8474 `EMAILID`.
    EmailId,
    /// RFC 8474 `THREADID`.
    ThreadId,
}

/// FETCH's attribute list after macro expansion (ALL/FAST/FULL are expanded by the parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchArgs {
    pub set: SeqOrSaved,
    pub attrs: Vec<FetchAttr>,
    /// RFC 7162 `(CHANGEDSINCE n)`.
    pub changed_since: Option<u64>,
    /// RFC 7162 `(VANISHED)` with UID FETCH.
    pub vanished: bool,
}

/// A date as in SEARCH `SINCE 1-Feb-1994` (no time, no zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

/// A date-time as in APPEND / INTERNALDATE: `"17-Jul-1996 02:44:25 -0700"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Offset from UTC in minutes, e.g. -420 for `-0700`.
    pub zone_minutes: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    Answered,
    Bcc(Vec<u8>),
    Before(Date),
    Body(Vec<u8>),
    Cc(Vec<u8>),
    Deleted,
    Draft,
    Flagged,
    From(Vec<u8>),
    Header(String, Vec<u8>),
    Keyword(String),
    Larger(u32),
    New,
    Not(Box<SearchKey>),
    Old,
    On(Date),
    Or(Box<SearchKey>, Box<SearchKey>),
    Recent,
    Seen,
    SentBefore(Date),
    SentOn(Date),
    SentSince(Date),
    Since(Date),
    Smaller(u32),
    Subject(Vec<u8>),
    Text(Vec<u8>),
    To(Vec<u8>),
    Uid(SeqOrSaved),
    Unanswered,
    Undeleted,
    Undraft,
    Unflagged,
    Unkeyword(String),
    Unseen,
    /// A bare sequence set (message numbers).
    Seq(SeqOrSaved),
    /// Parenthesised list: all must match.
    And(Vec<SearchKey>),
    /// RFC 7162 `MODSEQ n` (the optional entry-name/type pair is parsed and ignored).
    ModSeq(u64),
    /// RFC 5032 WITHIN: `OLDER n` / `YOUNGER n` seconds.
    Older(u32),
    Younger(u32),
    /// RFC 8474 `EMAILID objectid`.
    EmailId(String),
    /// RFC 8474 `THREADID objectid`.
    ThreadId(String),
}

/// RFC 4731 / 9051 ESEARCH result options (`RETURN (MIN MAX COUNT ALL SAVE)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub count: bool,
    pub all: bool,
    pub save: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchArgs {
    /// `Some` when the client wrote `RETURN (...)` (ESEARCH form), even if empty.
    pub ret: Option<SearchReturn>,
    pub charset: Option<String>,
    /// The top-level keys (implicitly ANDed).
    pub keys: Vec<SearchKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    /// RFC 7162.
    HighestModSeq,
    /// RFC 8438 STATUS=SIZE.
    Size,
    /// RFC 9051.
    Deleted,
    /// RFC 8474 OBJECTID.
    MailboxId,
}

/// RFC 6154 special-use attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    All,
    Archive,
    Drafts,
    Flagged,
    Junk,
    Sent,
    Trash,
    /// Any other `\Word` in CREATE's USE list (e.g. RFC 8457 `\Important`): the
    /// session answers `NO [USEATTR]` (RFC 6154 3).
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendMessage {
    pub flags: Vec<Flag>,
    pub date: Option<DateTime>,
    pub data: Vec<u8>,
    /// RFC 3516: the literal was sent as `~{n}` (binary).
    pub binary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    // Any state.
    Capability,
    Noop,
    Logout,
    /// RFC 2971 ID: `None` for `ID NIL`.
    Id(Option<Vec<(String, Option<String>)>>),
    // Not authenticated.
    StartTls,
    Login {
        user: Vec<u8>,
        pass: Vec<u8>,
    },
    /// `AUTHENTICATE mech [initial-response]` (SASL-IR). The initial response is the
    /// base64 text as sent (`=` for an empty response); decoding is the session's job.
    Authenticate {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    // Authenticated.
    Enable(Vec<String>),
    Select {
        mailbox: String,
        /// RFC 7162 `(CONDSTORE)`.
        condstore: bool,
        /// RFC 7162 `(QRESYNC (uidvalidity modseq [known-uids [seq-match]]))`.
        qresync: Option<QResync>,
    },
    Examine {
        mailbox: String,
        condstore: bool,
        qresync: Option<QResync>,
    },
    Create {
        mailbox: String,
        /// RFC 6154 CREATE-SPECIAL-USE `(USE (\Sent))`.
        special_use: Vec<SpecialUse>,
    },
    Delete(String),
    Rename {
        from: String,
        to: String,
    },
    Subscribe(String),
    Unsubscribe(String),
    List(ListArgs),
    Lsub {
        reference: String,
        pattern: String,
    },
    Namespace,
    Status {
        mailbox: String,
        items: Vec<StatusItem>,
    },
    /// One or more messages (MULTIAPPEND sends several).
    Append {
        mailbox: String,
        messages: Vec<AppendMessage>,
    },
    Idle,
    Unauthenticate,
    GetQuota(String),
    GetQuotaRoot(String),
    /// RFC 9208 `SETQUOTA root (resource limit ...)`.
    SetQuota {
        root: String,
        limits: Vec<(String, u64)>,
    },
    /// RFC 4978 `COMPRESS mechanism` (the name upper-cased).
    Compress(String),
    /// RFC 5465 `NOTIFY SET ...`; `None` is `NOTIFY NONE`.
    Notify(Option<NotifySet>),
    // Selected.
    Check,
    Close,
    Unselect,
    Expunge,
    UidExpunge(SeqOrSaved),
    Search {
        uid: bool,
        args: SearchArgs,
    },
    Fetch {
        uid: bool,
        args: FetchArgs,
    },
    Store {
        uid: bool,
        set: SeqOrSaved,
        mode: StoreMode,
        silent: bool,
        flags: Vec<Flag>,
        /// RFC 7162 `(UNCHANGEDSINCE n)`.
        unchanged_since: Option<u64>,
    },
    Copy {
        uid: bool,
        set: SeqOrSaved,
        mailbox: String,
    },
    Move {
        uid: bool,
        set: SeqOrSaved,
        mailbox: String,
    },
    /// RFC 5256 `SORT (criteria) charset search-keys`.
    Sort {
        uid: bool,
        criteria: Vec<SortCriterion>,
        charset: String,
        keys: Vec<SearchKey>,
    },
    /// RFC 5256 `THREAD algorithm charset search-keys`.
    Thread {
        uid: bool,
        algorithm: ThreadAlgorithm,
        charset: String,
        keys: Vec<SearchKey>,
    },
}

/// RFC 5256 sort keys, plus DISPLAYFROM / DISPLAYTO from RFC 5957.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Arrival,
    Cc,
    Date,
    From,
    Size,
    Subject,
    To,
    DisplayFrom,
    DisplayTo,
}

/// One `[REVERSE] key` of a SORT criteria list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortCriterion {
    pub reverse: bool,
    pub key: SortKey,
}

/// RFC 5256 threading algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadAlgorithm {
    OrderedSubject,
    References,
}

/// RFC 5465 `NOTIFY SET [STATUS] event-groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySet {
    /// `STATUS`: send the STATUS of every watched mailbox right away.
    pub status: bool,
    pub groups: Vec<NotifyGroup>,
}

/// One `(filter events)` group; `events` empty means `NONE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyGroup {
    pub filter: NotifyFilter,
    pub events: Vec<NotifyEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyFilter {
    Selected,
    SelectedDelayed,
    Inboxes,
    Personal,
    Subscribed,
    Subtree(Vec<String>),
    Mailboxes(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyEvent {
    /// With the FETCH attributes to send for each new message.
    MessageNew(Vec<FetchAttr>),
    MessageExpunge,
    FlagChange,
    AnnotationChange,
    MailboxName,
    SubscriptionChange,
    MailboxMetadataChange,
    ServerMetadataChange,
    /// An event name this grammar does not know (answered with `NO [BADEVENT ...]`).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QResync {
    pub uidvalidity: u32,
    pub modseq: u64,
    pub known_uids: Option<SequenceSet>,
    /// `(known-sequence-set known-uid-set)`.
    pub seq_match: Option<(SequenceSet, SequenceSet)>,
}

/// LIST with RFC 5258 LIST-EXTENDED selection/return options and RFC 5819 LIST-STATUS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListArgs {
    pub reference: String,
    /// One or more patterns (`LIST "" ("INBOX" "Sent*")`).
    pub patterns: Vec<String>,
    pub select_subscribed: bool,
    pub select_remote: bool,
    pub select_recursive_match: bool,
    pub select_special_use: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    /// `RETURN (STATUS (...))`.
    pub return_status: Option<Vec<StatusItem>>,
}
