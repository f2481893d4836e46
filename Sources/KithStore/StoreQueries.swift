import KithCRDT
import KithCrypto
import KithProfile

/// The store's logic, written once over `StoreReading`/`StoreWriting`, so the LMDB store and the
/// in-memory store behave identically (one contract test suite runs against both).
package struct StoreEngine: Sendable {
    package let configuration: StoreConfiguration
    package let hasher: HMACForgetKeyHasher

    package init(configuration: StoreConfiguration) {
        self.configuration = configuration
        hasher = HMACForgetKeyHasher(secret: configuration.forgetKeySecret)
    }

    /// The profile of `identifier`. Only a profile's canonical identifier holds a view row, so
    /// a read by the canonical identifier (the usual read, by user id) is one point read; a read
    /// by another identifier follows its index entry to the canonical one. No other row of the
    /// identifier is read — in a sealed store each row read is a decryption.
    package func view(of identifier: Identifier, in reader: some StoreReading) throws -> ProfileView? {
        try viewRow(of: identifier, in: reader).map { try decode(ProfileView.self, $0, table: .documents) }
    }

    /// The same row checked but not decoded: what a read renders to JSON.
    package func encodedView(of identifier: Identifier, in reader: some StoreReading) throws -> EncodedProfileView? {
        try viewRow(of: identifier, in: reader).map { try decode($0, table: .documents, EncodedProfileView.init) }
    }

    private func viewRow(of identifier: Identifier, in reader: some StoreReading) throws -> [UInt8]? {
        if let bytes = try reader.get(.documents, documentKey(identifier, .view)) { return bytes }
        guard let canonical = try reader.get(.documents, documentKey(identifier, .index)), canonical != identifier.key else { return nil }
        return try reader.get(.documents, documentKey(canonical, .view))
    }

    package func statistics(in reader: some StoreReading) throws -> StoreStatistics {
        let sequence = try lastSequence(in: reader)
        // Counted by a scan of the documents table: linear in its size (fine for tests and
        // benchmarks; the node's status endpoint will keep counters).
        var parts: [DocumentPart: Int] = [:]
        try reader.scan(.documents, prefix: []) { key, _ in
            if let part = RowKey(key)?.part {
                parts[part, default: 0] += 1
            }
            return .next
        }
        return StoreStatistics(
            profiles: parts[.view, default: 0], identifiers: parts[.index, default: 0], sources: parts[.head, default: 0],
            ledgerEntries: parts[.ledger, default: 0], links: parts[.edge, default: 0] / 2, changes: try changeCount(in: reader),
            forgotten: try reader.count(.forget), lastSequence: sequence)
    }

    package func changes(after sequence: UInt64, limit: Int, in reader: some StoreReading) throws -> [ChangeEntry] {
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

    /// Every consent decision the profile's messages carried, oldest first (linear in the
    /// profile's history, like `events`).
    package func consentHistory(of identifier: Identifier, in reader: some StoreReading) throws -> [ConsentChange] {
        var changes: [ConsentChange] = []
        try scanMembers(of: identifier, .ledger, in: reader) { member, _, key, value in
            let row = try decode(LedgerRow.self, value, table: .documents)
            guard !row.consent.isEmpty else { return }
            changes.append(
                ConsentChange(
                    identifier: member, messageId: String(decoding: RowKey(stored: key).suffix, as: UTF8.self), message: row.entry,
                    source: row.channel, decisions: row.consent))
        }
        return changes.sorted { ($0.time, $0.messageId) < ($1.time, $1.messageId) }
    }

    /// When each node last accepted a message about the profile `identifier` belongs to: the
    /// latest receipt per node over the acceptances its members' ledger rows hold (empty when
    /// no profile has it). Derived from the rows, so an erasure or an expiry that drops them
    /// changes it identically on every replica. Linear in the profile's history, like `events`.
    package func seenBy(_ identifier: Identifier, in reader: some StoreReading) throws -> SeenBy {
        var latest: [UInt64: Int64] = [:]
        try scanMembers(of: identifier, .ledger, in: reader) { _, _, _, value in
            for acceptance in try decode(LedgerRow.self, value, table: .documents).acceptances {
                latest[acceptance.origin] = max(latest[acceptance.origin] ?? acceptance.receivedAt, acceptance.receivedAt)
            }
        }
        return SeenBy(latest)
    }

    /// Runs `body` on each row of `part` of every member of `identifier`'s profile (on none
    /// when no profile has it), with the member and all the members.
    private func scanMembers(
        of identifier: Identifier, _ part: DocumentPart, in reader: some StoreReading,
        _ body: (_ member: Identifier, _ members: [Identifier], _ key: [UInt8], _ value: [UInt8]) throws -> Void
    ) throws {
        guard let view = try view(of: identifier, in: reader) else { return }
        for member in view.members {
            try reader.scan(.documents, prefix: documentKey(member.key, part)) { key, value in
                try body(member, view.members, key, value)
                return .next
            }
        }
    }

    /// Events of the profile, newest first, older than `cursor`. Reads the members' ledgers:
    /// linear in the profile's history (see docs/storage.md).
    package func events(of identifier: Identifier, before cursor: EventCursor?, limit: Int, in reader: some StoreReading) throws
        -> (events: [EventRecord], next: EventCursor?)
    {
        var events: [EventRecord] = []
        try scanMembers(of: identifier, .ledger, in: reader) { _, _, _, value in
            let row = try decode(LedgerRow.self, value, table: .documents)
            if let event = row.event, cursor.map({ (event.time, event.messageId) < ($0.time, $0.messageId) }) ?? true {
                events.append(event)
            }
        }
        events.sort { ($0.time, $0.messageId) > ($1.time, $1.messageId) }
        let page = Array(events.prefix(limit))
        let next = events.count > limit ? page.last.map { EventCursor(time: $0.time, messageId: $0.messageId) } : nil
        return (page, next)
    }

    /// Profiles in canonical-key order. A full scan of `documents` (views are one part among many).
    package func profiles(after canonical: Identifier?, limit: Int, in reader: some StoreReading) throws -> [ProfileView] {
        var views: [ProfileView] = []
        let start = canonical.map { documentKey($0.key, .view) + [0] } ?? []
        try reader.scan(.documents, from: start) { key, value in
            guard let row = RowKey(key), row.part == .view, row.suffix.isEmpty else { return .next }
            views.append(try decode(ProfileView.self, value, table: .documents))
            return views.count < limit ? .next : .stop
        }
        return views
    }

    package func links(of identifier: Identifier, in reader: some StoreReading) throws -> [StoredLink] {
        var links: [StoredLink] = []
        var outside: [Int] = []
        var profileMembers: [Identifier] = []
        try scanMembers(of: identifier, .edge, in: reader) { member, members, key, value in
            profileMembers = members
            let summary = try decode(EdgeSummary.self, value, table: .documents)
            // Each link once: from its lesser end when both ends are members.
            guard let peer = Identifier(key: RowKey(stored: key).suffix), member < peer || !members.contains(peer) else { return }
            if summary.isActive && !members.contains(peer) { outside.append(links.count) }
            links.append(
                StoredLink(
                    from: member, to: peer, active: summary.isActive, firstAdd: summary.firstAdd, lastAdd: summary.lastAdd,
                    removedAt: summary.removedAt))
        }
        // An active link to someone outside the profile: the rules keep the two profiles apart.
        let rules = configuration.profile.rules
        for index in outside {
            let peer = links[index].to
            let peerMembers = try view(of: peer, in: reader)?.members ?? [peer]
            links[index].refusedBy = rules.refusal(joining: profileMembers, with: peerMembers)
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

    /// Which changes this replica holds: the stored vector for other origins, and this node's
    /// own origin up to its last sequence (every own change is in its own log).
    package func versionVector(in reader: some StoreReading) throws -> VersionVector {
        var vector = try reader.get(.meta, versionVectorKey).map { try decode(VersionVector.self, $0, table: .meta) } ?? VersionVector()
        vector[configuration.node] = try lastSequence(in: reader)
        return vector
    }

    /// The local sequence of the newest change-log entry (0: none yet).
    package func lastSequence(in reader: some StoreReading) throws -> UInt64 {
        try reader.get(.meta, sequenceMetaKey).map { try decodeSequence($0) } ?? 0
    }

    package func logExtent(in reader: some StoreReading) throws -> LogExtent {
        var oldest: UInt64?
        try reader.scan(.changes, from: []) { key, _ in
            oldest = try decodeSequence(key)
            return .stop
        }
        return LogExtent(
            truncatedThrough: try reader.get(.meta, logTruncatedMetaKey).map { try decodeSequence($0) } ?? 0,
            last: try lastSequence(in: reader), oldestRecord: oldest,
            floor: try reader.get(.meta, logFloorMetaKey).map { try decode(VersionVector.self, $0, table: .meta) } ?? VersionVector(),
            rebuilt: try reader.get(.meta, logRebuiltMetaKey) != nil)
    }

    package func entriesAhead(after sequence: UInt64, limit: Int, in reader: some StoreReading) throws -> [ChangeEntry] {
        var entries: [ChangeEntry] = []
        try reader.scan(.ahead, from: sequenceKey(sequence &+ 1)) { _, value in
            entries.append(try decode(ChangeEntry.self, value, table: .ahead))
            return entries.count < limit ? .next : .stop
        }
        return entries
    }

    package func cursor(of peer: UInt64, in reader: some StoreReading) throws -> UInt64 {
        try reader.get(.meta, cursorKey(peer)).map { try decodeSequence($0) } ?? 0
    }

    /// A SHA-256 over every replicated row (documents and forget set, in key order): equal on two
    /// replicas exactly when they hold the same profiles, byte for byte. Node-local tables (the
    /// change log, sequences, cursors) are left out.
    /// Rows in plain key order (a sealed store scans in pseudonym order), so that stores of
    /// either kind holding the same data agree. Holds every row in memory: for tests and checks.
    package func contentDigest(in reader: some StoreReading) throws -> [UInt8] {
        var hasher = SHA256Stream()
        for table in [Table.documents, .forget] {
            hasher.update([UInt8(table.rawValue)])
            var rows: [([UInt8], [UInt8])] = []
            try reader.scan(table, prefix: []) { key, value in
                rows.append((key, value))
                return .next
            }
            for (key, value) in rows.sorted(by: { $0.0.lexicographicallyPrecedes($1.0) }) {
                var writer = BinaryWriter(capacity: key.count + value.count + 4)
                writer.write(bytes: key)
                writer.write(bytes: value)
                hasher.update(writer.bytes)
            }
        }
        return hasher.finish()
    }

    func decodeSequence(_ bytes: [UInt8]) throws -> UInt64 {
        var reader = BinaryReader(bytes)
        return try reader.readBigEndianUInt64()
    }
}

package func decode<T: BinaryCodable>(_ type: T.Type, _ bytes: [UInt8], table: Table) throws -> T {
    try decode(bytes, table: table) { try ProfileFormat.decode(T.self, from: $0) }
}

package func decode<T>(_ bytes: [UInt8], table: Table, _ body: ([UInt8]) throws -> T) throws -> T {
    do { return try body(bytes) } catch { throw StoreCorruption(table: table.name, underlying: error) }
}
