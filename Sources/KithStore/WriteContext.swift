import KithCRDT
import KithCrypto
import KithProfile

/// Records of one part (heads, views) that a transaction reads, changes, and writes back once at
/// the end: a hot customer's head is decoded and encoded once per batch, not once per message.
struct CachedRecords<Value: BinaryCodable> {
    let part: DocumentPart
    private var values: [ByteKey: Value] = [:]
    private var dirty: Set<ByteKey> = []
    private var deleted: Set<ByteKey> = []

    init(part: DocumentPart) {
        self.part = part
    }

    mutating func get(_ key: [UInt8], from txn: any StoreWriting) throws -> Value? {
        let cacheKey = ByteKey(key)
        if let cached = values[cacheKey] { return cached }
        guard let value = try stored(cacheKey, from: txn) else { return nil }
        values[cacheKey] = value
        return value
    }

    /// Changes the record (or `initial`, when there is none) where it is: it leaves the cache
    /// while `body` runs, so the cache's reference does not make every change copy the record's
    /// storage, and goes back, to be written, after. Nil, without calling `body`, when there is
    /// no record and no `initial`. A throw leaves it out of the cache; the transaction, which
    /// aborts on any throw, is not used again.
    mutating func modify<T>(
        _ key: [UInt8], from txn: any StoreWriting, initial: () -> Value? = { nil }, _ body: (inout Value) throws -> T
    ) throws -> T? {
        let cacheKey = ByteKey(key)
        guard var value = try values.removeValue(forKey: cacheKey) ?? stored(cacheKey, from: txn) ?? initial() else { return nil }
        let result = try body(&value)
        set(cacheKey, value)
        return result
    }

    mutating func set(_ key: [UInt8], _ value: Value) { set(ByteKey(key), value) }

    mutating func delete(_ key: [UInt8]) {
        let cacheKey = ByteKey(key)
        values[cacheKey] = nil
        dirty.remove(cacheKey)
        deleted.insert(cacheKey)
    }

    /// The keys this transaction changed or deleted.
    var touched: Set<ByteKey> { dirty.union(deleted) }

    func writeBack(to txn: any StoreWriting) throws {
        precondition(dirty.isDisjoint(with: deleted), "\(dirty.intersection(deleted).count) \(part) records both changed and deleted")
        for key in dirty {
            guard let value = values[key] else { preconditionFailure("a changed \(part) record is not in the cache") }
            try txn.put(.documents, documentKey(key.bytes, part), ProfileFormat.encode(value), mode: .upsert)
        }
        for key in deleted { try txn.delete(.documents, documentKey(key.bytes, part)) }
    }

    private mutating func set(_ key: ByteKey, _ value: Value) {
        values[key] = value
        dirty.insert(key)
        deleted.remove(key)
    }

    /// The record as stored, unless this transaction deleted it.
    private func stored(_ key: ByteKey, from txn: any StoreWriting) throws -> Value? {
        if deleted.contains(key) { return nil }
        guard let bytes = try txn.get(.documents, documentKey(key.bytes, part)) else { return nil }
        return try decode(Value.self, bytes, table: .documents)
    }
}

/// One write transaction's work over the store's tables.
final class WriteContext {
    let engine: StoreEngine
    /// Every write of the transaction goes through it: the digest tree's writer when the store
    /// keeps the tree (so the tree follows every change), else the store's own.
    let txn: any StoreWriting
    /// The digest tree's writer, when the store keeps the tree (`txn` then).
    private let digesting: DigestingWriter?
    var heads = CachedRecords<SourceHead>(part: .head)
    var views = CachedRecords<ProfileView>(part: .view)
    private var index: [ByteKey: [UInt8]?] = [:]
    private var sequence: UInt64
    /// The local log sequence so far: this node's own component of its version vector.
    var logSequence: UInt64 { sequence }
    /// Change-log entries of this transaction, written as one record by `finish`.
    var pendingChanges: [ChangeEntry] = []
    var anyForgotten: Bool
    /// The version vector, loaded when the transaction first applies a replicated change.
    var versions: VersionVector?

    var historyLimit: Int { engine.configuration.profile.historyLimit }

    init(engine: StoreEngine, txn: any StoreWriting) throws {
        self.engine = engine
        if engine.configuration.replicates {
            let digesting = DigestingWriter(base: txn, hasher: engine.hasher)
            self.digesting = digesting
            self.txn = digesting
        } else {
            digesting = nil
            self.txn = txn
        }
        sequence = try engine.lastSequence(in: txn)
        anyForgotten = try txn.count(.forget) > 0
        if try txn.get(.meta, formatMetaKey) != StoreFormat.current {
            try txn.put(.meta, formatMetaKey, StoreFormat.current, mode: .upsert)
        }
    }

    /// Writes back everything cached. Must be called before the transaction commits.
    func finish() throws {
        try heads.writeBack(to: txn)
        try views.writeBack(to: txn)
        if let last = pendingChanges.last {
            try txn.putChanges(pendingChanges, at: sequenceKey(last.sequence), mode: .append)
        }
        if engine.configuration.replicates { try engine.keepAhead(pendingChanges, in: txn) }
        try txn.put(.meta, sequenceMetaKey, sequenceKey(sequence), mode: .upsert)
        if let versions { try txn.put(.meta, versionVectorKey, ProfileFormat.encode(versions), mode: .upsert) }
        try digesting?.flush()
        #if DEBUG
            try checkInvariants()
        #endif
    }

    /// What must hold of the rows this transaction touched, checked before it commits in debug
    /// builds (where every test and the simulation run): each index entry names a view that
    /// lists the identifier; each view's members point back at it; each link row has its
    /// mirror under the other end. A violation stops the process naming the rows by pseudonym
    /// (never by identifier: the message may reach a log).
    func checkInvariants() throws {
        func named(_ key: [UInt8]) -> String { Crypto.hex(Array(engine.hasher.forgetKeyBytes(forKey: key, truncatedTo: 8))) }
        var identifiers = Set(index.keys.map(\.bytes))
        for canonical in views.touched.map(\.bytes) {
            identifiers.insert(canonical)
            guard let bytes = try txn.get(.documents, documentKey(canonical, .view)) else { continue }
            let view = try decode(ProfileView.self, bytes, table: .documents)
            precondition(view.canonical.key == canonical, "the view stored under \(named(canonical)) is \(named(view.canonical.key))'s")
            for member in view.members {
                let points = try txn.get(.documents, documentKey(member.key, .index))
                precondition(
                    points == canonical,
                    "member \(named(member.key)) of the view of \(named(canonical)) points at \(points.map(named) ?? "no view")")
            }
        }
        for identifier in identifiers {
            if let canonical = try txn.get(.documents, documentKey(identifier, .index)) {
                guard let bytes = try txn.get(.documents, documentKey(canonical, .view)) else {
                    preconditionFailure("the index entry of \(named(identifier)) names \(named(canonical)), which has no view")
                }
                let view = try decode(ProfileView.self, bytes, table: .documents)
                precondition(
                    view.members.contains { $0.key == identifier },
                    "the view of \(named(canonical)) does not list \(named(identifier)), whose index entry names it")
            }
            let prefix = documentKey(identifier, .edge)
            try txn.scan(.documents, prefix: prefix) { key, value in
                let peer = Array(RowKey(stored: key).suffix)
                let mirror = try txn.get(.documents, documentKey(peer, .edge, identifier))
                precondition(
                    mirror == value, "the link row of \(named(identifier)) to \(named(peer)) has \(mirror == nil ? "no" : "a different") mirror")
                return .next
            }
        }
    }
}

extension WriteContext {
    // MARK: Erasure checks

    func isForgotten(_ identifier: Identifier, at time: Int64) throws -> Bool {
        try forgottenTime(identifier).map { time <= $0 } ?? false
    }

    /// The erasure time of `identifier`, if it was ever erased.
    func forgottenTime(_ identifier: Identifier) throws -> Int64? {
        guard anyForgotten else { return nil }
        return try forgetRecord(engine.hasher.forgetKeyBytes(for: identifier))?.time
    }

    /// The forget-set record under `forgetKey`, if any.
    func forgetRecord(_ forgetKey: [UInt8]) throws -> ForgetRecord? {
        try txn.get(.forget, forgetKey).map(decodeForgetRecord)
    }

    // MARK: Change log

    /// Logs a change accepted here (`origin` nil: this node, at its new sequence) or replicated.
    /// Returns the change's origin.
    @discardableResult
    func log(_ change: ChangeEntry.Change, origin: ChangeOrigin?) throws -> ChangeOrigin {
        sequence += 1
        let origin = origin ?? ChangeOrigin(node: engine.configuration.node, sequence: sequence)
        pendingChanges.append(ChangeEntry(sequence: sequence, origin: origin.node, originSequence: origin.sequence, change: change))
        return origin
    }

    // MARK: Cached tables

    func source(_ key: [UInt8]) throws -> SourceHead? { try heads.get(key, from: txn) }
    func setSource(_ key: [UInt8], _ head: SourceHead) { heads.set(key, head) }
    func deleteSource(_ key: [UInt8]) { heads.delete(key) }
    func view(_ key: [UInt8]) throws -> ProfileView? { try views.get(key, from: txn) }
    func setView(_ key: [UInt8], _ view: ProfileView) { views.set(key, view) }
    func deleteView(_ key: [UInt8]) { views.delete(key) }

    /// An identifier as the store's invariants name it: a prefix of its forget key, never the
    /// identifier itself (a failure message may reach a log).
    func pseudonym(_ identifier: Identifier) -> String {
        Crypto.hex(Array(engine.hasher.forgetKeyBytes(forKey: identifier.key, truncatedTo: 8)))
    }

    /// The link between two identifiers the store holds a row for (never one to itself).
    func link(_ a: Identifier, _ b: Identifier) -> LinkEdge {
        guard let edge = LinkEdge(a, b) else { preconditionFailure("a link row of \(pseudonym(a)) to itself") }
        return edge
    }

    /// The erasure time of an identifier being forgotten (its forget entry is written first).
    func erasureTime(of identifier: Identifier) throws -> Int64 {
        guard let time = try forgottenTime(identifier) else {
            preconditionFailure("\(pseudonym(identifier)) is being forgotten but has no forget entry")
        }
        return time
    }

    func canonicalKey(_ key: [UInt8]) throws -> [UInt8]? {
        let cacheKey = ByteKey(key)
        if let cached = index[cacheKey] { return cached }
        let found = try txn.get(.documents, documentKey(key, .index))
        index[cacheKey] = found
        return found
    }

    func setCanonical(_ key: [UInt8], _ canonical: [UInt8]?) throws {
        index[ByteKey(key)] = .some(canonical)
        if let canonical {
            try txn.put(.documents, documentKey(key, .index), canonical, mode: .upsert)
        } else {
            try txn.delete(.documents, documentKey(key, .index))
        }
    }
}

/// A forget-set value: the erasure's time and, when known, the change that made it.
func encodeForgetRecord(_ record: ForgetRecord) -> [UInt8] {
    var writer = BinaryWriter(capacity: 30)
    record.encode(to: &writer)
    return writer.bytes
}

func decodeForgetRecord(_ bytes: [UInt8]) throws -> ForgetRecord {
    try decode(bytes, table: .forget) { bytes in
        var reader = BinaryReader(bytes)
        let record = try ForgetRecord(from: &reader)
        try reader.expectEnd()
        return record
    }
}

extension LedgerEntry {
    init(delta: ProfileDelta) {
        self.init(type: delta.type, name: delta.event?.name ?? "", time: delta.times.eventTime, revenueMicros: delta.event?.revenueMicros)
    }
}

extension StoreWriting {
    @discardableResult
    func deletePrefix(_ table: Table, _ prefix: [UInt8]) throws -> Int {
        var keys: [[UInt8]] = []
        try scan(table, prefix: prefix) { key, _ in
            keys.append(key)
            return .next
        }
        try write(table, keys.map { ($0, nil) })
        return keys.count
    }
}
