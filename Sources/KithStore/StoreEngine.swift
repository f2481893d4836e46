import KithCRDT
import KithProfile

/// The store's logic, written once over `StoreReading`/`StoreWriting`, so the LMDB store and the
/// in-memory store behave identically (one contract test suite runs against both).
struct StoreEngine: Sendable {
    let configuration: StoreConfiguration
    let hasher: HMACForgetKeyHasher

    init(configuration: StoreConfiguration) {
        self.configuration = configuration
        hasher = HMACForgetKeyHasher(secret: configuration.forgetKeySecret)
    }

    /// The profile of `identifier`. When the identifier is its profile's canonical one (the usual
    /// read, by user id) its index entry and view sit side by side: one cursor pass reads both.
    func view(of identifier: Identifier, in reader: some StoreReading) throws -> ProfileView? {
        let indexKey = documentKey(identifier.key, .index), viewKey = documentKey(identifier.key, .view)
        var canonical: [UInt8]?
        var ownView: [UInt8]?
        try reader.scan(.documents, prefix: documentPrefix(identifier.key)) { key, value in
            if key == indexKey {
                canonical = value
                return value == identifier.key ? .next : .stop
            }
            if key == viewKey { ownView = value }
            return key.lexicographicallyPrecedes(viewKey) ? .next : .stop
        }
        guard let canonical else { return nil }
        guard let bytes = try ownView ?? reader.get(.documents, documentKey(canonical, .view)) else { return nil }
        return try decode(ProfileView.self, bytes, table: .documents)
    }

    func statistics(in reader: some StoreReading) throws -> StoreStatistics {
        let sequence = try reader.get(.meta, Array("sequence".utf8)).map { try decodeSequence($0) } ?? 0
        // Counted by a scan of the documents table: linear in its size (fine for tests and
        // benchmarks; the node's status endpoint will keep counters).
        var parts: [DocumentPart: Int] = [:]
        try reader.scan(.documents, prefix: []) { key, _ in
            if let separator = key.firstIndex(of: 0), separator + 1 < key.count, let part = DocumentPart(rawValue: key[separator + 1]) {
                parts[part, default: 0] += 1
            }
            return .next
        }
        return StoreStatistics(
            profiles: parts[.view, default: 0], identifiers: parts[.index, default: 0], sources: parts[.head, default: 0],
            ledgerEntries: parts[.ledger, default: 0], links: parts[.edge, default: 0] / 2, changes: try changeCount(in: reader),
            forgotten: try reader.count(.forget), lastSequence: sequence)
    }

    func changes(after sequence: UInt64, limit: Int, in reader: some StoreReading) throws -> [ChangeEntry] {
        var entries: [ChangeEntry] = []
        try reader.scan(.changes, from: sequenceKey(sequence &+ 1)) { _, value in
            for entry in try decode(value, table: .changes, ChangeRecord.decode) where entry.sequence > sequence {
                entries.append(entry)
                if entries.count == limit { return .stop }
            }
            return .next
        }
        return entries
    }

    /// Events of the profile, newest first, older than `cursor`. Reads the members' ledgers:
    /// linear in the profile's history (see docs/storage.md).
    func events(of identifier: Identifier, before cursor: EventCursor?, limit: Int, in reader: some StoreReading) throws
        -> (events: [EventRecord], next: EventCursor?)
    {
        guard let view = try view(of: identifier, in: reader) else { return ([], nil) }
        var events: [EventRecord] = []
        for member in view.members {
            try reader.scan(.documents, prefix: documentKey(member.key, .ledger)) { _, value in
                let row = try decode(LedgerRow.self, value, table: .documents)
                if let event = row.event, cursor.map({ (event.time, event.messageId) < ($0.time, $0.messageId) }) ?? true {
                    events.append(event)
                }
                return .next
            }
        }
        events.sort { ($0.time, $0.messageId) > ($1.time, $1.messageId) }
        let page = Array(events.prefix(limit))
        let next = events.count > limit ? page.last.map { EventCursor(time: $0.time, messageId: $0.messageId) } : nil
        return (page, next)
    }

    /// Profiles in canonical-key order. A full scan of `documents` (views are one part among many).
    func profiles(after canonical: Identifier?, limit: Int, in reader: some StoreReading) throws -> [ProfileView] {
        var views: [ProfileView] = []
        let start = canonical.map { documentKey($0.key, .view) + [0] } ?? []
        try reader.scan(.documents, from: start) { key, value in
            guard let separator = key.firstIndex(of: 0), separator + 1 < key.count,
                key[separator + 1] == DocumentPart.view.rawValue, key.count == separator + 2
            else { return .next }
            views.append(try decode(ProfileView.self, value, table: .documents))
            return views.count < limit ? .next : .stop
        }
        return views
    }

    func links(of identifier: Identifier, in reader: some StoreReading) throws -> [StoredLink] {
        guard let view = try view(of: identifier, in: reader) else { return [] }
        var links: [StoredLink] = []
        for member in view.members {
            let prefix = documentKey(member.key, .edge)
            try reader.scan(.documents, prefix: prefix) { key, value in
                let summary = try decode(EdgeSummary.self, value, table: .documents)
                guard let peer = Identifier(key: key[prefix.count...]), member < peer || !view.members.contains(peer) else { return .next }
                links.append(StoredLink(
                    from: member, to: peer, active: summary.isActive, firstAdd: summary.firstAdd, lastAdd: summary.lastAdd,
                    removedAt: summary.removedAt))
                return .next
            }
        }
        return links
    }

    /// How many entries the change log holds (decodes every record: linear in the log).
    func changeCount(in reader: some StoreReading) throws -> Int {
        var count = 0
        try reader.scan(.changes, prefix: []) { _, value in
            count += try decode(value, table: .changes, ChangeRecord.decode).count
            return .next
        }
        return count
    }

    func decodeSequence(_ bytes: [UInt8]) throws -> UInt64 {
        var reader = BinaryReader(bytes)
        return try reader.readBigEndianUInt64()
    }
}

func decode<T: BinaryCodable>(_ type: T.Type, _ bytes: [UInt8], table: Table) throws -> T {
    try decode(bytes, table: table) { try ProfileFormat.decode(T.self, from: $0) }
}

func decode<T>(_ bytes: [UInt8], table: Table, _ body: ([UInt8]) throws -> T) throws -> T {
    do { return try body(bytes) } catch { throw StoreCorruption(table: table.name, underlying: error) }
}

/// Records of one part (heads, views) that a transaction reads, changes, and writes back once at
/// the end: a hot customer's head is decoded and encoded once per batch, not once per message.
struct CachedRecords<Value: BinaryCodable> {
    let part: DocumentPart
    private var values: [[UInt8]: Value] = [:]
    private var dirty: Set<[UInt8]> = []
    private var deleted: Set<[UInt8]> = []

    init(part: DocumentPart) {
        self.part = part
    }

    mutating func get(_ key: [UInt8], from txn: any StoreWriting) throws -> Value? {
        if let cached = values[key] { return cached }
        if deleted.contains(key) { return nil }
        guard let bytes = try txn.get(.documents, documentKey(key, part)) else { return nil }
        let value = try decode(Value.self, bytes, table: .documents)
        values[key] = value
        return value
    }

    mutating func set(_ key: [UInt8], _ value: Value) {
        values[key] = value
        dirty.insert(key)
        deleted.remove(key)
    }

    mutating func delete(_ key: [UInt8]) {
        values[key] = nil
        dirty.remove(key)
        deleted.insert(key)
    }

    func writeBack(to txn: any StoreWriting) throws {
        for key in dirty { try txn.put(.documents, documentKey(key, part), ProfileFormat.encode(values[key]!), mode: .upsert) }
        for key in deleted { try txn.delete(.documents, documentKey(key, part)) }
    }
}

/// One write transaction's work over the store's tables.
final class WriteContext {
    let engine: StoreEngine
    let txn: any StoreWriting
    private var heads = CachedRecords<SourceHead>(part: .head)
    private var views = CachedRecords<ProfileView>(part: .view)
    private var index: [[UInt8]: [UInt8]?] = [:]
    private var sequence: UInt64
    /// Change-log entries of this transaction, written as one record by `finish`.
    private var pendingChanges: [ChangeEntry] = []
    private let anyForgotten: Bool

    private var historyLimit: Int { engine.configuration.profile.historyLimit }

    init(engine: StoreEngine, txn: any StoreWriting) throws {
        self.engine = engine
        self.txn = txn
        sequence = try txn.get(.meta, Array("sequence".utf8)).map { try engine.decodeSequence($0) } ?? 0
        anyForgotten = try txn.count(.forget) > 0
        if try txn.get(.meta, Array("format".utf8)) == nil {
            try txn.put(.meta, Array("format".utf8), [ProfileFormat.version], mode: .upsert)
        }
    }

    /// Writes back everything cached. Must be called before the transaction commits.
    func finish() throws {
        try heads.writeBack(to: txn)
        try views.writeBack(to: txn)
        if let last = pendingChanges.last {
            try txn.put(.changes, sequenceKey(last.sequence), ChangeRecord.encode(pendingChanges), mode: .append)
        }
        try txn.put(.meta, Array("sequence".utf8), sequenceKey(sequence), mode: .upsert)
    }

    // MARK: Messages

    func apply(_ delta: ProfileDelta) throws -> ApplyOutcome {
        let time = delta.times.eventTime
        if try isForgotten(delta.subject, at: time) { return .forgotten }
        let subjectKey = delta.subject.key
        let ledgerKey = documentKey(subjectKey, .ledger, delta.messageId.utf8)
        let row = LedgerRow(entry: LedgerEntry(delta: delta), event: delta.event)
        guard try txn.put(.documents, ledgerKey, ProfileFormat.encode(row), mode: .insertOnly) else { return .duplicate }

        // A source head keeps no history (limit 0): events live in ledger rows, and only views
        // hold the newest few, so heads stay small and rewriting them stays cheap.
        var head = try source(subjectKey) ?? SourceHead()
        head.absorb(delta, historyLimit: 0)
        setSource(subjectKey, head)

        var structureChanged = try register(delta.subject)
        for peer in delta.links where try !isForgotten(peer, at: time) {
            if try register(peer) { structureChanged = true }
            if try updateEdge(delta.subject, peer, { $0.add(delta.stamp) }) { structureChanged = true }
        }
        if structureChanged {
            try recompute(around: [delta.subject])
        } else {
            let canonical = try canonicalKey(subjectKey)!
            var view = try self.view(canonical)!
            view.head.absorb(delta, historyLimit: historyLimit)
            setView(canonical, view)
        }
        try log(.message(delta))
        return .applied
    }

    // MARK: Unmerge

    func removeLink(_ a: Identifier, _ b: Identifier, stamp: LWWStamp) throws {
        guard let edge = LinkEdge(a, b) else { return }
        if try updateEdge(a, b, { $0.remove(stamp) }) { try recompute(around: [a, b]) }
        try log(.unlink(edge, stamp))
    }

    // MARK: Erasure

    /// Erases the person `identifier` belongs to. The erasure time is the requested time or, if
    /// later, the newest time of anything held about them, so erasure always covers all of it.
    func erase(_ identifier: Identifier, requestedAt requested: Int64) throws -> [Identifier] {
        guard let canonical = try canonicalKey(identifier.key), let view = try self.view(canonical) else { return [] }
        let members = view.members
        let memberKeys = Set(members.map(\.key))
        var time = max(requested, view.head.lastSeen ?? requested)
        var outsideNeighbours: Set<Identifier> = []
        var edgeKeys: [[UInt8]] = []
        for member in members {
            let prefix = documentKey(member.key, .edge)
            try txn.scan(.documents, prefix: prefix) { key, value in
                let summary = try decode(EdgeSummary.self, value, table: .documents)
                time = max(time, summary.newestTime ?? time)
                let peerKey = Array(key[prefix.count...])
                edgeKeys.append(documentKey(peerKey, .edge, member.key))
                if !memberKeys.contains(peerKey), let peer = Identifier(key: peerKey) { outsideNeighbours.insert(peer) }
                return .next
            }
        }
        var forgetKeys: [[UInt8]] = []
        for member in members {
            let forgetKey = engine.hasher.forgetKeyBytes(for: member)
            forgetKeys.append(forgetKey)
            let previous = try txn.get(.forget, forgetKey).map { try decodeTime($0) } ?? time
            try txn.put(.forget, forgetKey, encodeTime(max(previous, time)), mode: .upsert)
            deleteSource(member.key)
            try setCanonical(member.key, nil)
            // Everything else filed under the member: links, ledger, history, its view.
            try txn.deletePrefix(.documents, documentPrefix(member.key))
        }
        for key in edgeKeys { try txn.delete(.documents, key) }
        deleteView(canonical)
        try purgeChanges(mentioning: memberKeys)
        for neighbour in outsideNeighbours.sorted() { try recompute(around: [neighbour]) }
        try log(.erasure(forgetKeys: forgetKeys, time: time))
        return members
    }

    /// Removes every logged change that names an erased identifier, committed or pending.
    /// (Linear in the log; crypto-shredding will replace this, see docs/storage.md.)
    private func purgeChanges(mentioning memberKeys: Set<[UInt8]>) throws {
        func mentions(_ entry: ChangeEntry) -> Bool { entry.mentionedIdentifiers.contains { memberKeys.contains($0.key) } }
        var rewrites: [([UInt8], [ChangeEntry])] = []
        try txn.scan(.changes, prefix: []) { key, value in
            let entries = try decode(value, table: .changes, ChangeRecord.decode)
            if entries.contains(where: mentions) { rewrites.append((key, entries.filter { !mentions($0) })) }
            return .next
        }
        for (key, kept) in rewrites {
            // Keys stay: a record keeps the key of its last original entry, which still sorts right.
            if kept.isEmpty { try txn.delete(.changes, key) } else { try txn.put(.changes, key, ChangeRecord.encode(kept), mode: .upsert) }
        }
        pendingChanges.removeAll(where: mentions)
    }

    // MARK: Identity

    /// Whether `identifier` is new here (its profile must be built). No hash → identifier index is
    /// kept: a node that receives an erasure as forget keys (replication) hashes its own index keys
    /// instead, which is rare work, where keeping the index cost a random page write per new identifier.
    private func register(_ identifier: Identifier) throws -> Bool {
        try canonicalKey(identifier.key) == nil
    }

    /// Updates the link between `a` and `b` in both directions; returns whether the identity
    /// structure changed (the link turned on or off, or moved in the evaluation order).
    private func updateEdge(_ a: Identifier, _ b: Identifier, _ change: (inout EdgeSummary) -> Void) throws -> Bool {
        let forward = documentKey(a.key, .edge, b.key)
        let old = try txn.get(.documents, forward).map { try decode(EdgeSummary.self, $0, table: .documents) } ?? EdgeSummary()
        var summary = old
        change(&summary)
        guard summary != old else { return false }
        let bytes = ProfileFormat.encode(summary)
        try txn.put(.documents, forward, bytes, mode: .upsert)
        try txn.put(.documents, documentKey(b.key, .edge, a.key), bytes, mode: .upsert)
        return summary.isActive != old.isActive || (summary.isActive && summary.firstAdd != old.firstAdd)
    }

    /// Rebuilds the people in the connected components around `starts`, their views and index.
    private func recompute(around starts: [Identifier]) throws {
        var nodes = Set(starts)
        var queue = starts
        var links: [LinkEdge: LWWStamp] = [:]
        while let node = queue.popLast() {
            let prefix = documentKey(node.key, .edge)
            try txn.scan(.documents, prefix: prefix) { key, value in
                let summary = try decode(EdgeSummary.self, value, table: .documents)
                guard summary.isActive, let peer = Identifier(key: key[prefix.count...]) else { return .next }
                links[LinkEdge(node, peer)!] = summary.firstAdd!
                if nodes.insert(peer).inserted { queue.append(peer) }
                return .next
            }
        }
        var oldCanonicals: Set<[UInt8]> = []
        for node in nodes { if let canonical = try canonicalKey(node.key) { oldCanonicals.insert(canonical) } }
        let rules = engine.configuration.profile.rules
        let people = IdentityResolver(rules: rules).people(nodes: Array(nodes), links: links.map { (edge: $0.key, order: $0.value) })
        var newCanonicals: Set<[UInt8]> = []
        for person in people {
            let heads = try person.compactMap { try source($0.key) }
            var view = ProfileView.assemble(members: person, heads: heads, rules: rules, historyLimit: historyLimit)
            view.head.recent = try newestEvents(of: person)
            let canonical = view.canonical.key
            newCanonicals.insert(canonical)
            setView(canonical, view)
            for member in person where try canonicalKey(member.key) != canonical { try setCanonical(member.key, canonical) }
        }
        for stale in oldCanonicals.subtracting(newCanonicals) { deleteView(stale) }
    }

    /// The newest `historyLimit` events over all of `members`, read from their ledgers. Linear in
    /// their histories; only a row whose (time, messageId) can still make the cut is fully decoded.
    private func newestEvents(of members: [Identifier]) throws -> [EventRecord] {
        var newest = SourceHead()
        guard historyLimit > 0 else { return [] }
        for member in members {
            let prefix = documentKey(member.key, .ledger)
            try txn.scan(.documents, prefix: prefix) { key, value in
                try decode(value, table: .documents) { bytes in
                    var reader = BinaryReader(bytes)
                    guard try reader.readByte() == ProfileFormat.version else {
                        throw BinaryDecodingError(.unsupportedVersion, offset: 0, "ledger row")
                    }
                    let entry = try LedgerEntry(from: &reader)
                    guard entry.type.isEvent else { return }
                    if newest.recent.count == historyLimit, let last = newest.recent.last {
                        let messageId = String(decoding: key[prefix.count...], as: UTF8.self)
                        guard (entry.time, messageId) > (last.time, last.messageId) else { return }
                    }
                    guard try reader.readBool() else { return }
                    newest.insertRecent(try EventRecord(from: &reader), limit: historyLimit)
                }
                return .next
            }
        }
        return newest.recent
    }

    // MARK: Erasure checks

    private func isForgotten(_ identifier: Identifier, at time: Int64) throws -> Bool {
        guard anyForgotten, let bytes = try txn.get(.forget, engine.hasher.forgetKeyBytes(for: identifier)) else { return false }
        return time <= (try decodeTime(bytes))
    }

    private func encodeTime(_ time: Int64) -> [UInt8] {
        var writer = BinaryWriter(capacity: 10)
        writer.write(signed: time)
        return writer.bytes
    }

    private func decodeTime(_ bytes: [UInt8]) throws -> Int64 {
        try decode(bytes, table: .forget) { bytes in
            var reader = BinaryReader(bytes)
            return try reader.readSigned()
        }
    }

    // MARK: Change log

    private func log(_ change: ChangeEntry.Change) throws {
        sequence += 1
        pendingChanges.append(
            ChangeEntry(sequence: sequence, origin: engine.configuration.node, originSequence: sequence, change: change))
    }

    // MARK: Cached tables

    private func source(_ key: [UInt8]) throws -> SourceHead? { try heads.get(key, from: txn) }
    private func setSource(_ key: [UInt8], _ head: SourceHead) { heads.set(key, head) }
    private func deleteSource(_ key: [UInt8]) { heads.delete(key) }
    private func view(_ key: [UInt8]) throws -> ProfileView? { try views.get(key, from: txn) }
    private func setView(_ key: [UInt8], _ view: ProfileView) { views.set(key, view) }
    private func deleteView(_ key: [UInt8]) { views.delete(key) }

    private func canonicalKey(_ key: [UInt8]) throws -> [UInt8]? {
        if let cached = index[key] { return cached }
        let found = try txn.get(.documents, documentKey(key, .index))
        index[key] = found
        return found
    }

    private func setCanonical(_ key: [UInt8], _ canonical: [UInt8]?) throws {
        index[key] = .some(canonical)
        if let canonical {
            try txn.put(.documents, documentKey(key, .index), canonical, mode: .upsert)
        } else {
            try txn.delete(.documents, documentKey(key, .index))
        }
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
        for key in keys { try delete(table, key) }
        return keys.count
    }
}
