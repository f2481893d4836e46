/// How long data is kept, and for which purpose: the policy's retention rules resolved to what
/// each piece of stored data needs (docs/privacy.md, "Retention").
///
/// Expiry is a pure function of the data's own time (an event's time, a trait's last update),
/// these rules and a time passed in, so every replica that sweeps at or after the same time
/// drops the same data with no coordination; and it only grows with time, so data dropped on
/// one replica and still held on another is dropped there too at its next sweep. Data no rule
/// names is kept.
public struct RetentionRules: Sendable, Equatable {
    /// How long one kind of data is kept, and the purpose that justifies keeping it that long.
    public struct Keep: Sendable, Equatable {
        public var millis: Int64
        public var purpose: String

        public init(millis: Int64, purpose: String) {
            precondition(millis > 0, "data is kept for a positive time, not \(millis) ms")
            self.millis = millis
            self.purpose = purpose
        }

        /// When data dated `time` goes under this rule (the far end of the range rather than
        /// wrapping around).
        public func expiry(from time: Int64) -> Int64 {
            time.addingReportingOverflow(millis).overflow ? .max : time + millis
        }

        /// The longer of two (a datum two rules name is kept as long as either purpose needs it).
        public func longer(_ other: Keep?) -> Keep {
            guard let other, other.millis > millis || (other.millis == millis && other.purpose < purpose) else { return self }
            return other
        }
    }

    /// Events by name (a track call's event, a page's or screen's name).
    public var eventsByName: [String: Keep] = [:]
    /// Events no rule names by name (the category the policy puts `events` in).
    public var events: Keep?
    /// Traits by name, then by the category the policy puts the trait in.
    public var traitsByName: [String: Keep] = [:]
    public var traitsByCategory: [String: Keep] = [:]
    /// Trait name → its category, as the policy says (`traits.NAME` fields), and the category of
    /// traits it does not name.
    public var traitCategories: [String: String] = [:]
    public var unnamedTraitCategory: String?
    /// Consent grants by the name they came under (ASCII letters folded to lower case: every
    /// name the policy's vocabulary maps to a category a rule names). A grant expires and then
    /// reads as never given; a denial never expires (a withdrawal must not lapse into consent).
    public var grantsByName: [String: Keep] = [:]
    /// The records of identify, group and alias calls by their type: when such a message was
    /// received, where (which nodes accepted it) and the consent decisions it carried. What it
    /// set lives on under the rules for traits and consent; the links it asserted stay while
    /// the profile does (a link record, docs/privacy.md, "Retention").
    public var messagesByType: [MessageType: Keep] = [:]

    public init() {}

    public static let none = RetentionRules()

    public var isEmpty: Bool {
        eventsByName.isEmpty && events == nil && traitsByName.isEmpty && traitsByCategory.isEmpty && grantsByName.isEmpty
            && messagesByType.isEmpty
    }

    /// The message types a `messages` rule may name: those that record no event (events are
    /// kept by their names' and their category's rules).
    public static let recordTypes: [MessageType] = MessageType.allCases.filter { !$0.isEvent }

    /// How long a consent grant under `name` counts; nil: until it is changed.
    public func keep(forGrant name: String) -> Keep? {
        grantsByName.isEmpty ? nil : grantsByName[ASCIIFolding.folded(name)]
    }

    /// Whether `register` (a decision under `name`) is a grant that has lapsed at `now`.
    public func isExpired(grant register: ConsentRegister, name: String, now: Int64) -> Bool {
        guard register.granted, let keep = keep(forGrant: name) else { return false }
        return keep.expiry(from: register.stamp.time) <= now
    }

    /// How long an event named `name` is kept; nil: as long as the profile.
    public func keep(forEvent name: String) -> Keep? { eventsByName[name] ?? events }

    /// How long trait `name` is kept after its last update; nil: as long as the profile.
    public func keep(forTrait name: String) -> Keep? {
        if let keep = traitsByName[name] { return keep }
        return (traitCategories[name] ?? unnamedTraitCategory).flatMap { traitsByCategory[$0] }
    }

    /// How long the record of a message is kept: an event's by its name, an identify's, group's
    /// or alias's by its type; nil: as long as the profile.
    public func keep(forMessage entry: LedgerEntry) -> Keep? {
        entry.type.isEvent ? keep(forEvent: entry.name) : messagesByType[entry.type]
    }

    /// When the record of a message (its ledger entry) expires.
    public func expiry(ofMessage entry: LedgerEntry) -> Int64? {
        keep(forMessage: entry).map { $0.expiry(from: entry.time) }
    }

    /// Whether the record of a message dated `time` (one of its copies') has expired at `now`.
    public func isExpired(message entry: LedgerEntry, at time: Int64, now: Int64) -> Bool {
        keep(forMessage: entry).map { $0.expiry(from: time) <= now } ?? false
    }

    /// When an event named `name` dated `time` expires (it is gone at and after that time).
    public func expiry(ofEvent name: String, at time: Int64) -> Int64? {
        keep(forEvent: name).map { $0.expiry(from: time) }
    }

    /// When trait `name`, last updated at `time`, expires.
    public func expiry(ofTrait name: String, updatedAt time: Int64) -> Int64? {
        keep(forTrait: name).map { $0.expiry(from: time) }
    }

    public func isExpired(event name: String, at time: Int64, now: Int64) -> Bool {
        expiry(ofEvent: name, at: time).map { $0 <= now } ?? false
    }

    public func isExpired(trait name: String, updatedAt time: Int64, now: Int64) -> Bool {
        expiry(ofTrait: name, updatedAt: time).map { $0 <= now } ?? false
    }
}

extension RetentionRules {
    /// `head` as a read at `now` may show it: the traits and recent events these rules say have
    /// expired are left out. The sweep drops them from the store later (`expire`, in bounded
    /// steps, so a pass over a large store takes a while); a read never shows them in between.
    /// Totals (message counts, revenue) stay as counted until the sweep recounts them.
    public func unexpired(_ head: SourceHead, now: Int64) -> SourceHead {
        guard !isEmpty else { return head }
        var visible = head
        visible.traits.retain { name, register in !isExpired(trait: name, updatedAt: register.stamp.time, now: now) }
        visible.consent.retain { name, register in !isExpired(grant: register, name: name, now: now) }
        visible.recent.removeAll { $0.type.isEvent && isExpired(event: $0.name, at: $0.time, now: now) }
        return visible
    }

    /// `events` without those these rules say have expired at `now`.
    public func unexpired(_ events: [EventRecord], now: Int64) -> [EventRecord] {
        isEmpty ? events : events.filter { !($0.type.isEvent && isExpired(event: $0.name, at: $0.time, now: now)) }
    }
}
