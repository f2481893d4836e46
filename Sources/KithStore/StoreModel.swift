import KithCRDT
import KithCrypto
import KithProfile

/// Settings of one store.
public struct StoreConfiguration: Sendable {
    /// This node's id: the origin of the changes it logs.
    public var node: UInt64
    /// The secret under which erased identifiers are hashed into forget keys. Keep it apart from
    /// the data and its backups: with it, anyone could test guesses against the forget set.
    public var forgetKeySecret: [UInt8]
    public var profile: ProfileConfiguration
    /// Whether the store keeps what only replication reads: the digest tree anti-entropy
    /// compares (`DigestTree`) and the copies of the log entries that travel ahead of a backlog
    /// (`Table.ahead`). A node without peers has no one to send them to and turns this off:
    /// keeping them costs about a sixth of apply time and a few page writes per commit. A
    /// durable store opened without them drops what it had of them, and one opened with them
    /// again rebuilds them, the tree from the rows and the copies from the log.
    public var replicates: Bool
    /// How often the retention sweep writes the stored rows again in their order, so that they
    /// fill their pages (`RepackSchedule`): on its first pass of each such period (a UTC day by
    /// default). Every pass would write the whole table once an hour.
    public var repackPeriodMillis: Int64

    public init(
        node: UInt64, forgetKeySecret: [UInt8], profile: ProfileConfiguration = ProfileConfiguration(), replicates: Bool = true,
        repackPeriodMillis: Int64 = RepackSchedule.day
    ) {
        precondition(forgetKeySecret.count >= 16, "the forget-key secret must have at least 16 bytes")
        precondition(repackPeriodMillis > 0, "rows are repacked once a positive period, not every \(repackPeriodMillis) ms")
        self.node = node
        self.forgetKeySecret = forgetKeySecret
        self.profile = profile
        self.replicates = replicates
        self.repackPeriodMillis = repackPeriodMillis
    }
}

/// Replication state (digest tree, entries that travel ahead) asked of a store that keeps none.
public struct ReplicationStateNotKept: Error, CustomStringConvertible {
    public var description: String { "this store keeps no replication state (a node without peers)" }
}

/// Forget keys as HMAC-SHA256 of the identifier's storage key under the store's secret.
public struct HMACForgetKeyHasher: ForgetKeyHasher {
    package let key: HMACKey

    public init(secret: [UInt8]) {
        key = HMACKey(secret)
    }

    public func forgetKeyBytes(for identifier: Identifier) -> [UInt8] {
        key.authenticate(identifier.key)
    }

    /// The forget key of a stored identifier key (`Identifier.key`).
    package func forgetKeyBytes(forKey identifierKey: some Collection<UInt8>, truncatedTo count: Int = 32) -> [UInt8] {
        key.authenticate(identifierKey, truncatedTo: count)
    }

    public func forgetKey(for identifier: Identifier) -> String { Crypto.hex(forgetKeyBytes(for: identifier)) }
}

/// The change-log entries of one transaction, stored as one record keyed by the last entry's
/// sequence: one append per batch instead of one per message. A reader looking for the entry
/// after sequence s seeks to the first record whose key is at least s + 1.
package enum ChangeRecord {
    package static func encode(_ entries: [ChangeEntry]) -> [UInt8] {
        var writer = BinaryWriter(capacity: 256 * entries.count)
        writer.write(byte: ProfileFormat.version)
        writer.write(count: entries.count)
        for entry in entries { entry.encode(to: &writer) }
        return writer.bytes
    }

    package static func decode(_ bytes: [UInt8]) throws -> [ChangeEntry] {
        var reader = BinaryReader(bytes)
        guard try reader.readByte() == ProfileFormat.version else {
            throw BinaryDecodingError(.unsupportedVersion, offset: 0, "change record")
        }
        let entries = try reader.readSequence(minimumItemSize: 4) { r in try ChangeEntry(from: &r) }
        try reader.expectEnd()
        return entries
    }
}

/// A row of a source's ledger: what the message was, for a behavioural event the event with its
/// properties, and the links it asserted. One row per message keeps ingest to one insert; the
/// newest events of a profile are also held in its view, so the rows are read back only when a
/// view is rebuilt. The links let an erasure that reaches a replica holding newer data than its
/// origin did recompute exactly the link assertions that survive (see docs/replication.md).
struct LedgerRow: BinaryCodable, Equatable {
    package var entry: LedgerEntry
    package var event: EventRecord?
    /// Peers the message linked its subject to (those not erased when it was applied).
    package var links: [Identifier]
    /// Event times of other, lesser copies of the message (ascending; usually none): each copy
    /// asserted its links at its own time, and an erasure must know which assertions it dominates.
    var otherCopyTimes: [Int64] = []
    /// The consent decisions the message carried (context or a consent event), and its channel:
    /// the customer's consent history, which the registers (latest decision only) do not keep.
    package var consent: [ConsentDecision] = []
    package var channel = ""
    /// Which nodes accepted a copy of the message from a client, and when (sorted; one per copy
    /// and node). What a site has seen of a customer (`seenBy`) is derived from these, so an
    /// erasure or an expiry that drops rows or copies changes it the same on every replica.
    /// Empty in rows written before nodes recorded it.
    package var acceptances: [Acceptance] = []
    /// Whether this row is what an expiry left of a message that linked its subject to others:
    /// the message's type, its copies' times and its links — the provenance an erasure rebuilds
    /// links from (`rebuildEdge`) — and nothing else. The link outlives the data that came with
    /// it, as it is part of the person; the row is not counted in any total. See
    /// docs/privacy.md, "Retention".
    package private(set) var isLinkRecord = false

    init(
        entry: LedgerEntry, event: EventRecord?, links: [Identifier], consent: [ConsentDecision] = [], channel: String = "",
        acceptances: [Acceptance] = []
    ) {
        self.entry = entry
        self.event = event
        self.links = links
        self.consent = consent
        self.channel = consent.isEmpty ? "" : channel
        self.acceptances = acceptances
    }

    /// The times of every copy absorbed, this row's own included.
    var copyTimes: [Int64] { otherCopyTimes + [entry.time] }

    /// A link record whose links all went (an erasure stripped them, or a member may not hold
    /// them) says nothing: it is neither stored nor sent, and a decoder refuses one.
    var isEmptyLinkRecord: Bool { isLinkRecord && links.isEmpty }

    /// What is left of this row once its message has expired: its link record, or nil when it
    /// linked nothing (the row then goes). Every copy's time stays, as each asserted the links.
    var linkRecord: LedgerRow? {
        guard !links.isEmpty else { return nil }
        var record = LedgerRow(entry: LedgerEntry(type: entry.type, name: "", time: entry.time, revenueMicros: nil), event: nil, links: links)
        record.otherCopyTimes = otherCopyTimes
        record.isLinkRecord = true
        return record
    }

    /// This row joined with another copy of the same message: the greater row, remembering the
    /// times of both and who accepted each copy. A link record keeps no acceptance: the copies
    /// it has taken in are as old as it, so expired too.
    package func joined(with other: LedgerRow) -> LedgerRow {
        var result = isLess(than: other) ? other : self
        result.otherCopyTimes = Set(copyTimes + other.copyTimes).subtracting([result.entry.time]).sorted()
        result.acceptances = result.isLinkRecord ? [] : Acceptance.joined(acceptances, other.acceptances)
        return result
    }

    /// The row without the copies dated as `dropped` says (an erasure's cutoff, an expiry):
    /// their times and their acceptances go together. The row's own copy stays; callers drop
    /// the whole row when that one goes.
    package func forgettingCopies(where dropped: (Int64) -> Bool) -> LedgerRow? {
        guard otherCopyTimes.contains(where: dropped) || acceptances.contains(where: { dropped($0.copyTime) }) else { return nil }
        var row = self
        row.otherCopyTimes.removeAll(where: dropped)
        row.acceptances.removeAll { dropped($0.copyTime) }
        return row
    }

    /// What a retention sweep does to this row, `expired` saying which of its copies' times
    /// have passed their rule.
    enum SweepFate: Equatable {
        case keep
        /// Copies dated earlier expired: the row without them (`forgettingExpiredCopies`).
        case trim(LedgerRow)
        /// The row's own copy, its newest, expired, so all did: its link record, or nothing.
        case expire(LedgerRow?)
    }

    /// What a retention sweep does to this row. A replica that swept before a copy came and
    /// one that swept after end with the same row once both have swept (`LedgerRowJoinTests`).
    func swept(expiring expired: (Int64) -> Bool) -> SweepFate {
        if isLinkRecord { return .keep }
        if expired(entry.time) { return .expire(linkRecord) }
        return forgettingExpiredCopies(where: expired).map { .trim($0) } ?? .keep
    }

    /// The row without what its copies that `expired` says brought: their acceptances, and
    /// their times unless the row links its subject to others (each copy asserted the links
    /// at its time, and an erasure rebuilds them from those times). Nil when nothing goes.
    func forgettingExpiredCopies(where expired: (Int64) -> Bool) -> LedgerRow? {
        guard links.isEmpty else {
            guard acceptances.contains(where: { expired($0.copyTime) }) else { return nil }
            var row = self
            row.acceptances.removeAll { expired($0.copyTime) }
            return row
        }
        return forgettingCopies(where: expired)
    }

    /// Of two differing copies of one message, every replica keeps the greater.
    ///
    /// A link record against a copy: the newer wins, so a copy dated after the expired one
    /// (not expired itself, perhaps) is kept whole, and the record wins over a copy of its own
    /// time — one that expired with it — so that a replica that swept before the copy came ends
    /// as one that swept after. Two link records of one time keep the greater links.
    func isLess(than other: LedgerRow) -> Bool {
        if isLinkRecord || other.isLinkRecord {
            if entry.time != other.entry.time { return entry.time < other.entry.time }
            if isLinkRecord != other.isLinkRecord { return other.isLinkRecord }
            return links.lexicographicallyPrecedes(other.links)
        }
        if entry != other.entry { return entry < other.entry }
        switch (event, other.event) {
        case (nil, _): return true
        case (_, nil): return false
        case (let a?, let b?) where a != b: return a < b
        default: break
        }
        if links != other.links { return links.lexicographicallyPrecedes(other.links) }
        // Copies that differ only in what consent they carried: any fixed order will do.
        return (Self.consentOrder(consent), channel) < (Self.consentOrder(other.consent), other.channel)
    }

    private static func consentOrder(_ decisions: [ConsentDecision]) -> String {
        decisions.map { "\($0.category)=\($0.granted)" }.joined(separator: "\u{1}")
    }

    package func encode(to writer: inout BinaryWriter) {
        entry.encode(to: &writer)
        writer.write(bool: event != nil)
        event?.encode(to: &writer)
        writer.write(sequence: links) { w, link in link.encode(to: &w) }
        writer.write(sequence: otherCopyTimes) { w, time in w.write(signed: time) }
        writer.write(sequence: consent) { w, decision in
            w.write(string: decision.category)
            w.write(bool: decision.granted)
        }
        writer.write(string: channel)
        // Written only when there are some, so a row without them has the bytes rows had
        // before nodes recorded them, and replicas holding either agree byte for byte. A link
        // record has none, written as an empty list followed by its mark.
        if isLinkRecord {
            writer.write(count: 0)
            writer.write(byte: Self.linkRecordMark)
        } else if !acceptances.isEmpty {
            writer.write(sequence: acceptances) { w, acceptance in acceptance.encode(to: &w, rowTime: entry.time) }
        }
    }

    /// The byte after a link record's empty acceptances (no other row writes an empty list).
    private static let linkRecordMark: UInt8 = 1

    package init(from reader: inout BinaryReader) throws {
        entry = try LedgerEntry(from: &reader)
        event = try reader.readBool() ? try EventRecord(from: &reader) : nil
        links = try reader.readSequence(minimumItemSize: 2) { r in try Identifier(from: &r) }
        otherCopyTimes = try reader.readSequence { r in try r.readSigned() }
        consent = try reader.readSequence(minimumItemSize: 2) { r in ConsentDecision(category: try r.readString(), granted: try r.readBool()) }
        channel = try reader.readString()
        guard !reader.isAtEnd else { return }
        let offset = reader.offset
        let rowTime = entry.time
        acceptances = try reader.readSequence(minimumItemSize: 3) { r in try Acceptance(from: &r, rowTime: rowTime) }
        if acceptances.isEmpty {
            guard try reader.readByte() == Self.linkRecordMark else {
                throw BinaryDecodingError(.invalidValue, offset: offset, "ledger row acceptances (empty without a link record's mark)")
            }
            isLinkRecord = true
            guard event == nil, entry.name.isEmpty, entry.revenueMicros == nil, consent.isEmpty, channel.isEmpty, !isEmptyLinkRecord else {
                throw BinaryDecodingError(.invalidValue, offset: offset, "a link record holding more than its links, or none")
            }
            return
        }
        guard acceptances == Acceptance.joined(acceptances, []) else {
            throw BinaryDecodingError(.invalidValue, offset: offset, "ledger row acceptances (empty, unsorted or repeated)")
        }
    }
}

/// A node's acceptance of one copy of a message from a client: the copy's event time, the node,
/// and when it received the copy.
struct Acceptance: Equatable, Comparable {
    package var copyTime: Int64
    package var origin: UInt64
    package var receivedAt: Int64

    package static func < (a: Acceptance, b: Acceptance) -> Bool {
        (a.copyTime, a.origin, a.receivedAt) < (b.copyTime, b.origin, b.receivedAt)
    }

    /// The acceptances of both, one per copy and node: the earliest receipt (a client that
    /// retries a message at one node does not move when that node first saw it). Sorted.
    static func joined(_ a: [Acceptance], _ b: [Acceptance]) -> [Acceptance] {
        var earliest: [Pair: Int64] = [:]
        for acceptance in a + b {
            let pair = Pair(copyTime: acceptance.copyTime, origin: acceptance.origin)
            earliest[pair] = min(earliest[pair] ?? acceptance.receivedAt, acceptance.receivedAt)
        }
        return earliest.map { Acceptance(copyTime: $0.key.copyTime, origin: $0.key.origin, receivedAt: $0.value) }.sorted()
    }

    private struct Pair: Hashable {
        var copyTime: Int64
        var origin: UInt64
    }

    /// Relative to the row's own time (no copy is later: the row is its greatest copy), and the
    /// receipt to the copy's time: a row's usual one acceptance, of its own copy, takes about
    /// six bytes instead of fourteen.
    func encode(to writer: inout BinaryWriter, rowTime: Int64) {
        precondition(copyTime <= rowTime, "an acceptance of a copy at \(copyTime), after its row's time \(rowTime)")
        writer.write(varint: UInt64(rowTime - copyTime))
        writer.write(varint: origin)
        writer.write(signed: receivedAt - copyTime)
    }

    init(copyTime: Int64, origin: UInt64, receivedAt: Int64) {
        self.copyTime = copyTime
        self.origin = origin
        self.receivedAt = receivedAt
    }

    init(from reader: inout BinaryReader, rowTime: Int64) throws {
        let offset = reader.offset
        let before = try reader.readVarint()
        origin = try reader.readVarint()
        let received = try reader.readSigned()
        // Both times within ±10^15 ms (`MessageTimes.representable`), as every stored time.
        guard before <= UInt64(2 * MessageTimes.limit), MessageTimes.representable.contains(rowTime - Int64(before)),
            received >= -2 * MessageTimes.limit, received <= 2 * MessageTimes.limit,
            MessageTimes.representable.contains(rowTime - Int64(before) + received)
        else { throw BinaryDecodingError(.invalidValue, offset: offset, "acceptance time outside ±10^15 ms") }
        copyTime = rowTime - Int64(before)
        receivedAt = copyTime + received
    }
}

/// What the store keeps per link: enough to know whether it is active and where it stands in the
/// rule-evaluation order. (The pure model keeps every add; see docs/identity.md.)
struct EdgeSummary: Equatable, BinaryCodable {
    package var firstAdd: LWWStamp?
    package var lastAdd: LWWStamp?
    package var removedAt: LWWStamp?

    package init() {}

    package var isActive: Bool {
        guard let lastAdd else { return false }
        return removedAt.map { lastAdd >= $0 } ?? true
    }

    var newestTime: Int64? { [lastAdd?.time, removedAt?.time].compactMap { $0 }.max() }

    package mutating func add(_ stamp: LWWStamp) {
        firstAdd = min(firstAdd ?? stamp, stamp)
        lastAdd = max(lastAdd ?? stamp, stamp)
    }

    package mutating func remove(_ stamp: LWWStamp) {
        removedAt = max(removedAt ?? stamp, stamp)
    }

    /// Joins another replica's summary of the same link (first add the least, last add and removal the greatest).
    package mutating func join(_ other: EdgeSummary) {
        if let first = other.firstAdd { add(first) }
        if let last = other.lastAdd { add(last) }
        if let removal = other.removedAt { remove(removal) }
    }

    package func encode(to writer: inout BinaryWriter) {
        for stamp in [firstAdd, lastAdd, removedAt] {
            writer.write(bool: stamp != nil)
            stamp?.encode(to: &writer)
        }
    }

    package init(from reader: inout BinaryReader) throws {
        func optional() throws -> LWWStamp? { try reader.readBool() ? try LWWStamp(from: &reader) : nil }
        firstAdd = try optional()
        lastAdd = try optional()
        removedAt = try optional()
    }
}

/// Where a page of events ends: the (time, messageId) of its last event.
public struct EventCursor: Equatable, Sendable {
    public var time: Int64
    public var messageId: String

    public init(time: Int64, messageId: String) {
        self.time = time
        self.messageId = messageId
    }

    /// `time.hex(messageId)`: opaque to clients, safe in a query string.
    public var token: String { "\(time).\(Crypto.hex(Array(messageId.utf8)))" }

    public init?(token: String) {
        let parts = token.split(separator: ".", maxSplits: 1)
        guard parts.count == 2, let time = Int64(parts[0]), let bytes = Crypto.bytes(hex: parts[1]),
            let messageId = String(validating: bytes, as: UTF8.self)
        else { return nil }
        self.init(time: time, messageId: messageId)
    }
}

/// Consent decisions one message carried, as the customer's consent history keeps them.
public struct ConsentChange: Equatable, Sendable {
    /// The identifier whose document absorbed the message.
    public var identifier: Identifier
    public var messageId: String
    /// The message's record: its type, its event's name for an event, and its (skew-corrected)
    /// time; what its retention goes by (`RetentionRules.expiry(ofMessage:)`).
    public var message: LedgerEntry
    /// The message's time.
    public var time: Int64 { message.time }
    /// The message's channel: where the decision was made.
    public var source: String
    public var decisions: [ConsentDecision]
}

/// A link as the store holds it, for reads.
public struct StoredLink: Equatable, Sendable {
    public var from: Identifier
    public var to: Identifier
    public var active: Bool
    public var firstAdd: LWWStamp?
    public var lastAdd: LWWStamp?
    public var removedAt: LWWStamp?
    /// For an active link the profile does not follow: the identity rule that keeps the two
    /// apart (`IdentityRules.refusal` of the two profiles as they stand).
    public var refusedBy: LinkRefusal?
}

/// Counts of what a store holds.
public struct StoreStatistics: Equatable, Sendable {
    public var profiles: Int
    public var identifiers: Int
    public var sources: Int
    public var ledgerEntries: Int
    public var links: Int
    public var changes: Int
    public var forgotten: Int
    public var lastSequence: UInt64
}

/// A stored record that could not be decoded. Names the table, never the key (keys are personal data).
public struct StoreCorruption: Error, CustomStringConvertible {
    public var table: String
    public var underlying: Error
    public var description: String { "a record in table \(table) could not be decoded: \(underlying)" }

    package init(table: String, underlying: Error) {
        self.table = table
        self.underlying = underlying
    }
}

package func sequenceKey(_ sequence: UInt64) -> [UInt8] {
    var writer = BinaryWriter(capacity: 8)
    writer.write(bigEndian: sequence)
    return writer.bytes
}

/// meta keys: the store's format version, the last local change sequence, and the version
/// vector of replicated origins.
package let formatMetaKey = Array("format".utf8)

/// What the `format` meta row holds: the record format, then the store's revision of it.
/// Revision 1: ledger rows may end with the acceptances of their copies (`LedgerRow`). A store
/// of the record format without a revision (written before) is read as it is — its rows simply
/// have none — and is marked with the revision when opened, so that a build that does not know
/// the revision refuses the store instead of failing on its first such row.
package enum StoreFormat {
    /// Revision 3: a ledger row may be a link record (`LedgerRow.isLinkRecord`), what an expiry
    /// leaves of a message that linked others. Revision 2: ledger rows kept in blocks
    /// (`LedgerBlock`); a row stored alone, as revisions before wrote them all, reads as a
    /// block of one.
    package static let current: [UInt8] = [ProfileFormat.version, 3]
    /// Formats this build opens, and upgrades to `current` by writing it.
    package static let readable: Set<[UInt8]> = [
        [ProfileFormat.version], [ProfileFormat.version, 1], [ProfileFormat.version, 2], current,
    ]
}
/// Which sealed layout the durable store's tables are in (`LMDBProfileStore.sealedLayout`).
package let sealedLayoutMetaKey = Array("sealed".utf8)
/// While a store of sealed layout 2 is brought to 3: the key of the first identifier row
/// whose key header has no check yet (`LMDBProfileStore.checkIdentifierRows`).
package let identifierRowChecksFromMetaKey = Array("sealed-checks-from".utf8)
let sequenceMetaKey = Array("sequence".utf8)
/// Present once the digest tree covers everything in the store (stores from before it are rebuilt at open).
package let digestsMetaKey = Array("digests".utf8)
/// Present once `ahead` holds a copy of every logged entry that travels ahead (`ReplicationState.swift`).
package let aheadMetaKey = Array("ahead".utf8)
let versionVectorKey = Array("versions".utf8)
/// The highest local sequence log truncation has dropped (absent: none).
let logTruncatedMetaKey = Array("log-truncated".utf8)
/// The version vector of the entries truncation dropped: per origin, the highest sequence gone
/// (absent: none). A change feed resumes from another node's token only above it.
let logFloorMetaKey = Array("log-floor".utf8)
/// Present once a tree comparison rebuilt the log (`resumeLog`): changes arrived that no entry
/// holds, so no token from another node can be resumed here (docs/feed.md).
let logRebuiltMetaKey = Array("log-rebuilt".utf8)
/// The data file's size when a compaction last left it, or when the store was created (absent:
/// a store from before it was kept): what `FileCompactionRule` measures growth from, across
/// restarts. 8 bytes, big-endian.
package let compactedFileBytesMetaKey = Array("compacted-file-bytes".utf8)
/// The last record of the node's write-ahead log applied here (absent: none), written in the
/// transaction that applied it (`ProfileWriting.applyGroups`).
let writeLogAppliedMetaKey = Array("write-log-applied".utf8)

/// How much of a node's change log is held: entries through `truncatedThrough` are gone (every
/// member had read them, or was away too long to count), entries after it through `last` are held
/// (less any an erasure dropped).
public struct LogExtent: Sendable, Equatable {
    public var truncatedThrough: UInt64
    public var last: UInt64
    /// The key (last sequence) of the oldest record held, if any.
    public var oldestRecord: UInt64?
    /// Per origin, the highest sequence of the entries truncation dropped.
    public var floor: VersionVector
    /// A tree comparison brought changes that no entry of this log holds (`resumeLog`).
    public var rebuilt: Bool

    public init(truncatedThrough: UInt64, last: UInt64, oldestRecord: UInt64? = nil, floor: VersionVector = VersionVector(), rebuilt: Bool = false) {
        self.truncatedThrough = truncatedThrough
        self.last = last
        self.oldestRecord = oldestRecord
        self.floor = floor
        self.rebuilt = rebuilt
    }

    /// Records at or below `truncatedThrough` are still held: a log marked incomplete
    /// (`resumeLog`) keeps its records until truncation drops them.
    public var holdsTruncatedRecords: Bool { oldestRecord.map { $0 <= truncatedThrough } ?? false }

    /// Sequences the log spans: an upper bound on the entries it holds.
    public var span: UInt64 { last - min(last, truncatedThrough) }
}

/// Where a logged change first came from: the node that accepted it and its sequence there.
struct ChangeOrigin {
    package var node: UInt64
    package var sequence: UInt64
}

extension ForgetRecord {
    /// The record of an erasure made by the change `origin`.
    init(time: Int64, by origin: ChangeOrigin) { self.init(time: time, origin: origin.node, sequence: origin.sequence) }
}

/// meta key of how far this node has read `peer`'s change log.
func cursorKey(_ peer: UInt64) -> [UInt8] {
    var writer = BinaryWriter(capacity: 16)
    writer.write(raw: "cursor:".utf8)
    writer.write(bigEndian: peer)
    return writer.bytes
}

/// A document state from a peer that does not fit the store's rules; it is refused whole.
public struct DocumentStateRejected: Error, CustomStringConvertible {
    public let reason: String
    package init(_ reason: String) { self.reason = reason }
    public var description: String { "document state refused: \(reason)" }
}
