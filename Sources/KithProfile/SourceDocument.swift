import KithCRDT
import KithJSON

/// Exact totals of one kind of event: how many distinct messages, and their revenue in micro-units.
///
/// One event's revenue is at most `Revenue.limitMicros` in magnitude (ingest refuses more), so
/// a 128-bit sum is exact for any count an Int64 can hold: totals never wrap and never depend on
/// the order of addition (docs/crdt.md, "Exact aggregates").
public struct EventAggregate: Equatable, Sendable {
    public var count: Int64 = 0
    public var revenueMicros: Int128 = 0

    public init(count: Int64 = 0, revenueMicros: Int128 = 0) {
        self.count = count
        self.revenueMicros = revenueMicros
    }

    mutating func add(_ other: EventAggregate) {
        count += other.count
        revenueMicros += other.revenueMicros
    }

    mutating func subtract(_ other: EventAggregate) {
        precondition(count >= other.count, "subtracting \(other.count) events from a total of \(count)")
        count -= other.count
        revenueMicros -= other.revenueMicros
    }
}

/// The revenue one event may carry: ±10^12 currency units, in millionths (±10^18, inside Int64).
public enum Revenue {
    public static let limitMicros: Int64 = 1_000_000_000_000_000_000
    public static let limits = -limitMicros...limitMicros

    public static func isRepresentable(_ micros: Int64) -> Bool { limits.contains(micros) }
}

/// What the ledger remembers of every message a source document has absorbed: enough to
/// recognise a redelivery and to keep aggregates exact after the full event has left the history.
public struct LedgerEntry: Equatable, Sendable, Comparable {
    public var type: MessageType
    public var name: String
    public var time: Int64
    public var revenueMicros: Int64?

    public init(type: MessageType, name: String, time: Int64, revenueMicros: Int64?) {
        self.type = type
        self.name = name
        self.time = time
        self.revenueMicros = revenueMicros
    }

    init(_ delta: ProfileDelta) {
        self.init(
            type: delta.type, name: delta.event?.name ?? "", time: delta.times.eventTime,
            revenueMicros: delta.event?.revenueMicros)
    }

    var aggregate: (key: String, value: EventAggregate)? {
        guard type.isEvent else { return nil }
        return (EventRecord.aggregateKey(type: type, name: name), EventAggregate(count: 1, revenueMicros: Int128(revenueMicros ?? 0)))
    }

    /// Time first, so that the entry kept for a messageId always matches the history record kept.
    public static func < (a: LedgerEntry, b: LedgerEntry) -> Bool {
        (a.time, a.type, a.name, a.revenueMicros ?? Int64.min) < (b.time, b.type, b.name, b.revenueMicros ?? Int64.min)
    }
}

/// The bounded part of a document: every CRDT field plus totals derived from the ledger.
/// A profile view is the same shape (the combination of its members' heads), which is why the
/// store can keep views up to date by absorbing each delta into them as well.
public struct SourceHead: Equatable, Sendable {
    /// Trait values as compact JSON text, ordered by the writing message's stamp.
    public var traits = CRDTMap<String, LWWRegister<RawJSON>>()
    public var consent = CRDTMap<String, ConsentRegister>()
    public var groups = ORSet<String, LWWStamp>()
    /// Newest first, at most the configured history length, at most one record per messageId.
    public var recent: [EventRecord] = []
    public var aggregates = SortedDictionary<String, EventAggregate>()
    public var messageCount: Int64 = 0
    public var firstSeen: Int64?
    public var lastSeen: Int64?

    public init() {}

    public var isEmpty: Bool { self == SourceHead() }

    /// Absorbs a message this head has not seen before.
    public mutating func absorb(_ delta: ProfileDelta, historyLimit: Int) {
        let stamp = delta.stamp
        for member in delta.traits.members {
            traits.merge(key: member.key, LWWRegister(RawJSON(member.value), stamp: stamp))
        }
        for decision in delta.consent {
            consent.merge(key: decision.category, ConsentRegister(granted: decision.granted, stamp: stamp, source: delta.channel))
        }
        if let groupId = delta.groupId { groups.add(groupId, tag: stamp) }
        count(LedgerEntry(delta))
        if let event = delta.event { insertRecent(event, limit: historyLimit) }
    }

    /// Puts `event` into the newest-first history (one record per messageId, the greater wins).
    public mutating func insertRecent(_ event: EventRecord, limit: Int) {
        if let existing = recent.firstIndex(where: { $0.messageId == event.messageId }) {
            guard recent[existing] < event else { return }
            recent.remove(at: existing)
        }
        let position = recent.firstIndex { $0 < event } ?? recent.count
        guard position < limit else { return }
        recent.insert(event, at: position)
        if recent.count > limit { recent.removeLast() }
    }

    /// Adds the totals of one ledger entry.
    public mutating func count(_ entry: LedgerEntry) {
        messageCount += 1
        firstSeen = min(firstSeen ?? entry.time, entry.time)
        lastSeen = max(lastSeen ?? entry.time, entry.time)
        if let (key, value) = entry.aggregate { aggregates.update(key, default: EventAggregate()) { $0.add(value) } }
    }

    /// Replaces the totals of one counted ledger entry with those of another copy of the same
    /// message that orders at or after it (the copy a ledger keeps when two differ), without
    /// reading the other entries. Returns false, changing nothing, when they are needed: the
    /// replaced entry may have been the earliest, and a later copy can move `firstSeen`.
    public mutating func recount(replacing old: LedgerEntry, with new: LedgerEntry) -> Bool {
        precondition(!(new < old), "a joined copy orders before the entry it replaces: \(new) < \(old)")
        guard let first = firstSeen, messageCount > 0 else {
            preconditionFailure("replacing an entry in totals that count none (\(messageCount) messages)")
        }
        if new == old { return true }
        guard new.time == old.time || first < old.time else { return false }
        lastSeen = max(lastSeen ?? new.time, new.time)
        if let (key, value) = old.aggregate {
            aggregates.update(key, default: EventAggregate()) { $0.subtract(value) }
            aggregates.removeAll { name, total in name == key && total.count == 0 }
        }
        if let (key, value) = new.aggregate { aggregates.update(key, default: EventAggregate()) { $0.add(value) } }
        return true
    }

    /// Joins the CRDT fields of `other` (not the totals, which depend on the ledgers).
    public mutating func mergeFields(_ other: SourceHead, historyLimit: Int) {
        traits.merge(other.traits)
        consent.merge(other.consent)
        groups.merge(other.groups)
        recent = Self.newest(recent, other.recent, limit: historyLimit)
    }

    /// Combines the heads of *different* source documents (disjoint ledgers) into a view head:
    /// fields join, totals add.
    public mutating func combine(_ other: SourceHead, historyLimit: Int) {
        mergeFields(other, historyLimit: historyLimit)
        messageCount += other.messageCount
        firstSeen = [firstSeen, other.firstSeen].compactMap { $0 }.min()
        lastSeen = [lastSeen, other.lastSeen].compactMap { $0 }.max()
        for (key, value) in other.aggregates.pairs { aggregates.update(key, default: EventAggregate()) { $0.add(value) } }
    }

    /// The newest `limit` records of both lists, one per messageId (the greatest record wins).
    static func newest(_ a: [EventRecord], _ b: [EventRecord], limit: Int) -> [EventRecord] {
        var byMessage: [String: EventRecord] = [:]
        for record in a + b where byMessage[record.messageId].map({ $0 < record }) ?? true {
            byMessage[record.messageId] = record
        }
        return Array(byMessage.values.sorted(by: >).prefix(limit))
    }

    /// Drops everything dated at or before `time` (erasure); totals are recomputed by the caller.
    public mutating func dropFields(upTo time: Int64) {
        traits.retain { _, register in register.stamp.time > time }
        consent.retain { _, register in register.stamp.time > time }
        groups = ORSet(
            live: groups.live.mapValues { $0.filter { $0.time > time } },
            removed: groups.removed.mapValues { $0.filter { $0.time > time } })
        recent.removeAll { $0.time <= time }
    }
}

/// One identifier's own data: its head and its ledger of absorbed messages (messageId → entry).
///
/// The ledger makes redelivery harmless (a message counts once, even when two copies were
/// absorbed on two replicas that later merge) and keeps aggregates exact however long ago the
/// full event left the bounded history.
public struct SourceDocument: Equatable, Sendable {
    public private(set) var head = SourceHead()
    public private(set) var ledger: [String: LedgerEntry] = [:]

    public init() {}

    public var isEmpty: Bool { ledger.isEmpty && head.isEmpty }

    /// Absorbs `delta`; returns false for a message already absorbed. A second copy of a
    /// messageId is joined in as a merge would join it: the same message redelivered to two
    /// nodes gets two receive times, so two corrected event times, and every replica must end
    /// with the same state whichever copy it saw first — the greater ledger entry, and the join
    /// of both copies' fields.
    @discardableResult
    public mutating func apply(_ delta: ProfileDelta, historyLimit: Int) -> Bool {
        let entry = LedgerEntry(delta)
        guard ledger[delta.messageId] != nil else {
            ledger[delta.messageId] = entry
            head.absorb(delta, historyLimit: historyLimit)
            return true
        }
        var copy = SourceDocument()
        copy.ledger[delta.messageId] = entry
        copy.head.absorb(delta, historyLimit: historyLimit)
        merge(copy, historyLimit: historyLimit)
        return false
    }

    /// The fields `delta` set, without counting it or keeping its event: what a store keeps of a
    /// message whose record expired under the retention rules (docs/privacy.md, "Retention").
    public mutating func absorbFields(of delta: ProfileDelta, historyLimit: Int) {
        var copy = SourceHead()
        copy.absorb(delta, historyLimit: 0)
        head.mergeFields(copy, historyLimit: historyLimit)
    }

    /// The join of two replicas of the same identifier's document.
    public mutating func merge(_ other: SourceDocument, historyLimit: Int) {
        for (id, entry) in other.ledger where ledger[id].map({ $0 < entry }) ?? true { ledger[id] = entry }
        head.mergeFields(other.head, historyLimit: historyLimit)
        recount()
    }

    /// Erasure: drops every part dated at or before `time`.
    public mutating func forget(upTo time: Int64) {
        ledger = ledger.filter { $0.value.time > time }
        head.dropFields(upTo: time)
        recount()
    }

    private mutating func recount() {
        head.messageCount = 0
        head.firstSeen = nil
        head.lastSeen = nil
        head.aggregates = SortedDictionary()
        for entry in ledger.values { head.count(entry) }
    }
}
