import KithCRDT
import KithProfile

/// What a node's forget compaction has done so far, and which members it takes data from
/// (docs/replication.md, "Compacting forget entries"; the decisions are `ForgetCompactionPlan`'s
/// and `ForgetCompactionGate`'s in KithCluster, this keeps their state and carries them out).
public struct ForgetCompactionState: Sendable, Equatable {
    /// The newest erasure time among the records this node dropped; nil if it dropped none.
    public var compactedThrough: Int64?
    /// Members that held every record this node dropped, each time it dropped some: it takes
    /// their data. Any other member must first say it dropped everything dated at or before
    /// `compactedThrough`. Meaningless while nothing was dropped.
    public var trusted: Set<UInt64>
    /// How far this node dropped its own old data when a peer quarantined it (nil: never).
    public var clearedThrough: Int64?
    /// The floor of a clearing under way (some buckets done, not all): until it ends the node
    /// takes no data in, or rows it had already cleared would come back beside others it has not.
    public var clearing: Int64?

    public init(compactedThrough: Int64? = nil, trusted: Set<UInt64> = [], clearedThrough: Int64? = nil, clearing: Int64? = nil) {
        self.compactedThrough = compactedThrough
        self.trusted = trusted
        self.clearedThrough = clearedThrough
        self.clearing = clearing
    }
}

/// What one compaction step did.
public struct ForgetCompactionStep: Sendable, Equatable {
    public var dropped = 0
    /// Records read.
    public var read = 0
    /// The step reached the end of the forget set: the pass is over.
    public var passEnded = true

    public init(dropped: Int = 0, read: Int = 0, passEnded: Bool = true) {
        self.dropped = dropped
        self.read = read
        self.passEnded = passEnded
    }
}

extension ForgetRecord {
    /// Whether the record may go: dated at or before `horizon`, made by a known change that
    /// `held` (what every member that counts holds) covers. `ForgetCompactionPlan` decides both.
    public func isCompactable(horizon: Int64, held: VersionVector) -> Bool {
        hasOrigin && time <= horizon && held.covers(origin: origin, sequence: sequence)
    }
}

extension StoreEngine {
    static let compactedThroughMetaKey = Array("forget-compacted-through".utf8)
    static let trustedMetaKey = Array("forget-trusted".utf8)
    static let clearedThroughMetaKey = Array("forget-cleared-through".utf8)
    static let compactionNextMetaKey = Array("forget-compaction-next".utf8)
    static let clearingMetaKey = Array("forget-clearing".utf8)
    static let lastPlanMetaKey = Array("forget-compaction-plan".utf8)

    /// Whether the last compaction step's decision (its horizon and what every member held)
    /// would drop `record`: such a record, offered back by a peer that has not dropped it yet,
    /// is not taken (this node applied the erasure before it dropped its own copy), so that
    /// copies do not go back and forth while the nodes' passes catch up with each other.
    func wouldHaveDropped(_ record: ForgetRecord, in reader: some StoreReading) throws -> Bool {
        guard let bytes = try reader.get(.meta, Self.lastPlanMetaKey) else { return false }
        let plan = try decode(bytes, table: .meta) { try ProfileFormat.decode(CompactionDecision.self, from: $0) }
        return record.isCompactable(horizon: plan.horizon, held: plan.held)
    }

    func forgetCompactionState(in reader: some StoreReading) throws -> ForgetCompactionState {
        func time(_ key: [UInt8]) throws -> Int64? {
            try reader.get(.meta, key).map { bytes in try decode(bytes, table: .meta) { try ProfileFormat.decode(SignedTime.self, from: $0).value } }
        }
        let trusted = try reader.get(.meta, Self.trustedMetaKey).map { bytes in
            Set(try decode(bytes, table: .meta) { try ProfileFormat.decode(MemberIds.self, from: $0) }.ids)
        }
        let clearing = try reader.get(.meta, Self.clearingMetaKey).map { bytes in
            try decode(bytes, table: .meta) { try ProfileFormat.decode(ClearingProgress.self, from: $0) }.floor
        }
        return ForgetCompactionState(
            compactedThrough: try time(Self.compactedThroughMetaKey), trusted: trusted ?? [], clearedThrough: try time(Self.clearedThroughMetaKey),
            clearing: clearing)
    }

}

extension WriteContext {
    /// One bounded step of a pass over the forget set: from where the last step stopped (`meta`
    /// `forget-compaction-next`), reads up to `scan` records in key order and drops those
    /// `isCompactable` allows, up to `limit`; the step that reaches the end of the set ends the
    /// pass (the next starts from the first key). Bounded both ways so that the writer is never
    /// held long, however many erasures the store remembers. When any go, the members to trust
    /// from now on are `trusted` (the plan's counted members that were trusted before or have
    /// cleared; the caller decides), recorded in the same transaction.
    func compactForgetRecords(horizon: Int64, held: VersionVector, trusted: Set<UInt64>, scan: Int, limit: Int) throws
        -> ForgetCompactionStep
    {
        precondition(scan > 0 && limit > 0, "a compaction step reads and drops at least one record, not \(scan) and \(limit)")
        let after = try txn.get(.meta, StoreEngine.compactionNextMetaKey)
        var doomed: [([UInt8], ForgetRecord)] = []
        var read = 0
        var last: [UInt8]?
        var passEnded = true
        try txn.scan(.forget, from: after ?? []) { key, value in
            if let after, key == after { return .next }
            guard read < scan, doomed.count < limit else {
                passEnded = false
                return .stop
            }
            read += 1
            last = key
            let record = try decodeForgetRecord(value)
            if record.isCompactable(horizon: horizon, held: held) { doomed.append((key, record)) }
            return .next
        }
        let decision = ProfileFormat.encode(CompactionDecision(horizon: horizon, held: held))
        if try txn.get(.meta, StoreEngine.lastPlanMetaKey) != decision { try txn.put(.meta, StoreEngine.lastPlanMetaKey, decision, mode: .upsert) }
        if passEnded {
            try txn.delete(.meta, StoreEngine.compactionNextMetaKey)
        } else if let last {
            try txn.put(.meta, StoreEngine.compactionNextMetaKey, last, mode: .upsert)
        }
        guard !doomed.isEmpty else { return ForgetCompactionStep(read: read, passEnded: passEnded) }
        for (key, _) in doomed { try txn.delete(.forget, key) }
        let state = try engine.forgetCompactionState(in: txn)
        let newest = max(state.compactedThrough ?? .min, doomed.map(\.1.time).max()!)
        try txn.put(.meta, StoreEngine.compactedThroughMetaKey, ProfileFormat.encode(SignedTime(value: newest)), mode: .upsert)
        try txn.put(.meta, StoreEngine.trustedMetaKey, ProfileFormat.encode(MemberIds(ids: trusted.sorted())), mode: .upsert)
        return ForgetCompactionStep(dropped: doomed.count, read: read, passEnded: passEnded)
    }

    /// A peer quarantined this node: one step of dropping everything dated at or before `floor`
    /// — the logged changes at the first step, then up to `limit` identifiers of at most
    /// `buckets` digest-tree buckets (and all linked to them) from where the last step stopped
    /// (`meta` `forget-clearing`: the floor, the bucket, the last identifier done in it), so that
    /// a step costs about the same however large the store. The last step records
    /// `clearedThrough`, which the node's pulls then carry. A
    /// higher floor told in the middle starts over at the first bucket (the buckets done used the
    /// lower one). Returns whether the clearing is complete.
    func clearForQuarantine(through floor: Int64, buckets: Int, identifiers limit: Int) throws -> Bool {
        let state = try engine.forgetCompactionState(in: txn)
        guard (state.clearedThrough ?? .min) < floor else { return true }
        var progress = ClearingProgress(floor: floor, position: .start)
        if let bytes = try txn.get(.meta, StoreEngine.clearingMetaKey) {
            let stored = try decode(bytes, table: .meta) { try ProfileFormat.decode(ClearingProgress.self, from: $0) }
            if stored.floor >= floor { progress = stored }
        }
        // The logged changes first, so that no peer reads from the log what the steps drop.
        if progress.position == .start { try purgeChanges(datedThrough: progress.floor) }
        let (taken, next) = try engine.walkStep(from: progress.position, buckets: buckets, limit: limit, in: txn)
        try dropEverything(of: taken, datedThrough: progress.floor)
        progress.position = next
        guard next.isAtEnd else {
            try txn.put(.meta, StoreEngine.clearingMetaKey, ProfileFormat.encode(progress), mode: .upsert)
            return false
        }
        try txn.delete(.meta, StoreEngine.clearingMetaKey)
        try txn.put(.meta, StoreEngine.clearedThroughMetaKey, ProfileFormat.encode(SignedTime(value: progress.floor)), mode: .upsert)
        return true
    }
}

/// The decision of the last compaction step: its horizon and what every member held.
struct CompactionDecision: BinaryCodable, Equatable {
    var horizon: Int64
    var held: VersionVector

    func encode(to writer: inout BinaryWriter) {
        writer.write(signed: horizon)
        held.encode(to: &writer)
    }

    init(horizon: Int64, held: VersionVector) {
        self.horizon = horizon
        self.held = held
    }

    init(from reader: inout BinaryReader) throws {
        horizon = try reader.readSigned()
        held = try VersionVector(from: &reader)
    }
}

/// How far a clearing has gone: its floor and where its walk over the identifiers stands.
/// Written with a last byte `1`: its position is in forget-key order. One without it (written
/// before walks went in that order) names an identifier key, and its bucket is cleared again
/// from the start (a clearing repeated on an identifier drops nothing more).
struct ClearingProgress: BinaryCodable, Equatable {
    var floor: Int64
    var position: BucketWalkPosition

    func encode(to writer: inout BinaryWriter) {
        writer.write(signed: floor)
        writer.write(varint: UInt64(position.bucket))
        writer.write(bool: position.after != nil)
        if let after = position.after { writer.write(bytes: after) }
        writer.write(byte: Self.forgetKeyOrder)
    }

    private static let forgetKeyOrder: UInt8 = 1

    init(floor: Int64, position: BucketWalkPosition) {
        self.floor = floor
        self.position = position
    }

    init(from reader: inout BinaryReader) throws {
        floor = try reader.readSigned()
        let offset = reader.offset
        let bucket = try reader.readVarint()
        guard bucket < UInt64(DigestTreeShape.bucketCount) else { throw BinaryDecodingError(.invalidValue, offset: offset, "bucket") }
        let after = try reader.readBool() ? Array(try reader.readBytes()) : nil
        guard !reader.isAtEnd else {
            position = BucketWalkPosition(bucket: Int(bucket), after: nil)
            return
        }
        let mark = reader.offset
        guard try reader.readByte() == Self.forgetKeyOrder, BucketWalkPosition.isValid(bucket: Int(bucket), after: after) else {
            throw BinaryDecodingError(.invalidValue, offset: mark, "a clearing's position")
        }
        position = BucketWalkPosition(bucket: Int(bucket), after: after)
    }
}

/// Member ids as a meta value, ascending.
struct MemberIds: BinaryCodable, Equatable {
    var ids: [UInt64]

    func encode(to writer: inout BinaryWriter) { writer.write(sequence: ids) { w, id in w.write(varint: id) } }
    init(ids: [UInt64]) { self.ids = ids }
    init(from reader: inout BinaryReader) throws { ids = try reader.readSequence(minimumItemSize: 1) { r in try r.readVarint() } }
}

/// A time as a meta value.
struct SignedTime: BinaryCodable, Equatable {
    var value: Int64

    func encode(to writer: inout BinaryWriter) { writer.write(signed: value) }
    init(value: Int64) { self.value = value }
    init(from reader: inout BinaryReader) throws { value = try reader.readSigned() }
}
